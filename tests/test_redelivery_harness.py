"""At least once in, one answer out: the Knative-style sender (tests/delivery.py) and the
redelivery harness (tests/redelivery_harness.py) against a real function through faults."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from cloudevents.core.v1.event import CloudEvent

from tests.conftest import ROOT
from tests.delivery import DeliverySpec, Dispatcher, iso8601_seconds
from tests.receiver import Receiver
from tests.redelivery_harness import SCENARIOS, Outcome, readme_table

# --- the sender ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("PT0.2S", 0.2), ("PT1S", 1.0), ("PT1M30S", 90.0), ("PT2H", 7200.0), ("P1DT1S", 86401.0)],
)
def test_iso8601_durations(duration: str, seconds: float) -> None:
    assert iso8601_seconds(duration) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "P", "PT", "0.2S", "PT-1S", "1 second"])
def test_bad_durations_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        iso8601_seconds(bad)


def test_backoff_policies_follow_the_delivery_spec() -> None:
    linear = DeliverySpec(backoff_policy="linear", backoff_delay="PT0.5S")
    exponential = DeliverySpec(backoff_policy="exponential", backoff_delay="PT0.5S")
    assert [linear.delay_s(n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]
    assert [exponential.delay_s(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]


@pytest.mark.parametrize(
    ("status", "attempts"),
    [pytest.param(503, 4, id="503-retried"), pytest.param(400, 1, id="400-final")],
)
def test_undeliverable_events_go_to_the_dead_letter_sink(status: int, attempts: int) -> None:
    subscriber = Receiver(status=status).start()
    dead, replies = Receiver().start(), Receiver().start()
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    async def deliver() -> bool:
        async with httpx.AsyncClient() as client:
            spec = DeliverySpec(retry=3, backoff_policy="linear", backoff_delay="PT0.1S")
            dispatcher = Dispatcher(
                client, subscriber.url, spec, reply_sink=replies.url,
                dead_letter_sink=dead.url, sleep=sleep,
            )  # fmt: skip
            event = CloudEvent({"type": "t", "source": "/s", "id": "e1"}, {"x": 1})
            ok = await dispatcher.dispatch(event)
            assert dispatcher.tally.attempts == attempts
            return ok

    try:
        assert asyncio.run(deliver()) is False
        assert len(subscriber.requests) == attempts
        assert waits == pytest.approx([0.1 * n for n in range(1, attempts)])
        (letter,) = dead.requests
        assert letter.headers["ce-id"] == "e1"
        assert letter.headers["ce-knativeerrorcode"] == str(status)
        assert letter.headers["ce-knativeerrordest"] == subscriber.url
        assert base64.b64decode(letter.headers["ce-knativeerrordata"]) == b""
        assert not replies.requests
    finally:
        for r in (subscriber, dead, replies):
            r.stop()


def test_readme_shows_the_committed_counts() -> None:
    report = json.loads((ROOT / "docs" / "redelivery.json").read_text())
    assert readme_table(report) in (ROOT / "README.md").read_text(), (
        "README's redelivery table is stale: python -m tests.redelivery_harness --readme "
        "docs/redelivery.json"
    )
    assert all(not o["problems"] for o in report["scenarios"])


# --- the harness: a real function through faults -------------------------------------------------


def run(name: str) -> Outcome:
    outcome = asyncio.run(SCENARIOS[name]())
    print(outcome)
    assert not outcome.problems, outcome.problems
    assert outcome.reply_sink["events_replied"] + outcome.dead_lettered - outcome.poison_events == (
        outcome.events
    )
    assert outcome.dead_lettered >= outcome.poison_events  # the poison events, with extensions
    return outcome


@pytest.mark.integration
@pytest.mark.slow
def test_sigkill_with_events_in_flight_loses_none_and_keeps_reply_ids() -> None:
    outcome = run("sigkill")
    assert outcome.sender["restarts"] == 1
    assert outcome.sender["broken"] + outcome.sender["refused"] > 0  # the kill was felt


@pytest.mark.integration
@pytest.mark.slow
def test_k_sink_down_then_up_gets_every_event_under_one_id() -> None:
    outcome = run("sink_down")
    assert outcome.k_sink is not None
    assert outcome.k_sink["function_retries"] > 0  # deliveries did hit the stopped receiver
    assert outcome.k_sink["missing"] == 0


@pytest.mark.integration
@pytest.mark.slow
def test_a_timeout_shorter_than_a_batch_computes_each_event_once() -> None:
    outcome = run("timeout")
    assert outcome.sender["timeouts"] > 0
    assert outcome.function["joined"] + outcome.function["replayed"] > 0
    assert outcome.function["predictions"] == outcome.valid_texts  # exactly once
