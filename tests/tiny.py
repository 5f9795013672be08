"""A tiny WordPiece tokenizer for the tiny random BERTs the exporter and fine-tuning tests build."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def save_wordpiece_tokenizer(words: Sequence[str], folder: Path) -> int:
    """Write a BERT-style fast tokenizer over `words` to folder/tokenizer.json; the vocab size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.save(str(folder / "tokenizer.json"))
    return len(vocab)
