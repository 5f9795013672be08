"""`make adapt-demo` (scripts/adapt_demo.py): the loop end to end, small, and its README block."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import adapt_demo
from scripts.readme_blocks import current

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_block_is_the_recorded_report() -> None:
    block = current((ROOT / "README.md").read_text(), adapt_demo.BEGIN, adapt_demo.END)
    assert block == adapt_demo.readme_section(), "run `python -m scripts.adapt_demo --readme`"
    assert "balanced accuracy" in block


@pytest.mark.integration
@pytest.mark.slow
def test_the_loop_runs_end_to_end(tmp_path: Path) -> None:
    # Real processes throughout: the function with payload logging, the sampler, the adapt job,
    # Debian's docker-registry, the function again with MODEL_URI.
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "scripts.adapt_demo", "--quick", "--labels", "120",
         "--work", str(tmp_path / "work"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    f = json.loads(out.read_text())
    assert f["logged_events"] == -(-f["traffic"] // adapt_demo.BATCH)  # one event per request
    assert sum(f["picked"].values()) == 120
    assert f["picked"]["random"] > 0
    completion = f["completion"]
    assert completion["status"] == "succeeded"
    assert completion["gate"]["passed"] is True
    held = completion["held_out"]
    assert set(held) >= {"n", "base", "adapted", "majority"}
    assert f["model_uri"].startswith("oci://127.0.0.1:")
    assert "@sha256:" in f["model_uri"]
    assert set(f["scores"]) == {"default (cpu-int8)", "adapted, from the registry",
                                "majority (positive)"}  # fmt: skip
    for scores in f["scores"].values():
        assert scores["n"] == f["test"]
    assert f["rollout_gate"]["action"] in ("canary", "reject")
    assert "Scored over HTTP" in done.stdout
