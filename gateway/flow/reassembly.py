"""TCP stream reassembly for one direction of one connection (sans-I/O).

What it does: ``StreamReassembler.receive(seq, payload, syn)`` takes TCP segments in whatever
order they arrive and returns the bytes that became contiguous because of that segment, so
the caller sees the byte stream the receiving host's TCP would deliver (RFC 9293 section 3.4
sequence numbers, section 3.10.7.4 segment text processing).

What it guarantees:
- Sequence numbers are compared modulo 2**32 (RFC 9293 section 3.4): a segment is placed
  relative to the next expected byte, within +/- 2**31, so streams wrap and may exceed 4 GiB.
- The initial sequence number comes from the SYN (which consumes one sequence number; data
  carried on the SYN starts at ISN + 1) or, when the stream is picked up mid-way, from the
  first segment seen. Once a SYN has set it, a later SYN with another sequence number changes
  nothing (a receiver ignores it, RFC 5961 section 4): it cannot re-seed the stream.
- Duplicates are ignored. Overlaps are resolved first-wins (like Windows): bytes already
  held -- pending out of order, or delivered -- are kept and the newer copy is dropped. A
  segment that disagrees with bytes already held counts once in ``overlaps_conflicting``
  (compared against pending data always, against delivered data within the last ``history``
  bytes kept for that purpose; 0 by default to keep per-flow memory small). Parts of a
  segment older than that history are not compared (counted in ``unverified``).
- Memory is bounded: out-of-order data is held up to ``max_pending`` bytes in at most
  ``MAX_PENDING_SEGMENTS`` pieces. Past either bound, by default, the oldest hole is skipped
  (counted in ``gaps``) and delivery resumes at the next held byte; skipped bytes are never
  delivered. With ``refuse_excess`` (inline), the out-of-order segment that would exceed a
  bound is not taken instead (``refused`` is set for it, counted in ``refusals``): the caller
  drops it and the sender retransmits it once the hole is filled, so nothing is skipped.
- Holes: `skip_hole()` gives up on the hole before the first held piece (the caller decides
  when: gateway/engine.py after `limits.hole_wait`) and returns the bytes that become
  contiguous. The last MAX_HOLES_KEPT skipped ranges are remembered: a later segment carrying
  bytes of one counts in ``late_holes`` and as a conflict (``overlaps_conflicting``), since
  those bytes were never inspected and the receiver may take them.
- Depth: at most ``max_depth`` bytes of stream (counted from the stream's first byte, skipped
  holes included) are ever delivered; once the stream position reaches it ``depth_reached``
  is set, later data is discarded and nothing is held any more.
- Between segments a stream holds no container it does not use: the out-of-order pieces and
  the skipped holes are lists of their own only while they hold something (memory per flow,
  bench/bench_flow_memory.py); `drop_history()` frees the retransmission history once the
  caller stops inspecting the direction.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Final

__all__ = ["MAX_HOLES_KEPT", "MAX_PENDING_SEGMENTS", "SEQ_MOD", "StreamReassembler"]

SEQ_MOD: Final = 2**32
_HALF: Final = 2**31
MAX_PENDING_SEGMENTS: Final = 1024  # out-of-order pieces held per direction
MAX_HOLES_KEPT: Final = 8  # skipped holes remembered per direction (their late bytes refused)
# What a stream holds nothing in (no piece out of order, no hole skipped): one shared empty
# tuple, replaced by a list of its own on the first entry and shared again once it empties, so
# a stream between segments costs no list (issue 16: memory per flow).
_NOTHING: Final[tuple[()]] = ()


class StreamReassembler:
    """One direction of a TCP connection: segments in, in-order bytes out."""

    __slots__ = (
        "_chunks",
        "_holes",
        "_next_seq",
        "_pos",
        "_recent",
        "_starts",
        "delivered",
        "depth_reached",
        "gaps",
        "history",
        "isn",
        "late_holes",
        "max_depth",
        "max_pending",
        "overlaps_conflicting",
        "pending_bytes",
        "refusals",
        "refuse_excess",
        "refused",
        "unverified",
    )

    def __init__(
        self, max_depth: int, max_pending: int, history: int = 0, refuse_excess: bool = False
    ) -> None:
        if max_depth < 0 or max_pending < 0 or history < 0:
            raise ValueError(
                f"reassembly bounds must be >= 0 (max_depth={max_depth}, "
                f"max_pending={max_pending}, history={history})"
            )
        self.max_depth = max_depth
        self.max_pending = max_pending
        self.history = history
        self.depth_reached = max_depth == 0
        self.delivered = 0  # bytes returned by receive()
        self.pending_bytes = 0  # bytes held out of order
        self.overlaps_conflicting = 0  # segments that disagreed with bytes already held
        self.gaps = 0  # holes skipped because the pending bound was exceeded
        self.refuse_excess = refuse_excess
        self.refused = False  # the last segment was not taken (refuse_excess, a bound reached)
        self.refusals = 0
        self.unverified = 0  # segments reaching back before the history: not compared
        self.late_holes = 0  # segments carrying bytes of a skipped hole (conflicts)
        self.isn: int | None = None  # from the SYN; None when picked up mid-stream
        self._next_seq: int | None = None  # sequence number of the stream byte at _pos
        self._pos = 0  # stream offset of the next byte to deliver (delivered + skipped)
        # stream offsets of held pieces, sorted, disjoint, and their bytes (_NOTHING: none)
        self._starts: list[int] | tuple[int, ...] = _NOTHING
        self._chunks: list[bytes] | tuple[bytes, ...] = _NOTHING
        self._recent = bytearray()  # the last `history` (up to 2x) delivered bytes
        # skipped holes, (start, end) stream offsets (_NOTHING: none)
        self._holes: list[tuple[int, int]] | tuple[tuple[int, int], ...] = _NOTHING

    @property
    def next_seq(self) -> int | None:
        """Sequence number of the next byte expected (None before the first segment)."""
        return self._next_seq

    @property
    def position(self) -> int:
        """Stream offset of the next byte expected: bytes delivered plus bytes skipped."""
        return self._pos

    def receive(self, seq: int, payload: bytes, syn: bool = False) -> bytes:
        """Add one segment; return the bytes that became contiguous because of it."""
        seq %= SEQ_MOD
        self.refused = False
        if syn:
            if self._next_seq is None or (self.isn is None and self._pos == 0 and not self._starts):
                self.isn = seq
                self._next_seq = (seq + 1) % SEQ_MOD
            seq = (seq + 1) % SEQ_MOD
        elif self._next_seq is None:
            self._next_seq = seq
        if not payload or self.depth_reached:
            return b""
        assert self._next_seq is not None
        diff = (seq - self._next_seq) % SEQ_MOD
        if diff >= _HALF:
            diff -= SEQ_MOD
        off = self._pos + diff
        if off == self._pos and not self._starts:  # fast path: in order, nothing held
            return self._deliver(payload)
        end = off + len(payload)
        if off < self._pos and self._holes:
            self._check_holes(off, min(end, self._pos))
        if end <= self._pos:  # entirely old: a retransmission
            self._check_recent(off, payload)
            return b""
        if off < self._pos:  # partly old: keep what was delivered (first wins)
            self._check_recent(off, payload[: self._pos - off])
            payload = payload[self._pos - off :]
            off = self._pos
        if off >= self.max_depth:
            return b""  # entirely past the depth: never deliverable
        if end > self.max_depth:
            payload = payload[: self.max_depth - off]
        if (
            self.refuse_excess
            and off > self._pos
            and (
                self.pending_bytes + len(payload) > self.max_pending
                or len(self._starts) >= MAX_PENDING_SEGMENTS
            )
        ):
            self.refused = True
            self.refusals += 1
            return b""
        self._hold(off, payload)
        out = self._pull()
        while self._starts and (
            self.pending_bytes > self.max_pending or len(self._starts) > MAX_PENDING_SEGMENTS
        ):
            self._skip_gap()
            out += self._pull()
        return out

    def _deliver(self, data: bytes) -> bytes:
        room = self.max_depth - self._pos
        if len(data) >= room:
            data = data[:room]
            self.depth_reached = True
            self._starts = self._chunks = _NOTHING
            self.pending_bytes = 0
        n = len(data)
        self._pos += n
        assert self._next_seq is not None
        self._next_seq = (self._next_seq + n) % SEQ_MOD
        self.delivered += n
        if self.history:
            recent = self._recent
            recent += data
            if len(recent) > 2 * self.history:
                del recent[: len(recent) - self.history]
        return data

    def _check_recent(self, off: int, data: bytes) -> None:
        """Count a conflict if `data` at stream offset `off` disagrees with recent delivered
        bytes (older bytes are not compared: counted in `unverified`)."""
        if not self.history:
            return
        recent_start = self._pos - len(self._recent)
        if off < recent_start:
            self.unverified += 1
        a = max(off, recent_start)
        b = min(off + len(data), self._pos)
        if a < b and data[a - off : b - off] != self._recent[a - recent_start : b - recent_start]:
            self.overlaps_conflicting += 1

    def _hold(self, off: int, data: bytes) -> None:
        """Keep the parts of data not already held (first wins); count a disagreement once."""
        starts, chunks = self._starts, self._chunks
        if not isinstance(starts, list) or not isinstance(chunks, list):
            starts, chunks = [], []
            self._starts, self._chunks = starts, chunks
        end = off + len(data)
        i = bisect_right(starts, off) - 1
        if i < 0 or starts[i] + len(chunks[i]) <= off:
            i += 1
        cur = off
        pieces: list[tuple[int, bytes]] = []
        conflict = False
        j = i
        while j < len(starts) and starts[j] < end:
            s, held = starts[j], chunks[j]
            e = s + len(held)
            if s > cur:
                pieces.append((cur, data[cur - off : s - off]))
            a, b = max(s, cur), min(e, end)
            if data[a - off : b - off] != held[a - s : b - s]:
                conflict = True
            cur = max(cur, b)
            j += 1
        if cur < end:
            pieces.append((cur, data[cur - off :]))
        if conflict:
            self.overlaps_conflicting += 1
        for p_off, p_data in pieces:
            at = bisect_right(starts, p_off, lo=i)
            starts.insert(at, p_off)
            chunks.insert(at, p_data)
            self.pending_bytes += len(p_data)

    def _pull(self) -> bytes:
        """Deliver held pieces that are now contiguous with the stream position."""
        starts, chunks = self._starts, self._chunks
        if not starts or starts[0] != self._pos:
            return b""
        assert isinstance(starts, list) and isinstance(chunks, list)
        n = 1
        end = starts[0] + len(chunks[0])
        while n < len(starts) and starts[n] == end:
            end += len(chunks[n])
            n += 1
        data = b"".join(chunks[:n])
        if n == len(starts):
            self._starts = self._chunks = _NOTHING  # nothing held: the lists go
        else:
            del starts[:n]
            del chunks[:n]
        self.pending_bytes -= len(data)
        return self._deliver(data)

    def _check_holes(self, off: int, end: int) -> None:
        """Count a conflict when stream bytes [off, end) reach into a skipped hole."""
        for start, stop in self._holes:
            if off < stop and start < end:
                self.late_holes += 1
                self.overlaps_conflicting += 1
                return

    def drop_history(self) -> None:
        """Its direction is no longer inspected (depth reached, blocked, nothing left to look
        for): no segment of it is compared again, so the bytes kept for that go (up to twice
        `history` per direction, held otherwise until the flow leaves the table)."""
        self.history = 0
        self._recent = bytearray()

    @property
    def last_byte(self) -> bytes | None:
        """The last byte delivered, while the history keeps it (None otherwise)."""
        return bytes(self._recent[-1:]) if self._recent else None

    @property
    def hole(self) -> bool:
        """Bytes are held behind a hole (out of order)."""
        return bool(self._starts)

    def skip_hole(self) -> bytes:
        """Give up on the hole before the first held piece (see the module comment): the bytes
        that become contiguous (b"" when nothing is held)."""
        if not self._starts or self.depth_reached:
            return b""
        self._skip_gap()
        return self._pull()

    def _skip_gap(self) -> None:
        """Give up on the hole before the first held piece: jump the stream position to it."""
        skip = self._starts[0] - self._pos
        self.gaps += 1
        holes = self._holes
        if not isinstance(holes, list):
            holes = self._holes = []
        holes.append((self._pos, self._pos + skip))
        if len(holes) > MAX_HOLES_KEPT:
            del holes[0]
        self._pos += skip
        assert self._next_seq is not None
        self._next_seq = (self._next_seq + skip) % SEQ_MOD
        self._recent.clear()
