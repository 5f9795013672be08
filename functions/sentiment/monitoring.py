"""Prediction monitoring on the shared path: what `classify` records for every prediction.

Each prediction, on every protocol, is counted by label and observed in three histograms by
variant and label: its score (P(positive) - P(negative), when the model has one), its top-class
confidence (the predicted label's probability) and its token count. The metric children are
looked up once per label (the labels are the model's own, so the cardinality is bounded) and kept,
so a prediction costs three observations and two increments. The score histogram has negative
buckets, for which the client library exposes no `_sum`: a counter of (score + 1) stands in, so
the rules can take the mean score. The Prometheus rules in
observability/ derive the label mix and mean score from them and alert on drift.

A request chosen for payload logging (`payload_log`) has a list in `payload_record`; `classify`
appends its texts and predictions there, and the payload logger emits them once the response is
sent. Without payload logging the variable is never set: one context-variable read per call.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shared.metrics import Metrics

if TYPE_CHECKING:  # the model module imports ONNX Runtime: the preload thread does that
    from functions.sentiment.model import Prediction

Record = tuple[Sequence[str], Sequence["Prediction"]]
payload_record: contextvars.ContextVar[list[Record] | None] = contextvars.ContextVar(
    "payload_record", default=None
)
# A payload-logged CloudEvent request notes its event's source and id here (the log event's id
# derives from them); other requests leave it empty and the request id names the log event.
event_origin: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "event_origin", default=None
)


class PredictionMetrics:
    """The per-label metric children of one variant, resolved once."""

    def __init__(self, metrics: Metrics, variant: str, labels: Sequence[str]) -> None:
        self._metrics = metrics
        self._variant = variant
        self._truncated = metrics.truncated.labels(variant)
        self._children: dict[str, tuple[Any, Any, Any, Any, Any]] = {}
        for label in labels:  # every label's series exists from the first prediction on
            self._child(label)

    def _child(self, label: str) -> tuple[Any, Any, Any, Any, Any]:
        m, v = self._metrics, self._variant
        child = (
            m.predictions.labels(label, v),
            m.tokens_per_text.labels(label, v),
            m.prediction_score.labels(label, v),
            m.prediction_score_offset.labels(label, v),
            m.prediction_confidence.labels(label, v),
        )
        self._children[label] = child
        return child

    def observe(self, predictions: Sequence[Prediction]) -> None:
        """Count and observe each prediction."""
        children = self._children
        for p in predictions:
            child = children.get(p.label) or self._child(p.label)
            count, tokens, score, offset, confidence = child
            count.inc()
            tokens.observe(p.tokens)
            confidence.observe(p.probabilities[p.label])
            if p.score is not None:
                score.observe(p.score)
                offset.inc(max(0.0, p.score + 1.0))  # a score below -1 (weights) counts as -1
            if p.truncated:
                self._truncated.inc()


def observe(
    extras: dict[str, Any],
    metrics: Metrics,
    variant: str,
    labels: Sequence[str],
    texts: Sequence[str],
    predictions: Sequence[Prediction],
) -> None:
    """Record one classify call: metrics always, texts and predictions when payload-logged."""
    watcher: PredictionMetrics | None = extras.get("prediction_metrics")
    if watcher is None:
        watcher = extras["prediction_metrics"] = PredictionMetrics(metrics, variant, labels)
    watcher.observe(predictions)
    record = payload_record.get()
    if record is not None:
        record.append((texts, predictions))
