"""The quantization quality gate: an int8 model may lose at most 1 point of accuracy against its
fp32 source on every held-out set, or the export refuses it.

`derive_int8_gated` quantizes into a staging directory next to the destination, measures both
models with the serving code on the held-out sets it is given, and only then moves the int8
directory into place, with both accuracies per set recorded in its manifest
(`quantization_gate`). A refused model is deleted and an existing directory at the destination is
left as it was. `make export` gates on the project's held-out sets (training/evaluate.py),
`make finetune` on the user's held-out fifth.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from shared import modeldir
from shared.progress import Progress

MAX_DROP = 0.01  # 1 point of accuracy
Measure = Callable[[Path], dict[str, float]]  # model directory -> accuracy per held-out set
Quantize = Callable[[Path, Path], modeldir.Manifest]  # fp32 directory, int8 directory


class QuantizationRefused(Exception):
    """The int8 model lost more than MAX_DROP accuracy against fp32 on some held-out set."""


def check(
    fp32: Mapping[str, float], int8: Mapping[str, float], max_drop: float = MAX_DROP
) -> dict[str, Any]:
    """Compare accuracies set by set; the record says which sets fail (if any)."""
    if set(fp32) != set(int8) or not fp32:
        raise ValueError(f"held-out sets differ: fp32 {sorted(fp32)}, int8 {sorted(int8)}")
    sets = {
        name: {"fp32": fp32[name], "int8": int8[name], "drop": fp32[name] - int8[name]}
        for name in sorted(fp32)
    }
    # A tiny epsilon so a drop of exactly one point (e.g. 1 row in 100) is not refused by rounding.
    failed = [name for name, s in sets.items() if s["drop"] > max_drop + 1e-9]
    return {"max_drop": max_drop, "passed": not failed, "failed": failed, "sets": sets}


def describe(record: Mapping[str, Any]) -> str:
    """One line per set: fp32 and int8 accuracy and the drop in points."""
    lines = []
    for name, s in record["sets"].items():
        verdict = "REFUSED" if name in record["failed"] else "ok"
        lines.append(
            f"  {name}: fp32 {s['fp32']:.3f}, int8 {s['int8']:.3f}, "
            f"drop {100 * s['drop']:+.1f} points (limit {100 * record['max_drop']:.1f}): {verdict}"
        )
    return "\n".join(lines)


def derive_int8_gated(
    src: Path, out: Path, measure: Measure, quantize: Quantize | None = None
) -> modeldir.Manifest:
    """Quantize `src` (fp32) to `out` unless the int8 model fails the gate on `measure`'s sets."""
    if quantize is None:
        from training.export import derive_int8

        quantize = derive_int8
    staging = out.with_name(f".{out.name}.int8-staging")
    try:
        manifest = quantize(src, staging)
        record = check(measure(src), measure(staging))
        if not record["passed"]:
            raise QuantizationRefused(
                f"int8 model refused: it loses more than {100 * MAX_DROP:.0f} point of accuracy "
                f"against fp32 on {', '.join(record['failed'])}\n{describe(record)}"
            )
        extra = {**manifest.extra, "quantization_gate": record}
        manifest = modeldir.write_manifest(staging, replace(manifest, extra=extra))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
        return manifest
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def project_measure(threads: int = 0) -> Measure:
    """Accuracy on every held-out set of `make eval` (3-class default labels only)."""

    def measure(directory: Path) -> dict[str, float]:
        from functions.sentiment.model import Classifier
        from training.data import LABELS
        from training.evaluate import evaluate, onnx_scorer

        classifier = Classifier.load(directory, intra_op_threads=threads)
        if tuple(classifier.labels) != LABELS:
            raise QuantizationRefused(
                f"{directory}: labels {list(classifier.labels)} are not {list(LABELS)}, "
                "so the project's held-out sets do not apply; pass --gate-data FILE"
            )
        result = evaluate(onnx_scorer(classifier))
        return {k: float(v["accuracy"]) for k, v in result.items() if "accuracy" in v}

    return measure


def labelled_measure(
    name: str, texts: list[str], labels: list[str], threads: int = 0, batch_size: int = 64
) -> Measure:
    """Accuracy of the predicted label on one labelled set (e.g. a fine-tuning held-out fifth)."""

    def measure(directory: Path) -> dict[str, float]:
        from functions.sentiment.model import Classifier

        classifier = Classifier.load(directory, intra_op_threads=threads)
        unknown = sorted(set(labels) - set(classifier.labels))
        if unknown:
            raise QuantizationRefused(
                f"{directory}: the held-out labels {unknown} are not among the model's labels "
                f"{list(classifier.labels)}"
            )
        return {name: accuracy_of(classifier, texts, labels, batch_size)}

    return measure


def accuracy_of(classifier: Any, texts: list[str], labels: list[str], batch_size: int) -> float:
    """Share of texts whose predicted label is the given one (length-sorted batches)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    hits = 0
    m = classifier.manifest
    with Progress(len(texts), f"gate {m.name} {m.precision}", unit="text") as shown:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            preds = classifier.predict([texts[i] for i in idx])
            hits += sum(p.label == labels[i] for i, p in zip(idx, preds, strict=True))
            shown.update(len(idx))
    return hits / len(texts)


def committed_record(fp32: modeldir.Manifest, int8: modeldir.Manifest) -> dict[str, Any]:
    """The gate applied to the evaluation `make eval --write` stored in two manifests."""

    def accuracies(m: modeldir.Manifest) -> dict[str, float]:
        return {
            k: float(v["accuracy"])
            for k, v in m.evaluation.items()
            if isinstance(v, Mapping) and "accuracy" in v and k != "baseline_vader"
        }

    return check(accuracies(fp32), accuracies(int8))


def command(
    src: Path, out: Path, gate_data: Path | None, no_gate: bool, static: bool = False
) -> modeldir.Manifest:
    """`python -m training.export int8`: gated quantization, a one-line error when refused;
    `static`: calibrated static int8 (`derive_int8_static`) instead of dynamic."""
    from training import labelled
    from training.export import derive_int8, derive_int8_static

    quantize = derive_int8_static if static else derive_int8
    if no_gate:
        m = quantize(src, out)
        extra = {**m.extra, "quantization_gate": {"skipped": True}}
        return modeldir.write_manifest(out, modeldir.Manifest(**{**m.__dict__, "extra": extra}))
    try:
        if gate_data is None:
            measure = project_measure()
        else:
            rows = labelled.read_rows(gate_data)
            texts, labels = [r.text for r in rows], [r.label for r in rows]
            measure = labelled_measure(gate_data.name, texts, labels)
        m = derive_int8_gated(src, out, measure, quantize)
    except (QuantizationRefused, labelled.DataError) as e:
        print(f"export int8: {e}", file=sys.stderr)
        raise SystemExit(1) from e
    print(describe(m.extra["quantization_gate"]), file=sys.stderr)
    return m
