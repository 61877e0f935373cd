"""A token bucket per alert channel, with the clock passed in (tested without sleeping).

Guarantees: at most `burst` sends at once and `rate` sends per second on average; what is not
sent is counted (`suppressed`, per signature id, at most MAX_TRACKED_SIGNATURES distinct ids)
so the dispatcher can send one summary message once a token is free again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MAX_TRACKED_SIGNATURES = 1000  # distinct signature ids counted per suppression period


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: int  # bucket size
    tokens: float = -1.0  # -1: full at the first call
    updated: float = 0.0
    suppressed: int = 0
    suppressed_since: float | None = None
    by_signature: Counter[str] = field(default_factory=Counter)

    def _refill(self, now: float) -> None:
        if self.tokens < 0:
            self.tokens = float(self.burst)
        else:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, now: float) -> bool:
        """True (and one token used) when a message may be sent now."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def suppress(self, now: float, signature: str) -> None:
        if self.suppressed == 0:
            self.suppressed_since = now
        self.suppressed += 1
        if signature in self.by_signature or len(self.by_signature) < MAX_TRACKED_SIGNATURES:
            self.by_signature[signature] += 1

    def take_summary(self) -> tuple[int, float, list[tuple[str, int]]]:
        """(count, since, top signatures) of what was suppressed; resets the counters."""
        out = (self.suppressed, self.suppressed_since or self.updated,
               self.by_signature.most_common(10))  # fmt: skip
        self.suppressed, self.suppressed_since = 0, None
        self.by_signature = Counter()
        return out
