"""webui/services.py, the operations shared by the pages and the API, called inside an
application context: rule defaults from the rule file, event filters (each bad value named),
paging bounds, the why of an event, reload and status without a gateway."""

from __future__ import annotations

from typing import Any


def test_rule_default_mode_and_products_come_from_the_rule_file(tmp_path: Any) -> None:
    from gateway.match.rules import load_rules
    from webui.services import rule_default_mode, rule_products

    (tmp_path / "r.yaml").write_text(
        "id: 9000900\ntitle: t\nseverity: low\naction: reset\nprotocol: tcp\nports: [80]\n"
        "default_mode: detect\naffected:\n  - product: nginx\n"
        'patterns:\n  - content: "abc"\n'
    )
    rule = load_rules([tmp_path / "r.yaml"]).by_id[9000900]
    assert rule_default_mode(rule) == "detect"
    assert rule_products(rule) == ["nginx"]
