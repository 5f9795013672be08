"""Build the kubesentiment-client wheel (`make client-wheel`): the batch client without the
serving stack (clients/kubesentiment-client/pyproject.toml).

The build runs on a staged copy holding only that project and the modules it lists, laid out as
in the repository, so setuptools' egg-info and build/ directories never land in the working tree
and a module missing from the list cannot slip into the wheel. It uses the current environment's
setuptools (no build isolation: no download). Prints the wheel's path.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = Path("clients/kubesentiment-client")


def modules() -> list[str]:
    """The dotted module names the client distribution ships (its `py-modules`)."""
    config = tomllib.loads((ROOT / PROJECT / "pyproject.toml").read_text())
    names: list[str] = config["tool"]["setuptools"]["py-modules"]
    return names


def files() -> list[Path]:
    """Every source file of the wheel, relative to the repository root (with package inits)."""
    out: list[Path] = []
    for name in modules():
        parts = name.split(".")
        for depth in range(1, len(parts)):
            init = Path(*parts[:depth], "__init__.py")
            if init not in out:
                out.append(init)
        out.append(Path(*parts).with_suffix(".py"))
    return out


def build(out_dir: Path) -> Path:
    """Build the wheel into `out_dir`; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="client-wheel-") as tmp:
        stage = Path(tmp)
        shutil.copytree(ROOT / PROJECT, stage / PROJECT)
        for rel in files():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, stage / rel)
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        cmd += ["--wheel-dir", str(out_dir.resolve()), str(PROJECT)]
        subprocess.run(cmd, cwd=stage, check=True)
    wheels = sorted(out_dir.glob("kubesentiment_client-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise SystemExit(f"pip wheel wrote no kubesentiment_client wheel into {out_dir}")
    return wheels[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "client")
    print(build(parser.parse_args(argv).out))


if __name__ == "__main__":
    main()
