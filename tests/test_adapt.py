"""The adaptation recipe's parts (training/adapt.py), the held-out domain's reader
(training/drugreviews.py) and the learning curve's bookkeeping (training/adapt_curve.py)."""

from __future__ import annotations

import html
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from scripts.readme_blocks import current
from scripts.readme_model import AC_BEGIN, AC_END, ROOT, adapt_curve_section

torch = pytest.importorskip("torch", reason="the training dependency group is not installed")

from training import adapt, adapt_curve, drugreviews  # noqa: E402


def test_drug_reviews_are_read_from_the_package_without_importing_it() -> None:
    import sys

    train, test = drugreviews.reviews("train"), drugreviews.reviews("test")
    assert (len(train), len(test)) == (600, 379)
    binary = drugreviews.reviews("test", binary=True)
    assert len(binary) == 343
    assert {r.label for r in binary} == {"negative", "positive"}
    assert {r.label for r in train} == {"negative", "neutral", "positive"}
    assert sum(r.label == "positive" for r in binary) == 248
    # HTML entities are unescaped (the files write apostrophes as &#039;), whitespace collapsed.
    assert not any("&#039;" in r.text or "&quot;" in r.text for r in train + test)
    assert any("'" in r.text for r in train)
    assert all(r.text == html.unescape(r.text) == " ".join(r.text.split()) for r in test)
    assert drugreviews.PACKAGE not in sys.modules  # its __init__ pulls heavy libraries


def test_figures_balanced_accuracy_and_macro_f1() -> None:
    gold = ["positive"] * 8 + ["negative"] * 2
    always = adapt.figures(gold, ["positive"] * 10, ("negative", "positive"))
    assert always["accuracy"] == 0.8
    assert always["balanced_accuracy"] == 0.5  # the majority class is not rewarded
    assert always["recall_negative"] == 0.0
    assert always["macro_f1"] == pytest.approx((0 + 2 * 8 / (16 + 2)) / 2)
    pred = ["positive"] * 6 + ["negative"] * 2 + ["negative", "positive"]
    f = adapt.figures(gold, pred, ("negative", "positive"))
    assert f["recall_positive"] == 0.75
    assert f["recall_negative"] == 0.5
    assert f["balanced_accuracy"] == 0.625


