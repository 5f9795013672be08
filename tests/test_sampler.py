"""The sampler with the real default model: uncertain texts first, no near-duplicates, clusters
covered, a seeded random share, payload-log events in both shapes, hashed logs refused."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import CollectorRegistry

from functions import pooled, sampler, texts
from functions.sentiment.core import AppState
from functions.sentiment.model import Classifier, padded_feeds
from functions.sentiment.payload_log import build_event
from shared.config import Settings
from shared.metrics import Metrics
from tests.conftest import DEFAULT_MODEL, FP32_MODEL, ROOT, LiveServer
from tests.receiver import Receiver

# Margins under the default int8 model (checked in `scored_margins`): the model hesitates on these
AMBIGUOUS = (
    "It works, I guess, though not as well as I hoped.",
    "The screen is bright but the battery barely lasts a day.",
    "The warranty is 90 days.",
    "The sequel is different from the first one.",
    "Not my favourite, not the worst either.",
    "The plot was predictable but the actors seemed to enjoy it.",
)
# ... and is sure of these.
CONFIDENT = (
    "Brilliant, wonderful, a joy from start to finish!",
    "I love it so much, thank you!",
    "Superb quality and fast delivery, delighted.",
    "This made my day, absolutely perfect.",
    "Amazing concert, best night of the year.",
    "Five stars, excellent in every way.",
    "Great value and it looks gorgeous.",
    "Lovely people and delicious food.",
    "Horrible experience, never again.",
    "Disgusting, the worst meal of my life.",
    "It broke after one day, total garbage.",
    "Rude staff and a filthy room, avoid.",
    "Pathetic customer service, I am furious.",
    "Dreadful film, boring and stupid.",
    "Absolute rubbish, do not buy.",
    "I hate this app, it crashes constantly.",
)


@pytest.fixture(scope="module")
def scorer() -> sampler.Scorer:
    return sampler.Scorer(DEFAULT_MODEL, threads=1)


def write_rows(path: Path, items: Sequence[str]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(items):
            f.write(json.dumps({"id": f"r{i}", "text": text}) + "\n")
    return path


def run(args: list[str]) -> tuple[int, list[dict[str, Any]], str]:
    out_path = Path(args[args.index("--out") + 1])
    err = io.StringIO()
    code = sampler.main([*args, "--threads", "1"], stderr=err)
    rows = [json.loads(line) for line in out_path.read_text().splitlines()] if code == 0 else []
    return code, rows, err.getvalue()


def test_the_most_uncertain_texts_are_picked_before_confident_ones(
    tmp_path: Path, scorer: sampler.Scorer
) -> None:
    scored = scorer.score([*AMBIGUOUS, *CONFIDENT])
    margins = scored.margins
    assert margins[: len(AMBIGUOUS)].max() < 0.3 < 0.75 < margins[len(AMBIGUOUS) :].min()
    source = write_rows(tmp_path / "in.jsonl", [*CONFIDENT[:8], *AMBIGUOUS, *CONFIDENT[8:]])
    out = tmp_path / "out.jsonl"
    base = [str(source), "-n", "4", "--random-share", "0", "--out", str(out)]
    code, rows, err = run([*base, "--pool", "1"])
    assert code == 0, err
    assert "raw probabilities" in err  # the default model's manifest has no temperature
    picked = [r["text"] for r in rows]
    assert set(picked) <= set(AMBIGUOUS)
    lowest = sorted(AMBIGUOUS, key=lambda t: margins[AMBIGUOUS.index(t)])[:4]
    assert set(picked) == set(lowest)
    for row in rows:
        assert set(row) == {"id", "text", "guess", "confidence", "margin", "sample"}
        assert row["sample"] in ("uncertain", "diverse")
        i = AMBIGUOUS.index(row["text"])
        assert row["margin"] == pytest.approx(margins[i], abs=1e-4)
        assert row["guess"] == scored.guesses[i]
        assert row["confidence"] == pytest.approx(scored.probabilities[i].max(), abs=1e-4)
    # With the default pool the diverse half may reach further, but the uncertain half does not.
    code, rows, err = run(base)
    assert code == 0, err
    uncertain = [r["text"] for r in rows if r["sample"] == "uncertain"]
    assert uncertain
    assert set(uncertain) == set(lowest[: len(uncertain)])


def test_guesses_are_the_serving_code_s_answers(scorer: sampler.Scorer) -> None:
    served = Classifier.load(DEFAULT_MODEL, intra_op_threads=1).predict(CONFIDENT)
    assert list(scorer.score(CONFIDENT).guesses) == [p.label for p in served]


def test_near_duplicates_are_not_both_picked(tmp_path: Path, scorer: sampler.Scorer) -> None:
    screen = AMBIGUOUS[1]
    variants = (screen.lower(), screen.replace("battery ", "battery  "))
    items = [*AMBIGUOUS, *variants, *CONFIDENT]
    scored = scorer.score(items)
    e = scored.embeddings
    at = items.index(screen)
    for v in variants:  # distinct texts, but near-duplicates to the served model
        assert float(e[at] @ e[items.index(v)]) > 0.95
    out = tmp_path / "out.jsonl"
    source = write_rows(tmp_path / "in.jsonl", items)
    code, rows, err = run([str(source), "-n", "8", "--random-share", "0", "--out", str(out)])
    assert code == 0, err
    picked = [r["text"] for r in rows]
    assert len(picked) == 8
    assert len({screen, *variants} & set(picked)) == 1
    ix = [items.index(t) for t in picked]
    sims = e[ix] @ e[ix].T
    assert (sims[~np.eye(len(ix), dtype=bool)] <= 0.95).all()
    # Without the cut-off the duplicates crowd in: the test above can fail.
    loose = sampler.select(scored.margins, e, 8, random_share=0, near_duplicate=1.01)
    assert len({screen, *variants} & {items[i] for i, _ in loose}) == 3


def test_diverse_picks_cover_every_cluster_of_uncertain_texts() -> None:
    rng = np.random.default_rng(7)
    centers = np.eye(64, dtype=np.float32)[:3]
    sizes, low = (10, 5, 5), (0.01, 0.2, 0.3)
    cluster = np.repeat(np.arange(3), sizes)
    emb = centers[cluster] + rng.normal(0, 0.06, (len(cluster), 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    margins = np.concatenate(
        [np.linspace(lo, lo + 0.09, n) for n, lo in zip(sizes, low, strict=True)]
    )
    sims = emb @ emb.T
    assert sims[~np.eye(len(cluster), dtype=bool)].max() < 0.95  # no near-duplicates at all
    picks = sampler.select(margins, emb, 6, random_share=0)
    kinds = {kind: {int(cluster[i]) for i, k in picks if k == kind} for kind in sampler.KINDS}
    assert kinds["uncertain"] == {0}  # the smallest margins are all in the first cluster
    assert {int(cluster[i]) for i, _ in picks} == {0, 1, 2}
    assert kinds["diverse"] >= {1, 2}
    # Uncertainty alone would never leave the first cluster.
    alone = sampler.select(margins, emb, 6, random_share=0, pool=1)
    assert {int(cluster[i]) for i, _ in alone} == {0}


def test_random_share_is_counted_marked_seeded_and_spread(
    tmp_path: Path, scorer: sampler.Scorer
) -> None:
    items = [*AMBIGUOUS, *CONFIDENT, *(f"Order {i} arrived on day {i + 2}." for i in range(18))]
    source = write_rows(tmp_path / "in.jsonl", items)

    def sample(seed: int, name: str) -> tuple[bytes, list[dict[str, Any]]]:
        out = tmp_path / name
        code, rows, err = run(
            [
                str(source),
                "-n",
                "10",
                "--random-share",
                "0.3",
                "--seed",
                str(seed),
                "--out",
                str(out),
            ]
        )
        assert code == 0, err
        assert "3 random" in err
        return out.read_bytes(), rows

    first, rows = sample(1, "a.jsonl")
    again, _ = sample(1, "b.jsonl")
    other, other_rows = sample(2, "c.jsonl")
    assert first == again
    assert len(rows) == 10
    assert len({r["id"] for r in rows}) == 10
    randoms = {r["id"] for r in rows if r["sample"] == "random"}
    assert len(randoms) == 3
    assert randoms != {r["id"] for r in other_rows if r["sample"] == "random"}
    assert first != other
    # Interleaved in proportion: a person who labels only the first half meets random rows.
    assert any(r["sample"] == "random" for r in rows[:5])
    # Uniform over all texts, confident ones included (seeds 0..9).
    confident = set()
    for seed in range(10):
        for i, kind in sampler.select(np.full(len(items), 0.5), np.eye(len(items)), 10, seed=seed):
            if kind == "random" and items[i] in CONFIDENT:
                confident.add(i)
    assert confident


def logged_event(state: AppState, items: Sequence[str]) -> CloudEvent:
    assert state.classifier is not None
    predictions = state.classifier.predict(items)
    return build_event(state, [(items, predictions)], route="/predict", status=200, request_id="r")


@pytest.fixture(scope="module")
def state() -> AppState:
    settings = replace(Settings(), model_dir=DEFAULT_MODEL, intra_op_threads=1)
    metrics = Metrics.create(CollectorRegistry())
    classifier = Classifier.load(DEFAULT_MODEL, intra_op_threads=1)
    return AppState(settings=settings, metrics=metrics, classifier=classifier)


@pytest.mark.parametrize("shape", ["structured", "data"])
def test_payload_log_events_are_read_in_both_shapes(
    tmp_path: Path, state: AppState, shape: str
) -> None:
    events = [logged_event(state, AMBIGUOUS[:3]), logged_event(state, [*AMBIGUOUS[2:], "  "])]
    other = CloudEvent({"type": "dev.kubesentiment.sentiment.result", "source": "/x"}, {"a": 1})
    path = tmp_path / "events.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for event in [*events, other]:
            if shape == "structured":
                f.write(JSONFormat().write(event).decode("utf-8") + "\n")
            elif event is not other:
                f.write(json.dumps(event.get_data()) + "\n")
    read = texts.read(path)
    assert [t.text for t in read.texts] == list(AMBIGUOUS)
    assert read.duplicates == 1
    assert read.skipped_events == (1 if shape == "structured" else 0)
    assert [t.id for t in read.texts] == [texts.text_id(t) for t in AMBIGUOUS]
    code, rows, err = run([str(path), "-n", "3", "--out", str(tmp_path / "out.jsonl")])
    assert code == 0, err
    assert {r["text"] for r in rows} <= set(AMBIGUOUS)


def test_hashed_payload_logs_are_refused(tmp_path: Path, state: AppState) -> None:
    hashed = replace(state, settings=replace(state.settings, payload_log_hash_texts=True))
    path = tmp_path / "hashed.jsonl"
    path.write_text(JSONFormat().write(logged_event(hashed, AMBIGUOUS[:2])).decode() + "\n")
    err = io.StringIO()
    code = sampler.main([str(path), "--out", str(tmp_path / "o.jsonl")], stderr=err)
    assert code == 2
    assert "hashed" in err.getvalue()
    assert "cannot be labelled" in err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert len(err.getvalue().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        pytest.param("not json\n", ".jsonl", "in.jsonl:1: not valid JSON", id="bad-json"),
        pytest.param('{"words": "x"}\n', ".jsonl", "neither a payload-log event", id="no-text"),
        pytest.param("id,body\n1,hello\n", ".csv", "no 'text' column", id="csv-no-text"),
        pytest.param("\n", ".jsonl", "no text to sample", id="empty"),
        pytest.param('{"id":1,"text":"a"}\n{"id":1,"text":"b"}\n', ".jsonl", "names two", id="ids"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, content: str, suffix: str, message: str
) -> None:
    path = tmp_path / f"in{suffix}"
    path.write_text(content)
    err = io.StringIO()
    assert sampler.main([str(path)], stderr=err) == 2
    assert message in err.getvalue()
    assert len(err.getvalue().splitlines()) == 1


def test_csv_texts_keep_commas_quotes_and_newlines(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('text,id\n"a, ""b""\nc 😀",x\nplain,\n', encoding="utf-8")
    read = texts.read(path)
    assert [(t.id, t.text) for t in read.texts] == [
        ("x", 'a, "b"\nc 😀'),
        (texts.text_id("plain"), "plain"),
    ]


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "in.jsonl", AMBIGUOUS)
    err = io.StringIO()
    assert sampler.main([str(source), "--model", str(tmp_path / "nope")], stderr=err) == 2
    assert "does not exist" in err.getvalue()


def test_temperature_in_the_manifest_calibrates_the_margins() -> None:
    probs = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
    hot = sampler.calibrate(probs, 2.0)
    assert hot.sum() == pytest.approx(1.0)
    expected = np.sqrt(probs) / np.sqrt(probs).sum()  # softmax(log p / 2)
    assert hot == pytest.approx(expected, abs=1e-6)
    assert sampler.calibrate(probs, None) is probs


@pytest.mark.parametrize("model", [DEFAULT_MODEL, FP32_MODEL], ids=["int8", "fp32"])
def test_the_pooled_output_matches_onnx_graph_surgery(model: Path) -> None:
    raw = (model / "model.onnx").read_bytes()
    name = pooled.pooled_name(raw)
    proto = onnx.load_from_string(raw)
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    )
    reference = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(pooled.with_output(raw, name), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    c = Classifier.load(model, intra_op_threads=1)
    feeds = padded_feeds(
        [e.windows[0] for e in c.encode(AMBIGUOUS)], c.pad_id, {"input_ids", "attention_mask"}
    )
    got = ours.run(["probabilities", name], feeds)
    want = reference.run(["probabilities", name], feeds)
    assert got[1].shape == (len(AMBIGUOUS), 384)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], plain.run(["probabilities"], feeds)[0])
    # The onnx package reads the appended output as a graph output of its own.
    assert onnx.load_from_string(pooled.with_output(raw, name)).graph.output[-1].name == name


def test_a_graph_without_mean_pooling_is_refused() -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["logits"])], "g", [x], [y]
    )
    raw = onnx.helper.make_model(graph).SerializeToString()
    with pytest.raises(pooled.GraphError, match="no mean-pooling Div"):
        pooled.pooled_name(raw)
    with pytest.raises(pooled.GraphError, match="not an ONNX model"):
        pooled.pooled_name(b"\x0a\xff")


def test_the_sampler_runs_on_the_serving_dependencies_alone(tmp_path: Path) -> None:
    """Neither onnx nor torch (training dependencies, not in the serving image) is imported."""
    source = write_rows(tmp_path / "in.jsonl", [*AMBIGUOUS, *CONFIDENT])
    out = tmp_path / "out.jsonl"
    args = [str(source), "-n", "5", "--threads", "1", "--out", str(out)]
    check = (
        "import sys; from functions import sampler\n"
        f"code = sampler.main({args!r})\n"
        "heavy = {m.split('.')[0] for m in sys.modules} & {'onnx', 'torch', 'transformers'}\n"
        "print(code, sorted(heavy))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "0 []", done.stderr
    assert len(out.read_text().splitlines()) == 5


@pytest.mark.integration
@pytest.mark.slow
def test_from_the_function_s_payload_log_to_a_labelling_file(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    """The real wire: a function logs its requests to a sink, the sink's events are stored as
    structured JSON lines, and the sampler picks from them."""
    receiver = Receiver().start()
    try:
        env = {"PAYLOAD_LOG_SAMPLE": "1", "PAYLOAD_LOG_SINK": receiver.url}
        server = live_server({**env, "ORT_INTRA_OP_THREADS": "1"})
        batches = [list(AMBIGUOUS[:3]), [*AMBIGUOUS[3:], *CONFIDENT[:4]], list(CONFIDENT[4:])]
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            for texts_ in batches:
                assert c.post("/predict", json={"texts": texts_}).status_code == 200
        received = receiver.wait_for(len(batches), deadline_s=20.0)
        assert len(received) == len(batches)
    finally:
        receiver.stop()
    stored = tmp_path / "events.jsonl"
    with stored.open("w", encoding="utf-8") as f:
        for r in received:
            event = ce_http.from_binary_event(ce_http.HTTPMessage(headers=r.headers, body=r.body))
            f.write(JSONFormat().write(event).decode("utf-8") + "\n")
    out = tmp_path / "batch.jsonl"
    code, rows, err = run([str(stored), "-n", "6", "--random-share", "0", "--out", str(out)])
    assert code == 0, err
    assert "6 of 22 distinct texts" in err
    assert {r["text"] for r in rows if r["sample"] == "uncertain"} <= set(AMBIGUOUS)
