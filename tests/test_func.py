"""The Knative Functions project: the real func-python middleware serving `function.new`.

The process runs what `func build` scaffolds for a Python function (`serve(new)` from
func_python.http, here `python -m function`), on a loopback port, with the real model; the test
makes predictions, health checks and CloudEvents through it, then stops it with SIGTERM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shared.config import Settings
from tests.conftest import free_port, model_dir

ROOT = Path(__file__).resolve().parent.parent
FUNC_YAML = ROOT / "func.yaml"


class FuncProcess:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {
            **os.environ,
            "LISTEN_ADDRESS": f"127.0.0.1:{self.port}",
            "MODEL_DIR": str(model_dir()),
            "ORT_INTRA_OP_THREADS": "1",
            "LOG_FORMAT": "text",
        }
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "function"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, deadline_s: float = 60.0) -> list[str]:
        """Poll readiness until 200; the readiness answers seen on the way."""
        seen: list[str] = []
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.logs()
            try:
                r = httpx.get(f"{self.url}/health/readiness", timeout=2)
                seen.append(f"{r.status_code} {r.text}")
                if r.status_code == 200:
                    return seen
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"not ready: {seen[-3:]} {self.logs()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def func_process(tmp_path: Path) -> Iterator[FuncProcess]:
    p = FuncProcess(tmp_path / "func.log")
    yield p
    p.stop()


@pytest.mark.integration
def test_func_python_serves_the_function(func_process: FuncProcess) -> None:
    seen = func_process.wait_ready()
    assert seen[-1] == "200 OK"
    # Not ready answers (if the poll was early enough to see one) name the reason.
    assert all(s.startswith("500 not ready") for s in seen[:-1]), seen
    url = func_process.url
    live = httpx.get(f"{url}/health/liveness")
    assert (live.status_code, live.text) == (200, "OK")

    r = httpx.post(f"{url}/predict", json={"texts": ["I love it", "Awful, broken, useless"]})
    assert r.status_code == 200, r.text
    labels = [p["label"] for p in r.json()["results"]]
    assert labels == ["positive", "negative"]
    assert "x-request-id" in r.headers

    bad = httpx.post(f"{url}/predict", json={"text": ""})
    assert bad.status_code == 422
    assert bad.json()["error"]["type"] == "invalid_input"

    binary = httpx.post(
        f"{url}/",
        headers={
            "ce-specversion": "1.0",
            "ce-id": "e1",
            "ce-source": "/tests",
            "ce-type": "dev.kubesentiment.sentiment.requested",
            "content-type": "application/json",
        },
        content=json.dumps({"items": [{"id": "a", "text": "Great film"}]}),
    )
    assert binary.status_code == 200, binary.text
    assert binary.headers["ce-type"] == "dev.kubesentiment.sentiment.completed"
    assert binary.json()["results"][0]["id"] == "a"

    structured = httpx.post(
        f"{url}/",
        headers={"content-type": "application/cloudevents+json"},
        content=json.dumps(
            {
                "specversion": "1.0",
                "id": "e2",
                "source": "/tests",
                "type": "dev.kubesentiment.sentiment.requested",
                "data": {"texts": ["Dull and slow"]},
            }
        ),
    )
    assert structured.status_code == 200, structured.text
    event: dict[str, Any] = structured.json()
    assert event["type"] == "dev.kubesentiment.sentiment.completed"
    assert event["data"]["results"][0]["label"] == "negative"

    metrics = httpx.get(f"{url}/metrics").text
    assert any(
        line.startswith("kubesentiment_http_requests_total{") and 'route="/predict"' in line
        for line in metrics.splitlines()
    )

    assert func_process.stop() == 0
    logs = func_process.logs()
    assert "stop requested" in logs
    assert "Traceback" not in logs


def test_func_yaml_describes_the_default_variant() -> None:
    spec = yaml.safe_load(FUNC_YAML.read_text(encoding="utf-8"))
    assert spec["runtime"] == "python"
    assert set(spec) <= {
        "specVersion", "name", "domain", "runtime", "registry", "image", "namespace",
        "created", "invoke", "build", "run", "deploy",
    }  # fmt: skip
    envs = {e["name"]: e["value"] for e in spec["run"]["envs"]}
    settings = Settings.from_env(environ=envs)  # every env is a setting with a valid value
    assert (settings.variant, str(settings.model_dir)) == (
        "cpu-int8",
        "models/minilm-sentiment-int8",
    )
    assert (ROOT / settings.model_dir / "model.onnx").is_file()
    health = spec["deploy"]["healthEndpoints"]
    assert health == {"liveness": "/health/liveness", "readiness": "/health/readiness"}
    # func-python answers exactly these two paths itself (alive()/ready()). Read, not imported:
    # importing it configures the root logger (logging.basicConfig) for the whole test session.
    spec = importlib.util.find_spec("func_python.http")
    assert spec is not None
    assert spec.origin is not None
    source = Path(spec.origin).read_text(encoding="utf-8")
    assert all(f"'{path}'" in source for path in health.values())
    from function import new

    instance = new()
    for hook in ("handle", "start", "stop", "alive", "ready"):
        assert callable(getattr(instance, hook)), hook
