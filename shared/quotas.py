"""Quotas per API key: the key entries, one token bucket per key id, and the RateLimit fields.

API_KEYS (or the Vault secret it names) holds either the plain comma-separated keys it always
held, or a JSON list whose items are a plain key or an object
`{"key": ..., "id": "team-a", "rate": 20, "burst": 40, "events": true}`. `id` names the key in
metrics and logs (never the key itself); without one it is `key-` and the first 8 hex digits of
the key's SHA-256. `rate` (requests per second, may be below 1) and `burst` (the bucket's size,
by default the rate rounded up) give the key a token bucket; a key without `rate` is unlimited.
`events: true` lets a Knative Trigger deliver CloudEvents for this key at `POST /events/{id}`
without sending the key (a Trigger cannot add headers).

A request costs one token, whatever its number of texts: quotas are in requests, as API gateways
count them and as the draft's default quota unit says; texts, tokenizer tokens and model CPU time
are counted per key in the usage metrics instead (MAX_TEXTS bounds what one request can cost).

The header fields follow draft-ietf-httpapi-ratelimit-headers-11 (May 2026), the latest revision
whose full text we could read (-12, November 2026, exists; check it before relying on a detail), in
section 3 (RateLimit-Policy) and 4 (RateLimit): `RateLimit-Policy: "per-key";q=B;w=W`
announces a quota of B requests per W seconds (the bucket's burst and the seconds it takes to
refill from empty), and `RateLimit: "per-key";r=R;t=T` the R whole requests available now and the
T seconds until the next token is added, i.e. the time within which no more than R can be used.
On a 429, `Retry-After` equals `t`, so it never points earlier than the effective window.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

POLICY = "per-key"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_FIELDS = {"key", "id", "rate", "burst", "events"}


@dataclass(frozen=True)
class KeyEntry:
    """One API key, the id it is known by, and its token bucket (rate None = unlimited)."""

    key: str = field(repr=False)
    id: str
    rate: float | None = None
    burst: int = 0
    events: bool = False


def digest_id(key: str) -> str:
    """The id of a key given without one: `key-` and 8 hex digits of its SHA-256."""
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


def parse_entries(raw: str) -> tuple[KeyEntry, ...]:
    """Key entries from comma-separated keys or a JSON list; ValueError names the entry by its
    position and id, never by its key."""
    text = raw.strip()
    items: list[Any]
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"API keys look like JSON but do not parse: {e.msg}") from None
        if not isinstance(items, list):
            raise ValueError("API keys in JSON must be a list")
    else:
        items = [k.strip() for k in text.split(",") if k.strip()]
    entries = tuple(_entry(item, n) for n, item in enumerate(items, start=1))
    if len({e.key for e in entries}) != len(entries):
        raise ValueError("the same API key is listed twice")
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"API key ids must be unique: {', '.join(twice)} used twice")
    return entries


def _entry(item: Any, n: int) -> KeyEntry:
    if isinstance(item, str):
        if not item.strip():
            raise ValueError(f"API key {n} is empty")
        return KeyEntry(item.strip(), digest_id(item.strip()))
    if not isinstance(item, Mapping):
        raise ValueError(f"API key {n} must be a string or an object")
    unknown = set(item) - _FIELDS
    if unknown:
        raise ValueError(f"API key {n} has unknown field(s): {', '.join(sorted(unknown))}")
    key = item.get("key")
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"API key {n} needs a non-empty string 'key'")
    key_id = item.get("id", digest_id(key.strip()))
    if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
        raise ValueError(f"API key {n}: 'id' must match {_ID.pattern}")
    rate, burst = item.get("rate"), item.get("burst")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf
    ):
        raise ValueError(f"API key {key_id}: 'rate' must be a positive number (requests/s)")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or burst < 1):
        raise ValueError(f"API key {key_id}: 'burst' must be an integer >= 1")
    if burst is not None and rate is None:
        raise ValueError(f"API key {key_id}: 'burst' needs a 'rate'")
    events = item.get("events", False)
    if not isinstance(events, bool):
        raise ValueError(f"API key {key_id}: 'events' must be true or false")
    if rate is None:
        return KeyEntry(key.strip(), key_id, events=events)
    size = burst if burst is not None else max(1, math.ceil(rate))
    return KeyEntry(key.strip(), key_id, float(rate), size, events)


@dataclass(frozen=True)
class Decision:
    """A bucket's answer: whether the request may run, the whole tokens left and the seconds
    until the next token (the `Retry-After` of a refusal)."""

    allowed: bool
    remaining: int
    reset_s: int


class TokenBucket:
    """`burst` tokens, refilled continuously at `rate` per second; starts full."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float, cost: float = 1.0) -> Decision:
        """Take `cost` tokens if there are that many (at time `now`, monotonic seconds)."""
        if now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        allowed = self.tokens >= cost
        if allowed:
            self.tokens -= cost
            # The next whole token; a bucket that is full again only refills after a take.
            missing = math.floor(self.tokens) + 1 - self.tokens
        else:
            missing = cost - self.tokens
        reset = max(1, math.ceil(missing / self.rate - 1e-9))
        return Decision(allowed, math.floor(self.tokens + 1e-9), reset)


class Quotas:
    """One token bucket per limited key id; a key whose rate or burst changed (rotated in
    Vault) gets a fresh, full bucket."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, entry: KeyEntry) -> Decision | None:
        """The decision for one request with `entry`'s key; None when the key is unlimited."""
        if entry.rate is None:
            return None
        bucket = self._buckets.get(entry.id)
        if bucket is None or (bucket.rate, bucket.burst) != (entry.rate, entry.burst):
            bucket = self._buckets[entry.id] = TokenBucket(entry.rate, entry.burst, self.clock())
        return bucket.take(self.clock())


def policy_field(entry: KeyEntry) -> str:
    """`RateLimit-Policy` for a limited key: the burst, per the seconds a refill from empty
    takes (an Integer >= 1, as the draft's `w` must be)."""
    assert entry.rate is not None
    window = max(1, math.ceil(entry.burst / entry.rate))
    return f'"{POLICY}";q={entry.burst};w={window}'


def limit_field(decision: Decision) -> str:
    """`RateLimit`: whole requests available now and seconds until the next token."""
    return f'"{POLICY}";r={decision.remaining};t={decision.reset_s}'


def headers(entry: KeyEntry, decision: Decision) -> dict[str, str]:
    """The RateLimit fields, and `Retry-After` (= `t`) on a refusal."""
    out = {"RateLimit-Policy": policy_field(entry), "RateLimit": limit_field(decision)}
    if not decision.allowed:
        out["Retry-After"] = str(decision.reset_s)
    return out


def ids(entries: Iterable[KeyEntry]) -> list[str]:
    """The ids of `entries`, in order (for logs: never the keys)."""
    return [e.id for e in entries]
