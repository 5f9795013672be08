"""Word-level explanations by occlusion: which words drove the predicted label.

A text is split into words: runs of letters and digits (with inner apostrophes and hyphens, so
"don't" and "well-made" stay one word) and runs of other non-space characters (punctuation,
emoticons such as ":D", emoji), each with its offsets `[start, end)` into the original text as
Python str indexes, i.e. Unicode code points (JavaScript strings count UTF-16 units: a client
converts, as the playground does). For the first EXPLAIN_MAX_WORDS words one variant of the text
with that word masked is built, and the text plus all its variants go to the batcher in one submit,
so they share batched ONNX runs: an explanation costs words + 1 model inputs (one submit). A word's
attribution is P(label | text) - P(label | text with the word masked) for the label predicted for
the whole text: positive means the word supported that label, negative that it pulled against it.
Words past EXPLAIN_MAX_WORDS are not scored (`words_total` says how many there were), and a word
beyond the model's max tokens cannot change a truncated prediction, so it scores about 0 (the
int8 model's scores move slightly with their batch neighbours). The explanation's inputs share the
request's deadline and priority like any prediction (`qos`).

Masking removes the word (replaces it by a space). Replacing it by the tokenizer's [UNK] or [MASK]
token was measured too (`benchmarks/explain.py` writes the faithfulness of each to
docs/explain.json): removal is what the faithfulness check itself does, and it needs no special
token, so every model can be explained the same way.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from functions.sentiment.core import AppState, classify, inference, prediction_json
from functions.sentiment.inputs import PredictRequest, parse_predict, read_json, shown
from functions.sentiment.qos import Qos, from_headers, late_item
from shared.errors import DeadlineExceeded, InvalidInput

if TYPE_CHECKING:  # the model module imports ONNX Runtime: the preload thread does that
    from functions.sentiment.model import Prediction

# A word: letters/digits joined by inner apostrophes or hyphens, or a run of other non-space
# characters. Every non-space character of a text belongs to exactly one word.
WORD = re.compile(r"\w+(?:['\u2019\-]\w+)*|[^\w\s]+")
METHOD = "occlusion"
# How a word is masked: name -> the text put in its place (a space: the word is removed).
MASKS: Mapping[str, str] = {"remove": " ", "unk": " [UNK] ", "mask": " [MASK] "}
DEFAULT_MASK = "remove"


@dataclass(frozen=True)
class Word:
    """One word of a text: its characters and code-point offsets [start, end)."""

    text: str
    start: int
    end: int


def words(text: str) -> list[Word]:
    """The words of `text`, in order, with their offsets into it."""
    return [Word(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def masked(text: str, spans: Sequence[Word], mask: str = DEFAULT_MASK) -> list[str]:
    """One variant of `text` per word in `spans`, with that word masked."""
    fill = MASKS[mask]
    return [text[: w.start] + fill + text[w.end :] for w in spans]


def attributions(
    labels: Sequence[str], label: str, original: Mapping[str, float], variants: Sequence[Prediction]
) -> list[float]:
    """P(label | text) - P(label | variant) for each variant (rounded to 6 decimals)."""
    assert label in labels
    base = original[label]
    return [round(base - v.probabilities[label], 6) for v in variants]


@dataclass(frozen=True)
class Plan:
    """The model inputs for explaining some texts: the texts first, then each one's variants."""

    texts: list[str]
    spans: list[list[Word]]
    totals: list[int]
    mask: str = DEFAULT_MASK

    @classmethod
    def build(cls, texts: Sequence[str], max_words: int, mask: str = DEFAULT_MASK) -> Plan:
        """Split each text into words and keep the first `max_words` of each."""
        all_words = [words(t) for t in texts]
        return cls(
            list(texts), [w[:max_words] for w in all_words], [len(w) for w in all_words], mask
        )

    def inputs(self) -> list[str]:
        """Every text to score, in one list: the originals, then the variants text by text."""
        out = list(self.texts)
        for text, spans in zip(self.texts, self.spans, strict=True):
            out.extend(masked(text, spans, self.mask))
        return out

    def explanations(
        self, labels: Sequence[str], scored: Sequence[Prediction | None]
    ) -> list[dict[str, Any] | None]:
        """The explanation of each text, from the predictions for `inputs()` in order; None for
        a text whose original or a variant has no prediction (its deadline passed)."""
        out: list[dict[str, Any] | None] = []
        at = len(self.texts)
        for index, spans in enumerate(self.spans):
            original = scored[index]
            variants = scored[at : at + len(spans)]
            at += len(spans)
            if original is None or any(v is None for v in variants):
                out.append(None)
                continue
            ready = [v for v in variants if v is not None]
            values = attributions(labels, original.label, original.probabilities, ready)
            out.append(
                {
                    "label": original.label,
                    "method": METHOD,
                    "mask": self.mask,
                    "words": [
                        {"text": w.text, "start": w.start, "end": w.end, "attribution": a}
                        for w, a in zip(spans, values, strict=True)
                    ],
                    "words_total": self.totals[index],
                    "model_inputs": len(spans) + 1,
                }
            )
        return out


