"""Sorting and paging of the UI's tables through query parameters, so a sorted, filtered page
is a URL that can be bookmarked and shared (`sort=column` ascending, `sort=-column`
descending, `page=N`, 1-based).

Guarantees: only the columns a view names can be sorted on (anything else falls back to the
view's default, never reaches SQL); a page beyond the last is an empty page (webui/inputs.py
clamps the number). The templates draw the header links and the pager with the macros of
templates/_table.html.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import request

from webui.inputs import MAX_SQL_INT, int_arg

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Sort:
    column: str
    descending: bool

    @property
    def arg(self) -> str:
        """The query parameter's value for this order."""
        return ("-" if self.descending else "") + self.column


def sort_arg(columns: Sequence[str], default: str) -> Sort:
    """The `sort` query parameter when it names one of `columns` (with or without a leading
    `-`), else `default` (written the same way)."""
    raw = request.args.get("sort", "")[:64] or default
    column = raw.removeprefix("-")
    if column not in columns:
        raw, column = default, default.removeprefix("-")
    return Sort(column, raw.startswith("-"))


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    page: int
    per_page: int
    total: int


def page_of(items: Sequence[T], sort: Sort, key: Callable[[T, str], Any], per_page: int) -> Page:
    """One page (query parameter `page`) of `items` sorted by `key(item, column)` (values of
    one type per column, never None)."""
    ordered = sorted(items, key=lambda item: key(item, sort.column), reverse=sort.descending)
    page = int_arg("page", 1, 1, MAX_SQL_INT // per_page)
    start = (page - 1) * per_page
    return Page(ordered[start : start + per_page], page, per_page, len(ordered))
