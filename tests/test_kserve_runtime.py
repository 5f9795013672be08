"""The function started as KServe starts the cpu-int8 runtime, called with the real Triton client.

What KServe does to the runtime's container is done here from the committed YAML: the
InferenceService's container fields are merged over the runtime's (env by name, the
InferenceService's value winning: a strategic merge), then `{{.Name}}`-style placeholders are
filled from the InferenceService's metadata (KServe runs the container through a Go template).
The storage-URI example's model is laid out as KServe's storage initializer leaves it: the files
of a model directory in a `mnt/models` folder, read-only. Only what a container has and a test
process does not is replaced: `python` is this interpreter, /mnt/models that folder, HOST loopback
and PORT a free port (Knative sets PORT; the image's default is 8080).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import yaml
from tritonclient.utils import InferenceServerException

from loadtests import local

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
KSERVE = ROOT / "knative" / "kserve"
RUNTIME = KSERVE / "servingruntime-cpu-int8.yaml"
BAKED = KSERVE / "inferenceservice-cpu-int8.yaml"
STORED = KSERVE / "storage-uri" / "inferenceservice-cpu-int8-storage.yaml"
NAMESPACE = "kubesentiment-kserve"
MOUNT = "/mnt/models"
PLACEHOLDER = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")
TEXTS = ["What a wonderful, moving film.", "Dreadful acting and a boring plot."]


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc


def fill(value: str, meta: dict[str, str]) -> str:
    """A runtime field with KServe's placeholders filled from the InferenceService's metadata."""
    out = PLACEHOLDER.sub(lambda m: meta[m.group(1)], value)
    assert "{{" not in out, f"a placeholder KServe would not fill: {value!r}"
    return out


@dataclass(frozen=True)
class Container:
    """The kserve-container KServe would run for one InferenceService on the runtime."""

    command: list[str]
    env: dict[str, str]
    readiness: str
    liveness: str


def kserve_container(
    runtime: dict[str, Any], isvc: dict[str, Any], *, filled: bool = True
) -> Container:
    (c,) = runtime["spec"]["containers"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    env = {e["name"]: e["value"] for e in c["env"]}
    env.update({e["name"]: e["value"] for e in model.get("env", [])})
    meta = {"Name": isvc["metadata"]["name"], "Namespace": NAMESPACE}

    def f(value: str) -> str:
        return fill(value, meta) if filled else value

    return Container(
        command=[f(a) for a in [*c["command"], *c.get("args", [])]],
        env={k: f(v) for k, v in env.items()},
        readiness=c["readinessProbe"]["httpGet"]["path"],
        liveness=c["livenessProbe"]["httpGet"]["path"],
    )


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@dataclass(frozen=True)
class Served:
    """A running function as KServe would run it, and what it was started from."""

    name: str
    container: Container
    function: local.LocalFunction
    model_dir: Path

    @property
    def url(self) -> str:
        return self.function.base_url

    def logs(self) -> list[dict[str, Any]]:
        lines = self.function.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def start(container: Container, tmp: Path, *, model_dir: Path) -> local.LocalFunction:
    """Run `container` as the kubelet would (its command and env only), with the stand-ins above."""
    assert container.command[0] == "python"
    port = local.free_port()
    env = {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "HOME": str(tmp),
        **container.env,
        "HOST": local.LOOPBACK,
        "PORT": str(port),
    }
    if env["MODEL_DIR"] == MOUNT:
        env["MODEL_DIR"] = str(model_dir)
    log_path = tmp / "function.log"
    with log_path.open("wb") as log:
        # The image's WORKDIR holds functions/, shared/ and models/, as the repository root does.
        process = subprocess.Popen(
            [sys.executable, *container.command[1:]],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return local.LocalFunction(process, f"http://{local.LOOPBACK}:{port}", log_path, time.time())


def wait_probe(function: local.LocalFunction, path: str, deadline_s: float = 90.0) -> None:
    """Poll the runtime's readiness probe path until 200, as the kubelet or queue-proxy does."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if function.process.poll() is not None:
            pytest.fail(f"exited with {function.process.returncode}:\n{function.log_tail()}")
        try:
            if httpx.get(f"{function.base_url}{path}", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # poll interval inside a deadline loop
    pytest.fail(f"not ready after {deadline_s:.0f} s:\n{function.log_tail()}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Served]]:
    """Start, once per module, the function for the baked or the storage-URI InferenceService."""
    runtime = load(RUNTIME)
    running: dict[str, Served] = {}
    # /mnt/models as the storage initializer leaves it: the runtime's baked model directory's
    # files (the PVC of the example holds such a copy), read-only.
    mount = tmp_path_factory.mktemp("pod") / "mnt" / "models"
    baked = ROOT / kserve_container(runtime, load(BAKED)).env["MODEL_DIR"]
    shutil.copytree(baked, mount)
    for p in [*mount.iterdir(), mount]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = snapshot(mount)

    def get(which: str) -> Served:
        if which not in running:
            isvc = load(BAKED if which == "baked" else STORED)
            container = kserve_container(runtime, isvc)
            tmp = tmp_path_factory.mktemp(which)
            function = start(container, tmp, model_dir=mount)
            running[which] = Served(isvc["metadata"]["name"], container, function, mount)
            wait_probe(function, container.readiness)
        return running[which]

    yield get
    for s in running.values():
        local.stop(s.function)
    assert snapshot(mount) == before, "the function wrote into /mnt/models"
    mount.chmod(0o755)


@pytest.fixture
def client(served: Callable[[str], Served], request: pytest.FixtureRequest) -> Iterator[Any]:
    s = served(request.param)
    c = triton.InferenceServerClient(url=s.url.removeprefix("http://"))
    yield s, c
    c.close()


BOTH = pytest.mark.parametrize("client", ["baked", "stored"], indirect=True)


@BOTH
def test_the_probes_answer_and_the_model_is_served_from_where_kserve_puts_it(
    client: tuple[Served, Any],
) -> None:
    s, _ = client
    ready = httpx.get(f"{s.url}{s.container.readiness}")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True}
    live = httpx.get(f"{s.url}{s.container.liveness}")
    assert live.status_code == 200
    assert live.json() == {"live": True}
    loaded = [r["model_dir"] for r in s.logs() if r.get("message") == "ready"]
    expected = (
        str(s.model_dir)
        if s.container.env["MODEL_DIR"] == MOUNT
        else "models/minilm-sentiment-int8"
    )
    assert loaded == [expected]


@BOTH
def test_tritonclient_calls_the_model_by_the_inferenceservice_name(
    client: tuple[Served, Any],
) -> None:
    s, c = client
    manifest = json.loads((ROOT / "models" / "minilm-sentiment-int8" / "manifest.json").read_text())
    assert c.is_server_live()
    assert c.is_server_ready()
    assert c.is_model_ready(s.name)
    meta = c.get_model_metadata(s.name)
    assert meta["name"] == s.name
    assert meta["versions"] == [manifest["version"]]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    for binary in (False, True):
        tensor = triton.InferInput("text", [len(TEXTS)], "BYTES")
        tensor.set_data_from_numpy(
            np.array([t.encode() for t in TEXTS], dtype=np.object_), binary_data=binary
        )
        result = c.infer(s.name, [tensor])
        assert result.get_response()["model_name"] == s.name
        assert list(result.as_numpy("label")) == ["positive", "negative"]
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (len(TEXTS), len(manifest["labels"]))
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    # Another InferenceService's name is not this model: 404, as KServe's own servers answer.
    with pytest.raises(InferenceServerException, match="unknown model"):
        c.get_model_metadata("sentiment-cpu-fp32")
    # The OpenAPI document names it too (schemathesis and clients generated from it).
    doc = httpx.get(f"{s.url}/openapi.json").json()
    response = doc["components"]["schemas"]["V2InferResponse"]["properties"]["model_name"]
    assert s.name in response["enum"]


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Run under KServe\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the KServe section should hold one Python snippet"
    return str(blocks[0])


@pytest.mark.parametrize("client", ["baked"], indirect=True)
def test_the_readme_tritonclient_snippet_runs_as_written(
    client: tuple[Served, Any], tmp_path: Path
) -> None:
    s, _ = client
    snippet = readme_snippet()
    assert f'model = "{s.name}"' in snippet
    done = subprocess.run(
        [sys.executable, "-c", snippet],
        env={**os.environ, "KSERVE_HOST": s.url.removeprefix("http://")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["positive", "negative"]
    assert [line.split(" ", 2)[2] for line in lines] == TEXTS
    assert float(lines[0].split()[1]) > 0 > float(lines[1].split()[1])


def test_an_unfilled_model_name_placeholder_stops_the_start(tmp_path: Path) -> None:
    # Run outside KServe (nothing fills `{{.Name}}`), the runtime refuses to start, status 2.
    container = kserve_container(load(RUNTIME), load(BAKED), filled=False)
    assert container.env["MODEL_NAME"] == "{{.Name}}"
    function = start(container, tmp_path, model_dir=tmp_path)
    assert function.process.wait(timeout=60) == 2
    assert "MODEL_NAME" in function.log_path.read_text()
