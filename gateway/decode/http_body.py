"""An HTTP request body as the application reads it, kept for matching in bounded windows.

`BodyWindows` is fed a request's de-chunked body in any slicing and keeps what the rules match:
- the body as the application reads it: a `Content-Encoding` of gzip, x-gzip or deflate (zlib
  or raw), nested in any order (RFC 9110 section 8.4), is inflated as it arrives, as Apache's
  mod_deflate input filter or a framework's gzip middleware does; a body that does not inflate
  is kept as sent from that point on;
- in windows of `window` bytes (http.MAX_BODY_INSPECT): when a window is full and more body
  arrives, the full window is handed back to be judged as a record of its own, and the next
  window starts with the last OVERLAP bytes of it. So a parameter after any amount of padding
  is still seen (PHP, Tomcat and ASP.NET parse whole form bodies of megabytes), and a pattern
  up to OVERLAP bytes long that straddles a boundary is seen whole in the later window.

Bounds: one window (`window` bytes) is held; inflation stops at MAX_INFLATED bytes out of one
body (a compression bomb), and `cut` then says so for the engine's `limits.field` policy.
Never raises.
"""

from __future__ import annotations

import zlib
from typing import Final

__all__ = ["MAX_INFLATED", "OVERLAP", "BodyWindows", "inflater_for"]

OVERLAP: Final = 4096  # bytes a window shares with the one before it
MAX_INFLATED: Final = 1024 * 1024  # bytes inflated out of one body, at most (the stream depth)
_CODINGS: Final = frozenset({"gzip", "x-gzip", "deflate"})


class _Inflater:
    """Streaming inflation of a body's content codings, the last applied first."""

    __slots__ = ("_codings", "_objects", "failed", "total")

    def __init__(self, codings: list[str]) -> None:
        self._codings = codings
        self._objects: list[zlib._Decompress | None] = [None] * len(codings)
        self.failed = False
        self.total = 0

    def feed(self, data: bytes) -> bytes | None:
        """The inflated bytes of `data` (at most up to MAX_INFLATED in all), or None once the
        body does not inflate."""
        if self.failed:
            return None
        try:
            for i, coding in enumerate(self._codings):
                if not data:
                    return b""
                obj = self._objects[i]
                if obj is None:
                    obj = zlib.decompressobj(_wbits(coding, data))
                    self._objects[i] = obj
                room = MAX_INFLATED - self.total
                if room <= 0:
                    return b""
                data = obj.decompress(data, room)
        except zlib.error:
            self.failed = True
            return None
        self.total += len(data)
        return data

    @property
    def bounded(self) -> bool:
        return self.total >= MAX_INFLATED


def _wbits(coding: str, first: bytes) -> int:
    if coding == "deflate":
        return zlib.MAX_WBITS if first[:1] == b"\x78" else -zlib.MAX_WBITS
    return 16 + zlib.MAX_WBITS


def inflater_for(content_encoding: str | None) -> _Inflater | None:
    """The inflater of a Content-Encoding value, or None when no coding applies (none,
    identity only, or one the servers do not inflate)."""
    if not content_encoding:
        return None
    codings = [c.strip(" \t").lower() for c in content_encoding.split(",")]
    codings = [c for c in reversed(codings) if c and c != "identity"]
    if not codings or any(c not in _CODINGS for c in codings):
        return None
    return _Inflater(codings)


class BodyWindows:
    """One request's body in windows (see the module comment)."""

    __slots__ = ("_inflater", "_window", "fed", "inflated", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self._window = bytearray()
        self._inflater: _Inflater | None = None
        self.inflated = False  # the window holds inflated bytes
        self.fed = 0  # body bytes fed, as sent

    def start(self, content_encoding: str | None) -> None:
        """A new request's body begins."""
        self.clear()
        self._inflater = inflater_for(content_encoding)
        self.inflated = self._inflater is not None

    def clear(self) -> None:
        self._window.clear()
        self._inflater = None
        self.inflated = False
        self.fed = 0

    @property
    def held(self) -> int:
        """Bytes held (the window under way)."""
        return len(self._window)

    @property
    def cut(self) -> str | None:
        """What a bound left out of the windows, if anything."""
        inflater = self._inflater
        if inflater is not None and inflater.bounded:
            return f"body: inflated past {MAX_INFLATED} bytes"
        return None

    def feed(self, data: bytes) -> list[bytes]:
        """Add body bytes as sent; the full windows to judge now (each but the last)."""
        self.fed += len(data)
        inflater = self._inflater
        if inflater is not None:
            out = inflater.feed(data)
            if out is None:  # not what it says it is: what follows is kept as sent
                self._inflater = None
                self.inflated = False
            else:
                data = out
        done: list[bytes] = []
        window = self._window
        while data:
            room = self.window - len(window)
            if room <= 0:
                done.append(bytes(window))
                del window[: len(window) - OVERLAP]
                room = self.window - len(window)
            window += data[:room]
            data = data[room:]
        return done

    def last(self) -> bytes:
        """The window under way (at the request's end: the last one)."""
        return bytes(self._window)