async def explained_results(
    state: AppState, request: PredictRequest, qos: Qos
) -> list[dict[str, Any]]:
    """The answer objects of a request with `explain`: each text's prediction with its
    `explanation`, all from one batched submit. In a batch, a text whose inputs were not all run
    by the deadline gets a per-item `deadline_exceeded` error; a single text, or a batch none of
    whose texts made it, is answered 504."""
    assert state.classifier is not None
    texts = [i.text for i in request.items]
    plan = Plan.build(texts, state.settings.explain_max_words)
    late: DeadlineExceeded | None = None
    scored: Sequence[Prediction | None]
    try:
        scored = await classify(
            state,
            plan.inputs(),
            long_text=request.long_text,
            observe=len(texts),
            deadline=qos.deadline,
            priority=qos.priority,
        )
    except DeadlineExceeded as e:
        if e.partial is None or request.single:
            raise
        late, scored = e, e.partial
    explanations = plan.explanations(state.classifier.labels, scored)
    if late is not None and all(e is None for e in explanations):
        raise DeadlineExceeded(late.message)
    out = []
    for index, (item, explanation) in enumerate(zip(request.items, explanations, strict=True)):
        prediction = scored[index]
        if late is not None and (explanation is None or prediction is None):
            out.append(late_item(late, item.id, index))
            continue
        assert prediction is not None
        body = prediction_json(prediction, item.id, state)
        body["explanation"] = explanation
        out.append(body)
    return out


def parse_explain(data: Any, *, max_chars: int) -> PredictRequest:
    """A `POST /explain` body: /predict's single-text form ({"text", "id", "long_text"})."""
    if isinstance(data, Mapping):
        if "texts" in data:
            raise InvalidInput(
                "POST /explain takes one 'text'; for several, POST /predict with \"explain\": true"
            )
        if "explain" in data:
            raise InvalidInput(f"unknown field(s): {shown(['explain'])}")
    return parse_predict(data, max_texts=1, max_chars=max_chars)


@inference
async def explain(request: Request, state: AppState) -> Response:
    """POST /explain: one text's prediction and the attribution of each of its words."""
    s = state.settings
    # As on /predict: X-Request-Timeout and X-Priority, refused before the body is read.
    qos = from_headers(request.headers, s, InvalidInput, time.monotonic())
    data = await read_json(request, s.max_body_bytes, s.body_timeout_s)
    parsed = parse_explain(data, max_chars=s.max_text_chars)
    return JSONResponse((await explained_results(state, parsed, qos))[0])


def routes() -> list[BaseRoute]:
    """The explanation route."""
    return [Route("/explain", explain, methods=["POST"])]
