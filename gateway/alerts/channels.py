"""Alert channels: records, validation, storage (policy store table `alert_channels`) and the
three senders.

- email: SMTP (RFC 5321) with optional STARTTLS (RFC 3207) and AUTH; one text/plain message
  whose body holds the summary and the EVE JSON.
- webhook: HTTP POST of a JSON object (`application/json`); with a secret, the header
  `X-Vpatch-Signature: sha256=HEX` carries HMAC-SHA256(secret, body) so the receiver can check
  that the body came from this gateway unaltered.
- syslog: RFC 5424 messages (section 6: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID
  [SD] BOM MSG`, structured data `[vpatch@32473 ...]` with the PEN reserved for documentation
  by RFC 5612), over UDP (RFC 5426: one message per datagram, at most MAX_SYSLOG_BYTES), TCP
  (RFC 6587 section 3.4.1 octet counting) or the local datagram socket (`/dev/log`).

Guarantees: every send has a timeout (SEND_TIMEOUT) and reports failure as AlertSendError naming
the channel and the cause; nothing here raises anything else for network trouble. Validation
raises AlertChannelError whose `field` names the offending field. Secrets (SMTP password,
webhook secret) are kept in the store (0600) and never written to the audit trail or returned
by `public_settings`; a stored secret is kept on update only while its destination is unchanged
(`_kept_secret`), so it is never sent to a server it was not entered for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from gateway.errors import VpatchError
from gateway.policy.store import Store

SEND_TIMEOUT = 5.0  # seconds for one send (connect + exchange)
MAX_SYSLOG_BYTES = 2048  # RFC 5426 section 3.2: receivers should accept 2048 octets
MAX_CHANNELS = 50
MAX_NAME_LEN = 64
MAX_RATE_PER_MIN = 600.0
MAX_BURST = 100
MAX_RECIPIENTS = 20
KINDS = ("email", "webhook", "syslog")
SYSLOG_TRANSPORTS = ("udp", "tcp", "unix")
SYSLOG_FACILITIES = {
    "user": 1, "daemon": 3, "auth": 4, "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip
SECRET_KEYS = ("password", "secret")
# The SMTP settings a stored password is bound to: change one and the password must be entered
# again (else "send test" would hand the stored password to a new server, or in clear text)
SMTP_SECRET_BOUND = ("host", "port", "username", "starttls")
SD_ID = "vpatch@32473"
SIGNATURE_HEADER = "X-Vpatch-Signature"


class AlertChannelError(VpatchError):
    """A channel configuration was refused; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class AlertSendError(VpatchError):
    """A channel could not deliver a message (names the channel and the cause)."""


@dataclass(frozen=True, slots=True)
class Channel:
    id: int
    name: str
    kind: str  # email | webhook | syslog
    enabled: bool
    min_severity: int  # send alerts with EVE severity <= this (1 = most severe)
    rate_per_min: float
    burst: int
    settings: dict[str, Any] = field(hash=False)
    updated_by: str = ""
    updated_at: float = 0.0

    def public_settings(self) -> dict[str, Any]:
        return {k: ("********" if k in SECRET_KEYS and v else v) for k, v in self.settings.items()}


@dataclass(frozen=True, slots=True)
class AlertMessage:
    kind: str  # alert | test | suppressed
    title: str
    text: str
    severity: int  # 1 (most severe) .. 3; test and summary messages use 3
    timestamp: float
    event: dict[str, Any] | None = field(default=None, hash=False)  # EVE object of an alert
    suppressed: dict[str, Any] | None = field(default=None, hash=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "type": self.kind, "title": self.title, "text": self.text, "severity": self.severity,
            "timestamp": datetime.fromtimestamp(self.timestamp, UTC).isoformat(),
            "event": self.event, "suppressed": self.suppressed,
        }  # fmt: skip


