"""The README's model-quality block is exactly what the manifests and docs/lodo.json say.

scripts/readme_model.py generates it; a hand-edited figure, or a model re-evaluated without
regenerating the README, fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from scripts import readme_blocks
from scripts.readme_model import (
    DOCS,
    FT_BEGIN,
    FT_END,
    MODELS,
    ROOT,
    current,
    finetune_section,
    section,
)  # fmt: skip


def test_readme_model_block_matches_the_sources() -> None:
    block = current((ROOT / "README.md").read_text())
    assert block is not None, "README.md lost its generated model-quality block"
    assert block == section(), "stale: run `python -m scripts.readme_model --write`"


def test_readme_finetune_example_is_the_committed_transcript() -> None:
    block = readme_blocks.current((ROOT / "README.md").read_text(), FT_BEGIN, FT_END)
    assert block is not None, "README.md lost its generated finetune-demo block"
    assert block == finetune_section(), "stale: run `python -m scripts.readme_model --write`"
    assert "| default minilm-sentiment-int8 |" in block
    assert "s of wall time" in block, "the report's timing line no longer parses"


def test_finetune_example_reports_the_time_against_the_target(tmp_path: Path) -> None:
    assert "run `make finetune-demo`" in finetune_section(tmp_path)
    wrote = "Wrote x (int8) in {} s ({} s fine-tuning, 100 steps; {} CPU-seconds). Serve it"
    (tmp_path / "finetune_demo.txt").write_text(
        "# 2 CPU cores, 2026-12-03\n| m | 0.9 |\n" + wrote.format(97, 65, 177) + "\n"
    )
    block = finetune_section(tmp_path)
    assert "printed (2 CPU cores, 2026-12-03; docs/finetune_demo.txt)" in block
    assert "```\n| m | 0.9 |\nWrote x" in block
    assert "97 s of wall time (65 s of it fine-tuning) and 177 CPU-seconds" in block
    assert block.endswith(": met).\n" + FT_END)
    (tmp_path / "finetune_demo.txt").write_text("# 2\n" + wrote.format(601, 500, 900) + "\n")
    assert "**missed**" in finetune_section(tmp_path)


def _copy_models(tmp: Path) -> Path:
    models = tmp / "models"
    for name in ("minilm-sentiment-fp32", "minilm-sentiment-int8"):
        (models / name).mkdir(parents=True)
        shutil.copy(MODELS / name / "manifest.json", models / name / "manifest.json")
    (models / "minilm-sentiment-checkpoint").mkdir()
    shutil.copy(
        MODELS / "minilm-sentiment-checkpoint" / "training.json",
        models / "minilm-sentiment-checkpoint" / "training.json",
    )
    return models


def test_block_follows_the_manifest_and_states_targets(tmp_path: Path) -> None:
    models = _copy_models(tmp_path)
    path = models / "minilm-sentiment-int8" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["evaluation"]["hutto_3class"]["accuracy"] = 0.7123
    path.write_text(json.dumps(manifest))
    block = section(models, DOCS)
    assert "| 0.712 |" in block
    assert "Hutto 3-class 0.712 (target 0.78: **missed**)" in block
    manifest["evaluation"]["hutto_3class"]["accuracy"] = 0.791
    path.write_text(json.dumps(manifest))
    assert "Hutto 3-class 0.791 (target 0.78: met)" in section(models, DOCS)


def test_lodo_table_comes_from_lodo_json(tmp_path: Path) -> None:
    models = _copy_models(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    assert "run `make lodo`" in section(models, docs)
    row = {"n": 100, "accuracy": 0.5, "macro_f1": 0.4}
    domain = {
        "left_out": ["x"], "binary": False, "seconds": 1.0,
        "lodo_int8": {**row, "accuracy": 0.777}, "vader": row, "served_default_int8": row,
    }  # fmt: skip
    result = {
        "protocol": {"epochs": 1.0, "examples_per_run": 8000},
        "domains": {"tweets": domain},
        "summary": {
            "lodo_int8_accuracy": 0.777, "lodo_int8_macro_f1": 0.4, "vader_accuracy": 0.5,
            "vader_macro_f1": 0.4, "served_default_int8_accuracy": 0.5,
            "served_default_int8_macro_f1": 0.4,
        },
    }  # fmt: skip
    (docs / "lodo.json").write_text(json.dumps(result))
    block = section(models, docs)
    assert "| tweets | 100 | 3-class | 0.777 |" in block
    assert "+27.70 points (target +4: met)" in block

    # The accurate variant: its LODO beside the default's on the domains both ran, with the
    # +2-point verdict, and the per-variant table from docs/accurate_eval.json.
    assert "run `make lodo-accurate`" in block
    assert "run `make eval-accurate`" in block
    accurate = {
        "protocol": {"epochs": 1.0, "examples_per_run": 8000, "frozen_layers": 10},
        "domains": {"tweets": {"left_out": ["x"], "binary": False,
                               "lodo_int8": {**row, "accuracy": 0.790}}},
    }  # fmt: skip
    (docs / "lodo_accurate.json").write_text(json.dumps(accurate))
    block = section(models, docs)
    assert "| tweets | 100 | 3-class | 0.777 | 0.790 | 0.400 | 0.500 |" in block
    assert "0.790 against the default's 0.777: +1.30 points (target +2: **missed**)" in block
    assert "under the same leave-one-domain-out protocol" in block
    result["protocol"]["examples_per_run"] = 16000
    (docs / "lodo.json").write_text(json.dumps(result))
    prose = " ".join(section(models, docs).split())  # wrapped: compare as one line
    assert "int8; the default's runs had 16,000 rows, a different budget):" in prose
    assert "1 epoch on 8,000 rows without the domain" in prose
    figures = {
        "movie_binary": {"accuracy": 0.9, "pearson": 0.8}, "hutto_3class": {"accuracy": 0.81},
        "hutto_binary": {"accuracy": 0.95}, "crowdflower_3class": {"accuracy": 0.82},
        "rt_binary": {"accuracy": 0.88}, "hutto_pearson": {"pearson": 0.86},
        "latency_ms_batch1_64": 31.25, "model_mib": 180.4,
    }  # fmt: skip
    (docs / "accurate_eval.json").write_text(json.dumps({"mpnet-sentiment int8": figures}))
    block = section(models, docs)
    assert (
        "| cpu-accurate-int8 | all-mpnet-base-v2, int8 | 0.900 | 0.810 | 0.950 | 0.820 | 0.880 "
        "| 0.860 | 0.790 | 31.25 | 180 |"
    ) in block


def test_lodo_repeat_shows_the_a_a_difference(tmp_path: Path) -> None:
    models = _copy_models(tmp_path)
    docs = tmp_path / "docs"
    docs.mkdir()
    row = {"n": 100, "accuracy": 0.5, "macro_f1": 0.4}

    def result(tweets: float, nyt: float) -> dict[str, Any]:
        domains = {
            name: {"left_out": [name], "binary": False, "seconds": 1.0, "vader": row,
                   "lodo_int8": {**row, "accuracy": acc}, "served_default_int8": row}
            for name, acc in (("tweets", tweets), ("nyt", nyt))
        }  # fmt: skip
        return {
            "protocol": {"epochs": 1.0, "examples_per_run": 16000},
            "domains": domains,
            "summary": {
                "lodo_int8_accuracy": (tweets + nyt) / 2, "lodo_int8_macro_f1": 0.4,
                "vader_accuracy": 0.5, "vader_macro_f1": 0.4,
                "served_default_int8_accuracy": 0.5, "served_default_int8_macro_f1": 0.4,
            },
        }  # fmt: skip

    (docs / "lodo.json").write_text(json.dumps(result(0.60, 0.70)))
    assert "make lodo-repeat" not in section(models, docs)
    (docs / "lodo_repeat.json").write_text(json.dumps(result(0.63, 0.68)))
    block = section(models, docs)
    assert "| tweets | 0.600 | 0.630 | +3.00 |" in block
    assert "| nyt | 0.700 | 0.680 | -2.00 |" in block
    assert "| **mean** | 0.650 | 0.655 | +0.50 |" in block
    prose = " ".join(block.split())
    assert "mean absolute 2.50 points, largest 3.00" in prose
    assert "two-seed LODO mean 0.652 vs VADER 0.500: +15.25 points" in prose
    # A repeat of another protocol is not shown as the noise of this one.
    other = result(0.63, 0.68)
    other["protocol"]["examples_per_run"] = 8000
    (docs / "lodo_repeat.json").write_text(json.dumps(other))
    prose = " ".join(section(models, docs).split())
    assert "the repeat ran another protocol (examples_per_run differ)" in prose
    assert "two-seed" not in prose
