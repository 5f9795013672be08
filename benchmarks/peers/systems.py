"""Every system in the peer benchmark: how to start it, what to send, how to read its answer.

One text per request for every system, in each one's own idiomatic request shape. `config` says
what was changed from the system's defaults and why (the issue asks for each peer's best
configuration, not its defaults); `{batch}` in it is the peers' batch size, which the run takes
from the in-process ceiling (the padded batch size that runs fastest on these texts: the peers pad
whatever arrives together). `venv` names the peer's own virtualenv (None: the project's).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.local import ROOT

INT8 = ROOT / "models" / "minilm-sentiment-int8"
FP32 = ROOT / "models" / "minilm-sentiment-fp32"
LABELS = tuple(json.loads((INT8 / "manifest.json").read_text())["labels"])

Body = Callable[[str], dict[str, Any]]
Parse = Callable[[Any], tuple[str, float]]  # answer -> (label, P(positive))


def _plain(answer: Any) -> tuple[str, float]:
    return str(answer["label"]), float(answer["probabilities"]["positive"])


def _v2(answer: Any) -> tuple[str, float]:
    outputs = {o["name"]: o for o in answer["outputs"]}
    probs = outputs["probabilities"]["data"]
    return str(outputs["label"]["data"][0]), float(probs[LABELS.index("positive")])


def _infinity(answer: Any) -> tuple[str, float]:
    scores = {s["label"]: float(s["score"]) for s in answer["data"][0]}
    return max(scores, key=scores.__getitem__), scores["positive"]


def _v2_body(text: str) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}


@dataclass(frozen=True)
class System:
    """One contender."""

    key: str
    title: str
    path: str
    body: Body
    parse: Parse
    config: str
    venv: str | None = None  # peer virtualenv name; None = the project's .venv
    module: str = ""  # `python -m module` (in the venv)
    argv: tuple[str, ...] = ()  # or a console script of the venv plus arguments
    env: Mapping[str, str] = field(default_factory=dict)
    model: Path = INT8
    ours: bool = False


BENTO_ARGV = (
    "bentoml", "serve", "benchmarks.peers.servers.bentoml_service:Sentiment",
    "--host", "127.0.0.1", "--port", "{port}",
)  # fmt: skip
OURS_ENV = {"LOG_LEVEL": "warning", "SHUTDOWN_TIMEOUT_SECONDS": "2", "MAX_CONCURRENCY": "256"}
OURS_CONFIG = (
    "defaults (micro-batching on, BATCH_MAX_SIZE 32, BATCH_MAX_WAIT_MS 2, spinning off) except "
    "MAX_CONCURRENCY 256 (default 64 answers 429 at concurrency 128) and LOG_LEVEL warning"
)


def _ours(key: str, title: str, model: Path, variant: str) -> System:
    return System(
        key, title, "/predict", lambda t: {"text": t}, _plain, OURS_CONFIG,
        module="functions.sentiment", model=model, ours=True,
        env={**OURS_ENV, "MODEL_DIR": str(model), "VARIANT": variant},
    )  # fmt: skip


def all_systems() -> list[System]:
    """Every system, ours first; the A/A twin is our int8 function started a second time."""
    return [
        _ours("kubesentiment-int8", "KubeSentiment cpu-int8 (ours)", INT8, "cpu-int8"),
        _ours("kubesentiment-int8-aa", "KubeSentiment cpu-int8, A/A twin", INT8, "cpu-int8"),
        _ours("kubesentiment-fp32", "KubeSentiment cpu-fp32 (ours)", FP32, "cpu-fp32"),
        System(
            "bentoml",
            "BentoML, @bentoml.api(batchable=True)",
            "/classify",
            lambda t: {"texts": [t]},
            lambda a: _plain(a[0]),
            "max_batch_size {batch} (default 100), max_latency_ms 60000 (the default), 1 worker, "
            "1 thread, access log off",
            venv="bentoml",
            argv=BENTO_ARGV,
        ),
        System(
            "bentoml-short",
            "BentoML, batchable, max_latency_ms 20",
            "/classify",
            lambda t: {"texts": [t]},
            lambda a: _plain(a[0]),
            "as bentoml but max_latency_ms 20: the dispatcher sheds with 503 what it predicts "
            "will miss that budget",
            venv="bentoml",
            argv=BENTO_ARGV,
            env={"PEER_MAX_LATENCY_MS": "20"},
        ),
        System(
            "rayserve",
            "Ray Serve, @serve.batch",
            "/",
            lambda t: {"text": t},
            _plain,
            "ray.init(num_cpus=2), dashboard off; max_ongoing_requests 256 (default 5 caps a "
            "batch at 5); @serve.batch max_batch_size {batch} (default 10), batch_wait_timeout_s "
            "0.005 (default 0.01); access log off",
            venv="rayserve",
            module="benchmarks.peers.servers.rayserve_app",
            env={"RAY_USAGE_STATS_ENABLED": "0"},
        ),
        System(
            "litserve",
            "LitServe, max_batch_size",
            "/predict",
            lambda t: {"text": t},
            _plain,
            "max_batch_size {batch}, batch_timeout 5 ms (default: no batching), fast_queue "
            "(ZeroMQ), 1 CPU worker, 1 API server",
            venv="litserve",
            module="benchmarks.peers.servers.litserve_app",
        ),
        System(
            "kserve-v1",
            "KServe Python server, v1 protocol",
            "/v1/models/sentiment:predict",
            lambda t: {"instances": [t]},
            lambda a: _plain(a["predictions"][0]),
            "no in-process batching exists (KServe batches in a sidecar agent); gRPC off, "
            "latency and access logging off, 1 worker",
            venv="kserve",
            module="benchmarks.peers.servers.kserve_model",
        ),
        System(
            "kserve-v2",
            "KServe Python server, v2 protocol",
            "/v2/models/sentiment/infer",
            _v2_body,
            _v2,
            "as kserve-v1, Open Inference Protocol JSON",
            venv="kserve",
            module="benchmarks.peers.servers.kserve_model",
        ),
        System(
            "mlserver",
            "MLServer, adaptive batching",
            "/v2/models/sentiment/infer",
            _v2_body,
            _v2,
            "max_batch_size {batch}, max_batch_time 5 ms (default: off), 1 parallel worker "
            "(default), debug and access logging off; uvloop 0.21 pinned (see requirements)",
            venv="mlserver",
            module="benchmarks.peers.servers.mlserver_runtime",
        ),
        System(
            "infinity",
            "Infinity (infinity-emb), optimum ONNX classifier",
            "/classify",
            lambda t: {"input": [t], "model": "sentiment"},
            _infinity,
            "`infinity_emb v2 --engine optimum --device cpu --batch-size {batch}` (default 32) "
            "on a Hugging Face folder made from our model files; start-up warm-up off (its "
            "514-token warm-up text exceeds this graph's 512 positions), vector disk cache off; "
            "ONNX Runtime session options are optimum's defaults; its queue sorts texts by length "
            "(benchmarks/peers/servers/infinity_server.py)",
            venv="infinity",
            module="benchmarks.peers.servers.infinity_server",
        ),
        System(
            "fastapi-naive",
            "FastAPI + transformers, naive (today's baseline)",
            "/predict",
            lambda t: {"text": t},
            _plain,
            "none: plain `def` endpoint in FastAPI's thread pool, PyTorch default threads, "
            "one pipeline call per request (benchmarks/baseline_server.py)",
            module="benchmarks.baseline_server",
            model=FP32,
        ),
        System(
            "fastapi-tuned",
            "FastAPI + transformers, tuned",
            "/predict",
            lambda t: {"text": t},
            _plain,
            "PyTorch threads = CPU quota, 1 inter-op thread, inference_mode, asyncio "
            "micro-batcher ({batch} texts, 5 ms) feeding one pipeline call on one thread",
            module="benchmarks.peers.servers.fastapi_tuned",
            model=FP32,
        ),
    ]


def by_key(keys: list[str] | None) -> list[System]:
    """The named systems in benchmark order (all when `keys` is empty)."""
    systems = all_systems()
    known = {s.key for s in systems}
    unknown = sorted(set(keys or ()) - known)
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; known: {sorted(known)}")
    return [s for s in systems if not keys or s.key in keys]
