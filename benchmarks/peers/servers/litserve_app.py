"""LitServe: a `LitAPI` with LitServe's own dynamic batching (`max_batch_size`, `batch_timeout`).

    PORT=8000 MODEL_DIR=models/minilm-sentiment-int8 python -m benchmarks.peers.servers.litserve_app

POST /predict {"text": ...} -> {"label", "probabilities"}. Configuration beyond the defaults:
batches of up to 32 texts gathered for at most 5 ms (the default is no batching), `fast_queue`
(ZeroMQ between the HTTP server and the inference worker instead of multiprocessing queues), one
CPU worker, one API server process, access logging off.
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation at run time.

import os
from typing import Any

import litserve as ls

from benchmarks.peers.engine import Engine

MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "32"))
BATCH_TIMEOUT_S = float(os.environ.get("PEER_BATCH_WAIT_MS", "5")) / 1000


class SentimentAPI(ls.LitAPI):  # type: ignore[misc]
    """Single texts in, batched ONNX runs inside, single predictions out."""

    def setup(self, device: str) -> None:
        self.engine = Engine()
        self.engine.predict(["warm up"])

    def decode_request(self, request: dict[str, Any]) -> str:
        return str(request["text"])

    def batch(self, inputs: list[str]) -> list[str]:
        return list(inputs)

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        return self.engine.predict(texts)

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    api = SentimentAPI(max_batch_size=MAX_BATCH, batch_timeout=BATCH_TIMEOUT_S)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=True)
    server.run(
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
