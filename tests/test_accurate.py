"""The accurate variant's recipe (training.accurate) on a tiny random MPNet: the split encoder
equals the whole one, training touches only the top layers and the head, the fp16 checkpoint
round-trips, and the export is parity-checked and served by the Classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="training dependency group not installed")
transformers = pytest.importorskip("transformers")

from functions.sentiment.model import Classifier  # noqa: E402
from tests.tiny import save_wordpiece_tokenizer  # noqa: E402
from training import accurate, data, export  # noqa: E402
from training.modeling import padded  # noqa: E402

WORDS = [
    *("i", "love", "hate", "it", "this", "movie", "was", "great", "terrible"),
    *("ok", "not", "bad", "good", "the", "a", "service", "slow", "food"),
]
TEXTS = ["i love this movie", "terrible", "the service was slow but the food was great", "ok"]


@pytest.fixture(scope="module")
def tiny_mpnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tiny-mpnet")
    vocab = save_wordpiece_tokenizer(WORDS, base)
    config = transformers.MPNetConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.MPNetModel(config, add_pooling_layer=False).save_pretrained(base)
    return base


def _batch(base: Path) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    tok = accurate.tokenizer(32, base)
    enc = tok.encode_batch(TEXTS)
    ids, mask = padded(enc, tok.token_to_id("[PAD]"))
    return ids, mask, [len(e.ids) for e in enc]


def test_split_encoder_equals_whole_model(tiny_mpnet: Path) -> None:
    model = accurate.MeanPoolingMPNet(tiny_mpnet, data.LABELS).eval()
    ids, mask, lengths = _batch(tiny_mpnet)
    with torch.inference_mode():
        whole = model(ids, mask).logits
        for k in (0, 1, 2, 3):
            split = model.upper(model.lower(ids, mask, k), mask, k)
            assert torch.allclose(whole, split, atol=1e-5), k
        # A row cached on its own (unpadded) equals its padded batch row: padding is masked.
        alone = model.lower(ids[2:3, : lengths[2]], mask[2:3, : lengths[2]], 2)
        batched = model.lower(ids, mask, 2)[2, : lengths[2]]
        assert torch.allclose(alone[0], batched, atol=1e-5)


def _examples() -> list[data.Example]:
    rows = [
        ("i love this movie", 2, "hutto-tweets", 0.8),
        ("terrible", 0, "crowdflower", None),
        ("the service was slow", 0, "hutto-amazonReviewSnippets", -0.5),
        ("the food was great", 2, "hutto-nytEditorialSnippets", 0.6),
        ("ok", 1, "crowdflower", None),
        ("not bad", 1, "hutto-movieReviewSnippets", 0.1),
    ]
    return [data.Example(t, label, source, rating) for t, label, source, rating in rows * 4]


def test_fit_top_trains_only_the_top_layers_and_checkpoint_round_trips(
    tiny_mpnet: Path, tmp_path: Path
) -> None:
    frozen = 2
    rows = accurate.build_cache(_examples(), frozen, batch_size=5, base=tiny_mpnet)
    assert len(rows) == 24
    assert all(r.hidden.dtype == torch.float16 for r in rows)
    model = accurate.MeanPoolingMPNet(tiny_mpnet, data.LABELS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps = accurate.fit_top(
        model, rows, frozen, epochs=2.0, lr=1e-2, batch_size=8, rating_weight=1.0, seed=1
    )
    assert steps == 6
    trained = set(model.trained_names(frozen))
    assert trained == {n for n, _ in model.named_parameters()
                       if n.startswith(("mpnet.encoder.layer.2.", "classifier."))}  # fmt: skip
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == (name in trained), name

    checkpoint = tmp_path / "checkpoint"
    accurate.save(model, frozen, checkpoint, {"labels": list(data.LABELS)})
    assert json.loads((checkpoint / "training.json").read_text())["frozen_layers"] == frozen
    loaded = accurate.load(checkpoint, tiny_mpnet)
    ids, mask, _ = _batch(tiny_mpnet)
    with torch.inference_mode():
        want = model.eval()(ids, mask).logits
        got = loaded(ids, mask).logits
    assert torch.allclose(want, got, atol=2e-2)  # the checkpoint stores fp16

    # A checkpoint whose parameters do not match its recipe's layers is refused.
    info = json.loads((checkpoint / "training.json").read_text())
    (checkpoint / "training.json").write_text(json.dumps({**info, "frozen_layers": 1}))
    with pytest.raises(ValueError, match="do not match"):
        accurate.load(checkpoint, tiny_mpnet)


def test_export_is_parity_checked_gated_and_served(tiny_mpnet: Path, tmp_path: Path) -> None:
    model = accurate.MeanPoolingMPNet(tiny_mpnet, data.LABELS)
    checkpoint = tmp_path / "checkpoint"
    accurate.save(model, 2, checkpoint, {"labels": list(data.LABELS)})
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    seen: list[Path] = []

    def measure(directory: Path) -> dict[str, float]:
        seen.append(directory)
        c = Classifier.load(directory, intra_op_threads=1)
        return {"tiny": sum(p.label == "neutral" for p in c.predict(TEXTS)) / len(TEXTS)}

    accurate.export(checkpoint, fp32, int8, "0.0.1", base=tiny_mpnet, measure=measure)
    manifest = json.loads((fp32 / "manifest.json").read_text())
    assert manifest["name"] == accurate.NAME
    assert manifest["labels"] == list(data.LABELS)
    assert manifest["parity_max_abs_diff"] <= export.PARITY_TOLERANCE
    assert len(seen) == 2  # the gate measured fp32 and the int8 candidate
    gate = json.loads((int8 / "manifest.json").read_text())["quantization_gate"]
    assert set(gate) >= {"passed"}
    assert gate["passed"] is True
    # Blockwise int8 (MatMulNBits, 8 bits): one activation scale per tensor costs the large
    # model several points (training/export.py), so every weight MatMul is an 8-bit block op.
    import onnx

    ops = [n.op_type for n in onnx.load(str(int8 / "model.onnx")).graph.node]
    assert "MatMulNBits" in ops
    weight_matmuls = [
        n for n in onnx.load(str(fp32 / "model.onnx")).graph.node
        if n.op_type == "MatMul" and any("MatMul" in i and "onnx::" in i for i in n.input)
    ]  # fmt: skip
    assert ops.count("MatMulNBits") == len(weight_matmuls) > 0
    assert "8-bit" in json.loads((int8 / "manifest.json").read_text())["quantization"]
    preds = Classifier.load(int8, intra_op_threads=1).predict(TEXTS)
    assert [p.label in data.LABELS for p in preds] == [True] * len(TEXTS)


def test_distillation_loss_mixes_teacher_and_labels_per_row() -> None:
    from training.train import batch_loss

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [-1.0, 0.0, 3.0]])
    plain = [data.Example("a", 0, "s"), data.Example("b", 1, "s"), data.Example("c", 2, "s")]
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2]), reduction="none")
    # Without teacher rows, or with distill 0, it is the plain cross-entropy.
    assert torch.allclose(batch_loss(logits, plain, 0.0, distill=0.5), ce.mean())
    same = tuple(logits[1].log_softmax(-1).tolist())
    far = (0.0, -20.0, -20.0)  # a teacher sure of "negative"
    taught = [plain[0], data.Example("b", 1, "s", soft=same), data.Example("c", 2, "s", soft=far)]
    assert torch.allclose(batch_loss(logits, taught, 0.0, distill=0.0), ce.mean())
    loss = batch_loss(logits, taught, 0.0, distill=0.5, temperature=2.0)
    # Row b agrees with its teacher (KL 0), so it keeps half its cross-entropy; row c is pulled
    # towards the teacher's class, which costs more than its own cross-entropy.
    teacher_c = (torch.tensor(far) / 2).log_softmax(-1)
    student_c = (logits[2] / 2).log_softmax(-1)
    kl_c = float((teacher_c.exp() * (teacher_c - student_c)).sum()) * 4
    want = (ce[0] + 0.5 * ce[1] + 0.5 * ce[2] + 0.5 * kl_c) / 3
    assert torch.allclose(loss, want, atol=1e-5)
    # Its gradient moves row c towards the teacher's class.
    moving = logits.clone().requires_grad_(True)
    batch_loss(moving, taught, 0.0, distill=1.0).backward()
    assert moving.grad is not None
    assert moving.grad[2, 0] < 0 < moving.grad[2, 2]


def test_teacher_targets_from_the_cache_equal_the_whole_model(tiny_mpnet: Path) -> None:
    from training import distill

    frozen = 2
    examples = _examples()[:6]
    rows = accurate.build_cache(examples, frozen, batch_size=4, base=tiny_mpnet)
    teacher = accurate.MeanPoolingMPNet(tiny_mpnet, data.LABELS).eval()
    soft = distill.targets(teacher, rows, examples, frozen)
    tok = accurate.tokenizer(accurate.TRAIN_MAX_TOKENS, tiny_mpnet)
    for e in examples:
        ids, mask = padded([tok.encode(e.text)], tok.token_to_id("[PAD]"))
        with torch.inference_mode():
            whole = teacher(ids, mask).logits.log_softmax(-1)[0]
        assert torch.allclose(torch.tensor(soft[(e.source, e.text)]), whole, atol=2e-3), e.text
    # attach: order kept, only rows the teacher labelled carry targets.
    extra = data.Example("never cached", 1, "crowdflower")
    attached = distill.attach([extra, *examples], soft)
    assert [a.text for a in attached] == [extra.text, *(e.text for e in examples)]
    assert attached[0].soft is None
    assert all(a.soft is not None for a in attached[1:])


def test_fold_teacher_never_sees_the_held_out_domain(
    tiny_mpnet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import distill

    examples = _examples()
    rows = accurate.build_cache(examples, 2, batch_size=5, base=tiny_mpnet)
    cache = tmp_path / "cache.pt"
    torch.save({"rows": rows, "info": {"frozen_layers": 2, "rows": len(rows)}}, cache)
    monkeypatch.setattr(accurate, "base_dir", lambda: tiny_mpnet)
    monkeypatch.setattr(accurate, "pool", lambda recipe, n: examples[:n])
    seen: list[str] = []
    real_fit = accurate.fit_top

    def fit_top(model: accurate.MeanPoolingMPNet, fitted: list[accurate.Row], *a, **k):  # type: ignore[no-untyped-def]
        seen.extend(r.source for r in fitted)
        return real_fit(model, fitted, *a, **k)

    monkeypatch.setattr(accurate, "fit_top", fit_top)
    left_out = frozenset({"crowdflower"})
    soft = distill.fold_targets({"teacher_lr": 1e-3}, left_out, 100, cache)
    assert seen
    assert "crowdflower" not in seen
    assert {s for s, _ in soft} == {e.source for e in examples} - left_out

    # A cache drawn from another recipe's rows is refused, not silently misaligned.
    monkeypatch.setattr(accurate, "pool", lambda recipe, n: examples[1 : n + 1])
    with pytest.raises(SystemExit, match="does not match"):
        distill.fold_targets({"teacher_lr": 1e-3}, left_out, 100, cache)


def test_score_counts_the_argmax_by_source(tiny_mpnet: Path) -> None:
    model = accurate.MeanPoolingMPNet(tiny_mpnet, data.LABELS).eval()
    tok = accurate.tokenizer(32, tiny_mpnet)
    rows = [data.Example(t, i % 3, f"s{i % 2}") for i, t in enumerate(TEXTS * 20)]
    counts = accurate.score(model, tok, rows)
    want: dict[str, list[int]] = {}
    with torch.inference_mode():
        for e in rows:
            ids, mask = padded(tok.encode_batch([e.text]), tok.token_to_id("[PAD]"))
            right = int(model(ids, mask).logits.argmax(-1).item() == e.label)
            cell = want.setdefault(e.source, [0, 0])
            cell[0] += 1
            cell[1] += right
    assert counts == want
    assert sum(c[0] for c in counts.values()) == len(rows)
