"""KServe's Python model server: a `kserve.Model` answering the v1 and v2 protocols.

    PORT=8000 MODEL_DIR=models/minilm-sentiment-int8 python -m benchmarks.peers.servers.kserve_model

v1: POST /v1/models/sentiment:predict {"instances": ["..."]} -> {"predictions": [{"label",
"probabilities"}]}. v2: POST /v2/models/sentiment/infer with one BYTES input -> outputs `label`
(BYTES) and `probabilities` (FP32 [N, C]). KServe's Python server has no in-process request
batching (KServe batches with a sidecar agent in the cluster), so each request is one ONNX run;
`predict` is a plain function, which KServe calls on its event loop. Configuration beyond the
defaults: gRPC server off, latency and access logging off, one worker.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import kserve
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from benchmarks.peers.engine import Engine

NAME = "sentiment"


class SentimentModel(kserve.Model):  # type: ignore[misc]
    """Texts in `instances` (v1) or in a BYTES input tensor (v2)."""

    def __init__(self) -> None:
        super().__init__(NAME)
        self.engine: Engine | None = None

    def load(self) -> bool:
        self.engine = Engine()
        self.engine.predict(["warm up"])
        self.ready = True
        return True

    def predict(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferResponse:
        assert self.engine is not None
        if isinstance(payload, InferRequest):
            data = payload.inputs[0].data
            texts = [t.decode() if isinstance(t, bytes) else str(t) for t in data]
            probs = self.engine.probabilities(texts)
            labels = [self.engine.labels[int(i)] for i in probs.argmax(axis=1)]
            outputs = [
                InferOutput("label", [len(texts)], "BYTES", labels),
                InferOutput("probabilities", list(probs.shape), "FP32", probs.flatten().tolist()),
            ]
            return InferResponse(payload.id or "", NAME, outputs)
        return {"predictions": self.engine.predict([str(t) for t in payload["instances"]])}


def main() -> None:
    model = SentimentModel()
    model.load()
    server = kserve.ModelServer(
        http_port=int(os.environ["PORT"]),
        enable_grpc=False,
        workers=1,
        enable_latency_logging=False,
    )
    # Access and per-request trace lines off, as for every server in the benchmark.
    for name in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    # kserve parses its flags from sys.argv at import; keep ours out of them.
    del sys.argv[1:]
    main()
