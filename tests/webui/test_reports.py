"""webui/reports.py and webui/transfer.py through the Flask test client: the report page over
real engine events (tests/reports/lab.py) shows the event store's counts with inline SVG charts
and no script, its downloads (HTML, CSV, JSON) carry the same counts, a bad period is a 400
naming it; the policy export/import pages and API round-trip the policy, a bad upload names the
row and changes nothing, and viewers cannot import."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from gateway.policy.accounts import Accounts
from gateway.policy.hosts import Hosts
from gateway.policy.store import Store
from tests.reports.lab import Lab, build_lab
from tests.reports.test_report import expected, html_row
from tests.test_transfer import doc_of, populate
from tests.webui.conftest import ADMIN_PW, REPO, VIEWER_PW, Auth, api_token
from webui import create_app

DAY = {"from": "2026-12-05", "to": "2026-12-05", "top": "50"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return build_lab(tmp_path_factory.mktemp("reportlab-ui"))


@pytest.fixture
def lab_app(lab: Lab, tmp_path: Path) -> Flask:
    policy = tmp_path / "vpatch.db"
    shutil.copy(lab.policy, policy)
    with Store(policy) as store:
        accounts = Accounts(store)
        accounts.create_user("admin", ADMIN_PW, "admin", "test")
        accounts.create_user("viewer", VIEWER_PW, "viewer", "test")
    return create_app({
        "TESTING": True, "POLICY_DB": str(policy), "EVENTS_DB": str(lab.events),
        "CONTROL_SOCKET": str(tmp_path / "control.sock"), "RULE_PATHS": [str(REPO / "rules")],
        "SESSION_COOKIE_SECURE": False, "RELOAD_TIMEOUT": 1.0,
    })  # fmt: skip


def test_report_page_and_downloads(lab: Lab, lab_app: Flask) -> None:
    client = lab_app.test_client()
    Auth(client).login("viewer", VIEWER_PW)  # a viewer may read reports
    page = client.get("/reports/", query_string=DAY)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    hosts = expected(lab, "dest_ip")
    for host, (b, d) in hosts.items():
        assert f"<tr><td>{host}</td><td>{b}</td><td>{d}</td><td>{b + d}</td></tr>" in html
    assert html.count("<svg") == 3 and "<script>" not in html.replace("<script src=", "")
    assert "from=2026-12-05" in html  # the download links keep the period
    r = client.get("/reports/report.html", query_string=DAY)
    assert r.headers["Content-Disposition"].startswith("attachment; filename=vpatch-report-")
    for host, (b, d) in hosts.items():
        assert html_row(r.get_data(as_text=True), host) == (b, d, b + d)
    rows = list(
        csv.DictReader(
            io.StringIO(client.get("/reports/report.csv", query_string=DAY).get_data(as_text=True))
        )
    )
    assert {x["key"]: (int(x["blocked"]), int(x["detected"])) for x in rows
            if x["section"] == "host"} == hosts  # fmt: skip
    data = client.get("/reports/report.json", query_string=DAY).get_json()
    assert {c["key"]: (c["blocked"], c["detected"]) for c in data["by_host"]} == hosts
    bad = client.get("/reports/", query_string={"from": "2026-13-40"})
    assert bad.status_code == 400 and "2026-13-40" in bad.get_data(as_text=True)
    api = client.get("/api/v1/report", query_string=DAY, headers=api_token(lab_app, "viewer"))
    assert {c["key"]: (c["blocked"], c["detected"]) for c in api.get_json()["by_host"]} == hosts


def test_report_page_empty_store(app: Flask, auth: Any, client: Any) -> None:
    auth.login()
    page = client.get("/reports/", query_string={"from": "2001-01-01", "to": "2001-01-02"})
    assert page.status_code == 200 and "No events in this period" in page.get_data(as_text=True)


def test_export_import_pages(app: Flask, auth: Any, client: Any, tmp_path: Path) -> None:
    source = tmp_path / "src" / "vpatch.db"
    populate(source)
    doc = doc_of(source)
    auth.login()
    files = {"files": (io.BytesIO(json.dumps(doc).encode()), "policy.json"), "replace": "1"}
    r = client.post("/policy/import", data={"csrf_token": auth.token(), **files},
                    content_type="multipart/form-data")  # fmt: skip
    assert r.status_code == 302, r.get_data(as_text=True)
    assert doc_of(Path(app.config["POLICY_DB"])) == doc
    exported = client.get("/policy/export.json").get_json()
    assert {k: v for k, v in exported.items() if k != "exported_at"} == doc
    hosts_csv = client.get("/policy/export/hosts.csv").get_data(as_text=True)
    spoiled = hosts_csv.replace(",setup,", ",sideways,")
    r = client.post("/policy/import", data={
        "csrf_token": auth.token(), "files": (io.BytesIO(spoiled.encode()), "hosts.csv")},
        content_type="multipart/form-data")  # fmt: skip
    assert r.status_code == 400
    assert re.search(r"hosts row \d+, field mode", r.get_data(as_text=True))
    assert doc_of(Path(app.config["POLICY_DB"])) == doc


def test_api_import_and_viewer_refused(app: Flask, tmp_path: Path) -> None:
    source = tmp_path / "src" / "vpatch.db"
    populate(source)
    doc = doc_of(source)
    client = app.test_client()
    viewer = client.post("/api/v1/policy/import", json=doc, headers=api_token(app, "viewer"))
    assert viewer.status_code == 403
    bad = json.loads(json.dumps(doc))
    bad["firewall_rules"][0]["port_from"] = "http"
    admin = api_token(app, "admin")
    r = client.post("/api/v1/policy/import", json=bad, headers=admin)
    assert r.status_code == 400
    assert r.get_json()["section"] == "firewall_rules" and r.get_json()["field"] == "port_from"
    with Store(Path(app.config["POLICY_DB"])) as store:
        assert Hosts(store).list_hosts() == []
    r = client.post("/api/v1/policy/import", json=doc, headers=admin)
    assert r.status_code == 201 and r.get_json()["written"]["hosts"] == 3
    got = client.get("/api/v1/policy/export", headers=api_token(app, "viewer")).get_json()
    assert {k: v for k, v in got.items() if k != "exported_at"} == doc


def test_viewer_cannot_import(app: Flask, client: Any) -> None:
    auth = Auth(client)
    auth.login("viewer", VIEWER_PW)
    page = client.get("/policy/").get_data(as_text=True)
    assert "policy-import" not in page
    r = client.post("/policy/import", data={
        "csrf_token": auth.token(), "files": (io.BytesIO(b"{}"), "p.json")},
        content_type="multipart/form-data")  # fmt: skip
    assert r.status_code == 403
