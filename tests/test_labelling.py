"""The labelling page: off by default, behind the API keys when they are on, and in headless
Chromium (over the DevTools pipe, `scripts.cdp`) a labelling file is loaded, five texts are
labelled with keys (one undo, one skip), and the exported CSV is compared byte for byte, then
read by `training.labelled` as `make finetune` and the adapt job read it."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from functions.sentiment import labelling
from functions.sentiment.labelling import PAGE
from scripts import cdp, playground
from shared.config import Secret, Settings
from tests.conftest import LiveServer
from training.labelled import read_rows

KEY = "labelling-key-1234567890"
ROWS = [
    {"id": "r1", "text": 'Great, "really" great,\nsaid nobody 🙄', "guess": "positive"},
    {"id": "r2", "text": "Délicieux, merci !", "guess": "positive"},
    {"id": "r3", "text": "The warranty is 90 days.", "guess": "neutral"},
    {"id": "r4", "text": "It works, I guess", "guess": "positive"},
    {"id": "r5", "text": 'Meh 😐, "fine"', "guess": "neutral"},
    {"id": "r6", "text": "Broken on arrival,\n\nno refund.", "guess": "negative"},
]
for n, row in enumerate(ROWS):
    row.update(confidence=0.4 + n / 20, margin=n / 10, sample=("uncertain", "random")[n % 2])
# The keys pressed and the labels they leave: 1/p/→/2/z/3/u/n, then e to export.
KEYS = ["1", "p", "ArrowRight", "2", "z", "3", "u", "n"]
LABELS = ["negative", "positive", "", "positive", "neutral", "negative"]


def need_chromium() -> None:
    if playground.chromium() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is missing in CI: `make tools` installs it")
        pytest.skip("chromium not installed (make tools)")


def labelling_file(tmp_path: Path) -> Path:
    path = tmp_path / "batch-7.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), "utf-8")
    return path


def expected_csv() -> bytes:
    def field(value: str) -> str:
        return (
            f'"{value.replace(chr(34), 2 * chr(34))}"'
            if any(c in value for c in '",\r\n')
            else value
        )

    lines = ["id,text,label,guess,sample"]
    for row, label in zip(ROWS, LABELS, strict=True):
        values = [str(row["id"]), str(row["text"]), label, str(row["guess"]), str(row["sample"])]
        lines.append(",".join(field(v) for v in values))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def state(browser: cdp.Browser) -> tuple[str, str]:
    return browser.evaluate("[document.body.dataset.state, document.body.dataset.labelled]")


@pytest.mark.integration
@pytest.mark.slow
def test_five_texts_labelled_with_keys_export_exactly(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    need_chromium()
    server = live_server({"ORT_INTRA_OP_THREADS": "1", "LABELLING": "on"})
    source = labelling_file(tmp_path)
    with cdp.Browser() as browser:
        browser.open(f"{server.url}/label")
        assert state(browser) == ["empty", "0"]
        browser.set_file("#file", source)
        browser.wait_for("document.body.dataset.state === 'labelling'")
        assert browser.evaluate("document.getElementById('text').textContent") == ROWS[0]["text"]
        assert browser.evaluate("document.getElementById('guess').textContent") == "positive"
        for key in KEYS:
            browser.press(key)
        assert state(browser) == ["done", "5"]
        counts = browser.evaluate("document.getElementById('counts').textContent")
        assert counts == "5 of 6 labelled · 1 skipped"
        downloaded = browser.download(lambda: browser.press("e"))
        assert downloaded.name == "batch-7.labels.csv"
        exported = Path(shutil.copy(downloaded, tmp_path))  # the profile goes with the browser
        assert exported.read_bytes() == expected_csv()
        # The work survives a reload: the same file resumes where it was.
        browser.open(f"{server.url}/label")
        assert state(browser) == ["empty", "0"]
        browser.set_file("#file", source)
        browser.wait_for("document.body.dataset.state === 'done'")
        assert state(browser) == ["done", "5"]
        browser.press("Backspace")  # undo the last label: r6 is shown again
        assert state(browser) == ["labelling", "4"]
        assert browser.evaluate("document.getElementById('text').textContent") == ROWS[5]["text"]
    with exported.open(newline="", encoding="utf-8") as f:
        assert [r["label"] for r in csv.DictReader(f)] == LABELS
    # training/labelled.py reads the export: skipped rows left out, texts intact.
    rows = read_rows(exported)
    assert [(r.text, r.label) for r in rows] == [
        (str(row["text"]), label) for row, label in zip(ROWS, LABELS, strict=True) if label
    ]


@pytest.mark.integration
@pytest.mark.slow
def test_with_api_keys_the_page_opens_only_for_a_valid_key(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    need_chromium()
    server = live_server({"ORT_INTRA_OP_THREADS": "1", "LABELLING": "on", "API_KEYS": KEY})
    with cdp.Browser() as browser:
        browser.open(f"{server.url}/label")
        assert state(browser)[0] == "locked"
        assert not browser.evaluate("!!document.getElementById('file')")
        for attempt, outcome in (("wrong-key-000000", "refused"), (KEY, "empty")):
            browser.evaluate("document.getElementById('key').value = ''")
            browser.evaluate("document.getElementById('key').focus()")
            browser.type_text(attempt)
            browser.press("Enter")
            browser.wait_for(f"document.body.dataset.state === '{outcome}'")
            if outcome == "refused":
                message = browser.evaluate("document.getElementById('error').textContent")
                assert message == "the API key is not valid"
        browser.set_file("#file", labelling_file(tmp_path))
        browser.wait_for("document.body.dataset.state === 'labelling'")
        browser.press("3")
        assert state(browser) == ["labelling", "1"]
        # A reload unlocks again with the key kept for the tab, and the work is still there.
        browser.open(f"{server.url}/label")
        browser.wait_for("document.body.dataset.state === 'empty'")
        browser.set_file("#file", labelling_file(tmp_path))
        browser.wait_for("document.body.dataset.labelled === '1'")


@pytest.mark.integration
@pytest.mark.slow
def test_a_dropped_file_loads_and_a_broken_one_is_reported(
    live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    need_chromium()
    server = live_server({"ORT_INTRA_OP_THREADS": "1", "LABELLING": "on"})
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": \n', "utf-8")
    with cdp.Browser() as browser:
        browser.open(f"{server.url}/label")
        browser.drop_file(broken)
        browser.wait_for("document.body.dataset.state === 'error'")
        error = browser.evaluate("document.getElementById('error').textContent")
        assert error == "broken.jsonl: line 2: not JSON"
        browser.drop_file(labelling_file(tmp_path))
        browser.wait_for("document.body.dataset.state === 'labelling'")
        assert browser.evaluate("document.getElementById('error').textContent") == ""
        assert browser.evaluate("document.getElementById('text').textContent") == ROWS[0]["text"]


def test_off_by_default(client: TestClient) -> None:
    assert Settings().labelling is False
    for path in (labelling.PATH, labelling.APP_PATH):
        r = client.get(path)
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "not_found"
    assert not {"/label", "/label/app"} & client.get("/openapi.json").json()["paths"].keys()


def test_keys_guard_the_page_and_leave_only_the_lock_open(
    settings: Settings, make_client: Callable[..., TestClient]
) -> None:
    c = make_client(replace(settings, labelling=True, api_keys=Secret(KEY)))
    lock = c.get("/label")
    assert lock.status_code == 200
    assert 'data-state="locked"' in lock.text
    assert 'id="file"' not in lock.text  # the labelling page itself is not in the lock
    assert "connect-src 'self'" in lock.headers["content-security-policy"]
    assert c.get("/label/app").status_code == 401
    assert c.get("/label/app", headers={"x-api-key": "wrong-key-000000"}).status_code == 401
    page = c.get("/label/app", headers={"authorization": f"Bearer {KEY}"})
    assert page.status_code == 200
    assert page.text == PAGE
    assert page.headers["cache-control"] == "private, no-store"
    assert page.headers["content-security-policy"] == lock.headers["content-security-policy"]
    doc = c.get("/openapi.json", headers={"x-api-key": KEY}).json()["paths"]
    assert doc["/label"]["get"]["security"] == []
    assert "security" not in doc["/label/app"]["get"]  # the document's default: a key
    # Without keys the page is served at /label directly.
    open_client = make_client(replace(settings, labelling=True))
    assert open_client.get("/label").text == PAGE


@pytest.mark.parametrize("page", [PAGE, labelling.LOCK], ids=["page", "lock"])
def test_pages_load_nothing_from_elsewhere(page: str) -> None:
    for marker in ("http://", "https://", "src=", "<link", "@import", "url("):
        assert marker not in page, marker


def test_expected_csv_is_rfc_4180() -> None:
    """The test's own expectation, checked against Python's csv module (RFC 4180 dialect)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["id", "text", "label", "guess", "sample"])
    for row, label in zip(ROWS, LABELS, strict=True):
        writer.writerow([row["id"], row["text"], label, row["guess"], row["sample"]])
    assert out.getvalue().encode("utf-8") == expected_csv()


def test_the_labelled_csv_is_read_by_training(tmp_path: Path) -> None:
    """What `make finetune` and the adapt job read from the page's export: skipped rows left out,
    line breaks inside quoted texts kept (RFC 4180), as is U+2028 inside a text."""
    path = tmp_path / "batch.labels.csv"
    path.write_bytes(expected_csv() + 'r7,"a\u2028b",positive,neutral,random\r\n'.encode())
    rows = read_rows(path)
    assert [(r.text, r.label) for r in rows] == [
        *((str(row["text"]), label) for row, label in zip(ROWS, LABELS, strict=True) if label),
        ("a\u2028b", "positive"),
    ]
