"""The kubesentiment-client distribution: the batch client without the serving stack.

The static checks read the client's modules (clients/kubesentiment-client/pyproject.toml lists
them): every import is the standard library, another listed module, or a declared dependency.
The slow one builds the wheel, installs it into a fresh virtual environment (its dependencies
from the package index, at the versions of requirements/serving.txt), and classifies a file
with the installed `kubesentiment-client` against a live function.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts import client_wheel
from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parent.parent
CLIENT = tomllib.loads((ROOT / client_wheel.PROJECT / "pyproject.toml").read_text())
SERVING_STACK = ("onnxruntime", "tokenizers", "numpy", "starlette", "uvicorn", "prometheus_client")


def imported(path: Path) -> set[str]:
    """Every absolute module name `path` imports, at any depth (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_client_modules_import_only_each_other_the_stdlib_and_declared_deps() -> None:
    modules = set(client_wheel.modules())
    declared = {Requirement(d).name for d in CLIENT["project"]["dependencies"]}
    assert declared == {"httpx", "cloudevents", "tqdm"}
    for name in sorted(modules):
        path = ROOT / Path(*name.split(".")).with_suffix(".py")
        for module in imported(path):
            top = module.split(".")[0]
            if top in ("functions", "shared"):
                assert module in modules or module in ("functions", "shared"), (name, module)
            else:
                assert top in sys.stdlib_module_names or top in declared, (name, module)
            assert top not in SERVING_STACK, (name, module)


def test_the_client_declares_the_root_projects_specifiers() -> None:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ours = {Requirement(d).name: Requirement(d) for d in root["project"]["dependencies"]}
    for dep in CLIENT["project"]["dependencies"]:
        req = Requirement(dep)
        if req.name in ours:  # tqdm is not a serving dependency (the image leaves it out)
            assert req.specifier == ours[req.name].specifier, req.name
    assert CLIENT["project"]["version"] == root["project"]["version"]
    assert CLIENT["project"]["scripts"] == {
        "kubesentiment-client": root["project"]["scripts"]["kubesentiment-client"]
    }


def test_the_wheel_holds_the_listed_modules_and_nothing_else(tmp_path: Path) -> None:
    import zipfile

    wheel = client_wheel.build(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    code = {n for n in names if n.endswith(".py")}
    assert code == {str(p) for p in client_wheel.files()}
    assert "functions/sentiment/__init__.py" not in code
    # Built from a staged copy: nothing of the build lands in the working tree.
    assert not (ROOT / "kubesentiment_client.egg-info").exists()
    assert not (ROOT / client_wheel.PROJECT / "build").exists()


def pins(lock: Path) -> str:
    """A constraints file's text: the lock's `name==version` lines, without hashes."""
    return "\n".join(re.findall(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[^ \\\n]+", lock.read_text(), re.M))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer({"ORT_INTRA_OP_THREADS": "1"}, tmp_path_factory.mktemp("dist") / "server.log")
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.mark.slow
@pytest.mark.integration
def test_installed_in_a_fresh_venv_it_classifies_without_the_serving_stack(
    server: LiveServer, tmp_path: Path
) -> None:
    wheel = client_wheel.build(tmp_path / "dist")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(pins(ROOT / "requirements" / "serving.txt") + "\n")
    # Outside the repository and without PYTHONPATH, so only the installed copy can be imported.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CI", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=600, check=False,
        )  # fmt: skip

    done = run(python, "-m", "pip", "install", "--quiet", "-c", constraints, wheel)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = run(python, "-m", "pip", "list", "--format", "json")
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "kubesentiment-client" in installed
    for heavy in ("onnxruntime", "tokenizers", "numpy", "starlette", "uvicorn", "hvac"):
        assert heavy not in installed, sorted(installed)

    script = env_dir / "bin" / "kubesentiment-client"
    helped = run(script, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--progress-interval" in helped.stdout
    where = run(python, "-c", "import functions.client as c; print(c.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(env_dir), where.stdout

    rows = tmp_path / "in.jsonl"
    rows.write_text(
        "".join(json.dumps({"id": i, "text": f"review {i}: great"}) + "\n" for i in range(50))
    )
    out = tmp_path / "out.jsonl"
    batch = run(script, rows, "-o", out, "--url", server.url, "--batch-size", "8")
    assert batch.returncode == 0, batch.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in results) == list(range(50))
    assert all(r["label"] == "positive" for r in results)
    assert "classify: 50/50 text (100 %)" in batch.stderr
    assert "summary: rows=50" in batch.stderr
