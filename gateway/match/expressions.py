"""How rule patterns become Hyperscan expressions.

What it does: `regex_flags` / `literal_flags` are the Hyperscan flags of a rule regex and of a
content literal, `literal_regex` escapes a literal into a regex, and `check_regex` compiles one
regex on its own to see whether Hyperscan takes it. The rule loader (gateway/match/rules.py)
validates regexes with `check_regex` and the matcher (gateway/match/matcher.py) compiles its
databases with the same flags, so a rule that loads always compiles.

What it guarantees: every pattern gets HS_FLAG_SINGLEMATCH (a rule fires once per stream),
regexes HS_FLAG_DOTALL, and `nocase` HS_FLAG_CASELESS; `literal_regex(data)` matches exactly
`data`; `check_regex` never raises for a bad expression, it returns Hyperscan's complaint.
"""

from __future__ import annotations

from typing import Final

import hyperscan

__all__ = ["check_regex", "literal_flags", "literal_regex", "regex_flags"]

_SAFE_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def regex_flags(nocase: bool) -> int:
    """Hyperscan flags for a rule regex."""
    flags = hyperscan.HS_FLAG_DOTALL | hyperscan.HS_FLAG_SINGLEMATCH
    return flags | hyperscan.HS_FLAG_CASELESS if nocase else flags


def literal_flags(nocase: bool) -> int:
    """Hyperscan flags for a content literal (escaped into a regex)."""
    flags = hyperscan.HS_FLAG_SINGLEMATCH
    return flags | hyperscan.HS_FLAG_CASELESS if nocase else flags


def literal_regex(data: bytes) -> bytes:
    """A regex matching exactly `data`: every byte outside [A-Za-z0-9_] becomes `\\xHH`."""
    return b"".join(bytes((b,)) if b in _SAFE_BYTES else b"\\x%02x" % b for b in data)


def check_regex(expr: bytes, nocase: bool) -> str | None:
    """Compile one regex alone in stream mode; return Hyperscan's complaint, or None."""
    db = hyperscan.Database(mode=hyperscan.HS_MODE_STREAM)
    try:
        db.compile(expressions=[expr], ids=[0], flags=[regex_flags(nocase)])
    except hyperscan.error as err:
        return str(err) or type(err).__name__
    return None
