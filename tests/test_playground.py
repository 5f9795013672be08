"""The playground page in headless Chromium (Debian's `chromium`): it loads, a prediction appears,
probability bars and word highlights render. Everything asserted is written by the page's JS, so a
broken script fails the test. Without Chromium the tests skip, except in CI where it is a failure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest

from scripts import playground
from tests.conftest import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "playground-key-1234567890"


def need_chromium() -> None:
    if playground.chromium() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is missing in CI: `make tools` installs it")
        pytest.skip("chromium not installed (make tools)")


class Elements(HTMLParser):
    """Every element's tag, attributes and direct text, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {"tag": tag, **{k: v or "" for k, v in attrs}, "text": ""}
        self.found.append(element)
        if tag not in {"meta", "input", "br", "link"}:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1]["tag"] == tag:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1]["text"] += data

    def by_class(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.found if name in e.get("class", "").split()]


def render(url: str) -> Elements:
    parser = Elements()
    parser.feed(playground.dump_dom(url))
    return parser


def test_a_prediction_appears_with_bars_and_highlighted_words(
    live_server: Callable[..., LiveServer],
) -> None:
    need_chromium()
    server = live_server({"ORT_INTRA_OP_THREADS": "1"})
    texts = ["I love this wonderful film", "The food was awful and cold 😡"]
    page = render(playground.page_url(server.url, texts))
    body = next(e for e in page.found if e["tag"] == "body")
    assert body["data-state"] == "done", page.by_class("error") or body
    assert body["data-auth"] == "off"
    cards = [e for e in page.found if e["tag"] == "section"]
    assert [c["data-label"] for c in cards] == ["positive", "negative"]
    assert [e["text"] for e in page.by_class("label")] == ["positive", "negative"]
    # Three probability bars per text, widths from the probabilities, summing to about 100 %.
    fills = page.by_class("fill")
    assert len(fills) == 6
    for i in (0, 3):
        probabilities = [float(f["data-probability"]) for f in fills[i : i + 3]]
        assert abs(sum(probabilities) - 1) < 1e-3
        for f, p in zip(fills[i : i + 3], probabilities, strict=True):
            # The browser serialises 94.0% as "94%": compare the number, not the text.
            width = re.search(r"width:\s*([0-9.]+)%", f["style"])
            assert width is not None, f["style"]
            assert abs(float(width.group(1)) - round(p * 100, 1)) < 1e-6
    # Every word highlighted, in order, shaded green (towards the label) or red (against it).
    words = page.by_class("w")
    assert [w["text"] for w in words] == [
        *["I", "love", "this", "wonderful", "film"],
        *["The", "food", "was", "awful", "and", "cold", "😡"],
    ]
    for w in words:
        colour = "47, 158, 85" if float(w["data-attribution"]) >= 0 else "208, 69, 69"
        assert f"rgba({colour}," in w["style"]
    # The shading is the API's explanation, word for word (which word matters is the model's
    # business, not the page's): the page's request, sent again, gives the same attributions.
    body_json = {"texts": texts, "explain": True}
    answer = httpx.post(f"{server.url}/predict", json=body_json, timeout=30).json()
    expected = [w["attribution"] for r in answer["results"] for w in r["explanation"]["words"]]
    shown = [float(w["data-attribution"]) for w in words]
    assert shown == pytest.approx(expected, abs=1e-6)


def test_with_api_keys_the_page_loads_and_asks_for_a_key(
    live_server: Callable[..., LiveServer],
) -> None:
    need_chromium()
    server = live_server({"ORT_INTRA_OP_THREADS": "1", "API_KEYS": KEY})
    page = render(playground.page_url(server.url, ["Fine"]))
    body = next(e for e in page.found if e["tag"] == "body")
    assert body["data-auth"] == "on"
    assert body["data-state"] == "error"  # no key typed: /predict answered 401
    keybox = next(e for e in page.found if e.get("id") == "keybox")
    assert "hidden" not in keybox
    error = next(e for e in page.found if e.get("id") == "error")
    assert "API key is required" in error["text"]
