"""`vpatch report`: the summary of a period (docs/reports.md).

  vpatch report [--period day|week|month | --from DATE --to DATE] [--format html|csv|json]
                [-o FILE] [--top N] [--email [--channel NAME]...] -c CONFIG
Without --from/--to the report covers the last complete UTC day (or week, month: --period).
The report goes to FILE (or stdout); with --email it is also sent through the email alert
channels (gateway/reports/mail.py), which is what vpatch-report.service runs every day.
Exit status 0 when the report was made (and sent), 2 with a one-line error otherwise.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.policy.store import Store
from gateway.reports.mail import mail_report
from gateway.reports.period import PeriodKind, parse_period
from gateway.reports.render import FORMATS, RENDERERS
from gateway.reports.sources import ReportSources, make_report
from gateway.reports.summary import DEFAULT_TOP, MAX_TOP

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="summary of a period: blocked/detected by CVE, host, source, rule; coverage; health",
        description="Report of a period from the event and policy stores, as HTML, CSV or "
        "JSON, optionally sent by email through the email alert channels.",
    )
    p.add_argument("-c", "--config", type=Path, help="gateway configuration (YAML)")
    p.add_argument("--period", choices=[k.value for k in PeriodKind if k is not PeriodKind.CUSTOM],
                   help="the last complete UTC day, week (Monday to Monday) or month "
                   "(default: day; ignored with --from)")  # fmt: skip
    p.add_argument(
        "--from", dest="start", metavar="DATE", help="start (ISO date or date-time, UTC)"
    )
    p.add_argument(
        "--to",
        dest="end",
        metavar="DATE",
        help="end, excluded (a date: through the end of that day; default: now)",
    )
    p.add_argument("--format", choices=FORMATS, default="html")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--top", type=int, default=DEFAULT_TOP, help=f"entries per list (1..{MAX_TOP})")
    p.add_argument(
        "--email", action="store_true", help="also send it through the enabled email alert channels"
    )
    p.add_argument("--channel", action="append", default=[], metavar="NAME",
                   help="with --email: only this email channel (repeatable)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    kind = PeriodKind(args.period) if args.period else None
    period = parse_period(args.start, args.end, kind, datetime.now(UTC))
    report = make_report(ReportSources.from_config(config), period, args.top)
    if args.email:
        with Store(config.policy.database) as store:
            sent = mail_report(store, report, args.channel)
        print(f"vpatch report: {report.period_label} sent through {', '.join(sent)}",
              file=sys.stderr)  # fmt: skip
        if args.output is None:
            return 0
    text = RENDERERS[args.format](report)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0
