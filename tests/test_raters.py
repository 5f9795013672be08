"""Learning from the Hutto rater panels (data.panel_probabilities, train.batch_loss `raters`):
the class probabilities follow the panel, the data rows carry them only where the panel is the
ground truth's, and the loss uses them in place of the thresholded label by the weight given."""

from __future__ import annotations

import math

import pytest

from training import data


def test_unanimous_panel_keeps_its_class() -> None:
    assert data.panel_probabilities([2.0] * 20) == (0.0, 0.0, 1.0)
    assert data.panel_probabilities([0.0] * 20) == (0.0, 1.0, 0.0)
    assert data.panel_probabilities([-1.0] * 16) == (1.0, 0.0, 0.0)


def test_probabilities_follow_the_panel_mean_and_spread() -> None:
    far = data.panel_probabilities([3.0, 4.0] * 10)  # mean 3.5, far above the band
    assert far[2] > 0.999
    assert math.isclose(sum(far), 1.0)
    # A mean on the boundary is a coin toss between neutral and positive.
    edge = data.panel_probabilities([0.0, 1.0] * 10)  # mean 0.5
    assert edge[2] == pytest.approx(0.5, abs=1e-9)
    assert edge[0] < 1e-6
    assert math.isclose(sum(edge), 1.0)
    # Symmetric panels give symmetric probabilities.
    sym = data.panel_probabilities([-1.0, 1.0] * 10)
    assert sym[0] == pytest.approx(sym[2])
    assert sym[1] > sym[0]
    # Wider disagreement, softer target (same mean 0.3).
    narrow = data.panel_probabilities([0.0] * 14 + [1.0] * 6)
    wide = data.panel_probabilities([-3.0] * 7 + [3.0] * 7 + [1.0] * 6)
    assert narrow[1] > wide[1]
    with pytest.raises(ValueError, match="no ratings"):
        data.panel_probabilities([])


def test_hutto_rows_carry_their_panel() -> None:
    rows = data.hutto("train")
    with_panel = [e for e in rows if e.raters is not None]
    # Every NYT and Amazon row has its panel; ~200 tweets list a panel that is not the ground
    # truth's and keep their label alone.
    assert all(e.raters is not None for e in rows if e.source != "hutto-tweets")
    assert 0 < len(rows) - len(with_panel) < 0.1 * len(rows)
    agree = sum(max(range(3), key=lambda i: e.raters[i]) == e.label for e in with_panel)  # type: ignore[index]
    assert agree / len(with_panel) > 0.999
    assert all(math.isclose(sum(e.raters), 1.0, abs_tol=1e-9) for e in with_panel)  # type: ignore[arg-type]
    assert any(max(e.raters) < 0.6 for e in with_panel)  # type: ignore[arg-type]
    assert all(e.raters is None for e in data.crowdflower("train")[:100])


def test_loss_uses_the_panel_in_place_of_the_label() -> None:
    torch = pytest.importorskip("torch", reason="training dependency group not installed")
    from training.train import batch_loss

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [-1.0, 0.0, 3.0]])
    panel = (0.0, 0.4, 0.6)
    rows = [data.Example("a", 0, "s"), data.Example("b", 1, "s", raters=panel)]
    rows.append(data.Example("c", 2, "s"))
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]), reduction="none")
    assert torch.allclose(batch_loss(logits, rows, 0.0, raters=0.0), ce.mean())
    soft_b = -(torch.tensor(panel) * logits[1].log_softmax(-1)).sum()
    want = (ce[0] + soft_b + ce[2]) / 3
    assert torch.allclose(batch_loss(logits, rows, 0.0, raters=1.0), want, atol=1e-6)
    half = (ce[0] + 0.5 * ce[1] + 0.5 * soft_b + ce[2]) / 3
    assert torch.allclose(batch_loss(logits, rows, 0.0, raters=0.5), half, atol=1e-6)
    # The gradient on row b pulls towards "positive" too, which the label alone never does.
    moving = logits.clone().requires_grad_(True)
    batch_loss(moving, rows, 0.0, raters=1.0).backward()
    assert moving.grad is not None
    assert moving.grad[1, 2] < 0


def test_cached_rows_take_their_panels_in_order() -> None:
    """The accurate recipe's cached rows (no text) get the panels of the rows they were drawn
    from (accurate.with_raters); rows cached before the field existed read as None."""
    torch = pytest.importorskip("torch", reason="training dependency group not installed")
    pytest.importorskip("transformers")
    import json
    from pathlib import Path

    from training import accurate

    recipe_dir = Path("models/minilm-sentiment-checkpoint")
    recipe = json.loads((recipe_dir / "training.json").read_text())
    drawn = accurate.pool(recipe, 300)
    rows = [accurate.Row(torch.zeros(1, 1), e.label, e.source, e.rating) for e in drawn]
    assert all(r.raters is None for r in rows)
    taught = accurate.with_raters(rows, recipe_dir)
    assert [r.raters for r in taught] == [e.raters for e in drawn]
    assert any(r.raters is not None for r in taught)
    assert any(r.raters is None for r in taught)  # CrowdFlower rows have no panel
