"""The one progress helper: a tqdm bar on a terminal, one plain line per interval elsewhere."""

from __future__ import annotations

import io
import sys

import pytest

from shared.progress import BAR, LINES, OFF, Progress, clock_interval, mode
from tests.without_modules import Blocker


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal, as stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("tty", "environ", "enabled", "expected"),
    [
        pytest.param(True, {}, True, BAR, id="terminal"),
        pytest.param(False, {}, True, LINES, id="pipe"),
        pytest.param(True, {"CI": "true"}, True, LINES, id="ci-with-a-tty"),
        pytest.param(True, {"CI": "false"}, True, BAR, id="ci-false"),
        pytest.param(True, {}, False, OFF, id="disabled"),
    ],
)
def test_the_mode_follows_the_stream_and_ci(
    tty: bool, environ: dict[str, str], enabled: bool, expected: str
) -> None:
    stream = Terminal() if tty else io.StringIO()
    assert mode(stream, environ, enabled) == expected


def test_on_a_terminal_it_draws_a_tqdm_bar_with_eta() -> None:
    stream = Terminal()
    with Progress(40, "eval", unit="text", stream=stream, environ={}) as p:
        for _ in range(4):
            p.update(10, "loss 0.5")
    out = stream.getvalue()
    assert "\r" in out  # redrawn in place
    assert "eval: 100%" in out
    assert "40/40 [" in out
    assert "<" in out  # tqdm's [elapsed<remaining] (the ETA)
    assert "loss 0.5" in out
    assert "ETA" not in out  # no plain lines on a terminal


def test_off_a_terminal_it_writes_one_line_per_interval_and_a_last_one() -> None:
    stream, clock = io.StringIO(), Clock()
    p = Progress(3306, "train", unit="step", stream=stream, environ={}, clock=clock)
    for _ in range(100):  # 10 steps a second for 100 s
        clock.t += 1.0
        p.update(10, "loss 0.4123")
    p.close()
    p.close()  # closing twice writes nothing more
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == [
        "train: 300/3306 step (9 %), 10.0 step/s, ETA 05:01, loss 0.4123",
        "train: 600/3306 step (18 %), 10.0 step/s, ETA 04:31, loss 0.4123",
        "train: 900/3306 step (27 %), 10.0 step/s, ETA 04:01, loss 0.4123",
        "train: 1000/3306 step (30 %), 10.0 step/s, done in 01:40, loss 0.4123",
    ]


def test_in_ci_it_writes_lines_even_on_a_terminal() -> None:
    stream, clock = Terminal(), Clock()
    with Progress(10, "gate", unit="text", stream=stream, environ={"CI": "true"}, clock=clock) as p:
        clock.t += 2
        p.update(10)
    assert stream.getvalue() == "gate: 10/10 text (100 %), 5.0 text/s, done in 00:02\n"


def test_without_a_total_it_counts_without_eta() -> None:
    stream, clock = io.StringIO(), Clock()
    with Progress(None, "bench", stream=stream, environ={}, interval_s=0, clock=clock) as p:
        clock.t += 4
        p.update(8)
    assert stream.getvalue().splitlines() == [
        "bench: 8 it, 2.0 it/s",
        "bench: 8 it, 2.0 it/s, done in 00:04",
    ]


def test_disabled_it_prints_nothing() -> None:
    stream = Terminal()
    with Progress(5, "x", stream=stream, environ={}, enabled=False) as p:
        p.update(5)
    assert stream.getvalue() == ""


def test_a_terminal_without_tqdm_gets_lines() -> None:
    # The serving image has no tqdm (requirements/image-leave-out.txt): a bar falls back to lines.
    blocker = Blocker({"tqdm"})
    saved = {k: v for k, v in sys.modules.items() if k == "tqdm" or k.startswith("tqdm.")}
    for k in saved:
        del sys.modules[k]
    sys.meta_path.insert(0, blocker)
    try:
        stream = Terminal()
        with Progress(2, "x", stream=stream, environ={}) as p:
            assert p.mode == LINES
            p.update(2)
    finally:
        sys.meta_path.remove(blocker)
        sys.modules.update(saved)
    assert stream.getvalue().startswith("x: 2/2 it (100 %)")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "00:00"), (61.4, "01:01"), (3599.6, "1:00:00"), (36000 + 62, "10:01:02"), (-3, "00:00")],
)
def test_intervals_read_like_tqdms(seconds: float, text: str) -> None:
    assert clock_interval(seconds) == text
