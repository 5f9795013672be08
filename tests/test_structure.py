"""The request core's shape: one unexpected-error path, one-way imports, small modules."""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.config import Settings
from shared.logs import request_id_var

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("functions", "shared")


async def boom(request: Request) -> Response:
    raise RuntimeError("a genuine bug with secret-looking detail xyz")


@pytest.mark.parametrize(
    ("path", "v2"),
    [pytest.param("/boom", False, id="main-shape"), pytest.param("/v2/boom", True, id="v2-shape")],
)
def test_a_bug_answers_500_inside_the_request_context(
    settings: Settings,
    make_client: Callable[..., TestClient],
    caplog: pytest.LogCaptureFixture,
    path: str,
    v2: bool,
) -> None:
    c = make_client(settings, extra_routes=[Route(path, boom, methods=["GET"])])
    seen: list[str | None] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(request_id_var.get())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    try:
        with caplog.at_level(logging.ERROR):
            r = c.get(path, headers={"x-request-id": "bug-42"})
    finally:
        logging.getLogger().removeHandler(handler)
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "bug-42"
    assert "total;dur=" in r.headers["server-timing"]
    assert "xyz" not in r.text
    assert "Traceback" not in r.text
    if v2:
        assert set(r.json()) == {"error"}
        assert isinstance(r.json()["error"], str)
    else:
        assert r.json()["error"]["type"] == "internal_error"
        assert r.json()["error"]["request_id"] == "bug-42"
    records = [rec for rec in caplog.records if rec.exc_info]
    assert len(records) == 1, [rec.getMessage() for rec in caplog.records]
    assert "a genuine bug" in caplog.text
    assert "bug-42" in seen  # logged while the request's id was still set


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_no_import_cycle_and_shared_never_imports_functions() -> None:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module(p): p for p in files}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    for m, deps in graph.items():
        if m.startswith("shared"):
            assert not any(d.startswith("functions") for d in deps), (m, deps)
    # Depth-first search for a back edge.
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack, m, d])}")
            if d not in state:
                visit(d, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    # The app factory only wires: no module of the packages imports it but the entry point.
    importers = {m for m, deps in graph.items() if "functions.sentiment.app" in deps}
    assert importers <= {"functions.sentiment.__main__"}, importers


# A module that is one declaration growing by one entry per fact gets a larger cap instead of
# being split in two; so does a module that is one idea whose bulk is data rather than logic.
LINE_CAPS = {
    # Every setting declared once (STYLE: one declaration per fact), a few lines per setting.
    "shared/config.py": 480,
    # The /label routes and the two pages they serve (lock, labelling): ~280 lines are HTML/CSS/JS.
    "functions/sentiment/labelling.py": 400,
    # The batcher: its queue, its worker, the run split and the types a run returns are one idea.
    "functions/sentiment/batching.py": 440,
}


@pytest.mark.parametrize("package", PACKAGES)
def test_modules_stay_small(package: str) -> None:
    big = {
        name: n
        for p in (ROOT / package).rglob("*.py")
        if (n := len(p.read_text().splitlines()))
        > LINE_CAPS.get(name := str(p.relative_to(ROOT)), 360)
    }
    assert not big, f"split these modules (~350 lines at most): {big}"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        pytest.param("/predict", {"content-type": "application/json"}, id="predict"),
        pytest.param(
            "/",
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "/t",
                "ce-type": "dev.kubesentiment.sentiment.requested",
                "content-type": "application/json",
            },
            id="cloudevents",
        ),
        pytest.param("/v2/models/minilm-sentiment/infer", {}, id="v2"),
    ],
)
def test_admission_is_decided_before_the_body_is_read(
    client: TestClient, path: str, headers: dict[str, str]
) -> None:
    state = client.app.state.kubesentiment  # type: ignore[attr-defined]
    state.in_flight = state.settings.max_concurrency  # every slot taken
    try:
        # A body that would be refused as too large (413) and as malformed (400) if it were read.
        r = client.post(path, content=b"{" * (state.settings.max_body_bytes + 1), headers=headers)
    finally:
        state.in_flight = 0
    assert r.status_code == 429, r.text[:200]
    assert r.headers["retry-after"] == str(state.settings.retry_after_s)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/predict", "POST"),
        ("PUT", "/", "POST"),
        ("DELETE", "/v2/models/minilm-sentiment/infer", "POST"),
        ("POST", "/health/readiness", "GET, HEAD"),
    ],
)
def test_405_names_the_allowed_methods(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    r = client.request(method, path)
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == set(allow.split(", "))
    if path.startswith("/v2"):
        assert "not allowed" in r.json()["error"]
    else:
        assert r.json()["error"]["type"] == "method_not_allowed"
