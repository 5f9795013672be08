"""`make finetune` end to end on a tiny model, label plans, data errors, the quantization gate."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from functions.sentiment.model import Classifier
from shared import modeldir
from shared.config import Settings
from tests.conftest import DEFAULT_MODEL, FP32_MODEL, ROOT

torch = pytest.importorskip("torch", reason="the training dependency group is not installed")
transformers = pytest.importorskip("transformers")

from tests.tiny import save_wordpiece_tokenizer  # noqa: E402
from training import data, finetune, labelled, quantgate  # noqa: E402
from training.modeling import from_base, save_trained  # noqa: E402

POSITIVE = ("love", "great", "good")
NEGATIVE = ("hate", "terrible", "bad")
FILLER = ("i", "it", "this", "movie", "was", "the", "a", "ok")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(encoder folder, checkpoint): a tiny random BERT standing in for MiniLM and the default."""
    encoder = tmp_path_factory.mktemp("tiny-encoder")
    words = [*POSITIVE, *NEGATIVE, *FILLER, "not", "stars"]
    vocab_size = save_wordpiece_tokenizer(words, encoder)
    config = transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(encoder)
    checkpoint = tmp_path_factory.mktemp("tiny") / "tiny-checkpoint"
    save_trained(from_base(encoder, data.LABELS), checkpoint)
    return encoder, checkpoint