def message_from_eve(eve: dict[str, Any]) -> AlertMessage:
    alert = eve.get("alert") or {}
    sig = str(alert.get("signature", "?"))
    action = str(alert.get("action", "?"))
    text = (
        f"{action} {alert.get('signature_id', '?')} {sig}: {eve.get('src_ip')}:"
        f"{eve.get('src_port')} -> {eve.get('dest_ip')}:{eve.get('dest_port')} "
        f"{eve.get('proto', '')} {eve.get('app_proto', '') or ''}".rstrip()
    )
    return AlertMessage(
        "alert", f"{action}: {sig}", text, int(alert.get("severity") or 2), time.time(), eve
    )


def test_message(channel: Channel, actor: str) -> AlertMessage:
    return AlertMessage(
        "test", f"test message for channel {channel.name}",
        f"vpatch test alert sent by {actor} through channel {channel.name} ({channel.kind})",
        3, time.time(),
    )  # fmt: skip


def summary_message(count: int, since: float, top: list[tuple[str, int]]) -> AlertMessage:
    detail = ", ".join(f"{sig} x{n}" for sig, n in top)
    when = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return AlertMessage(
        "suppressed", f"{count} alert(s) suppressed by the rate limit",
        f"{count} alert(s) since {when} were not sent (rate limit): {detail}", 3, time.time(),
        suppressed={"count": count, "since": since, "top": [list(t) for t in top]},
    )  # fmt: skip


# -- validation -------------------------------------------------------------------------------