def blobs(n: int, share: float, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Two Gaussian classes in 8 dimensions, `share` of them class 1."""
    g = torch.Generator().manual_seed(seed)
    y = [int(i < n * share) for i in range(n)]
    centre = torch.tensor([1.0] + [0.0] * 7, dtype=torch.float64)
    x = (
        torch.randn((n, 8), generator=g, dtype=torch.float64)
        + torch.tensor([[1.0 if v else -1.0] for v in y], dtype=torch.float64) * centre
    )
    return x, y


def test_balanced_head_does_not_learn_the_base_rate() -> None:
    x, y = blobs(400, 0.9)
    w0, b0 = torch.zeros((2, 8), dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    recall0 = {}
    for balanced in (False, True):
        w, b = adapt.fit_head(x, y, w0, b0, l2=1.0, balanced=balanced)
        pred = (x @ w.T + b).argmax(-1).tolist()
        recall0[balanced] = sum(p == 0 for p, t in zip(pred, y, strict=True) if t == 0) / 40
    assert recall0[True] > recall0[False] + 0.1
    assert recall0[True] >= 0.75


def test_the_l2_pull_keeps_the_base_head_when_labels_are_few() -> None:
    x, y = blobs(10, 0.5)
    w0 = torch.randn((2, 8), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b0 = torch.zeros(2, dtype=torch.float64)
    near, _ = adapt.fit_head(x, y, w0, b0, l2=1e4, balanced=True)
    free, _ = adapt.fit_head(x, y, w0, b0, l2=1e-3, balanced=True)
    assert (near - w0).norm() < 0.05 * (free - w0).norm()


def test_calibration_undoes_an_overconfident_scale() -> None:
    x, y = blobs(600, 0.5, seed=3)
    true_logits = torch.stack([-x[:, 0], x[:, 0]], dim=1)  # the log-odds are 2 * x0
    temperature, bias = adapt.fit_calibration(5 * true_logits, y, balanced=False)
    assert temperature == pytest.approx(5.0, rel=0.2)
    assert bias.abs().max() < 0.2


def test_folds_are_stratified_and_seeded() -> None:
    y = [0] * 10 + [1] * 25
    folds = adapt.folds_of(y, 5, seed=4)
    assert folds == adapt.folds_of(y, 5, seed=4)
    for f in range(5):
        assert sum(1 for i, v in enumerate(y) if v == 0 and folds[i] == f) == 2
        assert sum(1 for i, v in enumerate(y) if v == 1 and folds[i] == f) == 5


def test_calibration_scores() -> None:
    gold = ["positive", "negative"] * 50
    perfect = adapt_curve.calibration(gold, [1.0, 0.0] * 50)
    assert perfect == {"brier": 0.0, "ece": 0.0}
    unsure = adapt_curve.calibration(gold, [0.6, 0.4] * 50)
    assert unsure["ece"] == pytest.approx(0.4)
    assert unsure["brier"] == pytest.approx(0.16)


def test_recipe_overrides_are_typed() -> None:
    recipe = adapt_curve.with_overrides(adapt.RECIPES["default"], ["l2=3", "balanced=false"])
    assert recipe.l2 == 3.0
    assert recipe.balanced is False
    with pytest.raises(AttributeError):
        adapt_curve.with_overrides(recipe, ["nope=1"])


def test_readme_adapt_curve_block_is_the_committed_curve(tmp_path: Path) -> None:
    block = current((ROOT / "README.md").read_text(), AC_BEGIN, AC_END)
    assert block is not None, "README.md lost its generated adapt-curve block"
    assert block == adapt_curve_section(), "stale: run `python -m scripts.readme_model --write`"
    # The targets follow the figures: a curve that falls below the default is called out.
    curve = json.loads((ROOT / "docs" / "adapt_curve.json").read_text())
    first = next(iter(curve["sizes"]))
    curve["sizes"][first]["balanced_accuracy"] = 0.1
    (tmp_path / "adapt_curve.json").write_text(json.dumps(curve))
    changed = adapt_curve_section(tmp_path)
    assert "lowest mean 0.100" in changed
    assert "**missed**" in changed


def test_summary_means_over_seeds() -> None:
    rng = random.Random(0)
    runs = []
    for seed in (1, 2, 3):
        run = {k: rng.random() for k in (*adapt_curve.KEYS, "brier", "ece")}
        run.update(majority={"accuracy": 0.7}, adapt={"seconds": seed, "cpu_seconds": 2 * seed})
        runs.append(run)
    s = adapt_curve.summary(runs)
    assert s["runs"] == 3
    values = [r["balanced_accuracy"] for r in runs]
    assert s["balanced_accuracy"] == pytest.approx(sum(values) / 3)
    assert (s["balanced_accuracy_min"], s["balanced_accuracy_max"]) == (min(values), max(values))
    assert s["adapt_cpu_seconds"] == 4


def test_finetune_example_parses_the_adapting_time(tmp_path: Path) -> None:
    from scripts.readme_model import finetune_section

    wrote = "Wrote x (int8) in 40 s (7 s adapting; 22 CPU-seconds). Serve it"
    (tmp_path / "finetune_demo.txt").write_text("# 2 CPU cores, 2026-12-08\n" + wrote + "\n")
    assert "40 s of wall time (7 s of it adapting) and 22 CPU-seconds" in finetune_section(tmp_path)


def test_int8_keeps_the_head_in_fp32(tmp_path: Path) -> None:
    # The adapted head is fitted on the served int8 graph's pooled vectors (finetune.produce):
    # the int8 model must feed them to that head unquantized, as it was fitted.
    import onnx

    from training import export

    export.derive_int8(ROOT / "models" / "minilm-sentiment-fp32", tmp_path / "int8")
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    head = producers["logits"]
    if head.op_type == "Add":  # the quantizer's Gemm -> MatMul + Add rewrite
        head = producers[head.input[0]]
    assert head.op_type in ("Gemm", "MatMul"), head.op_type
    weights = {i.name: i for i in graph.initializer}
    assert weights[head.input[1]].data_type == onnx.TensorProto.FLOAT
    # The pooled vector reaches the head as is, not through a DynamicQuantizeLinear.
    assert producers[head.input[0]].op_type == "Div"
    assert not any(n.op_type == "MatMulInteger" and "classifier" in n.name for n in graph.node)


def test_self_training_adds_the_confident_unlabelled_rows() -> None:
    x, y = blobs(20, 0.5, seed=7)
    unlabelled, _ = blobs(200, 0.5, seed=8)
    base = (torch.zeros((2, 8), dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    recipe = adapt.Recipe(self_train=0.7)
    head = adapt.fit_head(x, y, *base, l2=recipe.l2, balanced=True)
    w, b, kept = adapt.self_train(x, y, unlabelled, head, base, recipe)
    assert 0 < kept < 200
    assert not torch.equal(w, head[0])
    # Nothing is sure enough: the head is refitted on the labels alone, unchanged.
    w, b, kept = adapt.self_train(x, y, unlabelled, head, base, replace(recipe, self_train=1.0))
    assert kept == 0
    assert torch.allclose(w, head[0])
    assert torch.allclose(b, head[1])