def generated_rows(
    n: int, labels: dict[str, tuple[str, ...]], seed: int = 7
) -> list[dict[str, str]]:
    """Texts of filler words around one cue word; the cue decides the label."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(labels)[i % len(labels)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(labels[label]))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def run_finetune(args: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "training.finetune", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def finetuned(
    tiny_base: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, str]:
    """One fine-tuning run on 150 generated rows: (OUT, stdout, stderr)."""
    encoder, checkpoint = tiny_base
    tmp = tmp_path_factory.mktemp("finetune")
    path = tmp / "reviews.jsonl"
    rows = generated_rows(150, {"positive": POSITIVE, "negative": NEGATIVE})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, stdout, stderr = tmp / "mine", io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        finetune.main(
            [str(path), "--out", str(out), "--base", str(checkpoint), "--base-model", str(encoder),
             "--epochs", "30", "--lr", "3e-3", "--freeze-layers", "0", "--max-tokens", "64",
             "--threads", "1"]
        )  # fmt: skip
    return out, stdout.getvalue(), stderr.getvalue()


def test_finetune_end_to_end_on_tiny_model(
    finetuned: tuple[Path, str, str],
    settings: Settings,
    make_client: Callable[..., TestClient],
) -> None:
    out, stdout, stderr = finetuned
    assert "| default minilm-sentiment-int8 |" in stdout
    assert "| true \\ predicted | negative | positive |" in stdout
    assert "held_out_fifth: fp32" in stdout
    assert "step/s" in stderr  # the progress bar
    int8, fp32 = modeldir.load(out), modeldir.load(out.with_name("mine-fp32"))
    assert (out.with_name("mine-checkpoint") / "trained.safetensors").is_file()
    assert int8.precision == "int8"
    assert fp32.precision == "fp32"
    # Labels from the data, in the default head's order, so score = P(positive) - P(negative).
    assert int8.labels == fp32.labels == ("negative", "positive")
    gate = int8.extra["quantization_gate"]
    assert gate["passed"] is True
    assert set(gate["sets"]["held_out_fifth"]) == {"fp32", "int8", "drop"}
    results = int8.evaluation["held_out_fifth"]
    assert results["mine int8"]["n"] == 30
    assert results["mine int8"]["accuracy"] >= 0.9  # the cue words are learnable
    assert sum(map(sum, results["mine int8"]["confusion"])) == 30
    # It serves: the app loads the directory and answers /predict with the new labels.
    client = make_client(replace(settings, model_dir=out))
    body = client.post("/predict", json={"text": "i love this movie"}).json()
    assert set(body["probabilities"]) == {"negative", "positive"}
    assert body["label"] == "positive"
    p = body["probabilities"]
    assert body["score"] == pytest.approx(p["positive"] - p["negative"], abs=1e-5)
    # A second run can start from the first one's output (--base OUT).
    assert finetune.checkpoint_dir(out) == out.with_name("mine-checkpoint")


@pytest.mark.parametrize(
    ("labels", "expected", "sentiment", "weights"),
    [
        pytest.param(["positive", "negative"], ("negative", "positive"), True, (-1, 1),
                     id="binary"),
        pytest.param(
            ["Neutral", "POSITIVE", "negative"], ("negative", "neutral", "positive"), True,
            (-1, 0, 1), id="three-any-case",
        ),
        pytest.param(["neutral", "positive"], ("neutral", "positive"), True, (0, 1), id="subset"),
        pytest.param(["5", "1", "3", "2", "4"], ("1", "2", "3", "4", "5"), False,
                     (-1, -0.5, 0, 0.5, 1), id="stars"),
        pytest.param(["10", "9", "2"], ("2", "9", "10"), False, (-1, 0.75, 1), id="numeric-order"),
        pytest.param(["spam", "ham", "eggs"], ("eggs", "ham", "spam"), False, None, id="other"),
        pytest.param(["positive", "bad"], ("bad", "positive"), False, None, id="mixed"),
    ],
)  # fmt: skip
def test_label_plan(
    labels: list[str], expected: tuple[str, ...], sentiment: bool, weights: tuple[float, ...] | None
) -> None:
    rows = [labelled.Row(f"text {i}", label) for i, label in enumerate(labels * 3)]
    plan = labelled.plan_labels(rows, Path("f.csv"))
    assert plan.labels == expected
    assert plan.sentiment is sentiment
    assert plan.score_weights == (None if weights is None else pytest.approx(weights))
    assert {plan.labels[plan.index(label)] for label in labels} == set(expected)


def test_split_is_seeded_and_keeps_every_label_on_both_sides() -> None:
    rows = [labelled.Row(f"t{i}", "a" if i % 4 else "b") for i in range(100)]
    train, held = labelled.split(rows, 3)
    assert (len(train), len(held)) == (80, 20)
    assert labelled.counts(held) == "a: 15, b: 5"
    assert labelled.split(rows, 3) == (train, held)
    assert labelled.split(rows, 4) != (train, held)
    assert not {r.text for r in train} & {r.text for r in held}


def test_head_rows_come_from_the_default_head(tiny_base: tuple[Path, Path]) -> None:
    from training.modeling import load_trained, with_labels

    encoder, checkpoint = tiny_base
    old = load_trained(checkpoint, encoder).classifier.weight.detach().clone()
    model = with_labels(load_trained(checkpoint, encoder), ("negative", "positive"))
    assert torch.equal(model.classifier.weight[0], old[0])
    assert torch.equal(model.classifier.weight[1], old[2])
    assert model.config.id2label == {0: "negative", 1: "positive"}


CASES = [
    pytest.param("r.csv", "label,body\npositive,nice\n", r"r\.csv: no 'text' column "
                 r"\(columns: 'label', 'body'\)", id="missing-column"),
    pytest.param("r.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n',
                 r"r\.jsonl:2: no 'label' field", id="missing-field"),
    pytest.param("r.csv", "text,label\na,good\nb,good\n",
                 r"only one label \('good'\) in 2 rows", id="single-label"),
    pytest.param("r.csv", "", r"r\.csv: the file is empty", id="empty"),
    pytest.param("r.csv", "text,label\n", r"no row has both a text and a label", id="header-only"),
    pytest.param("r.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label: 1}\n',
                 r"r\.jsonl:2: not valid JSON", id="bad-json-line"),
    pytest.param("r.jsonl", '["a", "x"]\n', r"r\.jsonl:1: not a JSON object", id="json-array"),
    pytest.param("r.csv", b"text,label\n\xff\xfe,x\n", r"not UTF-8 text", id="not-utf8"),
    pytest.param("missing.csv", None, r"missing\.csv: cannot read: No such file", id="no-file"),
    pytest.param("r.csv", "text,label\na,x\nb,x\nc,y\n", r"label 'y' has only 1 row",
                 id="label-too-rare"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content", "message"), CASES)
def test_data_errors_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: str | bytes | None,
    message: str,
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        finetune.main([str(path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("finetune: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_the_command_exits_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("body,label\nnice,positive\n")
    r = run_finetune([str(path), "--out", str(tmp_path / "o")])
    assert r.returncode == 1
    assert r.stderr == f"finetune: {path}: no 'text' column (columns: 'body', 'label')\n"
    path.write_text("text,label\na,x\nb,x\nc,y\nd,y\n")
    r = run_finetune([str(path), "--out", str(tmp_path / "o"), "--base", str(tmp_path)])
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert "not a training checkpoint" in r.stderr


def test_gate_check_refuses_more_than_one_point() -> None:
    ok = quantgate.check({"a": 0.834, "b": 0.775}, {"a": 0.832, "b": 0.767})
    assert ok["passed"] is True
    assert ok["sets"]["b"]["drop"] == pytest.approx(0.008)
    bad = quantgate.check({"a": 0.834, "b": 0.775}, {"a": 0.835, "b": 0.764})
    assert bad["passed"] is False
    assert bad["failed"] == ["b"]
    assert quantgate.check({"a": 0.80}, {"a": 0.79})["passed"] is True  # exactly one point
    with pytest.raises(ValueError, match="held-out sets differ"):
        quantgate.check({"a": 0.8}, {"b": 0.8})


def test_committed_int8_passes_the_gate_with_make_eval_figures() -> None:
    record = quantgate.committed_record(modeldir.load(FP32_MODEL), modeldir.load(DEFAULT_MODEL))
    assert set(record["sets"]) == {
        "movie_binary", "hutto_3class", "hutto_binary", "crowdflower_3class", "rt_binary"
    }  # fmt: skip
    assert record["passed"] is True, quantgate.describe(record)


def _degrade(src: Path, out: Path) -> modeldir.Manifest:
    """A 'quantizer' whose int8 graph always answers negative: the head's bias is pushed."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from training.export import derive_int8

    manifest = derive_int8(src, out)
    graph = onnx.load(str(out / "model.onnx"))
    biases = [t for t in graph.graph.initializer if t.name.endswith("classifier.bias")]
    assert biases, "no classifier bias found"
    for t in biases:
        value = numpy_helper.to_array(t).copy()
        value[0] += np.float32(100.0)
        t.CopyFrom(numpy_helper.from_array(value, t.name))
    onnx.save(graph, str(out / "model.onnx"))
    return modeldir.write_manifest(out, manifest)


