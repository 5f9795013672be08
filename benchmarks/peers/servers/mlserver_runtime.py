"""MLServer (Seldon): a custom `MLModel` runtime with MLServer's adaptive batching.

    PORT=8000 MODEL_DIR=... python -m benchmarks.peers.servers.mlserver_runtime

`main()` writes `settings.json` and `model-settings.json` into a temporary folder and runs
`mlserver start` on it. POST /v2/models/sentiment/infer with one BYTES input (Open Inference
Protocol) -> outputs `label` (BYTES) and `probabilities` (FP32 [N, C]). Configuration beyond the
defaults: adaptive batching on (`max_batch_size` 32, `max_batch_time` 5 ms; off by default), one
parallel inference worker (the default), debug and access logging off; the gRPC and metrics
servers stay on (on free ports), as in a default deployment.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from benchmarks.peers.engine import Engine

NAME = "sentiment"


class SentimentRuntime(MLModel):  # type: ignore[misc]
    """Texts in one BYTES input; MLServer concatenates batched requests along the first axis."""

    async def load(self) -> bool:
        self.engine = Engine()
        self.engine.predict(["warm up"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = [str(t) for t in StringCodec.decode_input(payload.inputs[0])]
        probs = self.engine.probabilities(texts)
        labels = [self.engine.labels[int(i)] for i in probs.argmax(axis=1)]
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                StringCodec.encode_output("label", labels),
                ResponseOutput(
                    name="probabilities",
                    shape=list(probs.shape),
                    datatype="FP32",
                    data=probs.flatten().tolist(),
                ),
            ],
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="mlserver-"))
    settings = {
        "host": "127.0.0.1",
        "http_port": int(os.environ["PORT"]),
        "grpc_port": _free_port(),
        "metrics_port": _free_port(),
        "debug": False,
        "parallel_workers": 1,
        "logging_settings": {
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"uvicorn.access": {"level": "WARNING"}, "mlserver": {"level": "WARNING"}},
        },
    }
    model = {
        "name": NAME,
        "implementation": "benchmarks.peers.servers.mlserver_runtime.SentimentRuntime",
        "max_batch_size": int(os.environ.get("PEER_MAX_BATCH", "32")),
        "max_batch_time": float(os.environ.get("PEER_BATCH_WAIT_MS", "5")) / 1000,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps(model))
    mlserver = Path(sys.executable).with_name("mlserver")
    # Replace this process, so the benchmark's spawn-to-answer clock and signals reach MLServer.
    os.execv(str(mlserver), [str(mlserver), "start", str(folder)])  # noqa: S606


if __name__ == "__main__":
    main()
