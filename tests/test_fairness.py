"""The fairness run (loadtests/fairness.py) through a real uvicorn process: a key flooding over its
quota is refused with 429 while a key within its quota is always served, never with a 5xx. The
timings are printed and kept in docs/quota_fairness.json, not judged here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.fairness import percentile, readme_line

ROOT = Path(__file__).resolve().parent.parent


def test_percentile_interpolates_between_order_statistics() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0], 0.99) == pytest.approx(1.99)
    assert percentile([5.0], 0.99) == 5.0


@pytest.mark.integration
def test_a_flooding_key_is_refused_while_a_quiet_key_is_served(tmp_path: Path) -> None:
    out = tmp_path / "fairness.json"
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.fairness", "--short", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["errors"] == []
    for phase in ("quiet_alone", "quiet_under_flood"):
        statuses = result[phase]["statuses"]
        assert set(statuses) == {"200"}, statuses  # never a 429, never a 5xx
        assert statuses["200"] == result[phase]["requests"] > 0
    flood = result["flood_statuses"]
    assert set(flood) <= {"200", "429"}, flood
    assert flood["429"] > 0
    assert flood.get("200", 0) > 0  # within its quota the flood key is served too
    assert "quiet key p99 alone" in run.stdout


def test_readme_quotes_the_committed_fairness_figures() -> None:
    result = json.loads((ROOT / "docs" / "quota_fairness.json").read_text())
    assert result["without_flood_quota"] is not None, "commit a full run, not --short"
    readme = (ROOT / "README.md").read_text()
    assert readme_line(result) in readme, "README is stale: run make quota-fairness"
