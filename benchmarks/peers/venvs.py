"""Each peer's own virtualenv, created from its pinned requirements file on first use.

Venvs live in build/peers/venvs/<peer> (build/ is git-ignored) and are rebuilt when their
requirements-<peer>.txt changes. A peer whose install fails is reported with pip's last lines
instead of stopping the benchmark.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from loadtests.local import ROOT

HERE = Path(__file__).resolve().parent
VENVS = ROOT / "build" / "peers" / "venvs"


def requirements(peer: str) -> Path:
    """The pinned requirements file of a peer."""
    return HERE / f"requirements-{peer}.txt"


def python(peer: str) -> Path:
    """The interpreter of a peer's venv."""
    return VENVS / peer / "bin" / "python"


def ensure(peer: str, base_python: str = "python3") -> str | None:
    """Create or refresh the peer's venv; None when ready, else why it could not be installed."""
    req = requirements(peer)
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = VENVS / peer / ".installed"
    if stamp.exists() and stamp.read_text() == digest and python(peer).exists():
        return None
    print(f"creating the {peer} venv from {req.relative_to(ROOT)} ...", flush=True)
    VENVS.mkdir(parents=True, exist_ok=True)
    steps = [
        [base_python, "-m", "venv", "--clear", str(VENVS / peer)],
        [str(python(peer)), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-r", str(req)],
    ]  # fmt: skip
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=1800)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            return f"`{' '.join(cmd[:4])} ...` failed: " + " | ".join(tail)
    stamp.write_text(digest)
    return None


if __name__ == "__main__":
    failed = {peer: ensure(peer) for peer in sys.argv[1:]}
    print(failed)
