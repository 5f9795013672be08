"""Shared fixtures: settings for the default model, an in-process app and a live uvicorn server."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from functions.sentiment.app import create_app
from loadtests import local
from loadtests.local import free_port as free_port  # re-exported: tests import it from here
from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "minilm-sentiment-int8"
FP32_MODEL = ROOT / "models" / "minilm-sentiment-fp32"


def model_dir() -> Path:
    """The model the tests serve: the committed default int8 model."""
    override = os.environ.get("KUBESENTIMENT_TEST_MODEL_DIR")
    return Path(override) if override else DEFAULT_MODEL


@pytest.fixture
def settings() -> Settings:
    """Settings for the default model, with small limits that tests can reach."""
    return replace(Settings(), model_dir=model_dir(), intra_op_threads=1, log_format="text")


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient]]:
    """Build a started TestClient (lifespan run, model ready) for given settings."""
    clients: list[TestClient] = []

    def make(settings: Settings, **kwargs: Any) -> TestClient:
        app = create_app(settings, **kwargs)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(settings: Settings, make_client: Callable[..., TestClient]) -> TestClient:
    """A started TestClient serving the default model."""
    return make_client(settings)


def wait_ready(client: TestClient | httpx.Client, deadline_s: float = 30.0) -> None:
    """Poll readiness until 200 or the deadline."""
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = client.get("/health/readiness")
            if last.status_code == 200:
                return
        except httpx.TransportError as e:
            last = e
        time.sleep(0.02)
    raise AssertionError(f"not ready within {deadline_s}s: {last!r}")


class LiveServer:
    """A `python -m functions.sentiment` subprocess on a free loopback port (loadtests.local)."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        env = {"HOST": local.LOOPBACK, "MODEL_DIR": str(model_dir()), **env}
        self.function = local.launch(env, log_path=log_path)
        self.port = self.function.port
        self.url = self.function.base_url
        self.proc = self.function.process

    def wait_ready(self, deadline_s: float = 60.0) -> None:
        try:
            local.wait_ready(self.function, deadline_s)
        except local.StartError as e:
            raise AssertionError(f"server not ready: {self.logs()}") from e

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        return local.stop(self.function, timeout)


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start live servers with extra env; each is stopped at the end of the test."""
    servers: list[LiveServer] = []

    def start(env: Mapping[str, str] | None = None, *, ready: bool = True) -> LiveServer:
        server = LiveServer(env or {}, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def openbao() -> Iterator[Any]:
    """A real OpenBao dev server for the whole session (see tests/openbao.py)."""
    from tests.openbao import OpenBao

    server = OpenBao.start()
    yield server
    server.stop()
