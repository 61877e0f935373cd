"""gateway/alerts/channels.py against real receivers on 127.0.0.1: SMTP (plain, and STARTTLS
with AUTH against a self-signed certificate), a webhook with HMAC signature, syslog over UDP
and TCP (RFC 5424 format, RFC 6587 framing); validation errors name the field; the store keeps
secrets out of the audit trail."""

from __future__ import annotations

import email
import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.alerts.channels import (
    MAX_SYSLOG_BYTES,
    SIGNATURE_HEADER,
    AlertChannelError,
    AlertMessage,
    AlertSendError,
    Channel,
    delete_channel,
    format_syslog,
    list_channels,
    message_from_eve,
    save_channel,
    send,
    validate_channel,
)
from gateway.policy.store import Store
from tests.alerts.conftest import free_port, wait_for

EVE = {
    "timestamp": "2026-01-01T00:00:00.000000+0000", "flow_id": 7, "event_type": "alert",
    "src_ip": "198.18.0.10", "src_port": 40000, "dest_ip": "198.18.0.20", "dest_port": 80,
    "proto": "TCP", "app_proto": "http",
    "alert": {"action": "blocked", "signature_id": 9000100, "signature": 'marker "x"] \\ <b>',
              "category": "", "severity": 1, "metadata": {"cve": ["CVE-0000-0001"]}},
}  # fmt: skip


def channel(kind: str, settings: dict[str, Any], **kw: Any) -> Channel:
    base: dict[str, Any] = {"id": 1, "name": f"{kind}-test", "kind": kind, "enabled": True,
                            "min_severity": 3, "rate_per_min": 60.0, "burst": 5}  # fmt: skip
    base.update(kw)
    return Channel(settings=settings, **base)


def test_email_plain(smtp: Any) -> None:
    ch = channel(
        "email",
        {
            "host": "127.0.0.1",
            "port": smtp.port,
            "starttls": False,
            "sender": "gw@lab.test",
            "to": "ops@lab.test, sec@lab.test",
        },
    )
    send(ch, message_from_eve(EVE))
    (env,) = wait_for(smtp.messages)
    assert env.mail_from == "gw@lab.test"
    assert env.rcpt_tos == ["ops@lab.test", "sec@lab.test"]
    msg = email.message_from_bytes(env.content)
    assert msg["Subject"].startswith("[vpatch] blocked: marker")
    body = msg.get_payload(decode=True).decode()
    assert "9000100" in body and '"dest_ip": "198.18.0.20"' in body
    assert smtp.tls_seen == [False]


def test_email_starttls_with_auth(smtp_tls: Any) -> None:
    settings = {"host": "127.0.0.1", "port": smtp_tls.port, "starttls": True, "username": "gw",
                "password": "smtp-secret", "sender": "gw@lab.test", "to": "ops@lab.test",
                "ca_file": str(smtp_tls.cert)}  # fmt: skip
    send(channel("email", settings), message_from_eve(EVE))
    wait_for(smtp_tls.messages)
    assert smtp_tls.tls_seen == [True]
    assert smtp_tls.logins == [("gw", "smtp-secret")]


def test_email_starttls_refuses_unknown_certificate(smtp_tls: Any) -> None:
    settings = {"host": "127.0.0.1", "port": smtp_tls.port, "starttls": True,
                "sender": "gw@lab.test", "to": "ops@lab.test"}  # fmt: skip
    with pytest.raises(AlertSendError, match="email channel 'email-test'.*(SSL|certificate)"):
        send(channel("email", settings), message_from_eve(EVE))
    assert smtp_tls.messages == []


def test_email_without_starttls_refused_by_tls_only_server(smtp_tls: Any) -> None:
    settings = {"host": "127.0.0.1", "port": smtp_tls.port, "starttls": False,
                "sender": "gw@lab.test", "to": "ops@lab.test"}  # fmt: skip
    with pytest.raises(AlertSendError):
        send(channel("email", settings), message_from_eve(EVE))
    assert smtp_tls.messages == []


def test_webhook_signed(webhook: Any) -> None:
    ch = channel("webhook", {"url": webhook.url, "secret": "hook-key"})
    send(ch, message_from_eve(EVE))
    ((headers, body),) = wait_for(webhook.requests)
    assert headers["content-type"] == "application/json"
    want = "sha256=" + hmac.new(b"hook-key", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], want)
    doc = json.loads(body)
    assert doc["type"] == "alert" and doc["event"]["alert"]["signature_id"] == 9000100
    assert doc["severity"] == 1


def test_webhook_unsigned_and_http_error(webhook: Any) -> None:
    ch = channel("webhook", {"url": webhook.url, "secret": ""})
    send(ch, message_from_eve(EVE))
    ((headers, _body),) = wait_for(webhook.requests)
    assert SIGNATURE_HEADER.lower() not in headers
    webhook.status = 500
    with pytest.raises(AlertSendError, match="webhook channel 'webhook-test'.*500"):
        send(ch, message_from_eve(EVE))


