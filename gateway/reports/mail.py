"""The report by email: `vpatch report --email` and the systemd timer vpatch-report.timer
(docs/reports.md "By email").

`mail_report(store, report, channel_names)` sends one message per enabled email alert channel
of the policy store (gateway/alerts/channels.py: their SMTP host, port, STARTTLS, AUTH, sender
and recipients; no second set of SMTP settings), or only the channels named. The message is
multipart: a text summary, the self-contained HTML report as the HTML alternative, and the
report attached as HTML and CSV files.

Guarantees: every channel is tried even when one fails; ReportError names each channel that
failed and why (after the others were sent), and when there is no enabled email channel (or a
named one is missing or is not an email channel) nothing is sent.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Final

from gateway.alerts.channels import Channel, list_channels, smtp_send
from gateway.policy.store import Store
from gateway.reports.period import ReportError
from gateway.reports.render import to_csv, to_html
from gateway.reports.summary import Report

__all__ = ["build_message", "email_channels", "mail_report"]

SUBJECT_PREFIX: Final = "[vpatch] report"


def email_channels(store: Store, names: Sequence[str] = ()) -> list[Channel]:
    """The enabled email channels, or exactly the ones named (ReportError for one that is
    missing, disabled or not an email channel)."""
    channels = list_channels(store)
    if not names:
        found = [c for c in channels if c.kind == "email" and c.enabled]
        if not found:
            raise ReportError("no enabled email alert channel: add one on the UI's Alerts page")
        return found
    by_name = {c.name: c for c in channels}
    out = []
    for name in names:
        ch = by_name.get(name)
        if ch is None or ch.kind != "email" or not ch.enabled:
            raise ReportError(f"--channel {name!r}: no enabled email alert channel of that name")
        out.append(ch)
    return out


def _summary_text(report: Report) -> str:
    t = report.totals
    lines = [f"vpatch report {report.period_label}", "",
             f"alerts: {t.get('alerts', 0)} ({t.get('blocked', 0)} blocked, "
             f"{t.get('detected', 0)} detected only)",
             f"events of every type: {t.get('events', 0)}", "", "Top CVEs:"]  # fmt: skip
    lines += [f"  {c.key}: {c.blocked} blocked, {c.detected} detected" for c in report.by_cve]
    lines += ["", "Top protected hosts:"]
    lines += [f"  {c.key}: {c.blocked} blocked, {c.detected} detected" for c in report.by_host]
    gaps = [c for c in report.coverage if c.not_enforced]
    if gaps:
        lines += ["", "Hosts with recommended rules not enforced:"]
        lines += [f"  {c.host}: {', '.join(str(r) for r, _ in c.not_enforced)}" for c in gaps]
    lines += ["", "The full report is attached (HTML and CSV)."]
    return "\n".join(lines) + "\n"


def build_message(report: Report, sender: str, to: str) -> EmailMessage:
    email = EmailMessage()
    email["Subject"] = f"{SUBJECT_PREFIX} {report.period_label}"
    email["From"] = sender
    email["To"] = to
    email.set_content(_summary_text(report))
    html = to_html(report)
    email.add_alternative(html, subtype="html")
    stem = f"vpatch-report-{report.period_start[:10]}"
    email.add_attachment(html.encode(), maintype="text", subtype="html", filename=f"{stem}.html")
    email.add_attachment(to_csv(report).encode(), maintype="text", subtype="csv",
                         filename=f"{stem}.csv")  # fmt: skip
    return email


def mail_report(store: Store, report: Report, names: Sequence[str] = ()) -> list[str]:
    """Send the report through the email channels (see the module comment); the names of the
    channels it went through."""
    sent, failed = [], []
    for ch in email_channels(store, names):
        try:
            smtp_send(ch.settings, build_message(report, ch.settings["sender"], ch.settings["to"]))
        except (OSError, smtplib.SMTPException, ssl.SSLError, KeyError, ValueError) as err:
            failed.append(f"{ch.name}: {type(err).__name__}: {err}")
            continue
        sent.append(ch.name)
    if failed:
        done = f" (sent through {', '.join(sent)})" if sent else ""
        raise ReportError("report not sent through " + "; ".join(failed) + done)
    return sent
