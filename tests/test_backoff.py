"""The one backoff: full jitter within the exponential window, a Retry-After floor, the cap."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from shared.backoff import Backoff

ROOT = Path(__file__).resolve().parent.parent

CASES = [
    pytest.param(0.1, 2.0, id="start-up"),
    pytest.param(0.2, 5.0, id="k-sink"),
    pytest.param(0.5, 30.0, id="client"),
    pytest.param(1.0, 30.0, id="vault"),
]


class Top(random.Random):
    """Always draws the top of the range: the delay a no-jitter backoff would wait."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.mark.parametrize(("base", "cap"), CASES)
def test_every_delay_lies_in_its_window_and_never_above_the_cap(base: float, cap: float) -> None:
    b = Backoff(base, cap, random.Random(20261208))
    for retry in range(16):
        window = min(cap, base * 2**retry)
        for _ in range(500):
            d = b.delay(retry)
            assert 0.0 <= d <= window <= cap


@pytest.mark.parametrize(("base", "cap"), CASES)
@pytest.mark.parametrize("retry", [0, 3, 12])
def test_the_mean_is_about_half_the_window(base: float, cap: float, retry: int) -> None:
    b = Backoff(base, cap, random.Random(retry))
    draws = [b.delay(retry) for _ in range(4000)]
    window = b.window(retry)
    # uniform(0, w): mean w/2, standard deviation w/sqrt(12); 4000 draws put the sample mean
    # within 0.02 w of w/2 with overwhelming probability, and the spread covers the window.
    assert statistics.fmean(draws) == pytest.approx(window / 2, abs=0.02 * window)
    assert min(draws) < 0.05 * window
    assert max(draws) > 0.95 * window


@pytest.mark.parametrize(
    ("retry", "expected"),
    [
        pytest.param(0, 0.2, id="first"),
        pytest.param(2, 0.8, id="doubles"),
        pytest.param(9, 5.0, id="capped"),
        pytest.param(5000, 5.0, id="no-overflow"),
    ],
)
def test_the_window_doubles_from_base_to_cap(retry: int, expected: float) -> None:
    b = Backoff(0.2, 5.0, Top())
    assert b.window(retry) == pytest.approx(expected)
    assert b.delay(retry) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("retry_after", "floor"),
    [
        pytest.param("2", 2.0, id="seconds"),
        pytest.param(" 3 ", 3.0, id="spaces"),
        pytest.param("600", 5.0, id="above-the-cap-waits-the-cap"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", 0.0, id="date-in-the-past"),
        pytest.param("soon", 0.0, id="unreadable"),
        pytest.param("-4", 0.0, id="negative"),
        pytest.param(None, 0.0, id="absent"),
    ],
)
def test_retry_after_is_a_floor_under_the_jitter(retry_after: str | None, floor: float) -> None:
    b = Backoff(0.2, 5.0, random.Random(7))
    assert b.floor(retry_after) == pytest.approx(floor)
    for retry in range(6):
        for _ in range(200):
            d = b.delay(retry, retry_after)
            assert floor <= d <= min(5.0, floor + b.window(retry))
    # Jitter on top of the floor: clients refused by the same 429 do not come back together.
    if floor < 5.0:
        assert len({b.delay(0, retry_after) for _ in range(20)}) == 20


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    now = datetime(2026, 12, 8, 3, 0, 0, tzinfo=UTC).timestamp()
    b = Backoff(0.2, 30.0, Top(), now=lambda: now)
    later = format_datetime(datetime(2026, 12, 8, 3, 0, 12, tzinfo=UTC), usegmt=True)
    assert b.floor(later) == pytest.approx(12.0)
    assert b.delay(0, later) == pytest.approx(12.2)


def test_a_negative_base_or_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(-1.0, 5.0)


def test_the_serving_path_loads_neither_backoff_nor_progress() -> None:
    # Start-up, Vault renewal and the sink load shared.backoff on their first retry or with a
    # sink configured; a function that starts cleanly and serves pays nothing for it (nor for
    # shared.progress or tqdm, which the image does not hold).
    code = (
        "import sys, time\n"
        "from dataclasses import replace\n"
        "from starlette.testclient import TestClient\n"
        "from functions.sentiment.app import create_app\n"
        "from shared.config import Settings\n"
        "with TestClient(create_app(replace(Settings(), intra_op_threads=1))) as c:\n"
        "    while c.get('/health/readiness').status_code != 200: time.sleep(0.02)\n"
        "    assert c.post('/predict', json={'text': 'fine'}).status_code == 200\n"
        "new = ('shared.backoff', 'shared.progress', 'tqdm')\n"
        "print(sorted(m for m in new if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