def test_gate_refuses_a_degraded_int8_and_accepts_a_good_one(
    finetuned: tuple[Path, str, str], tmp_path: Path
) -> None:
    fp32 = finetuned[0].with_name("mine-fp32")
    rows = generated_rows(40, {"positive": POSITIVE, "negative": NEGATIVE}, seed=11)
    texts, gold = [r["text"] for r in rows], [r["label"] for r in rows]
    measure = quantgate.labelled_measure("cues", texts, gold, threads=1)
    out = tmp_path / "int8"
    out.mkdir()
    (out / "keep").write_text("an earlier model")
    with pytest.raises(quantgate.QuantizationRefused, match=r"int8 model refused.*cues"):
        quantgate.derive_int8_gated(fp32, out, measure, quantize=_degrade)
    assert (out / "keep").read_text() == "an earlier model"  # left as it was
    assert not list(tmp_path.glob(".*staging"))
    manifest = quantgate.derive_int8_gated(fp32, out, measure)
    record = manifest.extra["quantization_gate"]
    assert record["passed"] is True
    assert record["sets"]["cues"]["fp32"] >= 0.9
    assert Classifier.load(out, intra_op_threads=1).manifest.extra["quantization_gate"] == record


def test_score_weights_from_the_manifest(tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL, copy)
    m = modeldir.load(copy)
    modeldir.write_manifest(copy, replace(m, extra={**m.extra, "score_weights": [0, 0.5, 1]}))
    (p,) = Classifier.load(copy, intra_op_threads=1).predict(["I love it"])
    probs = p.probabilities
    assert p.score == pytest.approx(0.5 * probs["neutral"] + probs["positive"], abs=1e-5)
    modeldir.write_manifest(copy, replace(m, extra={**m.extra, "score_weights": [1, 2]}))
    with pytest.raises(modeldir.ModelDirError, match="one per label"):
        Classifier.load(copy)


