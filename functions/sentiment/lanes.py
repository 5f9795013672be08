"""The batcher's queue: one lane per priority, higher lanes first, with a bound on starvation.

Every queued text is an `Item` with a priority (HIGH, NORMAL or LOW) and an optional deadline.
`Lanes.pop()` takes the head of the highest non-empty lane, except when the oldest head of all
lanes has waited longer than `max_wait_s` (PRIORITY_MAX_WAIT_MS): then that oldest text goes
first, so a low text can be overtaken by newer high texts for at most that long (plus the run in
progress). With priorities off every text goes to one lane: plain arrival order, as before.

Deadlines are `time.monotonic()` instants; the batcher drops a text whose deadline has passed when
it takes it (`expired`), so late work is never computed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.errors import DeadlineExceeded

HIGH, NORMAL, LOW = 0, 1, 2
LANE_NAMES = ("high", "normal", "low")
Clock = Callable[[], float]


@dataclass
class Item:
    """One text's token windows waiting for a run, and the future its answer goes to."""

    windows: tuple[Sequence[int], ...]
    future: asyncio.Future[Any]  # (probabilities, batching.RunStats)
    enqueued: float = field(default_factory=time.perf_counter)  # for the queue-wait metric
    priority: int = NORMAL
    deadline: float | None = None  # time.monotonic() instant, None = none
    since: float = 0.0  # when it was queued, on the lanes' clock (set by Lanes.put)

    @property
    def width(self) -> int:
        """Tokens in the text's widest window (its run is padded to at least this)."""
        return max(len(w) for w in self.windows)


def expired(item: Item, now: float) -> bool:
    """True when the item's deadline has passed at `now` (a `time.monotonic()` reading)."""
    return item.deadline is not None and now >= item.deadline


class Lanes:
    """Per-priority FIFO lanes; `pop` serves higher lanes first within the starvation bound."""

    def __init__(
        self, *, enabled: bool = True, max_wait_s: float = 0.5, clock: Clock = time.monotonic
    ) -> None:
        self.enabled = enabled
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._lanes: tuple[deque[Item], ...] = (deque(), deque(), deque())
        self._count = 0
        self._arrived: asyncio.Event | None = None

    def __len__(self) -> int:
        return self._count

    def empty(self) -> bool:
        """True when no text waits in any lane."""
        return self._count == 0

    def put(self, item: Item) -> None:
        """Queue an item at the tail of its priority's lane (one lane with priorities off)."""
        lane = min(max(item.priority, HIGH), LOW) if self.enabled else NORMAL
        item.since = self.clock()
        self._lanes[lane].append(item)
        self._count += 1
        if self._arrived is not None:
            self._arrived.set()

    def pop(self) -> Item:
        """The next item to run (IndexError when empty)."""
        heads = [(lane, q[0]) for lane, q in enumerate(self._lanes) if q]
        if not heads:
            raise IndexError("pop from empty lanes")
        lane, _ = heads[0]  # the highest non-empty lane
        oldest_lane, oldest = min(heads, key=lambda h: h[1].since)
        if oldest_lane != lane and self.clock() - oldest.since > self.max_wait_s:
            lane = oldest_lane  # overtaken for too long: it goes before newer higher texts
        self._count -= 1
        return self._lanes[lane].popleft()

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until an item is queued (True) or `timeout_s` passes (False); pops nothing, so a
        cancelled or timed-out wait never loses an item."""
        if self._count:
            return True
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.clear()
        if timeout_s is None:
            await self._arrived.wait()
            return True
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        except TimeoutError:
            return bool(self._count)
        return True

    def clear(self) -> list[Item]:
        """Remove and return every queued item."""
        items = [i for q in self._lanes for i in q]
        for q in self._lanes:
            q.clear()
        self._count = 0
        return items

    def depth(self) -> dict[str, int]:
        """Texts waiting per lane, by lane name."""
        return {name: len(q) for name, q in zip(LANE_NAMES, self._lanes, strict=True)}


# What one extra ONNX run costs, in padded tokens of compute. Measured on the int8 MiniLM with
# 2 cores: a run costs about a + b * windows * width with a ~ 0.2-2.4 ms and b ~ 0.06-0.13 ms per
# token (quiet vs contended cores), so a is worth 4-20 tokens; 16 splits only where it clearly pays.
RUN_OVERHEAD_TOKENS = 16


def group_by_length(
    items: list[Item],
    max_size: int,
    overhead: int = RUN_OVERHEAD_TOKENS,
    cost: Callable[[int, int], float] | None = None,
) -> list[list[Item]]:
    """Split items, sorted by length, into runs of at most `max_size` windows with similar widths.

    A run is padded to its longest window, and its cost grows with windows x width, so the split
    that minimises total padded tokens plus `overhead` per run is found exactly (dynamic
    programming over the sorted items, O(n x max_size)): short texts no longer pay for a long
    neighbour's padding, and a batch of near-equal texts stays one run. `cost(windows, width)`,
    when given, replaces `overhead + windows x width` (the batcher's measured cost.CostModel).
    """
    if cost is None:
        cost = lambda windows, width: overhead + windows * width  # noqa: E731
    ordered = sorted(items, key=lambda i: i.width)
    n = len(ordered)
    best = [0.0] * (n + 1)  # best[k]: cost of the first k items
    cut = [0] * (n + 1)  # where the last group of the first k items starts
    for end in range(1, n + 1):
        width = ordered[end - 1].width  # the widest of any group ending here
        windows = 0
        best[end] = -1
        for begin in range(end - 1, -1, -1):
            windows += len(ordered[begin].windows)
            if windows > max_size and begin < end - 1:
                break
            total = best[begin] + cost(windows, width)
            if best[end] < 0 or total < best[end]:
                best[end], cut[end] = total, begin
    groups: list[list[Item]] = []
    end = n
    while end > 0:
        groups.append(ordered[cut[end] : end])
        end = cut[end]
    groups.reverse()
    return groups


def settle(results: Sequence[Any], part: Callable[[Any], Any] = lambda r: r) -> list[Any]:
    """Per-text results (values or exceptions) as a list of values, or raise.

    Any exception other than an expired deadline is raised as it is. When every text expired,
    DeadlineExceeded is raised; when only some did, it carries `partial`: `part` of the other
    texts' results in order, None in the expired texts' places.
    """
    if not results:
        return []
    late = [isinstance(r, DeadlineExceeded) for r in results]
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, DeadlineExceeded):
            raise r
    message = "the deadline passed before the texts were run"
    if all(late):
        raise DeadlineExceeded(message)
    if any(late):
        partial = [None if is_late else part(r) for r, is_late in zip(results, late, strict=True)]
        raise DeadlineExceeded(message, partial=partial)
    return list(results)
