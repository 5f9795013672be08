"""Texts longer than the model's max tokens: `truncate` (flagged) or `chunk` (windows averaged)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from starlette.testclient import TestClient

from functions.sentiment.model import Classifier, Encoded
from shared.config import Settings

# About 1,000 tokens: several windows for a model of 128-512 max tokens.
LONG = " ".join(
    f"The {i}th scene drags on, yet the score is lovely and the cast does fine work."
    for i in range(55)
)


def classifier_of(client: TestClient) -> Classifier:
    c = client.app.state.kubesentiment.classifier  # type: ignore[attr-defined]
    assert isinstance(c, Classifier)
    return c


def test_the_long_text_really_is_about_a_thousand_tokens(client: TestClient) -> None:
    classifier = classifier_of(client)
    (full,) = classifier._chunker.encode_batch([LONG])
    windows = classifier.encode([LONG], chunk=True)[0].windows
    assert len(full.ids) >= classifier.max_tokens
    assert sum(len(w) for w in windows) >= 900
    assert len(windows) >= 3


def test_truncate_flags_and_chunk_averages_over_windows(client: TestClient) -> None:
    classifier = classifier_of(client)
    labels = classifier.labels
    truncated = client.post("/predict", json={"text": LONG, "long_text": "truncate"}).json()
    chunked = client.post("/predict", json={"text": LONG, "long_text": "chunk"}).json()
    assert truncated["truncated"] is True
    assert chunked["truncated"] is False

    # The chunked answer is the token-weighted mean of each window's own probabilities.
    windows = classifier.encode([LONG], chunk=True)[0].windows
    per_window = np.stack([classifier.run([w])[0] for w in windows])
    weights = np.array([len(w) for w in windows], dtype=np.float64)
    expected = (per_window * weights[:, None]).sum(axis=0) / weights.sum()
    got = np.array([chunked["probabilities"][label] for label in labels])
    # Windows may share an ONNX run in the server; int8 dynamic quantization makes a row's
    # result depend slightly on its batch, hence the tolerance.
    np.testing.assert_allclose(got, expected, atol=0.02)
    first_only = np.array([truncated["probabilities"][label] for label in labels])
    np.testing.assert_allclose(first_only, per_window[0], atol=0.02)


def test_combine_weights_windows_by_token_count(client: TestClient) -> None:
    classifier = classifier_of(client)
    n = len(classifier.labels)
    encoded = Encoded(windows=((1,) * 30, (1,) * 10), truncated=False)
    probs = np.zeros((2, n), dtype=np.float32)
    probs[0, 0], probs[0, 1] = 1.0, 0.0
    probs[1, 0], probs[1, 1] = 0.0, 1.0
    p = classifier.combine(encoded, probs)
    assert p.probabilities[classifier.labels[0]] == pytest.approx(0.75)
    assert p.probabilities[classifier.labels[1]] == pytest.approx(0.25)
    assert p.tokens == 40


def test_the_long_text_setting_is_the_default_and_a_request_overrides_it(
    settings: Settings, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(replace(settings, long_text="chunk"))
    assert client.post("/predict", json={"text": LONG}).json()["truncated"] is False
    assert client.post("/predict", json={"text": LONG, "long_text": "truncate"}).json()["truncated"]
    short = client.post("/predict", json={"text": "short and sweet"}).json()
    assert short["truncated"] is False


def test_a_bad_long_text_option_is_rejected(client: TestClient) -> None:
    response = client.post("/predict", json={"text": LONG, "long_text": "summarise"})
    assert response.status_code == 422
    assert "long_text" in response.json()["error"]["message"]
