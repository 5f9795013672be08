"""Leave-one-domain-out bookkeeping: refreshing the served default's column of a recorded run
refuses a recipe the run did not train, and re-evaluates the served model otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import data, lodo

SERVED = Path(__file__).resolve().parents[1] / "models" / "minilm-sentiment-int8"
RECIPE = {"epochs": 3.0, "lr": 8e-05, "hutto_repeat": 2, "distill": 0.5, "steps": 3306}


def _recorded(tmp_path: Path) -> Path:
    row = {"n": 1, "accuracy": 0.25, "macro_f1": 0.25}
    result = {
        "protocol": {"recipe": RECIPE, "epochs": 1.0, "examples_per_run": 16000},
        "domains": {
            "rottentomatoes": {
                "left_out": ["x"], "binary": True, "seconds": 1.0,
                "lodo_int8": row, "vader": row, "served_default_int8": row,
            }
        },
    }  # fmt: skip
    path = tmp_path / "lodo.json"
    path.write_text(json.dumps(result))
    return path


def test_refresh_refuses_a_recipe_the_run_did_not_train(tmp_path: Path) -> None:
    path = _recorded(tmp_path)
    with pytest.raises(SystemExit, match=r"recipe changed \(hutto_repeat, lr\); run `make lodo`"):
        lodo.refresh_served(path, SERVED, {**RECIPE, "lr": 1e-4, "hutto_repeat": 3})


def test_refresh_reevaluates_only_the_served_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        data.Example("A moving, beautifully acted film.", 2, data.RT_SOURCE),
        data.Example("Dull, clumsy and far too long.", 0, data.RT_SOURCE),
    ]
    films, _, binary = lodo.DOMAINS["rottentomatoes"]
    monkeypatch.setitem(lodo.DOMAINS, "rottentomatoes", (films, lambda: rows, binary))
    path = _recorded(tmp_path)
    lodo.refresh_served(path, SERVED, {**RECIPE, "epochs": 4.0, "steps": 4408})
    result = json.loads(path.read_text())
    d = result["domains"]["rottentomatoes"]
    assert d["lodo_int8"]["accuracy"] == 0.25
    assert d["vader"]["accuracy"] == 0.25
    assert d["served_default_int8"] == {"n": 2, "accuracy": 1.0, "macro_f1": 1.0}
    assert result["summary"]["served_default_int8_accuracy"] == 1.0
