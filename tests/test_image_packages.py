"""The serving image leaves out the distributions in requirements/image-leave-out.txt and the
subpackages in requirements/image-prune.txt (Dockerfile, stage cpu-deps): the function must import
and serve every protocol without them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import httpx
import pytest

from loadtests import local
from tests.receiver import Receiver

ROOT = Path(__file__).resolve().parent.parent
LEAVE_OUT = ROOT / "requirements" / "image-leave-out.txt"
PRUNE = ROOT / "requirements" / "image-prune.txt"


def entries(path: Path) -> list[str]:
    """The non-comment lines of a requirements-style list."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def left_out() -> list[str]:
    """The distribution names in the leave-out file."""
    return entries(LEAVE_OUT)


def pruned_modules() -> list[str]:
    """The pruned subpackages as dotted module names; each must exist in the venv."""
    return [p.replace("/", ".") for p in entries(PRUNE)]


def top_level_modules(distributions: list[str]) -> dict[str, set[str]]:
    """Each distribution's top-level import names, from the installed packages' metadata."""
    wanted = {d.lower().replace("_", "-") for d in distributions}
    found: dict[str, set[str]] = {d: set() for d in wanted}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            key = dist.lower().replace("_", "-")
            if key in wanted:
                found[key].add(module)
    return found


def test_every_left_out_distribution_is_a_serving_dependency_with_modules() -> None:
    serving = (ROOT / "requirements" / "serving.txt").read_text(encoding="utf-8").lower()
    pinned = {line.split("==")[0].split("[")[0] for line in serving.splitlines() if "==" in line}
    names = left_out()
    assert names, "the leave-out list is empty"
    for name in names:
        assert name in pinned, f"{name} is not in requirements/serving.txt"
    for dist, modules in top_level_modules(names).items():
        # A distribution without an import name would make the serving test below vacuous.
        assert modules, f"{dist}: no top-level module found (is it installed?)"


def test_every_pruned_subpackage_exists() -> None:
    names = pruned_modules()
    assert names, "the prune list is empty"
    for name in names:
        # A path that matches nothing would delete nothing and block nothing.
        assert importlib.util.find_spec(name) is not None, f"{name} is not installed"


@pytest.mark.integration
def test_function_serves_with_the_left_out_packages_blocked(tmp_path: Path) -> None:
    blocked = sorted(set().union(*top_level_modules(left_out()).values(), pruned_modules()))
    sink = Receiver().start()
    function = local.launch(
        {
            "HOST": local.LOOPBACK,
            "MODEL_DIR": str(ROOT / "models" / "minilm-sentiment-int8"),
            "KUBESENTIMENT_BLOCKED_MODULES": ",".join(blocked),
            # The optional paths that import more: tracing (OTLP exporter, instrumentation, and
            # with a sink the httpx client instrumentation) and the K_SINK sender.
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{local.LOOPBACK}:9",
            "K_SINK": sink.url,
        },
        log_path=tmp_path / "function.log",
        module="tests.without_modules",
    )
    try:
        local.wait_ready(function, 60.0)
        with httpx.Client(base_url=function.base_url, timeout=10) as client:
            r = client.post("/predict", json={"texts": ["great", "awful"]})
            assert r.status_code == 200, r.text
            assert [p["label"] for p in r.json()["results"]] == ["positive", "negative"]
            v2 = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["ok"]}]}
            r = client.post("/v2/models/minilm-sentiment/infer", json=v2)
            assert r.status_code == 200, r.text
            event = {
                "specversion": "1.0", "id": "1", "source": "/t",
                "type": "dev.kubesentiment.sentiment.requested",
                "datacontenttype": "application/json", "data": {"texts": ["fine"]},
            }  # fmt: skip
            r = client.post(
                "/", content=json.dumps(event),
                headers={"content-type": "application/cloudevents+json"},
            )  # fmt: skip
            assert r.status_code in (200, 202), r.text
            assert sink.wait_for(1, deadline_s=20.0), "the result event never reached K_SINK"
    finally:
        local.stop(function)
        sink.stop()
    log = (tmp_path / "function.log").read_text(errors="replace")
    assert "blocked" not in log, log
