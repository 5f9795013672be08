"""Redelivered CloudEvents: the same reply id and body, answered from the stored reply or joined
while in flight, computed afresh when an id is reused for other content (redelivery.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from functions.batchjob import COMPLETED, BatchRequest, completion
from functions.sentiment.payload_log import LOGGED_TYPE
from functions.sentiment.redelivery import Redeliveries, content_digest
from functions.sentiment.schemas import REQUEST_TYPE, RESPONSE_TYPE
from shared.config import Settings
from shared.eventid import derived_id
from tests.receiver import Receiver

SOURCE = "/tests/redelivery"


def event(data: Any, event_id: str = "ev-1", **attributes: Any) -> CloudEvent:
    return CloudEvent({"type": REQUEST_TYPE, "source": SOURCE, "id": event_id, **attributes}, data)


def post(client: TestClient, ev: CloudEvent, *, structured: bool) -> httpx.Response:
    message = ce_http.to_structured_event(ev) if structured else ce_http.to_binary_event(ev)
    return client.post("/", headers=message.headers, content=message.body)


def reply_of(response: httpx.Response) -> BaseCloudEvent:
    assert response.status_code == 200, response.text
    return ce_http.from_http_event(
        ce_http.HTTPMessage(headers=dict(response.headers), body=response.content)
    )


def sample(client: TestClient, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def predicted(client: TestClient) -> float:
    return sample(client, "kubesentiment_predictions_total")


def redeliveries(client: TestClient, outcome: str) -> float:
    return sample(client, "kubesentiment_event_redeliveries_total", outcome=outcome)


@pytest.fixture
def ce_client(settings: Settings, make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(settings)


@pytest.mark.parametrize(
    "structured", [pytest.param(False, id="binary"), pytest.param(True, id="structured")]
)
def test_a_redelivery_gets_the_same_reply_id_and_body_without_recomputing(
    ce_client: TestClient, settings: Settings, structured: bool
) -> None:
    ev = event({"texts": ["I love it", "awful", "It arrived on Tuesday."]}, f"same-{structured}")
    first = post(ce_client, ev, structured=structured)
    computed = predicted(ce_client)
    again = post(ce_client, ev, structured=structured)

    assert again.content == first.content  # the same body, byte for byte
    for header in ("ce-id", "ce-time", "ce-type", "content-type"):
        assert again.headers.get(header) == first.headers.get(header)
    reply = reply_of(again)
    assert reply.get_id() == derived_id(SOURCE, ev.get_id(), RESPONSE_TYPE, settings.variant)
    assert reply.get_id() == reply_of(first).get_id()
    assert predicted(ce_client) == computed == 3  # the model did not run again
    assert redeliveries(ce_client, "replayed") == 1
    assert redeliveries(ce_client, "conflict") == 0


def test_a_redelivery_in_the_other_content_mode_is_the_same_event(ce_client: TestClient) -> None:
    ev = event({"items": [{"id": "a", "text": "great"}]}, "modes")
    first = reply_of(post(ce_client, ev, structured=False))
    second = reply_of(post(ce_client, ev, structured=True))
    assert second.get_id() == first.get_id()
    assert second.get_data() == first.get_data()
    assert redeliveries(ce_client, "replayed") == 1


def test_a_reused_id_with_other_content_is_computed_not_served_stale(
    ce_client: TestClient,
) -> None:
    first = reply_of(post(ce_client, event({"texts": ["I love it"]}, "reused"), structured=False))
    other = event({"texts": ["This is the worst purchase I ever made.", "fine"]}, "reused")
    second = reply_of(post(ce_client, other, structured=False))
    first_data, second_data = first.get_data(), second.get_data()
    assert isinstance(first_data, dict)
    assert isinstance(second_data, dict)
    assert len(first_data["results"]) == 1
    assert next(r["label"] for r in second_data["results"]) == "negative"
    assert len(second_data["results"]) == 2
    assert redeliveries(ce_client, "conflict") == 1
    assert redeliveries(ce_client, "replayed") == 0
    assert predicted(ce_client) == 3
    # The new content's answer is the one kept now: its redelivery replays it.
    third = reply_of(post(ce_client, other, structured=True))
    assert third.get_data() == second_data
    assert redeliveries(ce_client, "replayed") == 1


def test_a_changed_subject_is_other_content() -> None:
    data = {"texts": ["x"]}
    assert content_digest(event(data)) == content_digest(event({"texts": ["x"]}))
    assert content_digest(event(data)) != content_digest(event(data, subject="s"))
    assert content_digest(event(data)) != content_digest(event({"texts": ["y"]}))
    assert content_digest(event(data)) != content_digest(
        event({"texts": ["x"], "long_text": "chunk"})
    )


def test_per_item_errors_are_replayed_in_order(ce_client: TestClient) -> None:
    items = [
        {"id": 1, "text": "good"},
        {"id": 2, "text": ""},
        {"id": 3, "text": "bad, really bad"},
        {"id": 4},
    ]
    ev = event({"items": items}, "errors")
    first = post(ce_client, ev, structured=False)
    again = post(ce_client, ev, structured=False)
    assert again.content == first.content
    out = reply_of(again).get_data()
    assert isinstance(out, dict)
    assert [r.get("id") for r in out["results"]] == [1, 2, 3, 4]
    assert ["error" in r for r in out["results"]] == [False, True, False, True]
    assert redeliveries(ce_client, "replayed") == 1


def test_an_invalid_event_is_not_stored(ce_client: TestClient) -> None:
    bad = event({"texts": "not a list"}, "invalid")
    assert post(ce_client, bad, structured=False).status_code == 400
    assert post(ce_client, bad, structured=False).status_code == 400
    assert redeliveries(ce_client, "replayed") == 0


def test_with_replay_off_every_delivery_is_computed(
    settings: Settings, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(replace(settings, event_replay_size=0))
    ev = event({"texts": ["fine"]}, "off")
    first, again = (
        reply_of(post(client, ev, structured=False)),
        reply_of(post(client, ev, structured=False)),
    )
    assert first.get_id() == again.get_id()  # ids are derived with or without the cache
    assert predicted(client) == 2


def test_k_sink_gets_one_event_per_answer_with_the_reply_id(
    settings: Settings, make_client: Callable[..., TestClient]
) -> None:
    sink = Receiver().start()
    try:
        client = make_client(replace(settings, k_sink=sink.url))
        ev = event({"texts": ["lovely"]}, "sinked")
        replies = [reply_of(post(client, ev, structured=s)) for s in (False, True, False)]
        received = sink.wait_for(1)
        time.sleep(0.3)  # room for a wrong second delivery to arrive
        assert len(sink.requests) == 1, [r.headers.get("ce-id") for r in sink.requests]
        assert {r.get_id() for r in replies} == {received[0].headers["ce-id"]}
    finally:
        sink.stop()


# The cache's own rules, with a controlled computation (the app tests above run the real one).


def reply(text: str) -> CloudEvent:
    return CloudEvent({"type": RESPONSE_TYPE, "source": "/f", "id": text}, {"results": [text]})


def test_a_redelivery_in_flight_joins_the_first_computation() -> None:
    async def scenario() -> None:
        outcomes: list[str] = []
        cache = Redeliveries(8, 60.0, count=outcomes.append)
        release = asyncio.Event()
        runs = 0

        async def compute() -> CloudEvent:
            nonlocal runs
            runs += 1
            await release.wait()
            return reply("r")

        first = asyncio.ensure_future(cache.answer("s", "1", b"d", compute))
        await asyncio.sleep(0)
        # The first caller goes away (its sender timed out): the computation goes on.
        second = asyncio.ensure_future(cache.answer("s", "1", b"d", compute))
        await asyncio.sleep(0)
        first.cancel()
        assert cache.in_flight == 1
        release.set()
        got, _ = await second
        assert got.get_id() == "r"
        assert runs == 1
        assert outcomes == ["joined"]
        again, _ = await cache.answer("s", "1", b"d", compute)
        assert again.get_data() == {"results": ["r"]}
        assert runs == 1
        assert outcomes == ["joined", "replayed"]
        assert cache.in_flight == 0

    asyncio.run(scenario())


def test_failures_are_not_stored_and_entries_expire_and_are_bounded() -> None:
    async def scenario() -> None:
        now = [0.0]
        outcomes: list[str] = []
        cache = Redeliveries(2, 10.0, count=outcomes.append, clock=lambda: now[0])
        runs: list[str] = []

        def computing(text: str, fail: bool = False) -> Callable[[], Any]:
            async def compute() -> CloudEvent:
                runs.append(text)
                if fail:
                    raise RuntimeError("503")
                return reply(text)

            return compute

        with pytest.raises(RuntimeError):
            await cache.answer("s", "a", b"d", computing("a", fail=True))
        await cache.answer("s", "a", b"d", computing("a"))  # the retry recomputes
        await cache.answer("s", "a", b"d", computing("a"))  # replayed
        assert runs == ["a", "a"]
        now[0] = 11.0  # past the TTL: computed again
        await cache.answer("s", "a", b"d", computing("a"))
        assert runs == ["a", "a", "a"]
        await cache.answer("s", "b", b"d", computing("b"))
        await cache.answer("s", "c", b"d", computing("c"))  # size 2: "a" is evicted
        assert len(cache) == 2
        await cache.answer("s", "a", b"d", computing("a"))
        assert runs == ["a", "a", "a", "b", "c", "a"]
        assert outcomes == ["replayed"]

    asyncio.run(scenario())


def test_a_reply_the_keep_rule_refuses_is_recomputed() -> None:
    async def scenario() -> None:
        cache = Redeliveries(8, 60.0, keep=lambda r: r.get_id() != "late")
        runs = 0

        async def compute() -> CloudEvent:
            nonlocal runs
            runs += 1
            return reply("late")

        await cache.answer("s", "1", b"d", compute)
        await cache.answer("s", "1", b"d", compute)
        assert runs == 2

    asyncio.run(scenario())


# Derived ids of the other events the function and the batch job emit.


def test_payload_log_events_are_named_by_what_they_log(
    settings: Settings, make_client: Callable[..., TestClient]
) -> None:
    sink = Receiver().start()
    try:
        client = make_client(replace(settings, payload_log_sample=1.0, payload_log_sink=sink.url))
        ev = event({"texts": ["nice"]}, "logged")
        post(client, ev, structured=True)
        client.post("/predict", json={"text": "meh"}, headers={"X-Request-ID": "req-42"})
        received = sink.wait_for(2)
        ids = {r.headers["ce-subject"]: r.headers["ce-id"] for r in received}
        variant = settings.variant
        assert ids["/"] == derived_id(SOURCE, "logged", LOGGED_TYPE, variant)
        assert ids["/predict"] == derived_id(settings.event_source, "req-42", LOGGED_TYPE, variant)
        # A replayed event computes nothing, so it logs nothing again.
        post(client, ev, structured=False)
        time.sleep(0.3)
        assert len(sink.requests) == 2
    finally:
        sink.stop()


def test_a_batch_completion_is_named_by_its_request_and_status() -> None:
    request = BatchRequest(event_id="job-1", input="in.jsonl", output="out.jsonl")

    def completed(error: str | None, source: str | None) -> CloudEvent:
        return completion(request, "job-1", summary=None, error=error, source=source)

    invalid = completed("bad", "/producer")
    assert invalid.get_id() == derived_id("/producer", "job-1", COMPLETED, "invalid")
    assert completed("bad", "/producer").get_id() == invalid.get_id()  # a retry: the same id
    assert completed("bad", "/other").get_id() != invalid.get_id()
    assert completed("bad", None).get_id() != completed("bad", None).get_id()  # unreadable event


def test_a_k_sink_delivery_that_gave_up_is_handed_again_on_replay() -> None:
    async def scenario() -> None:
        cache = Redeliveries(8, 60.0)

        async def compute() -> CloudEvent:
            return reply("r")

        async def delivered(ok: bool) -> bool:
            return ok

        _, first = await cache.answer("s", "1", b"d", compute)
        assert first.claim_sink()
        failed = asyncio.ensure_future(delivered(False))
        failed.add_done_callback(first.sink_done)
        await failed
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
        _, again = await cache.answer("s", "1", b"d", compute)
        assert again is first
        assert again.claim_sink()  # the earlier delivery gave up: this replay hands it over
        ok = asyncio.ensure_future(delivered(True))
        ok.add_done_callback(again.sink_done)
        await ok
        await asyncio.sleep(0)
        _, third = await cache.answer("s", "1", b"d", compute)
        assert not third.claim_sink()  # delivered: not again

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("priority", "{}", id="priority"),
        pytest.param("deadline", "yesterday", id="deadline"),
    ],
)
def test_a_redelivery_that_is_invalid_as_sent_is_refused_not_replayed(
    ce_client: TestClient, name: str, value: str
) -> None:
    # Found by schemathesis: the same (source, id, data) with a broken extension got the stored
    # reply. Every check runs before the replay cache is consulted.
    ev = event({"texts": ["Great film"]}, f"invalid-{name}")
    assert post(ce_client, ev, structured=False).status_code == 200
    broken = event({"texts": ["Great film"]}, f"invalid-{name}", **{name: value})
    response = post(ce_client, broken, structured=False)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_event"
    assert redeliveries(ce_client, "replayed") == 0
