"""The ceiling per model build (benchmarks/ceiling.py): its bookkeeping, its scoring path and its
README block."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import ceiling
from benchmarks.ceiling import BASELINE, OPTIONS, RESULTS, ROOT, readme_section, summarize
from functions.sentiment.model import Classifier


def _gate(passed: bool) -> dict[str, Any]:
    drop = 0.0 if passed else 0.05
    return {"passed": passed, "failed": [] if passed else ["x"], "max_drop": 0.01,
            "sets": {"x": {"fp32": 0.8, "int8": 0.8 - drop, "drop": drop}}}  # fmt: skip


def test_ratios_are_per_pass_and_adoption_needs_the_gate_and_more_than_the_aa_spread() -> None:
    keys = {o.key: o for o in OPTIONS}
    options = [keys[BASELINE], keys[f"{BASELINE}-aa"], keys["static-int8"], keys["fp32"],
               keys["dynamic-int8-unfused"]]  # fmt: skip
    base = [100.0, 80.0, 120.0]
    measured = {
        BASELINE: [{"best": b, "onnxruntime": "x"} for b in base],
        f"{BASELINE}-aa": [
            {"best": b * r, "onnxruntime": "x"}
            for b, r in zip(base, (1.05, 0.97, 1.0), strict=True)
        ],
        "static-int8": [{"best": b * 1.3, "onnxruntime": "x"} for b in base],
        "fp32": [{"best": b * 1.5, "onnxruntime": "x"} for b in base],  # faster, gate refused
        "dynamic-int8-unfused": [{"best": b * 1.04, "onnxruntime": "x"} for b in base],
    }  # fmt: skip
    gates = {o.key: _gate(o.key != "fp32") for o in options}
    out = summarize(options, measured, gates)
    assert out["aa_ratios"] == [1.05, 0.97, 1.0]
    assert out["aa_spread"] == 0.05
    rows = out["options"]
    assert rows["static-int8"]["ratio"] == 1.3
    assert rows["static-int8"]["texts_per_s"] == 130.0  # median of 130, 104, 156
    assert rows["static-int8"]["adoptable"]
    assert not rows["fp32"]["adoptable"]  # the gate refused it
    assert not rows["dynamic-int8-unfused"]["adoptable"]  # within the A/A spread
    assert not rows[BASELINE]["adoptable"]


def test_the_adopted_option_is_servable_and_no_larger_than_the_served_file() -> None:
    def row(ratio: float, mib: float, adoptable: bool = True) -> dict[str, Any]:
        return {"ratio": ratio, "model_mib": mib, "adoptable": adoptable}

    rows = {
        BASELINE: row(1.0, 21.8, adoptable=False),
        "static-int8": row(1.3, 63.4),
        "dynamic-int8-unfused": row(1.2, 21.9),
        "openvino-static-int8": row(1.5, 21.0),  # another runtime than the serving stack's
    }
    assert ceiling.decide(rows).startswith("`dynamic-int8-unfused` (1.20x")
    del rows["dynamic-int8-unfused"]
    refused = ceiling.decide(rows)
    assert refused.startswith("none")
    assert "`static-int8`" in refused
    assert "63 MiB" in refused
    rows["static-int8"]["adoptable"] = False
    assert ceiling.decide(rows).startswith("none")
    assert "A/A spread" in ceiling.decide(rows)


def test_the_worker_scores_as_the_served_classifier_does() -> None:
    texts = ["I love it", "The plot is thin and the acting worse.", "ok", "Never again!!!"]
    served = next(o for o in OPTIONS if o.key == BASELINE)
    rows = ceiling.run_worker(served, "score", texts)["scores"]
    classifier = Classifier.load(ceiling.SERVED)
    for (label, score), p in zip(rows, classifier.predict(texts), strict=True):
        assert classifier.labels[int(label)] == p.label
        assert abs(score - (p.score or 0.0)) < 1e-5


def test_readme_ceiling_block_and_table_come_from_the_results_file() -> None:
    result = json.loads(RESULTS.read_text())
    stale = "stale ceiling figures: run python -m benchmarks.ceiling --readme"
    assert readme_section(result) in (ROOT / "README.md").read_text(), stale
    assert readme_section(result) in ceiling.TABLE.read_text(), stale
    assert set(result["options"]) == {o.key for o in OPTIONS}
    for row in result["options"].values():
        assert "sets" in row["gate"] or "error" in row["gate"]
    assert ceiling.details(result) in ceiling.TABLE.read_text(), stale


@pytest.mark.slow
def test_static_int8_quantizes_activations_and_keeps_the_head_fp32(tmp_path: Path) -> None:
    import onnx

    from training import export

    fp32 = ROOT / "models" / "minilm-sentiment-fp32"
    manifest = export.derive_int8_static(fp32, tmp_path / "static")
    assert manifest.precision == "int8"
    assert "static QDQ" in manifest.extra["quantization"]
    graph = onnx.load(str(tmp_path / "static" / "model.onnx")).graph
    produced_by = {out: n for n in graph.node for out in n.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    # Both inputs of every encoder MatMul come through a DequantizeLinear: the activation's
    # scale was calibrated, not measured at run time (no DynamicQuantizeLinear anywhere).
    dequantized = [
        n for n in matmuls
        if all(i in produced_by and produced_by[i].op_type == "DequantizeLinear" for i in n.input)
    ]  # fmt: skip
    assert len(dequantized) == len(matmuls) == 18
    assert not [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    (head,) = [n for n in graph.node if "logits" in n.output]
    assert head.op_type == "Gemm"
    assert all(produced_by[i].op_type != "DequantizeLinear" for i in head.input if i in produced_by)
    texts = ["I love it", "The plot is thin and the acting worse.", "Never again!!!", "fine"]
    want = [p.label for p in Classifier.load(fp32).predict(texts)]
    assert [p.label for p in Classifier.load(tmp_path / "static").predict(texts)] == want
