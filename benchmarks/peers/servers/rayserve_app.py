"""Ray Serve: one deployment whose handler is `@serve.batch`-ed, on a local Ray of 2 CPUs.

    PORT=8000 MODEL_DIR=models/minilm-sentiment-int8 python -m benchmarks.peers.servers.rayserve_app

POST / {"text": ...} -> {"label", "probabilities"}. Configuration beyond the defaults:
`ray.init(num_cpus=2)` with the dashboard and usage stats off; `max_ongoing_requests` 256 (the
default of 5 caps each replica at 5 requests in flight, so a batch can never exceed 5);
`@serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)` (defaults 10 and 10 ms); one
replica (its ONNX session uses both cores); access logs off. The proxy, controller and replica
are separate processes: all of them are counted in RSS and CPU.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import ray
from ray import serve
from starlette.requests import Request

from benchmarks.peers.engine import Engine

MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "32"))
BATCH_WAIT_S = float(os.environ.get("PEER_BATCH_WAIT_MS", "5")) / 1000


@serve.deployment(max_ongoing_requests=256, num_replicas=1, ray_actor_options={"num_cpus": 1})
class Sentiment:
    """The ONNX model; concurrent requests meet in `classify`'s batches."""

    def __init__(self, model_dir: str) -> None:
        self.engine = Engine(model_dir, threads=2)
        self.engine.predict(["warm up"])

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def classify(self, texts: list[str]) -> list[dict[str, Any]]:
        return self.engine.predict(texts)

    async def __call__(self, request: Request) -> dict[str, Any]:
        body = await request.json()
        return await self.classify(str(body["text"]))


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(
        http_options={"host": "127.0.0.1", "port": int(os.environ["PORT"])},
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    )
    model_dir = os.path.abspath(os.environ.get("MODEL_DIR", "models/minilm-sentiment-int8"))
    serve.run(Sentiment.bind(model_dir), route_prefix="/")
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
