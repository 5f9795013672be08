"""The priorities benchmark's summary and the README figures it writes (no server started)."""

from __future__ import annotations

import json

from benchmarks.priorities import RESULTS, Sample, readme_section, render, summarise
from loadtests.local import ROOT


def test_the_summary_pools_samples_per_server_and_scenario() -> None:
    pooled = {
        "on": {
            "alone": [Sample([10.0, 20.0], seconds=1.0), Sample([30.0], seconds=1.0)],
            "bulk": [Sample([50.0, 70.0], errors=1, bulk_texts=640, seconds=2.0)],
        },
        "off": {"alone": [Sample([12.0], seconds=1.0)], "bulk": [Sample([], seconds=1.0)]},
    }
    result = summarise(pooled)
    on = result["scenarios"]["alone"]["on"]
    assert on["requests"] == 3
    assert on["p50_ms"] == 20.0
    assert 29.0 < on["p99_ms"] <= 30.0
    assert on["req_per_s"] == 1.5
    bulk = result["scenarios"]["bulk"]["on"]
    assert (bulk["bulk_texts_per_s"], bulk["errors"]) == (320.0, 1)
    assert result["scenarios"]["bulk"]["off"]["requests"] == 0
    table = render(result)
    assert table.count("\n") == 5
    assert "| bulk | on | 60.0 |" in table


def test_readme_priorities_figures_come_from_the_results_file() -> None:
    result = json.loads(RESULTS.read_text()) if RESULTS.exists() else None
    stale = "README priorities figures are stale: run python -m benchmarks.priorities --readme"
    assert readme_section(result) in (ROOT / "README.md").read_text(), stale
