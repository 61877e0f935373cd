"""Request input checked where it enters: numbers, path ids and JSON text (issue 15, finding 9).

What it guarantees, for every route of the app (`init_app`):
- an `InputError` raised anywhere in a view becomes a 400 that carries its message (which names
  the field): JSON under /api/, the error page elsewhere (webui/security.py's 400 handler);
- a path id (`<int:...>`) beyond SQLite's INTEGER (2**63-1) is a 400 naming the id, before the
  view runs: no such row can exist, and the database could not even be asked;
- a JSON body holding a lone surrogate (`"\\ud800"`, valid JSON but not Unicode text, which
  SQLite, UTF-8 and HTML cannot hold) is a 400 naming the field, whichever view reads it;
- `parse_int` / `int_arg` take ASCII decimal integers only (`str.isdigit()` accepts "²", which
  `int()` refuses, and `int()` accepts "٣"): anything else, or a number beyond the 64-bit range
  the database holds, is an InputError naming the field; a representable number outside the
  parameter's bounds is clamped to them (a page past the end is an empty page).
"""

from __future__ import annotations

import re
from typing import Any, Final

from flask import Flask, Request, current_app, request
from werkzeug.exceptions import BadRequest

__all__ = ["MAX_SQL_INT", "InputError", "int_arg", "parse_int", "init_app"]

MAX_SQL_INT: Final = 2**63 - 1  # SQLite INTEGER
MIN_SQL_INT: Final = -(2**63)
MAX_SHOWN: Final = 40  # characters of a refused value quoted in the message
_INTEGER: Final = re.compile(r"[+-]?[0-9]{1,20}")


class InputError(ValueError):
    """A request parameter is not acceptable (the message names it)."""


def _shown(value: str) -> str:
    return repr(value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN] + "...")


def parse_int(value: str, name: str, lo: int = MIN_SQL_INT, hi: int = MAX_SQL_INT) -> int:
    """`value` as an integer in lo..hi, or InputError naming `name`."""
    text = value.strip()
    if not _INTEGER.fullmatch(text):
        raise InputError(f"{name} {_shown(value)}: not an integer")
    number = int(text)
    if not lo <= number <= hi:
        raise InputError(f"{name} {_shown(text)}: must be {lo}..{hi}")
    return number


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter `name`: `default` when absent or empty; a representable integer is
    clamped to lo..hi; anything else is an InputError naming it."""
    raw = request.args.get(name, "")
    if not raw.strip():
        return default
    return max(lo, min(parse_int(raw, name), hi))


def surrogate_at(value: object, where: str = "body") -> str | None:
    """The path (`body.a[2]`) of the first string or key in a JSON value that holds a lone
    surrogate, or None."""
    if isinstance(value, str):
        return where if any("\ud800" <= c <= "\udfff" for c in value) else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = surrogate_at(item, f"{where}[{i}]")
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            found = surrogate_at(key, f"{where} key {key!r}") or surrogate_at(
                item, f"{where}.{key}" if where != "body" else str(key)
            )
            if found is not None:
                return found
    return None


class CheckedRequest(Request):
    """Flask's request whose JSON body never holds a lone surrogate."""

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        data = super().get_json(force=force, silent=silent, cache=cache)
        where = surrogate_at(data)
        if where is not None:
            raise BadRequest(description=f"{where}: holds a lone surrogate (\\ud800-\\udfff), "
                                         "which is not Unicode text")  # fmt: skip
        return data


def _path_ids(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    for name, value in (values or {}).items():
        if isinstance(value, int) and not 0 <= value <= MAX_SQL_INT:
            raise BadRequest(description=f"{name} {value}: must be 0..{MAX_SQL_INT}")


def _input_error(err: InputError) -> Any:
    return current_app.handle_http_exception(BadRequest(description=str(err)))


def init_app(app: Flask) -> None:
    app.request_class = CheckedRequest
    app.url_value_preprocessor(_path_ids)
    app.register_error_handler(InputError, _input_error)