def test_export_int8_command_gates_on_a_labelled_file(
    finetuned: tuple[Path, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training import export

    fp32 = finetuned[0].with_name("mine-fp32")
    data_file = tmp_path / "gate.csv"
    rows = generated_rows(40, {"positive": POSITIVE, "negative": NEGATIVE}, seed=12)
    data_file.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    export.main(["int8", "--src", str(fp32), "--out", str(tmp_path / "a"), "--gate-data",
                 str(data_file)])  # fmt: skip
    record = modeldir.load(tmp_path / "a").extra["quantization_gate"]
    assert record["passed"] is True
    assert list(record["sets"]) == ["gate.csv"]
    assert "gate.csv: fp32" in capsys.readouterr().err
    export.main(["int8", "--src", str(fp32), "--out", str(tmp_path / "b"), "--no-gate"])
    assert modeldir.load(tmp_path / "b").extra["quantization_gate"] == {"skipped": True}
    data_file.write_text("words,label\nx,y\n")
    with pytest.raises(SystemExit) as exit_info:
        export.main(["int8", "--src", str(fp32), "--out", str(tmp_path / "c"), "--gate-data",
                     str(data_file)])  # fmt: skip
    assert exit_info.value.code == 1
    assert "no 'text' column" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    # The project's held-out sets are 3-class (negative, neutral, positive): a model with other
    # labels is refused with a pointer to --gate-data.
    with pytest.raises(quantgate.QuantizationRefused, match="pass --gate-data"):
        quantgate.project_measure(threads=1)(fp32)


@pytest.mark.parametrize(
    ("labels", "baseline", "weights"),
    [
        pytest.param({"3": POSITIVE, "1": NEGATIVE, "2": ("not",)}, "default minilm-sentiment-int8",
                     [-1.0, 0.0, 1.0], id="stars"),
        pytest.param({"spam": POSITIVE, "ham": NEGATIVE}, "majority class", None, id="other"),
    ],
)  # fmt: skip
def test_finetune_with_other_labels(
    tiny_base: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    labels: dict[str, tuple[str, ...]],
    baseline: str,
    weights: list[float] | None,
) -> None:
    encoder, checkpoint = tiny_base
    path = tmp_path / "rows.csv"
    rows = generated_rows(60, labels)
    path.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    out = tmp_path / "m"
    finetune.main(
        [str(path), "--out", str(out), "--base", str(checkpoint), "--base-model", str(encoder),
         "--epochs", "2", "--freeze-layers", "0", "--max-tokens", "64", "--threads", "1"]
    )  # fmt: skip
    assert f"| {baseline}" in capsys.readouterr().out
    manifest = modeldir.load(out)
    assert manifest.labels == tuple(sorted(labels, key=lambda k: (k.isdigit() and int(k), k)))
    assert manifest.extra.get("score_weights") == weights
    (p,) = Classifier.load(out, intra_op_threads=1).predict(["i love it"])
    if weights is None:
        assert p.score is None
    else:
        pairs = zip(manifest.labels, weights, strict=True)
        expected = sum(w * p.probabilities[k] for k, w in pairs)
        assert p.score == pytest.approx(expected, abs=1e-5)


def test_recipe_freeze_layers_keeps_the_lowest_layers_unchanged(
    tiny_base: tuple[Path, Path],
) -> None:
    """`freeze_layers` in a recipe (make train --freeze-layers, and every LODO fold of that
    recipe) trains nothing below it; a recipe without the key trains all but the word
    embeddings, as the recipes written before it did."""
    from training.modeling import FROZEN
    from training.train import fit, trainable_for, training_tokenizer

    encoder, _ = tiny_base
    names = [n for n, _ in from_base(encoder, data.LABELS).named_parameters()]
    assert [n for n in names if not trainable_for({})(n)] == [FROZEN]
    frozen = [n for n in names if not trainable_for({"freeze_layers": 1})(n)]
    assert all(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.")) for n in frozen)
    assert any(n.startswith("bert.encoder.layer.0.") for n in frozen)
    assert not any(n.startswith(("bert.encoder.layer.1.", "classifier")) for n in frozen)

    model = from_base(encoder, data.LABELS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = generated_rows(32, {"positive": POSITIVE, "negative": NEGATIVE})
    examples = [data.Example(r["text"], 2 if r["label"] == "positive" else 0, "user") for r in rows]
    tokenizer = training_tokenizer(encoder / "tokenizer.json", 32)
    fit(
        model, examples, tokenizer, epochs=1.0, lr=1e-2, batch_size=8, rng=random.Random(0),
        trainable=trainable_for({"freeze_layers": 1}),
    )  # fmt: skip
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed
    assert not changed & set(frozen)
    assert any(n.startswith("bert.encoder.layer.1.") for n in changed)
