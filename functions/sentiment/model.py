"""The served model: a verified model directory, a fast tokenizer and an ONNX Runtime session.

Only onnxruntime, tokenizers and numpy are imported: no torch at serving time, so a cold start
is short. Batches are padded to their longest text, never to a fixed length (padding every text to
128 tokens costs several times the compute of a short text). Texts over the model's max tokens are
truncated and flagged, or split into overlapping windows whose probabilities are averaged,
weighted by each window's token count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from shared import modeldir
from shared.cpu import available_cpus

log = logging.getLogger("kubesentiment.model")


@dataclass(frozen=True)
class Encoded:
    """One text's token windows: one window unless the text was chunked."""

    windows: tuple[tuple[int, ...], ...]
    truncated: bool

    @property
    def tokens(self) -> int:
        """Tokens fed to the model for this text, special tokens included."""
        return sum(len(w) for w in self.windows)


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one text."""

    label: str
    score: float | None
    probabilities: dict[str, float]
    truncated: bool
    tokens: int


def session_options(intra: int, inter: int, spinning: bool = False) -> ort.SessionOptions:
    """The ONNX Runtime options every session of the function uses (the peer benchmark too)."""
    opts = ort.SessionOptions()
    # ORT threading guide: one intra-op pool sized to the CPU quota, sequential execution,
    # no inter-op parallelism (a BERT graph has no independent branches worth it).
    opts.intra_op_num_threads = intra
    opts.inter_op_num_threads = inter
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning idle threads burn the cores the event loop needs: on 2 cores, turning it off took
    # batched throughput at concurrency 32 from 499 to 1143 req/s (benchmarks/batching.py).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return opts


def padded_feeds(
    windows: Sequence[Sequence[int]], pad_id: int, input_names: set[str]
) -> dict[str, np.ndarray[Any, np.dtype[np.int64]]]:
    """Session inputs for token windows padded to the longest one (ids, mask, token types)."""
    width = max(len(w) for w in windows)
    ids = np.full((len(windows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(windows), width), dtype=np.int64)
    for row, window in enumerate(windows):
        ids[row, : len(window)] = window
        mask[row, : len(window)] = 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in input_names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


class Classifier:
    """Tokenizes texts and runs the ONNX graph; thread-safe for one caller at a time per run."""

    def __init__(
        self,
        directory: Path,
        manifest: modeldir.Manifest,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        threads: int,
        chunk_overlap: int = 32,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.session = session
        self.tokenizer = tokenizer
        self.threads = threads
        self.labels = manifest.labels
        self.max_tokens = manifest.max_tokens
        self.pad_id = tokenizer.padding["pad_id"] if tokenizer.padding else 0
        # Two tokenizers configured once: encode_batch is safe from many threads, but changing
        # truncation settings per call would not be.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_tokens)
        self._chunker = Tokenizer.from_str(tokenizer.to_str())
        stride = max(0, min(chunk_overlap, self.max_tokens // 2 - 2))
        self._chunker.enable_truncation(max_length=self.max_tokens, stride=stride)
        lower = [label.lower() for label in self.labels]
        self._pos = lower.index("positive") if "positive" in lower else None
        self._neg = lower.index("negative") if "negative" in lower else None
        # A fine-tuned model may declare the score as weights over its labels (`make finetune`:
        # star ratings -> expected rating on [-1, 1]); otherwise P(positive) - P(negative).
        weights = manifest.extra.get("score_weights")
        self._weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self._weights is not None and self._weights.shape != (len(self.labels),):
            raise modeldir.ModelDirError("invalid manifest: 'score_weights' needs one per label")
        self._input_names = {i.name for i in session.get_inputs()}
        self._prob_index = [o.name for o in session.get_outputs()].index("probabilities")

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        chunk_overlap: int = 32,
        spinning: bool = False,
    ) -> Classifier:
        """Verify the directory's checksums, then build the tokenizer and the session."""
        manifest = modeldir.load(directory)
        threads = intra_op_threads or available_cpus()
        usable = [p for p in providers if p in ort.get_available_providers()]
        skipped = [p for p in providers if p not in usable]
        if skipped:
            log.warning("execution providers not available here, skipped: %s", ", ".join(skipped))
        if not usable:
            usable = ["CPUExecutionProvider"]
        session = ort.InferenceSession(
            str(directory / manifest.onnx_file),
            sess_options=session_options(threads, inter_op_threads, spinning),
            providers=usable,
        )
        tokenizer = Tokenizer.from_file(str(directory / manifest.tokenizer_file))
        return cls(directory, manifest, session, tokenizer, threads, chunk_overlap)

    @property
    def has_score(self) -> bool:
        """True when `score` can be computed: score weights, or negative and positive labels."""
        return self._weights is not None or (self._pos is not None and self._neg is not None)

    @property
    def providers(self) -> list[str]:
        """Execution providers the session really uses."""
        return list(self.session.get_providers())

    def encode(self, texts: Sequence[str], *, chunk: bool = False) -> list[Encoded]:
        """Tokenize texts; a text over max tokens is truncated, or windowed when `chunk`."""
        tokenizer = self._chunker if chunk else self.tokenizer
        out = []
        for enc in tokenizer.encode_batch(list(texts)):
            windows = [tuple(enc.ids)]
            if chunk and enc.overflowing:
                windows.extend(tuple(o.ids) for o in _flatten(enc.overflowing))
            out.append(Encoded(tuple(windows), truncated=bool(enc.overflowing) and not chunk))
        return out

    def run(self, windows: Sequence[Sequence[int]]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Probabilities [N, C] for token windows, padded to the longest one."""
        feeds = padded_feeds(windows, self.pad_id, self._input_names)
        outputs = self.session.run(None, feeds)
        return np.asarray(outputs[self._prob_index], dtype=np.float32)

    def combine(self, encoded: Encoded, probs: np.ndarray[Any, np.dtype[np.float32]]) -> Prediction:
        """One text's prediction from its windows' probabilities (token-weighted mean)."""
        if len(probs) > 1:
            weights = np.array([len(w) for w in encoded.windows], dtype=np.float32)
            row = (probs * weights[:, None]).sum(axis=0) / weights.sum()
        else:
            row = probs[0]
        best = int(np.argmax(row))
        score = None
        if self._weights is not None:
            score = round(float(np.dot(self._weights, row)), 6)
        elif self._pos is not None and self._neg is not None:
            score = round(float(row[self._pos] - row[self._neg]), 6)
        return Prediction(
            label=self.labels[best],
            score=score,
            probabilities={
                label: round(float(p), 6) for label, p in zip(self.labels, row, strict=True)
            },
            truncated=encoded.truncated,
            tokens=encoded.tokens,
        )

    def predict(self, texts: Sequence[str], *, chunk: bool = False) -> list[Prediction]:
        """Tokenize, run and combine in one call (warm-up, scripts and tests)."""
        encoded = self.encode(texts, chunk=chunk)
        windows = [w for e in encoded for w in e.windows]
        probs = self.run(windows)
        out, start = [], 0
        for e in encoded:
            out.append(self.combine(e, probs[start : start + len(e.windows)]))
            start += len(e.windows)
        return out

    def describe(self) -> dict[str, Any]:
        """What `GET /model` shows."""
        m = self.manifest
        return {
            "name": m.name,
            "version": m.version,
            "labels": list(m.labels),
            "precision": m.precision,
            "max_tokens": m.max_tokens,
            "execution_providers": self.providers,
            "intra_op_threads": self.threads,
            "base_model": m.base_model,
            "evaluation": dict(m.evaluation),
        }


def _flatten(encodings: Sequence[Encoding]) -> list[Encoding]:
    out: list[Encoding] = []
    for enc in encodings:
        out.append(enc)
        out.extend(_flatten(enc.overflowing))
    return out
