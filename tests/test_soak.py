"""The soak runner (loadtests/soak.py): its arithmetic, and its one-minute mode for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtests.soak import (
    Sample,
    latency_per_interval,
    main,
    percentile,
    readme_figures,
    slope_per_hour,
    summarise,
)
from tests.conftest import ROOT
from tests.test_k6_smoke import k6_available


def test_least_squares_slope_per_hour() -> None:
    # 2 MiB per minute is 120 MiB per hour, whatever the offset and with noise that cancels.
    points = [(60.0 * i, 300 + 2.0 * i + (0.5 if i % 2 else -0.5)) for i in range(31)]
    slope = slope_per_hour(points)
    assert slope == pytest.approx(120.0, abs=2.0)
    assert slope_per_hour([(0.0, 1.0), (60.0, 1.0), (120.0, 1.0)]) == 0.0
    assert slope_per_hour([(0.0, 1.0), (60.0, 2.0)]) is None  # too few to fit


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile([7.0], 99) == 7.0


def test_latency_per_interval_from_k6_csv(tmp_path: Path) -> None:
    rows = ["metric_name,timestamp,metric_value,check"]
    for second in range(120):
        rows.append(f"http_req_duration,{1000 + second},{10.0 + (90.0 if second == 70 else 0)},")
        rows.append(f"http_req_failed,{1000 + second},{1 if second == 5 else 0},")
        rows.append(f"http_reqs,{1000 + second},1,")
    path = tmp_path / "k6.csv"
    path.write_text("\n".join(rows) + "\n")
    minutes = latency_per_interval(path, 60.0)
    assert [m["requests"] for m in minutes] == [60, 60]
    assert [m["failed"] for m in minutes] == [1, 0]
    assert [m["p99_ms"] for m in minutes] == [10.0, 100.0]
    assert minutes[1]["p50_ms"] == 10.0


def test_summary_fits_slopes_after_the_warm_up() -> None:
    samples = [Sample(0.0, 100.0, 10, 5), Sample(60.0, 150.0, 12, 6)] + [
        Sample(60.0 * i, 150.0, 12, 6) for i in range(2, 10)
    ]
    summary = summarise(samples, warmup_s=60.0)
    assert summary["rss_mib"]["start"] == 100.0
    assert summary["rss_mib"]["end"] == 150.0
    assert summary["slope_per_hour"]["rss_mib"] == 0.0  # the warm-up's growth is left out
    assert summary["slope_per_hour"]["fitted_from_s"] == 60.0


def test_readme_shows_the_committed_30_minute_soak() -> None:
    report = json.loads((ROOT / "docs" / "soak.json").read_text())
    assert report["duration_s"] == 1800
    assert report["max_rss_slope_mib_per_h"] == 20.0
    assert len(report["latency_per_interval"]) >= 30
    assert readme_figures(report) in (ROOT / "README.md").read_text(), (
        "README's soak figures are stale: python -m loadtests.soak --readme docs/soak.json"
    )


@pytest.mark.integration
@pytest.mark.slow
def test_short_soak_samples_the_function_and_reports(tmp_path: Path) -> None:
    k6_available()
    out = tmp_path / "soak.json"
    code = main(["--short", "--rate", "10", "--out", str(out), "--work-dir", str(tmp_path)])
    report = json.loads(out.read_text())
    assert code == 0, report["k6"]
    assert report["passed"] is True
    assert report["max_rss_slope_mib_per_h"] is None  # a minute cannot judge an hourly slope
    assert len(report["samples"]) >= 10  # every 5 s for 60 s, plus start and end
    assert 30 < report["rss_mib"]["start"] < report["rss_mib"]["peak"] + 1
    assert report["fds"]["start"] > 3
    assert report["threads"]["start"] >= 1
    assert report["k6"]["checks_failed"] == 0
    assert report["k6"]["requests"] >= 500
    intervals = report["latency_per_interval"]
    assert len(intervals) >= 11
    assert all(i["p99_ms"] >= i["p50_ms"] > 0 for i in intervals)
    # The CloudEvents share includes redeliveries, each answered from the stored reply.
    assert report["function_counters"]["event_redeliveries_replayed"] > 0
    assert report["function_counters"]["requests_2xx"] == report["k6"]["requests"]
    # Files and threads do not pile up in a minute at a steady rate.
    assert report["fds"]["end"] <= report["fds"]["start"] + 8
    assert report["threads"]["end"] <= report["threads"]["start"] + 4
