"""Model directory format, ONNX export parity, the general exporter, variants and data splits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from functions.sentiment.model import Classifier
from shared import modeldir
from tests.conftest import DEFAULT_MODEL, FP32_MODEL, ROOT

torch = pytest.importorskip("torch", reason="the training dependency group is not installed")
transformers = pytest.importorskip("transformers")

from tests.tiny import save_wordpiece_tokenizer  # noqa: E402
from training import data, export  # noqa: E402
from training.modeling import from_base  # noqa: E402
from training.train import base_model_dir  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised BERT sequence classifier with its own fast tokenizer."""
    src = tmp_path_factory.mktemp("tiny-bert")
    words = [
        *("i", "love", "hate", "it", "this", "movie", "was", "great"),
        *("terrible", "ok", "not", "bad", "good", "the", "a"),
    ]
    vocab_size = save_wordpiece_tokenizer(words, src)
    config = transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
        id2label={0: "NEG", 1: "POS"}, label2id={"NEG": 0, "POS": 1},
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(src)
    return src


def test_general_exporter_on_tiny_bert(tiny_bert: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-fp32"
    manifest = export.export_hf(tiny_bert, out, name="tiny", version="0.0.1", max_tokens=None)
    assert manifest.labels == ("NEG", "POS")  # from config.json id2label, never hard-coded
    assert manifest.max_tokens == 64
    assert manifest.extra["parity_max_abs_diff"] <= export.PARITY_TOLERANCE
    c = Classifier.load(out, intra_op_threads=1)
    preds = c.predict(["i love this movie", "terrible", "the movie was not bad at all " * 20])
    assert {p.label for p in preds} <= {"NEG", "POS"}
    assert preds[2].truncated is True
    assert all(p.score is None for p in preds)  # no negative/positive labels to subtract


def test_exporter_parity_on_padded_mixed_batches(tiny_bert: Path, tmp_path: Path) -> None:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    out = tmp_path / "tiny"
    export.export_hf(tiny_bert, out, name="tiny", version="0", max_tokens=32)
    tok = export.configure_tokenizer(out / "tokenizer.json", 32)
    texts = ["i love it", "this movie was great but the end was terrible " * 3, "ok", "not bad"]
    assert export.parity(model, out / "model.onnx", tok, texts) <= 1e-4


def test_default_architecture_export_parity(tmp_path: Path) -> None:
    # The same export path as the trained default model (MiniLM + mean pooling + fused graph),
    # on the base weights with a seeded head: ONNX must match PyTorch on padded batches.
    torch.manual_seed(1)
    model = from_base(base_model_dir(), data.LABELS).eval()
    out = tmp_path / "minilm"
    manifest = export.export(
        model, base_model_dir() / "tokenizer.json", out, name="minilm-test", version="0",
        labels=data.LABELS, max_tokens=128, base_model="test", optimize="bert",
    )  # fmt: skip
    assert manifest.extra["parity_max_abs_diff"] <= 1e-4
    tok = json.loads((out / "tokenizer.json").read_text())
    assert tok["truncation"]["max_length"] == 128
    assert tok["padding"]["strategy"] == "BatchLongest"  # never the packaged fixed 128


def test_committed_models_verify_and_agree() -> None:
    fp32 = Classifier.load(FP32_MODEL, intra_op_threads=1)
    int8 = Classifier.load(DEFAULT_MODEL, intra_op_threads=1)
    for c, precision in ((fp32, "fp32"), (int8, "int8")):
        m = c.manifest
        assert m.precision == precision
        assert m.labels == ("negative", "neutral", "positive")
        assert {"model.onnx", "tokenizer.json", "README.md"} <= set(m.files)
        assert m.evaluation["movie_binary"]["accuracy"] > 0.5
    texts = ["I love it", "I hate it", "It is a table."]
    assert [p.label for p in fp32.predict(texts)] == ["positive", "negative", "neutral"]
    assert [p.label for p in int8.predict(texts)] == ["positive", "negative", "neutral"]
    # `make export` stamps MODEL_VERSION: the committed directories carry the Makefile's version.
    makefile = (ROOT / "Makefile").read_text()
    version = next(
        line.split(":=")[1].strip()
        for line in makefile.splitlines()
        if line.startswith("MODEL_VERSION :=")
    )
    assert fp32.manifest.version == int8.manifest.version == version


def test_fp32_padding_does_not_change_results() -> None:
    c = Classifier.load(FP32_MODEL, intra_op_threads=1)
    texts = ["short", "a much longer text that needs more tokens than the first one does", "ok!"]
    enc = c.encode(texts)
    batch = c.run([e.windows[0] for e in enc])
    singles = np.concatenate([c.run([e.windows[0]]) for e in enc])
    assert np.abs(batch - singles).max() <= 1e-4


def test_checksum_mismatch_and_missing_file_fail_clearly(tmp_path: Path) -> None:
    copy = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL, copy)
    with (copy / "tokenizer.json").open("a") as f:
        f.write(" ")
    with pytest.raises(modeldir.ModelDirError, match=r"tokenizer\.json is corrupted"):
        Classifier.load(copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(modeldir.ModelDirError, match=r"tokenizer\.json is missing"):
        modeldir.load(copy)
    with pytest.raises(modeldir.ModelDirError, match="does not exist"):
        modeldir.load(tmp_path / "nowhere")
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(modeldir.ModelDirError, match="not valid JSON"):
        modeldir.load(copy)


def test_derived_variants(tmp_path: Path) -> None:
    fp16 = export.derive_fp16(FP32_MODEL, tmp_path / "fp16")
    assert fp16.precision == "fp16"
    import onnx

    graph = onnx.load(str(tmp_path / "fp16" / "model.onnx"))
    onnx.checker.check_model(graph)
    assert {i.type.tensor_type.elem_type for i in graph.graph.output} == {onnx.TensorProto.FLOAT}
    initializers = {t.data_type for t in graph.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in initializers
    int8 = export.derive_int8(FP32_MODEL, tmp_path / "int8")
    assert int8.precision == "int8"
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < 0.4 * (
        FP32_MODEL / "model.onnx"
    ).stat().st_size


def test_serving_imports_no_torch() -> None:
    code = (
        "import sys, functions.sentiment.app, functions.sentiment.__main__;"
        "bad = [m for m in ('torch', 'transformers', 'tensorflow') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_splits_are_deterministic_and_disjoint() -> None:
    train = data.training_set()
    train_texts = {e.text for e in train}
    for held_out in (data.hutto("test"), data.crowdflower("test"), data.movie_reviews()):
        assert not any(e.text in train_texts for e in held_out)
    # The movie-review test fifth is never trained on; the other four fifths are.
    movie_test = {e.text for e in data.movie_reviews()}
    assert not any(e.text in movie_test for e in train)
    assert sum(e.source == "hutto-movieReviewSnippets" for e in train) == 8492
    # Hash splits depend only on the data: these sizes hold on every machine.
    sizes = [len(train), len(data.hutto("test")), len(data.crowdflower("test"))]
    assert sizes == [10399 + 8492 + 25397, 2674, 6416]
    assert len(data.movie_reviews()) == 2100
    assert data.hutto_label(-0.5) == 0
    assert data.hutto_label(0.49) == 1
    assert data.hutto_label(0.5) == 2
