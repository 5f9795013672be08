"""The redelivery harness: the Knative-style sender (tests/delivery.py) drives a real function
(`python -m functions.sentiment`, a uvicorn subprocess with the real model) through faults, and the
outcome is checked at the sinks.

Faults, one scenario each:

- `sigkill`: the function is SIGKILLed with events in flight and started again on the same port;
- `sink_down`: the K_SINK receiver stops (connection refused) and comes back on the same port;
- `timeout`: the sender's per-attempt timeout is shorter than the function takes for a batch.

Every scenario also sends events no retry can fix (an unknown type: 400), which must end in the
dead-letter sink. The outcome checked (`Outcome.problems`): every event has exactly one distinct
reply id at the reply sink (the id derived from its source and id) or is in the dead-letter sink,
none lost; each reply's per-item errors sit at their items' places, in order; at K_SINK no event
has two distinct ids (duplicates of one id are allowed).

    python -m tests.redelivery_harness --out docs/redelivery.json   # (make redelivery)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cloudevents.core.v1.event import CloudEvent
from prometheus_client.parser import text_string_to_metric_families

from functions.sentiment.schemas import REQUEST_TYPE, RESPONSE_TYPE
from loadtests.local import LocalFunction, free_port, model_override, spawn, stop, wait_ready
from shared.eventid import derived_id
from tests.delivery import DeliverySpec, Dispatcher, Tally
from tests.receiver import Received, Receiver

SOURCE = "/tests/redelivery-harness"
VARIANT = "cpu-int8"
TEXTS = (
    "The battery lasts all day and the screen is gorgeous.",
    "Terrible support, I waited two weeks for a reply.",
    "It arrived on Tuesday.",
    "Not bad at all, though the manual is confusing.",
    "I would not buy this again, the hinge broke after a month.",
    "Exactly what the description promised.",
)


@dataclass(frozen=True)
class Planned:
    """An event to send and, for a request, which of its items must come back as errors."""

    event: CloudEvent
    errors: tuple[bool, ...] = ()

    @property
    def poison(self) -> bool:
        return self.event.get_type() != REQUEST_TYPE


def plan(name: str, count: int, items: int, poison: int = 2) -> list[Planned]:
    """`count` request events of `items` unique texts (every 7th item unusable, so per-item errors
    sit between answers) and `poison` events of an unknown type."""
    out: list[Planned] = []
    for e in range(count):
        entries: list[dict[str, Any]] = []
        errors: list[bool] = []
        for k in range(items):
            bad = k % 7 == 3
            text = "" if bad else f"{TEXTS[(e + k) % len(TEXTS)]} [{name} {e}.{k}]"
            entries.append({"id": f"{e}.{k}", "text": text})
            errors.append(bad)
        attributes = {"type": REQUEST_TYPE, "source": SOURCE, "id": f"{name}-{e}"}
        out.append(Planned(CloudEvent(attributes, {"items": entries}), tuple(errors)))
    for p in range(poison):
        attributes = {"type": "dev.kubesentiment.unknown", "source": SOURCE, "id": f"{name}-x{p}"}
        out.append(Planned(CloudEvent(attributes, {"texts": ["never answered"]})))
    return out


@dataclass
class Outcome:
    """What one scenario produced and what is wrong with it (empty `problems`: all good)."""

    scenario: str
    events: int
    poison_events: int
    sender: dict[str, Any]
    function: dict[str, float]
    reply_sink: dict[str, int]
    k_sink: dict[str, int] | None
    dead_lettered: int
    valid_texts: int
    seconds: float
    problems: list[str] = field(default_factory=list)


def _by_request(received: Sequence[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = defaultdict(list)
    for r in received:
        out[r.headers.get("ce-requestid", "?")].append(r)
    return out


def check(
    planned: Sequence[Planned], replies: Receiver, dead: Receiver, k_sink: Receiver | None
) -> tuple[list[str], dict[str, int], dict[str, int] | None]:
    """The problems with what the sinks got, and counts of what they got."""
    problems: list[str] = []
    by_request = _by_request(replies.requests)
    dead_ids = Counter(r.headers.get("ce-id") for r in dead.requests)
    for p in planned:
        event_id = p.event.get_id()
        got = by_request.get(event_id, [])
        ids = {r.headers["ce-id"] for r in got}
        if p.poison:
            if got or dead_ids[event_id] != 1:
                problems.append(
                    f"{event_id}: {len(got)} replies, {dead_ids[event_id]} dead letters"
                )
            elif not {"ce-knativeerrorcode", "ce-knativeerrordata"} <= set(
                next(r for r in dead.requests if r.headers.get("ce-id") == event_id).headers
            ):
                problems.append(f"{event_id}: dead letter without the knativeerror* extensions")
            continue
        if dead_ids[event_id]:
            if got:
                problems.append(f"{event_id}: both replied and dead-lettered")
            continue  # dead-lettered: accounted for, not lost
        expected = derived_id(SOURCE, event_id, RESPONSE_TYPE, VARIANT)
        if ids != {expected}:
            problems.append(f"{event_id}: reply ids {sorted(ids)} (expected only {expected})")
            continue
        results = json.loads(got[0].body)["results"]
        items = p.event.get_data()
        assert isinstance(items, dict)
        if [r.get("id") for r in results] != [i["id"] for i in items["items"]]:
            problems.append(f"{event_id}: results out of order")
        if tuple("error" in r for r in results) != p.errors:
            problems.append(f"{event_id}: per-item errors not at their items' places")
    counts = {
        "replies": len(replies.requests),
        "events_replied": sum(1 for p in planned if p.event.get_id() in by_request),
    }
    sink_counts = None
    if k_sink is not None:
        at_sink = _by_request(k_sink.requests)
        distinct = {k: {r.headers["ce-id"] for r in v} for k, v in at_sink.items()}
        requests = [p for p in planned if not p.poison]
        for k, found in distinct.items():
            if len(found) > 1:
                problems.append(f"K_SINK got {len(found)} distinct ids for {k}")
        sink_counts = {
            "deliveries": len(k_sink.requests),
            "events": len(distinct),
            "duplicate_deliveries": len(k_sink.requests) - len(distinct),
            "missing": sum(1 for p in requests if p.event.get_id() not in distinct),
        }
    return problems, counts, sink_counts


def scrape(function: LocalFunction) -> dict[str, float]:
    """Redeliveries by outcome and predictions, from the function's /metrics (0 if it is gone)."""
    out: dict[str, float] = defaultdict(float)
    try:
        text = httpx.get(f"{function.base_url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return dict(out)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "kubesentiment_event_redeliveries_total":
                out[s.labels["outcome"]] += s.value
            elif s.name == "kubesentiment_predictions_total":
                out["predictions"] += s.value
    return dict(out)


def _add(total: dict[str, float], more: dict[str, float]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0.0) + v


Fault = Callable[["Run"], Awaitable[None]]


@dataclass
class Run:
    """The processes and sinks of one scenario."""

    function: LocalFunction
    env: dict[str, str]
    log_dir: Path
    replies: Receiver
    dead: Receiver
    k_sink: Receiver
    counted: dict[str, float] = field(default_factory=dict)
    restarts: int = 0


async def run_scenario(
    name: str,
    planned: list[Planned],
    spec: DeliverySpec,
    *,
    concurrency: int,
    fault: Fault | None = None,
    computed_once: bool = False,
    k_sink_complete: bool = False,
) -> Outcome:
    """Start the function and the sinks, deliver `planned` with `fault` injected, check; with
    `computed_once` the model must have run each text exactly once, with `k_sink_complete` K_SINK
    must have every event."""
    log_dir = Path(tempfile.mkdtemp(prefix=f"redelivery-{name}-"))
    replies, dead = Receiver().start(), Receiver().start()
    k_sink = Receiver().start()
    env = {**model_override(), "LOG_LEVEL": "info", "K_SINK": k_sink.url}
    port = free_port()
    function = spawn(VARIANT, env=env, log_dir=log_dir, port=port)
    await asyncio.to_thread(wait_ready, function)
    run = Run(function, env, log_dir, replies, dead, k_sink)
    started = time.monotonic()
    try:
        async with httpx.AsyncClient() as client:
            dispatcher = Dispatcher(
                client,
                function.base_url + "/",
                spec,
                reply_sink=replies.url,
                dead_letter_sink=dead.url,
            )
            gate = asyncio.Semaphore(concurrency)

            async def deliver(p: Planned) -> None:
                async with gate:
                    await dispatcher.dispatch(p.event)

            sending = asyncio.gather(*(deliver(p) for p in planned))
            if fault is not None:
                await fault(run)
            await sending
        # K_SINK deliveries are in the background: let them land.
        await asyncio.to_thread(_settle, k_sink)
        _add(run.counted, scrape(run.function))
    finally:
        stop(run.function)
        for r in (replies, dead, k_sink):
            r.stop()
    problems, reply_counts, sink_counts = check(planned, replies, dead, k_sink)
    requests = [p for p in planned if not p.poison]
    valid_texts = sum(p.errors.count(False) for p in requests)
    computed = run.counted.get("predictions", 0)
    if computed_once and computed != valid_texts:
        problems.append(f"the model ran {computed:.0f} texts for {valid_texts}")
    if sink_counts is not None:  # the function logs each K_SINK retry (sink.py)
        logs = "".join(f.read_text(errors="replace") for f in sorted(log_dir.glob("*.log")))
        sink_counts["function_retries"] = logs.count("K_SINK delivery failed")
    if k_sink_complete and sink_counts is not None and sink_counts["missing"]:
        problems.append(f"{sink_counts['missing']} events never reached K_SINK")
    tally: Tally = dispatcher.tally
    sender = asdict(tally)
    sender["statuses"] = {str(k): v for k, v in sorted(tally.statuses.items())}
    sender["spec"] = asdict(spec)
    sender["restarts"] = run.restarts
    return Outcome(
        scenario=name,
        events=len(requests),
        poison_events=len(planned) - len(requests),
        sender=sender,
        function=run.counted,
        reply_sink=reply_counts,
        k_sink=sink_counts,
        dead_lettered=len(dead.requests),
        valid_texts=valid_texts,
        seconds=round(time.monotonic() - started, 2),
        problems=problems,
    )


def _settle(receiver: Receiver, quiet_s: float = 1.5, limit_s: float = 30.0) -> None:
    # Wait until no new delivery arrived for `quiet_s` (the function's K_SINK retries back off).
    deadline = time.monotonic() + limit_s
    seen, since = len(receiver.requests), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if len(receiver.requests) != seen:
            seen, since = len(receiver.requests), time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


async def _until(probe: Callable[[], bool], limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not probe() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def sigkill_after(replies: int) -> Fault:
    """SIGKILL the function once `replies` replies are in (others in flight), restart it."""

    async def fault(run: Run) -> None:
        await _until(lambda: len(run.replies.requests) >= replies)
        _add(run.counted, await asyncio.to_thread(scrape, run.function))
        os.killpg(run.function.process.pid, signal.SIGKILL)  # its own session (spawn)
        run.function.process.wait()
        port = run.function.port
        run.function = spawn(VARIANT, env=run.env, log_dir=run.log_dir, port=port)
        run.restarts += 1
        await asyncio.to_thread(wait_ready, run.function)

    return fault


def sink_down_after(replies: int, down_s: float) -> Fault:
    """Stop the K_SINK receiver once `replies` replies are in; start it again `down_s` later."""

    async def fault(run: Run) -> None:
        await _until(lambda: len(run.replies.requests) >= replies)
        await asyncio.to_thread(run.k_sink.stop)
        await asyncio.sleep(down_s)
        run.k_sink.start()

    return fault


SCENARIOS: dict[str, Callable[[], Coroutine[Any, Any, Outcome]]] = {
    "sigkill": lambda: run_scenario(
        "sigkill",
        plan("sigkill", 40, 16),
        DeliverySpec(
            retry=10, backoff_policy="exponential", backoff_delay="PT0.1S", timeout="PT20S"
        ),
        concurrency=6,
        fault=sigkill_after(10),
    ),
    "sink_down": lambda: run_scenario(
        "sink_down",
        plan("sink_down", 40, 8),
        DeliverySpec(
            retry=5, backoff_policy="exponential", backoff_delay="PT0.1S", timeout="PT20S"
        ),
        concurrency=4,
        fault=sink_down_after(10, 1.5),
        k_sink_complete=True,
    ),
    "timeout": lambda: run_scenario(
        "timeout",
        plan("timeout", 10, 256),
        DeliverySpec(retry=30, backoff_policy="linear", backoff_delay="PT0.2S", timeout="PT0.3S"),
        concurrency=3,
        computed_once=True,
        k_sink_complete=True,
    ),
}


def readme_table(report: dict[str, Any]) -> str:
    """The README's table of a report's counts (a test keeps the README in step with the file)."""
    rows = [
        "| scenario | events (+ poison) | attempts | retries | timeouts / refused / broken "
        "| replayed / joined | replies | dead-lettered | K_SINK deliveries (missing, function "
        "retries) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in report["scenarios"]:
        s, f, k = o["sender"], o["function"], o["k_sink"]
        rows.append(
            f"| `{o['scenario']}` | {o['events']} (+{o['poison_events']}) | {s['attempts']} "
            f"| {s['retries']} | {s['timeouts']} / {s['refused']} / {s['broken']} "
            f"| {f.get('replayed', 0):.0f} / {f.get('joined', 0):.0f} "
            f"| {o['reply_sink']['replies']} | {o['dead_lettered']} "
            f"| {k['deliveries']} ({k['missing']}, {k['function_retries']}) |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios, print and write their counts; exit 1 when any has a problem."""
    parser = argparse.ArgumentParser(prog="python -m tests.redelivery_harness")
    parser.add_argument("scenario", nargs="*", help=f"some of {', '.join(SCENARIOS)} (all)")
    parser.add_argument("--out", type=Path, help="write the outcomes as JSON here")
    parser.add_argument("--readme", type=Path, help="print the README table of this report")
    args = parser.parse_args(argv)
    if args.readme is not None:
        print(readme_table(json.loads(args.readme.read_text())))
        return 0
    unknown = set(args.scenario) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    args.scenario = args.scenario or list(SCENARIOS)
    outcomes = [asyncio.run(SCENARIOS[name]()) for name in args.scenario]
    for o in outcomes:
        print(
            f"{o.scenario}: {o.events} events + {o.poison_events} poison, "
            f"{o.sender['attempts']} attempts ({o.sender['retries']} retries, "
            f"{o.sender['timeouts']} timeouts, {o.sender['refused']} refused, "
            f"{o.sender['broken']} broken), "
            f"function {o.function}, replies {o.reply_sink}, K_SINK {o.k_sink}, "
            f"dead-lettered {o.dead_lettered}, {o.seconds} s, problems: {o.problems or 'none'}"
        )
    if args.out is not None:
        report = {
            "about": "python -m tests.redelivery_harness: a Knative-style retrying sender drives "
            "a real function through faults; counts per scenario",
            "scenarios": [asdict(o) for o in outcomes],
        }
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if any(o.problems for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
