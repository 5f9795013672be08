"""An optional LRU response cache of predictions, with a guard that turns it off if it cannot pay.

Keys are sha256 digests of (the model's fingerprint, the options that change an answer, the text),
so an entry holds 32 bytes of key and one prediction whatever the text's length, and memory is
bounded by CACHE_SIZE entries. The model's fingerprint is the sha256 of its manifest's file hashes
(every file of the model directory is listed there with its sha256), so a cache can never answer
with another model's prediction. Only successful predictions are stored.

A lookup costs a hash and a dict access (microseconds), a hit saves a share of an ONNX run (a
tenth of a millisecond and more): the cache pays from a hit rate of a few per cent. The guard looks
at the last CACHE_GUARD_WINDOW lookups; when that window is full and its hit rate is below
CACHE_MIN_HIT_RATE, the cache empties itself and stays off until the process restarts (logged
once; `kubesentiment_cache_enabled` drops to 0).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge

log = logging.getLogger("kubesentiment.cache")

V = TypeVar("V")


def model_fingerprint(files: Mapping[str, str], name: str = "", version: str = "") -> bytes:
    """sha256 over a model's manifest file hashes (and its name and version)."""
    blob = json.dumps([name, version, sorted(files.items())], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).digest()


class ResponseCache(Generic[V]):
    """LRU map from (model, options, text) digests to results, with a hit-rate guard."""

    def __init__(
        self,
        size: int,
        fingerprint: bytes,
        *,
        min_hit_rate: float = 0.0,
        window: int = 1000,
        hits: Counter | None = None,
        misses: Counter | None = None,
        entries: Gauge | None = None,
        enabled_gauge: Gauge | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a cache needs at least one entry")
        self.size = size
        self._prefix = hashlib.sha256(fingerprint)
        self.min_hit_rate = min_hit_rate
        self._window: deque[bool] = deque(maxlen=max(1, window))
        self._window_hits = 0
        self._data: OrderedDict[bytes, V] = OrderedDict()
        self._hits, self._misses = hits, misses
        self._entries, self._enabled_gauge = entries, enabled_gauge
        self.enabled = True
        self._set_gauges()

    def __len__(self) -> int:
        return len(self._data)

    def key(self, option: str, text: str) -> bytes:
        """The digest naming one text's answer under `option` (lone surrogates allowed)."""
        h = self._prefix.copy()
        h.update(option.encode())
        h.update(b"\0")
        h.update(text.encode("utf-8", "surrogatepass"))
        return h.digest()

    def get(self, key: bytes) -> V | None:
        """The cached value (now most recently used) or None; counts the lookup for the guard."""
        if not self.enabled:
            return None
        value = self._data.get(key)
        hit = value is not None
        if hit:
            self._data.move_to_end(key)
        self._count(hit)
        return value

    def put(self, key: bytes, value: V) -> None:
        """Store a value, evicting the least recently used entry beyond `size`."""
        if not self.enabled:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)
        if self._entries is not None:
            self._entries.set(len(self._data))

    @property
    def window_hit_rate(self) -> float | None:
        """Hit rate over the guard's window, None until the window is full."""
        if len(self._window) < (self._window.maxlen or 1):
            return None
        return self._window_hits / len(self._window)

    def _count(self, hit: bool) -> None:
        counter = self._hits if hit else self._misses
        if counter is not None:
            counter.inc()
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._window_hits -= 1
        self._window.append(hit)
        self._window_hits += hit
        rate = self.window_hit_rate
        if rate is not None and rate < self.min_hit_rate:
            self.disable(rate)

    def disable(self, rate: float) -> None:
        """Empty the cache and stop using it (the guard's decision, logged once)."""
        if not self.enabled:
            return
        self.enabled = False
        self._data.clear()
        self._window.clear()
        self._window_hits = 0
        log.warning(
            "response cache turned off: hit rate too low to pay",
            extra={
                "hit_rate": round(rate, 4),
                "min_hit_rate": self.min_hit_rate,
                "window": self._window.maxlen,
            },
        )
        self._set_gauges()

    def _set_gauges(self) -> None:
        if self._entries is not None:
            self._entries.set(len(self._data))
        if self._enabled_gauge is not None:
            self._enabled_gauge.set(1 if self.enabled else 0)
