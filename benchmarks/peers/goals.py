"""Issue 26's goals per mode, and what in a mode's figures could flatter our function.

Goals, each against the peers of the same mode (every system but ours and its A/A twin): the A/A
spread at concurrency 32 within 10 %, CPU seconds per 1,000 answers at or below every peer's at
concurrency 8, 32 and 128, throughput at 32 and 128 at least 1.3x the best peer's, and the
concurrency-1 median latency at or below the best peer's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OURS = "kubesentiment-int8"
TWIN = "kubesentiment-int8-aa"
SPREAD = 0.10
LEAD = 1.3


def _peers(systems: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {k: v for k, v in systems.items() if not k.startswith("kubesentiment")}


def spread(systems: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    """How far apart the two identical servers are on `key`: larger / smaller - 1."""
    a, b = systems.get(OURS, {}).get(key), systems.get(TWIN, {}).get(key)
    if not a or not b:
        return None
    return float(max(a, b) / min(a, b) - 1)


def targets(systems: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, bool]]:
    """(description, met) per goal that the mode's figures can judge."""
    ours, peers = systems.get(OURS), _peers(systems)
    if not ours or not peers:
        return []
    out: list[tuple[str, bool]] = []
    if (s := spread(systems, "rps_c32")) is not None:
        out.append((f"A/A spread at c32 {s:.1%}, goal <= {SPREAD:.0%}", s <= SPREAD))
    for c in (8, 32, 128):
        key = f"cpu_s_per_1k_c{c}"
        have = {k: float(v[key]) for k, v in peers.items() if v.get(key) is not None}
        if ours.get(key) is not None and have:
            low = min(have, key=have.__getitem__)
            out.append(
                (
                    f"CPU s / 1k at c{c} {ours[key]:.2f} vs lowest peer {have[low]:.2f} ({low}), "
                    "goal <=",
                    ours[key] <= have[low],
                )
            )
    for c in (32, 128):
        key = f"rps_c{c}"
        have = {k: float(v[key]) for k, v in peers.items() if v.get(key)}
        if ours.get(key) and have:
            top = max(have, key=have.__getitem__)
            ratio = ours[key] / have[top]
            out.append(
                (f"throughput c{c}: {ratio:.2f}x the best peer ({top}), goal >= {LEAD}x",
                 ratio >= LEAD)
            )  # fmt: skip
    have = {k: float(v["p50_ms_c1"]) for k, v in peers.items() if v.get("p50_ms_c1")}
    if ours.get("p50_ms_c1") and have:
        low = min(have, key=have.__getitem__)
        out.append(
            (
                f"p50 c1 {ours['p50_ms_c1']:.2f} ms vs best peer {have[low]:.2f} ms ({low}), "
                "goal <=",
                ours["p50_ms_c1"] <= have[low],
            )
        )
    return out


def flattery(name: str, mode: Mapping[str, Any]) -> list[str]:
    """What in this mode's run could make our function look better than it is."""
    systems = mode["systems"]
    out = [
        "Ours sorts a batch by length and splits it by a measured cost model; the batching peers "
        "pad whatever arrives together, with their batch size taken from the in-process ceiling's "
        "fastest padded size (their best case on these texts, not their defaults), and KServe's "
        "Python server has no in-process batching at all (its cluster batcher is a sidecar, not "
        "measured here).",
        "Every request carries one text; clients that send many texts per request would shrink "
        "the serving overhead that separates the systems.",
    ]
    s = spread(systems, "rps_c32")
    ours, peers = systems.get(OURS, {}), _peers(systems)
    best = max((float(v["rps_c32"]) for v in peers.values() if v.get("rps_c32")), default=0.0)
    if s is not None and best and ours.get("rps_c32"):
        lead = ours["rps_c32"] / best - 1
        verdict = "larger than" if lead > s else "within"
        out.append(
            f"Our lead at c32 ({lead:+.0%} over the best peer) is {verdict} the A/A spread of two "
            f"identical servers ({s:.0%}) in this mode: a lead within that spread is noise."
        )
    if name == "quiet":
        out.append(
            "A quiet machine is the best case for every system: a pod on a busy node rarely sees "
            "it, which is why the contended mode exists."
        )
    else:
        out.append(
            "The load is one steady neighbour holding half of one core in 10 ms slices: it does "
            "not model a pod throttled at its own CPU limit (CFS quota), nor neighbours that "
            "come and go; a system that uses fewer threads is disturbed less by it. Cold starts "
            "and the parity check are measured in the quiet mode only."
        )
    return out
