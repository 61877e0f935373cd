"""gateway/reports over real events: the bundled rules' attack samples replayed through the real
engine into a real event store (tests/reports/lab.py); every figure of the report is checked
against the event store with SQL, in JSON, CSV and HTML, from the library and from
`vpatch report`; the email goes through a real SMTP receiver (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import csv
import email
import io
import json
import re
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from gateway.alerts.channels import save_channel
from gateway.policy.assignments import Assignments
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from gateway.reports.period import PeriodKind, ReportError, last_period, parse_period
from gateway.reports.render import to_csv, to_html, to_json
from gateway.reports.sources import ReportSources, make_report
from gateway.reports.summary import Report
from tests.alerts.conftest import wait_for
from tests.reports.lab import DAY1, FILES, OTHER, WEB, Lab, build_lab

ROOT = Path(__file__).resolve().parents[2]
PERIOD = parse_period("2026-12-05", "2026-12-05", None, DAY1)  # the whole first day
IN_PERIOD = "timestamp >= ? AND timestamp < ?"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return build_lab(tmp_path_factory.mktemp("reportlab"))


def sql(lab: Lab, query: str, *args: Any) -> list[Any]:
    with sqlite3.connect(lab.events) as conn:
        return conn.execute(query, (PERIOD.start_text, PERIOD.end_text, *args)).fetchall()


def expected(lab: Lab, column: str) -> dict[str, tuple[int, int]]:
    """column value -> (blocked, detected) alerts in PERIOD, straight from the events table."""
    out: dict[str, list[int]] = {}
    for key, action, n in sql(lab, f"SELECT {column}, action, SUM(count) FROM events WHERE "
                              f"{IN_PERIOD} AND event_type = 'alert' GROUP BY 1, 2"):  # fmt: skip
        out.setdefault(str(key), [0, 0])[0 if action == "blocked" else 1] += int(n)
    return {k: (v[0], v[1]) for k, v in out.items()}


def expected_cves(lab: Lab, cves: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for cve in cves:
        rows = sql(lab, "SELECT action, SUM(count) FROM events WHERE timestamp >= ? AND "
                   "timestamp < ? AND cves LIKE ? GROUP BY action", f"%,{cve},%")  # fmt: skip
        got = dict(rows)
        out[cve] = (int(got.get("blocked", 0)), int(got.get("allowed", 0)))
    return out


def report_of(lab: Lab) -> Report:
    sources = ReportSources(lab.events, lab.policy, lab.rule_paths, None)
    return make_report(sources, PERIOD, top=50, rules=lab.rules)


def check_json(lab: Lab, data: dict[str, Any]) -> None:
    hosts = expected(lab, "dest_ip")
    assert {c["key"]: (c["blocked"], c["detected"]) for c in data["by_host"]} == hosts
    assert hosts[WEB][1] == 0 and hosts[FILES][1] > 0  # FILES runs one rule in detect-only
    assert {c["key"]: (c["blocked"], c["detected"]) for c in data["by_source"]} == expected(
        lab, "src_ip"
    )
    assert {c["key"]: (c["blocked"], c["detected"]) for c in data["top_rules"]} == expected(
        lab, "signature_id"
    )
    cves = [c["key"] for c in data["by_cve"]]
    assert {c["key"]: (c["blocked"], c["detected"]) for c in data["by_cve"]} == expected_cves(
        lab, cves
    )
    assert "CVE-2017-0144" in cves and "CVE-2019-0708" in cves
    blocked = sum(b for b, _ in hosts.values())
    detected = sum(d for _, d in hosts.values())
    assert (data["totals"]["blocked"], data["totals"]["detected"]) == (blocked, detected)
    assert sum(c["total"] for c in data["timeline"]) == blocked + detected
    with sqlite3.connect(lab.events) as conn:  # the second day is in the store, not the report
        everything = conn.execute("SELECT SUM(count) FROM events").fetchone()[0]
    assert everything > blocked + detected > 0


def test_report_counts_match_the_event_store(lab: Lab) -> None:
    report = report_of(lab)
    check_json(lab, json.loads(to_json(report)))
    assert report.host_modes["changes"] == {"mode": 1, "release": 1}
    assert report.host_modes["hosts_by_mode"] == {"normal": 3}
    assert [c.host for c in report.coverage] == [WEB, FILES, OTHER]
    assert report.health["reachable"] is False and report.health["not_kept"]


def test_csv_has_the_same_counts(lab: Lab) -> None:
    rows = list(csv.DictReader(io.StringIO(to_csv(report_of(lab)))))
    by = lambda section: {r["key"]: (int(r["blocked"]), int(r["detected"]))  # noqa: E731
                          for r in rows if r["section"] == section}  # fmt: skip
    assert by("host") == expected(lab, "dest_ip")
    assert by("source") == expected(lab, "src_ip")
    assert by("rule") == expected(lab, "signature_id")
    assert by("cve") == expected_cves(lab, list(by("cve")))
    (alerts,) = [r for r in rows if r["section"] == "totals" and r["key"] == "alerts"]
    hosts = expected(lab, "dest_ip").values()
    assert int(alerts["total"]) == sum(b + d for b, d in hosts)


def html_row(html: str, key: str) -> tuple[int, int, int] | None:
    m = re.search(rf"<tr><td>{re.escape(key)}</td><td class=\"n\">(\d+)</td>"
                  r"<td class=\"n\">(\d+)</td><td class=\"n\">(\d+)</td></tr>", html)  # fmt: skip
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def test_html_is_self_contained_with_the_same_counts(lab: Lab) -> None:
    html = to_html(report_of(lab))
    for host, (b, d) in expected(lab, "dest_ip").items():
        assert html_row(html, host) == (b, d, b + d)
    for cve, (b, d) in expected_cves(lab, ["CVE-2017-0144", "CVE-2019-0708"]).items():
        assert html_row(html, cve) == (b, d, b + d)
    assert html.count("<svg") >= 3 and "<script" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing to fetch


def test_coverage_names_recommended_rules_not_enforced(lab: Lab, tmp_path: Path) -> None:
    policy = tmp_path / "policy.db"
    policy.write_bytes(lab.policy.read_bytes())
    policy.chmod(0o600)
    with Store(policy) as store:
        web = Hosts(store).host_by_address(WEB)
        assert web is not None
        Assignments(store).set_assignment(9001017, "host", web.id, "off", "test")
        recs = [{"rule_id": 9001017, "title": "t", "action": "keep"},
                {"rule_id": 9001019, "title": "t", "action": "assign"},
                {"rule_id": 9001001, "title": "t", "action": "unassign"}]  # fmt: skip
        for host in (WEB, FILES):
            store.db.execute(
                "INSERT INTO scan_runs(host, trigger, actor, status, queued_at, finished_at, "
                "report_json) VALUES (?, 'cli', 'test', 'done', ?, ?, ?)",
                (host, time.time(), time.time(), json.dumps({"recommendations": recs})),
            )
    sources = ReportSources(lab.events, policy, lab.rule_paths, None)
    cov = {c.host: c for c in make_report(sources, PERIOD, rules=lab.rules).coverage}
    assert [r for r, _ in cov[WEB].not_enforced] == [9001017]
    assert [r for r, _ in cov[FILES].detect_only] == [9001019]  # detect-only for FILES
    assert cov[WEB].recommended == 2 and cov[OTHER].scanned_at == ""


def test_periods() -> None:
    now = datetime(2026, 12, 9, 15, 30, tzinfo=UTC)  # a Wednesday
    day = last_period(PeriodKind.DAY, now)
    assert (day.start.day, day.end.day) == (8, 9)
    week = last_period(PeriodKind.WEEK, now)
    assert (week.start.isoformat()[:10], week.end.isoformat()[:10]) == ("2026-11-30", "2026-12-07")
    month = last_period(PeriodKind.MONTH, now)
    assert (month.start.isoformat()[:10], month.end.isoformat()[:10]) == (
        "2026-11-01", "2026-12-01")  # fmt: skip
    with pytest.raises(ReportError, match="--to"):
        parse_period("2026-12-05", "2026-12-04", None, now)
    with pytest.raises(ReportError, match="ISO 8601"):
        parse_period("yesterday", None, None, now)


def write_config(lab: Lab, tmp_path: Path) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"events: {{sqlite: {lab.events}, jsonl: null}}\n"
        f"policy: {{database: {lab.policy}}}\n"
        f"control: {{socket: {tmp_path / 'no-gateway.sock'}}}\n"
    )
    return config


def vpatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_cli_report_json_and_csv(lab: Lab, tmp_path: Path) -> None:
    config = write_config(lab, tmp_path)
    out = tmp_path / "report.json"
    r = vpatch("report", "-c", str(config), "--from", "2026-12-05", "--to", "2026-12-05",
               "--format", "json", "--top", "50", "-o", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    check_json(lab, json.loads(out.read_text()))
    r = vpatch("report", "-c", str(config), "--from", "2026-12-05T00:00", "--to",
               "2026-12-06T00:00", "--format", "csv")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    hosts = {x["key"]: (int(x["blocked"]), int(x["detected"])) for x in rows
             if x["section"] == "host"}  # fmt: skip
    assert hosts == expected(lab, "dest_ip")
    r = vpatch("report", "-c", str(config), "--from", "2026-12-06", "--to", "2026-12-05")
    assert r.returncode == 2 and "is not after" in r.stderr


def parts(message: Message) -> dict[str, str]:
    out = {}
    for part in message.walk():
        name = part.get_filename() or part.get_content_type()
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            out[name] = payload.decode()
    return out


def test_email_reaches_a_real_smtp_receiver(lab: Lab, tmp_path: Path, smtp: Any) -> None:
    with Store(lab.policy) as store:
        save_channel(store, {"name": "ops-mail", "kind": "email", "host": "127.0.0.1",
                             "port": smtp.port, "sender": "gw@lab.test",
                             "to": "ops@lab.test, sec@lab.test"}, "test")  # fmt: skip
    try:
        r = vpatch("report", "-c", str(write_config(lab, tmp_path)), "--from", "2026-12-05",
                   "--to", "2026-12-05", "--top", "50", "--email")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "sent through ops-mail" in r.stderr
        (envelope,) = wait_for(smtp.messages)
        assert sorted(envelope.rcpt_tos) == ["ops@lab.test", "sec@lab.test"]
        message = email.message_from_bytes(envelope.content)
        assert message["Subject"].startswith("[vpatch] report 2026-12-05")
        got = parts(message)
        rows = list(csv.DictReader(io.StringIO(got["vpatch-report-2026-12-05.csv"])))
        hosts = {x["key"]: (int(x["blocked"]), int(x["detected"])) for x in rows
                 if x["section"] == "host"}  # fmt: skip
        assert hosts == expected(lab, "dest_ip")
        html = got["vpatch-report-2026-12-05.html"]
        for host, (b, d) in expected(lab, "dest_ip").items():
            assert html_row(html, host) == (b, d, b + d)
        total = sum(b + d for b, d in expected(lab, "dest_ip").values())
        assert f"alerts: {total} (" in got["text/plain"]
    finally:
        with Store(lab.policy) as store:
            store.db.execute("DELETE FROM alert_channels")


def test_email_without_a_channel_is_an_error(lab: Lab, tmp_path: Path) -> None:
    r = vpatch("report", "-c", str(write_config(lab, tmp_path)), "--email")
    assert r.returncode == 2 and "no enabled email alert channel" in r.stderr


def test_other_event_types_are_counted_apart(lab: Lab, tmp_path: Path) -> None:
    """Firewall and host-mode records (event_type drop/flow, written by the gateway where it
    logs them) are counted per type and signature, and never as alerts."""
    events = tmp_path / "events.db"
    events.write_bytes(lab.events.read_bytes())
    stamp = "2026-12-05T12:00:00.000000+00:00"
    with sqlite3.connect(events) as conn:
        conn.executemany(
            "INSERT INTO events (timestamp, event_type, signature_id, signature, action, src_ip,"
            " dest_ip, eve, count) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?)",
            [(stamp, "drop", 3, "firewall rule 3 deny", "blocked", "198.19.9.9", WEB, 40),
             (stamp, "drop", None, "setup protection", "blocked", "198.19.9.9", FILES, 7),
             (stamp, "flow", 4, "firewall rule 4 log", "allowed", "198.19.9.9", WEB, 2),
             ("2026-12-06T12:00:00.000000+00:00", "drop", 3, "firewall rule 3 deny", "blocked",
              "198.19.9.9", WEB, 1000)],
        )  # fmt: skip
    sources = ReportSources(events, lab.policy, lab.rule_paths, None)
    report = make_report(sources, PERIOD, top=50, rules=lab.rules)
    types = {c.key: (c.blocked, c.detected) for c in report.event_types}
    assert types["drop"] == (47, 0) and types["flow"] == (0, 2)
    assert {c.key: c.total for c in report.firewall} == {
        "drop firewall rule 3 deny": 40, "drop setup protection": 7,
        "flow firewall rule 4 log": 2}  # fmt: skip
    assert report.totals["events"] == report.totals["alerts"] + 49
    assert "198.19.9.9" not in {c.key for c in report.by_source}  # alerts only
    assert report.totals == {**report_of(lab).totals, "events": report.totals["events"],
                             "records": report.totals["records"]}  # fmt: skip
