"""The model every peer serves: the same ONNX file, tokenizer and ONNX Runtime session options.

Peer servers run in their own virtual environments, which hold numpy, onnxruntime and tokenizers
but not KubeSentiment's serving stack; `functions.sentiment.model` needs nothing more, so the
session options and the padding are the function's own code (`session_options`, `padded_feeds`):
intra-op threads from the CPU quota, one inter-op thread, sequential execution, every graph
optimisation, no spinning, a batch padded to its longest text. Peers get no length sorting, since
that is part of what is being compared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from functions.sentiment.model import padded_feeds, session_options
from shared.cpu import available_cpus


class Engine:
    """Tokenize + `session.run` for a list of texts; one caller at a time."""

    def __init__(self, model_dir: Path | str | None = None, threads: int = 0) -> None:
        directory = Path(model_dir or os.environ.get("MODEL_DIR", "models/minilm-sentiment-int8"))
        manifest = json.loads((directory / "manifest.json").read_text())
        self.labels: list[str] = list(manifest["labels"])
        self.threads = threads or available_cpus()
        self.session = ort.InferenceSession(
            str(directory / manifest.get("onnx_file", "model.onnx")),
            sess_options=session_options(self.threads, 1, spinning=False),
            providers=["CPUExecutionProvider"],
        )
        self.tokenizer = Tokenizer.from_file(
            str(directory / manifest.get("tokenizer_file", "tokenizer.json"))
        )
        pad = self.tokenizer.padding
        self.pad_id = int(pad["pad_id"]) if pad else 0
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=int(manifest["max_tokens"]))
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._prob = [o.name for o in self.session.get_outputs()].index("probabilities")

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (special tokens included, truncated at max tokens)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def run(self, windows: Sequence[Sequence[int]]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Probabilities [N, C], the batch padded to its longest text."""
        feeds = padded_feeds(windows, self.pad_id, self._inputs)
        return np.asarray(self.session.run(None, feeds)[self._prob], dtype=np.float32)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Probabilities [N, C] of texts in one padded run."""
        return self.run(self.encode(texts))

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """`{"label", "probabilities"}` per text, as every peer answers."""
        out = []
        for row in self.probabilities(texts):
            out.append(
                {
                    "label": self.labels[int(np.argmax(row))],
                    "probabilities": {
                        label: round(float(p), 6) for label, p in zip(self.labels, row, strict=True)
                    },
                }
            )
        return out
