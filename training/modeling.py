"""PyTorch side of the model: a BERT encoder with mean pooling and a linear classification head.

Used only by training, export and the PyTorch baseline; serving never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Encoding
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

ARCHITECTURE = "MeanPoolingBertForSequenceClassification"
# Only these parameters are trained: the frozen word embeddings come from the base model package.
FROZEN = "bert.embeddings.word_embeddings.weight"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states over the real tokens (sentence-transformers pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class MeanPoolingBertForSequenceClassification(BertPreTrainedModel):  # type: ignore[misc]
    """BERT, masked mean of the last hidden states, dropout, linear head (sentence-transformers)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> SequenceClassifierOutput:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.classifier(self.dropout(mean_pool(hidden, attention_mask)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def from_base(base_dir: Path, labels: tuple[str, ...]) -> MeanPoolingBertForSequenceClassification:
    """A fresh classifier on the base encoder's weights; the head is initialised from the seed."""
    config = BertConfig.from_pretrained(base_dir)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.architectures = [ARCHITECTURE]
    model = MeanPoolingBertForSequenceClassification(config)
    encoder = BertModel.from_pretrained(base_dir, add_pooling_layer=False)
    model.bert.load_state_dict(encoder.state_dict())
    return model


def save_trained(model: MeanPoolingBertForSequenceClassification, out_dir: Path) -> None:
    """Save config and every parameter except the frozen word embeddings (half the size)."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out_dir)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != FROZEN}
    save_file(state, str(out_dir / "trained.safetensors"))


def load_trained(checkpoint_dir: Path, base_dir: Path) -> MeanPoolingBertForSequenceClassification:
    """Rebuild the fine-tuned model: base word embeddings plus the saved trained parameters."""
    from safetensors.torch import load_file

    config = BertConfig.from_pretrained(checkpoint_dir)
    model = MeanPoolingBertForSequenceClassification(config)
    base = BertModel.from_pretrained(base_dir, add_pooling_layer=False)
    state = load_file(str(checkpoint_dir / "trained.safetensors"))
    state[FROZEN] = base.embeddings.word_embeddings.weight.detach().clone()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint mismatch: missing={missing} unexpected={unexpected}")
    return model.eval()


def with_labels(
    model: MeanPoolingBertForSequenceClassification, labels: tuple[str, ...]
) -> MeanPoolingBertForSequenceClassification:
    """Give `model` a head for `labels`: rows of the old head where a label is already known
    (so a subset of the default labels keeps their meaning), seeded fresh rows otherwise."""
    old = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    head = nn.Linear(model.config.hidden_size, len(labels))
    model._init_weights(head)  # BERT's initialisation, from the torch seed
    with torch.no_grad():
        for row, label in enumerate(labels):
            if label in old:
                head.weight[row] = model.classifier.weight[old.index(label)]
                head.bias[row] = model.classifier.bias[old.index(label)]
    model.classifier = head
    model.num_labels = model.config.num_labels = len(labels)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    return model


def trainable_above(layers: int) -> Callable[[str], bool]:
    """A `fit` parameter filter: the embeddings and the lowest `layers` encoder layers frozen."""
    frozen = ("bert.embeddings.", *(f"bert.encoder.layer.{i}." for i in range(layers)))
    return lambda name: not name.startswith(frozen)


def padded(encodings: list[Encoding], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids padded to the longest encoding, and the attention mask."""
    width = max(len(e.ids) for e in encodings)
    ids = torch.full((len(encodings), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encodings), width), dtype=torch.long)
    for row, e in enumerate(encodings):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        mask[row, : len(e.ids)] = 1
    return ids, mask
