"""Report periods: a day, a week, a month or a custom range, always a half-open UTC interval
[start, end) (issue 13 point 2; docs/reports.md).

`last_period(kind, now)` is the last complete one before `now` (the scheduled email's: the
previous UTC day, the previous Monday-to-Monday week, the previous calendar month);
`parse_period(start, end, kind, now)` reads the CLI's and the UI's --from/--to (an ISO date or
date-time; a date as --to means the end of that day) and refuses an empty or reversed range, or
one longer than MAX_DAYS, with ReportError naming the value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from gateway.errors import VpatchError

MAX_DAYS: Final = 366  # the longest period a report covers


class ReportError(VpatchError):
    """A report could not be made (names the value and where it came from)."""


class PeriodKind(enum.Enum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime  # aware, UTC
    end: datetime  # aware, UTC, exclusive
    kind: PeriodKind

    @property
    def start_text(self) -> str:
        """The start as the event store's timestamps spell it (ISO 8601, +00:00)."""
        return self.start.isoformat(timespec="microseconds")

    @property
    def end_text(self) -> str:
        return self.end.isoformat(timespec="microseconds")

    @property
    def label(self) -> str:
        last = self.end - timedelta(microseconds=1)
        if self.start.time() == self.end.time() == datetime.min.time():
            return f"{self.start.date().isoformat()} to {last.date().isoformat()} (UTC)"
        return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC"


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def last_period(kind: PeriodKind, now: datetime) -> Period:
    """The last complete day, week (Monday to Monday) or month before `now` (UTC)."""
    today = _midnight(now.astimezone(UTC).date())
    if kind is PeriodKind.DAY:
        return Period(today - timedelta(days=1), today, kind)
    if kind is PeriodKind.WEEK:
        monday = today - timedelta(days=today.weekday())
        return Period(monday - timedelta(days=7), monday, kind)
    if kind is PeriodKind.MONTH:
        first = today.replace(day=1)
        previous = (first - timedelta(days=1)).replace(day=1)
        return Period(previous, first, kind)
    raise ReportError(f"period {kind.value!r}: give --from and --to for a custom period")


def _parse(text: str, what: str, end: bool) -> datetime:
    text = text.strip()
    try:
        if len(text) == 10:  # a date
            day = _midnight(date.fromisoformat(text))
            return day + timedelta(days=1) if end else day
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise ReportError(f"{what} {text!r}: not an ISO 8601 date or date-time") from err
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_period(
    start: str | None, end: str | None, kind: PeriodKind | None, now: datetime
) -> Period:
    """The period the options ask for: --from/--to (custom), else the last `kind` (day)."""
    if start is None and end is None:
        return last_period(kind or PeriodKind.DAY, now)
    if start is None:
        raise ReportError("--to needs --from")
    begin = _parse(start, "--from", end=False)
    finish = _parse(end, "--to", end=True) if end is not None else now.astimezone(UTC)
    if finish <= begin:
        raise ReportError(f"--to {end!r} is not after --from {start!r}")
    if finish - begin > timedelta(days=MAX_DAYS):
        raise ReportError(f"--from {start!r} --to {end!r}: longer than {MAX_DAYS} days")
    return Period(begin, finish, kind or PeriodKind.CUSTOM)
