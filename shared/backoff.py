"""Retry delays with full jitter: the one backoff every retry loop uses.

Exponential backoff alone keeps clients that failed together in lockstep: pods scaled up at the
same moment retry Vault, the registry or a sink at the same instants. "Full jitter" (AWS
Architecture Blog, "Exponential Backoff and Jitter") draws each delay uniformly from the whole
window, `uniform(0, min(cap, base * 2**retry))`, which spreads them and does the least total work
of the variants measured there.

A server's `Retry-After` (RFC 9110 section 10.2.3: seconds or an HTTP date) is a floor: the delay
is the floor plus the jittered draw, so clients refused by the same 429 or 503 do not return
together either, and never more than the loop's cap, so a server cannot stall a loop beyond
what its owner allowed (a Retry-After above the cap waits the cap). An unreadable Retry-After
is ignored.

The random source is injected (`Backoff(..., rng=random.Random(seed))`) so tests can check
bounds and sequences; the default is a `random.Random` seeded from the OS per instance.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

MAX_DOUBLINGS = 64  # beyond it every window is the cap anyway; keeps 2**retry finite


@dataclass(frozen=True)
class Backoff:
    """Delays for retries of one loop: the first retry waits up to `base_s`, each next one up to
    twice as long, never more than `cap_s`."""

    base_s: float
    cap_s: float
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)
    now: Callable[[], float] = field(default=time.time, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError(f"backoff base and cap must be >= 0, not {self.base_s}, {self.cap_s}")

    def window(self, retry: int) -> float:
        """The largest delay before retry number `retry` (0 for the first retry)."""
        return min(self.cap_s, self.base_s * 2.0 ** min(max(retry, 0), MAX_DOUBLINGS))

    def floor(self, retry_after: str | None) -> float:
        """Seconds a Retry-After value asks for (0 when absent or unreadable), at most the cap."""
        if retry_after is None:
            return 0.0
        value = retry_after.strip()
        if value.isdigit():
            seconds = float(value)
        else:
            try:
                seconds = parsedate_to_datetime(value).timestamp() - self.now()
            except (TypeError, ValueError, IndexError):
                return 0.0
        return min(self.cap_s, max(0.0, seconds))

    def delay(self, retry: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number `retry` (0-based), honouring a Retry-After."""
        floor = self.floor(retry_after)
        return min(self.cap_s, floor + self.rng.uniform(0.0, self.window(retry)))
