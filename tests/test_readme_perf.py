"""The README's performance section is exactly what the results files say.

scripts/readme_perf.py generates the section from docs/coldstart.json, docs/peers.json and
docs/capacity.json; a hand-edited figure, or a results file rerun without regenerating the README,
fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from scripts.readme_perf import DOCS, ROOT, current, section


def test_readme_performance_section_matches_the_results_files() -> None:
    block = current((ROOT / "README.md").read_text())
    assert block is not None, "README.md lost its generated performance block"
    assert block == section(), "stale: run `python -m scripts.readme_perf --write`"


def test_section_follows_the_files(tmp_path: Path) -> None:
    shutil.copy(DOCS / "coldstart.json", tmp_path / "coldstart.json")
    before = section(tmp_path)
    cold = json.loads((tmp_path / "coldstart.json").read_text())
    cold["median_cold_start_s"] = 12.345
    cold["median_peak_rss_mib"] = 678.9
    (tmp_path / "coldstart.json").write_text(json.dumps(cold))
    after = section(tmp_path)
    assert after != before
    assert "median 12.345 s" in after
    assert "679 MiB" in after


def test_model_uri_cold_start_follows_the_file(tmp_path: Path) -> None:
    cold = json.loads((DOCS / "coldstart.json").read_text())
    cold["model_uri"] = {
        "date": "2026-12-08 01:00 UTC", "loadavg_at_end": 1.5, "model_mib": 22.5, "runs": 5,
        "median_pulled_s": 1.234, "median_baked_s": 0.617, "median_cached_s": 0.701,
        "median_fetch_s": 0.321,
    }  # fmt: skip
    (tmp_path / "coldstart.json").write_text(json.dumps(cold))
    text = " ".join(section(tmp_path).split())
    assert "median 1.234 s against 0.617 s baked in the same runs" in text
    assert "0.701 s from a warm MODEL_CACHE_DIR" in text
    assert "verification alone take 0.321 s" in text
    del cold["model_uri"]
    (tmp_path / "coldstart.json").write_text(json.dumps(cold))
    assert "MODEL_URI" not in section(tmp_path)


def test_peer_table_and_goals_come_from_peers_json(tmp_path: Path) -> None:
    ours = {"cold_start_s": 0.41, "p50_ms_c1": 3.5, "p99_ms_c1": 6.0, "rps_c8": 400.0,
            "rps_c32": 600.0, "rps_c128": 610.0, "p99_ms_c32": 80.0, "rss_mib": 150.0,
            "cpu_s_per_1k": 3.0}  # fmt: skip
    peer = {**ours, "cold_start_s": 3.2, "rps_c32": 350.0, "rps_c128": 360.0, "rss_mib": 700.0}
    peers = {
        "machine": {"date": "2026-12-03", "cores": 2},
        "mode": "full",
        "systems": {"kubesentiment-int8": ours, "litserve": peer},
        "ceiling_texts_per_s": 700.0,
        "unavailable": {"mlserver": "pip failed"},
    }
    (tmp_path / "peers.json").write_text(json.dumps(peers))
    text = section(tmp_path)
    assert (
        "| kubesentiment-int8 | 0.41 | 3.50 | 6.00 | 400 | 600 | 610 | 80.0 | 150 | 3.00 |" in text
    )
    assert "| litserve | 3.20 |" in text
    assert "700 texts/s" in text
    assert "met: throughput c32: 1.71x the best peer (litserve)" in text
    assert "Not measured (reasons in docs/peers.md): mlserver." in text


def test_both_peer_modes_reach_the_readme(tmp_path: Path) -> None:
    ours = {"cold_start_s": 0.41, "p50_ms_c1": 3.5, "p99_ms_c1": 6.0, "rps_c8": 400.0,
            "rps_c32": 600.0, "rps_c128": 610.0, "p99_ms_c32": 80.0, "rss_mib": 150.0,
            "cpu_s_per_1k": 3.0, "cpu_s_per_1k_c32": 3.0}  # fmt: skip
    peer = {**ours, "rps_c32": 350.0, "rps_c128": 360.0, "cpu_s_per_1k_c32": 4.0}
    busy = {**ours, "rps_c32": 300.0}
    peers = {
        "machine": {"date": "2026-12-08", "cores": 2},
        "mode": "full",
        "modes": {
            "quiet": {"load": "none", "systems": {"kubesentiment-int8": ours, "kserve-v1": peer},
                      "ceiling_texts_per_s": 700.0},
            "contended": {"load": "stress-ng at 50 %",
                          "systems": {"kubesentiment-int8": busy, "kserve-v1": peer},
                          "ceiling_texts_per_s": 500.0},
        },
        "unavailable": {"infinity": "exited with 1"},
    }  # fmt: skip
    (tmp_path / "peers.json").write_text(json.dumps(peers))
    text = section(tmp_path)
    assert "**Quiet** (none):" in text
    assert "**Contended** (stress-ng at 50 %):" in text
    assert "| kubesentiment-int8 | 0.41 | 3.50 | 6.00 | 400 | 600 |" in text
    assert "| kubesentiment-int8 | 0.41 | 3.50 | 6.00 | 400 | 300 |" in text
    assert "met: throughput c32: 1.71x the best peer (kserve-v1), goal >= 1.3x" in text
    assert "missed: throughput c32: 0.86x the best peer (kserve-v1), goal >= 1.3x" in text
    assert "met: CPU s / 1k at c32 3.00 vs lowest peer 4.00 (kserve-v1), goal <=" in text
    assert "Not measured (reasons in docs/peers.md): infinity." in text
