"""gateway/alerts/ratelimit.py: the token bucket with a passed-in clock (no sleeping)."""

from __future__ import annotations

from gateway.alerts.ratelimit import MAX_TRACKED_SIGNATURES, TokenBucket


def test_burst_then_rate() -> None:
    b = TokenBucket(rate=1.0, burst=3)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(100.5)
    assert b.take(101.0)  # half a token from 100.5 plus half now
    assert not b.take(101.0)
    assert [b.take(200.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_suppression_summary_resets() -> None:
    b = TokenBucket(rate=0.1, burst=1)
    assert b.take(0.0)
    for i in range(5):
        b.suppress(1.0 + i, "9000100" if i % 2 == 0 else "9000001")
    count, since, top = b.take_summary()
    assert (count, since, top) == (5, 1.0, [("9000100", 3), ("9000001", 2)])
    assert b.suppressed == 0 and b.take_summary()[0] == 0


def test_tracked_signatures_bounded() -> None:
    b = TokenBucket(rate=1.0, burst=1)
    for i in range(MAX_TRACKED_SIGNATURES + 50):
        b.suppress(0.0, str(i))
    assert b.suppressed == MAX_TRACKED_SIGNATURES + 50
    assert len(b.by_signature) == MAX_TRACKED_SIGNATURES