def _int(data: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = data.get(key, default)
    if v is None or v == "":
        v = default
    try:
        n = int(str(v).strip()) if not isinstance(v, bool) else None
    except ValueError:
        n = None
    if n is None or not lo <= n <= hi:
        raise AlertChannelError(key, f"{v!r} must be a whole number {lo}..{hi}")
    return n


def _bool(data: dict[str, Any], key: str, default: bool) -> bool:
    v = data.get(key, default)
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in (
        "1",
        "true",
        "on",
        "yes",
        "0",
        "false",
        "off",
        "no",
        "",
    ):
        return v.lower() in ("1", "true", "on", "yes")
    raise AlertChannelError(key, f"{v!r} must be true or false")


def _text(data: dict[str, Any], key: str, max_len: int = 512, required: bool = False) -> str:
    v = data.get(key)
    text = "" if v is None else str(v).strip()
    if required and not text:
        raise AlertChannelError(key, "required")
    if len(text) > max_len or any(c in text for c in "\r\n\x00"):
        raise AlertChannelError(key, f"{text[:40]!r}...: at most {max_len} characters, one line")
    return text


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _kept_secret(new: dict[str, Any], old: dict[str, Any], key: str, bound: tuple[str, ...]) -> str:
    """The secret `key` of `new`: the one entered, else the old one as long as every setting
    in `bound` (where and how the secret travels) is unchanged; a stored secret is never sent
    to a destination it was not entered for (AlertChannelError naming `key` otherwise)."""
    if new[key] or not old.get(key):
        return str(new[key])
    changed = [k for k in bound if new.get(k) != old.get(k)]
    if changed:
        raise AlertChannelError(
            key, f"{', '.join(changed)} changed: enter the {key} again (the stored one is kept "
            "only for the destination it was entered for)",
        )  # fmt: skip
    return str(old[key])


def validate_settings(kind: str, data: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """Settings for a channel of `kind`; a secret left empty keeps the old one while its
    destination (SMTP host, port, user, STARTTLS; webhook scheme, host and port) is unchanged."""
    if kind == "email":
        to = [a.strip() for a in _text(data, "to", 2000, True).split(",") if a.strip()]
        if not to or len(to) > MAX_RECIPIENTS or not all("@" in a for a in to):
            raise AlertChannelError("to", f"{to!r}: 1..{MAX_RECIPIENTS} addresses like a@b")
        sender = _text(data, "sender", required=True)
        if "@" not in sender:
            raise AlertChannelError("sender", f"{sender!r} is not an address like a@b")
        out: dict[str, Any] = {
            "host": _text(data, "host", 253, True), "port": _int(data, "port", 25, 1, 65535),
            "starttls": _bool(data, "starttls", False), "username": _text(data, "username"),
            "password": _text(data, "password"),
            "sender": sender, "to": ", ".join(to), "ca_file": _text(data, "ca_file"),
        }  # fmt: skip
        out["password"] = _kept_secret(out, old, "password", SMTP_SECRET_BOUND)
        if out["ca_file"] and not os.path.isfile(out["ca_file"]):
            raise AlertChannelError("ca_file", f"{out['ca_file']!r}: no such file")
        return out
    if kind == "webhook":
        url = _text(data, "url", 2000, True)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise AlertChannelError("url", f"{url!r} must be an http:// or https:// URL")
        out = {"url": url, "secret": _text(data, "secret"), "origin": _origin(url)}
        if old.get("url"):
            old = {**old, "origin": _origin(old["url"])}
        out["secret"] = _kept_secret(out, old, "secret", ("origin",))
        del out["origin"]
        return out
    if kind == "syslog":
        transport = _text(data, "transport") or "udp"
        if transport not in SYSLOG_TRANSPORTS:
            raise AlertChannelError(
                "transport", f"{transport!r} must be one of {', '.join(SYSLOG_TRANSPORTS)}"
            )
        facility = _text(data, "facility") or "local0"
        if facility not in SYSLOG_FACILITIES:
            raise AlertChannelError(
                "facility", f"{facility!r} must be one of {', '.join(SYSLOG_FACILITIES)}"
            )
        out = {"transport": transport, "facility": facility}
        if transport == "unix":
            out["path"] = _text(data, "path") or "/dev/log"
        else:
            out["host"] = _text(data, "host", 253, True)
            out["port"] = _int(data, "port", 514, 1, 65535)
        return out
    raise AlertChannelError("kind", f"{kind!r} must be one of {', '.join(KINDS)}")


def validate_channel(data: dict[str, Any], old: Channel | None = None) -> dict[str, Any]:
    name = _text(data, "name", MAX_NAME_LEN, True)
    kind = _text(data, "kind") or (old.kind if old else "")
    if kind not in KINDS:
        raise AlertChannelError("kind", f"{kind!r} must be one of {', '.join(KINDS)}")
    try:
        rate = float(str(data.get("rate_per_min", 10)).strip() or 10)
    except ValueError as err:
        raise AlertChannelError(
            "rate_per_min", f"{data.get('rate_per_min')!r} is not a number"
        ) from err
    if not 0 < rate <= MAX_RATE_PER_MIN:
        raise AlertChannelError(
            "rate_per_min", f"{rate} must be above 0 and at most {MAX_RATE_PER_MIN}"
        )
    settings_in = data.get("settings")
    if settings_in is None:
        settings_in = data  # a flat HTML form
    if not isinstance(settings_in, dict):
        raise AlertChannelError("settings", "must be an object")
    return {
        "name": name, "kind": kind, "enabled": _bool(data, "enabled", True),
        "min_severity": _int(data, "min_severity", 3, 1, 3), "rate_per_min": rate,
        "burst": _int(data, "burst", 5, 1, MAX_BURST),
        "settings": validate_settings(kind, settings_in, old.settings if old else {}),
    }  # fmt: skip


# -- storage ----------------------------------------------------------------------------------


def _channel(r: Any) -> Channel:
    return Channel(
        r["id"], r["name"], r["kind"], bool(r["enabled"]), r["min_severity"], r["rate_per_min"],
        r["burst"], json.loads(r["settings_json"]), r["updated_by"], r["updated_at"],
    )  # fmt: skip


def list_channels(store: Store) -> list[Channel]:
    rows = store.db.execute("SELECT * FROM alert_channels ORDER BY name LIMIT ?", (MAX_CHANNELS,))
    return [_channel(r) for r in rows]


def get_channel(store: Store, channel_id: int) -> Channel | None:
    r = store.db.execute("SELECT * FROM alert_channels WHERE id = ?", (channel_id,)).fetchone()
    return _channel(r) if r else None


def _audit_view(ch: Channel | None) -> dict[str, Any] | None:
    return None if ch is None else {**asdict(ch), "settings": ch.public_settings()}


def save_channel(
    store: Store, data: dict[str, Any], actor: str, channel_id: int | None = None
) -> Channel:
    """Create (channel_id None) or update a channel after validation; audited (no secrets)."""
    old = get_channel(store, channel_id) if channel_id is not None else None
    if channel_id is not None and old is None:
        raise AlertChannelError("id", f"alert channel {channel_id} does not exist")
    v = validate_channel(data, old)
    with store.transaction():
        clash = store.db.execute(
            "SELECT id FROM alert_channels WHERE name = ? AND id IS NOT ?", (v["name"], channel_id)
        ).fetchone()
        if clash:
            raise AlertChannelError("name", f"{v['name']!r} is already used by channel {clash[0]}")
        row = (v["name"], v["kind"], int(v["enabled"]), v["min_severity"], v["rate_per_min"],
               v["burst"], json.dumps(v["settings"]), actor, time.time())  # fmt: skip
        if channel_id is None:
            count = store.db.execute("SELECT COUNT(*) FROM alert_channels").fetchone()[0]
            if count >= MAX_CHANNELS:
                raise AlertChannelError("name", f"MAX_CHANNELS={MAX_CHANNELS} channels exist")
            cur = store.db.execute(
                "INSERT INTO alert_channels(name, kind, enabled, min_severity, rate_per_min, "
                "burst, settings_json, updated_by, updated_at) VALUES (?,?,?,?,?,?,?,?,?)", row
            )  # fmt: skip
            channel_id = int(cur.lastrowid or 0)
        else:
            store.db.execute(
                "UPDATE alert_channels SET name = ?, kind = ?, enabled = ?, min_severity = ?, "
                "rate_per_min = ?, burst = ?, settings_json = ?, updated_by = ?, updated_at = ? "
                "WHERE id = ?", (*row, channel_id),
            )  # fmt: skip
        new = get_channel(store, channel_id)
        store.audit(actor, "alerts.save", f"alert channel {v['name']}", _audit_view(old),
                    _audit_view(new))  # fmt: skip
    assert new is not None
    return new


def delete_channel(store: Store, channel_id: int, actor: str) -> None:
    with store.transaction():
        old = get_channel(store, channel_id)
        if old is None:
            raise AlertChannelError("id", f"alert channel {channel_id} does not exist")
        store.db.execute("DELETE FROM alert_channels WHERE id = ?", (channel_id,))
        store.audit(actor, "alerts.delete", f"alert channel {old.name}", _audit_view(old), None)


# -- formats ----------------------------------------------------------------------------------


def _sd_escape(value: object) -> str:
    """RFC 5424 section 6.3.3: escape '"', '\\' and ']' in PARAM-VALUE."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_severity(severity: int) -> int:
    """EVE severity (1 most severe) to RFC 5424 severity: 1 crit, 2 warning, else notice."""
    return {1: 2, 2: 4}.get(severity, 5)


def format_syslog(
    msg: AlertMessage, facility: str = "local0", hostname: str | None = None
) -> bytes:
    """One RFC 5424 message (section 6), truncated to MAX_SYSLOG_BYTES."""
    pri = SYSLOG_FACILITIES[facility] * 8 + syslog_severity(msg.severity)
    ts = datetime.fromtimestamp(msg.timestamp, UTC).isoformat(timespec="microseconds")
    host = (hostname or socket.gethostname() or "-")[:255].replace(" ", "_")
    params: dict[str, object] = {"type": msg.kind}
    ev = msg.event or {}
    alert = ev.get("alert") or {}
    for key, value in (("sid", alert.get("signature_id")), ("action", alert.get("action")),
                       ("src", ev.get("src_ip")), ("sport", ev.get("src_port")),
                       ("dst", ev.get("dest_ip")), ("dport", ev.get("dest_port")),
                       ("proto", ev.get("proto")), ("flow_id", ev.get("flow_id"))):  # fmt: skip
        if value is not None:
            params[key] = value
    if msg.suppressed:
        params["suppressed"] = msg.suppressed.get("count")
    sd = f"[{SD_ID} " + " ".join(f'{k}="{_sd_escape(v)}"' for k, v in params.items()) + "]"
    head = f"<{pri}>1 {ts.replace('+00:00', 'Z')} {host} vpatch {os.getpid()} {msg.kind} {sd} "
    data = head.encode() + b"\xef\xbb\xbf" + msg.text.encode("utf-8", "replace")
    return data[:MAX_SYSLOG_BYTES]


def webhook_body(msg: AlertMessage) -> bytes:
    return json.dumps(msg.as_json(), sort_keys=True, default=str).encode()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# -- senders ----------------------------------------------------------------------------------


def _send_email(ch: Channel, msg: AlertMessage) -> None:
    s = ch.settings
    email = EmailMessage()
    email["Subject"] = f"[vpatch] {msg.title}"[:200].replace("\r", " ").replace("\n", " ")
    email["From"] = s["sender"]
    email["To"] = s["to"]
    body = msg.text + "\n"
    if msg.event is not None:
        body += "\nEVE record:\n" + json.dumps(msg.event, indent=2, sort_keys=True, default=str)
    email.set_content(body)
    smtp_send(s, email)


def smtp_send(s: dict[str, Any], email: EmailMessage) -> None:
    """Send `email` with an email channel's settings `s` (STARTTLS and AUTH as they say);
    smtplib/OSError on failure (`send` turns them into AlertSendError). Also used by the
    scheduled reports (gateway/reports/mail.py)."""
    with smtplib.SMTP(s["host"], int(s["port"]), timeout=SEND_TIMEOUT) as smtp:
        smtp.ehlo()
        if s.get("starttls"):
            ctx = ssl.create_default_context(cafile=s.get("ca_file") or None)
            smtp.starttls(context=ctx)
            smtp.ehlo()
        if s.get("username"):
            smtp.login(s["username"], s.get("password", ""))
        smtp.send_message(email)


def _send_webhook(ch: Channel, msg: AlertMessage) -> None:
    body = webhook_body(msg)
    headers = {"Content-Type": "application/json", "User-Agent": "vpatch-alerts/1"}
    if ch.settings.get("secret"):
        headers[SIGNATURE_HEADER] = sign(ch.settings["secret"], body)
    req = urllib.request.Request(ch.settings["url"], data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=SEND_TIMEOUT) as resp:
        if not 200 <= resp.status < 300:
            raise AlertSendError(f"webhook {ch.name}: HTTP {resp.status}")


def _send_syslog(ch: Channel, msg: AlertMessage) -> None:
    s = ch.settings
    data = format_syslog(msg, s.get("facility", "local0"))
    if s["transport"] == "unix":
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(s.get("path", "/dev/log"))
            sock.send(data)
        return
    infos = socket.getaddrinfo(s["host"], int(s["port"]), type=(
        socket.SOCK_DGRAM if s["transport"] == "udp" else socket.SOCK_STREAM))  # fmt: skip
    family, stype, proto, _, addr = infos[0]
    with socket.socket(family, stype, proto) as sock:
        sock.settimeout(SEND_TIMEOUT)
        if s["transport"] == "udp":
            sock.sendto(data, addr)
        else:
            sock.connect(addr)
            sock.sendall(str(len(data)).encode() + b" " + data)  # RFC 6587 octet counting


_SENDERS = {"email": _send_email, "webhook": _send_webhook, "syslog": _send_syslog}


def send(ch: Channel, msg: AlertMessage) -> None:
    """Deliver one message through the channel, or AlertSendError."""
    try:
        _SENDERS[ch.kind](ch, msg)
    except AlertSendError:
        raise
    except (OSError, smtplib.SMTPException, urllib.error.URLError, ssl.SSLError,
            ValueError, KeyError) as err:  # fmt: skip
        raise AlertSendError(f"{ch.kind} channel {ch.name!r}: {type(err).__name__}: {err}") from err
