"""BentoML: a `@bentoml.service` whose API is `@bentoml.api(batchable=True)` (adaptive batching).

    bentoml serve benchmarks.peers.servers.bentoml_service:Sentiment --host 127.0.0.1 --port 8000

POST /classify {"texts": ["..."]} -> [{"label", "probabilities"}]: a batchable API takes a list
along the batch dimension, so one request carries a list of one text and BentoML's dispatcher
merges concurrent requests into one call. Configuration beyond the defaults: batches of up to 32
(default 100: padding a 32-text batch of mixed lengths already costs more than it saves), one
worker with one thread (the ONNX session uses the cores), access logging off, and
`max_latency_ms` from PEER_MAX_LATENCY_MS: the default 60,000 ms, or a short budget, under which
the dispatcher answers 503 to requests it predicts it cannot serve in time.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml

from benchmarks.peers.engine import Engine

MAX_LATENCY_MS = int(os.environ.get("PEER_MAX_LATENCY_MS", "60000"))
MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "32"))


@bentoml.service(
    workers=1,
    threads=1,
    logging={"access": {"enabled": False}},
    traffic={"timeout": 60},
)
class Sentiment:
    """The ONNX model behind one batchable endpoint."""

    def __init__(self) -> None:
        self.engine = Engine()
        self.engine.predict(["warm up"])

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        return self.engine.predict(texts)