def test_webhook_connection_refused() -> None:
    ch = channel("webhook", {"url": f"http://127.0.0.1:{free_port()}/x", "secret": ""})
    with pytest.raises(AlertSendError, match="webhook-test"):
        send(ch, message_from_eve(EVE))


RFC5424 = re.compile(
    rb"^<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) vpatch (\d+) (\S+) "
    rb"\[vpatch@32473 ((?:[a-z_]+=\"(?:[^\"\\\]]|\\.)*\" ?)+)\] \xef\xbb\xbf(.*)$",
    re.DOTALL,
)


def test_syslog_udp_rfc5424(syslog_udp: Any) -> None:
    ch = channel("syslog", {"transport": "udp", "host": "127.0.0.1", "port": syslog_udp.port,
                            "facility": "local3"})  # fmt: skip
    send(ch, message_from_eve(EVE))
    (data,) = wait_for(syslog_udp.messages)
    m = RFC5424.match(data)
    assert m, data
    assert int(m.group(1)) == 19 * 8 + 2  # local3, crit (EVE severity 1)
    assert m.group(5) == b"alert"
    assert b'sid="9000100"' in m.group(6) and b'dst="198.18.0.20"' in m.group(6)
    assert m.group(7).decode().startswith("blocked 9000100 marker")


def test_syslog_tcp_octet_counting(syslog_tcp: Any) -> None:
    ch = channel("syslog", {"transport": "tcp", "host": "127.0.0.1", "port": syslog_tcp.port,
                            "facility": "local0"})  # fmt: skip
    send(ch, message_from_eve(EVE))
    send(ch, message_from_eve(EVE))
    msgs = wait_for(syslog_tcp.messages, 2)
    assert len(msgs) == 2 and all(RFC5424.match(m) for m in msgs)


def test_syslog_structured_data_escaped_and_bounded() -> None:
    eve = {**EVE, "src_ip": 'a"b]c\\d'}
    data = format_syslog(message_from_eve(eve))
    assert b'src="a\\"b\\]c\\\\d"' in data
    long = AlertMessage("alert", "t", "x" * 5000, 2, time.time())
    assert len(format_syslog(long)) == MAX_SYSLOG_BYTES


EMAIL_OK = {"name": "a", "kind": "email", "host": "h", "sender": "a@b", "to": "a@b"}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "", "kind": "webhook", "url": "http://x/"}, "name"),
        ({"name": "a", "kind": "pager"}, "kind"),
        ({"name": "a", "kind": "webhook", "url": "ftp://x/"}, "url"),
        ({"name": "a", "kind": "webhook", "url": "http://x/", "rate_per_min": "0"}, "rate_per_min"),
        ({"name": "a", "kind": "webhook", "url": "http://x/", "burst": "1000"}, "burst"),
        ({"name": "a", "kind": "webhook", "url": "http://x/", "min_severity": "4"}, "min_severity"),
        ({**EMAIL_OK, "to": "nobody"}, "to"),
        ({**EMAIL_OK, "sender": "x"}, "sender"),
        ({**EMAIL_OK, "host": ""}, "host"),
        ({**EMAIL_OK, "port": "70000"}, "port"),
        ({**EMAIL_OK, "host": "h\r\nRCPT"}, "host"),
        ({"name": "a", "kind": "syslog", "transport": "sctp", "host": "h"}, "transport"),
        ({"name": "a", "kind": "syslog", "facility": "kern", "host": "h"}, "facility"),
    ],
)
def test_validation_names_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(AlertChannelError) as info:
        validate_channel(data)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_store_round_trip_keeps_secret_out_of_audit(tmp_path: Path) -> None:
    with Store(tmp_path / "p.db") as store:
        ch = save_channel(store, {"name": "hook", "kind": "webhook", "url": "http://127.0.0.1/h",
                                  "secret": "s3cret-value"}, "alice")  # fmt: skip
        assert ch.settings["secret"] == "s3cret-value"
        assert ch.public_settings()["secret"] == "********"
        # an update with an empty secret keeps the old one
        ch2 = save_channel(store, {"name": "hook", "kind": "webhook", "url": "http://127.0.0.1/g",
                                   "secret": ""}, "alice", ch.id)  # fmt: skip
        assert ch2.settings == {"url": "http://127.0.0.1/g", "secret": "s3cret-value"}
        with pytest.raises(AlertChannelError, match="name: 'hook' is already used"):
            save_channel(store, {"name": "hook", "kind": "syslog", "host": "h"}, "alice")
        delete_channel(store, ch.id, "alice")
        assert list_channels(store) == []
        audit = store.list_audit()
        assert [a.action for a in audit] == ["alerts.delete", "alerts.save", "alerts.save"]
        dump = json.dumps([a.detail for a in audit])
        assert "s3cret-value" not in dump and "http://127.0.0.1/g" in dump
