"""Progress you can watch: the one helper every long loop reports through (training, fine-tuning,
evaluation, export gates, the batch client, benchmarks).

Where it writes decides how (`mode`): on a terminal, a tqdm bar on stderr with rate and ETA,
redrawn in place; anywhere else (a pipe, a CI log, a Job's log) and whenever `CI` is set, no bar
and no carriage returns but one plain line per interval (30 s by default) and one at the end:

    train: 300/3306 step (9 %), 1.9 step/s, ETA 26:21, loss 0.4123, 62.0 ex/s

tqdm is imported only to draw a bar (it is not in the serving image: requirements/
image-leave-out.txt), so the serving path never pays for it and a loop in the image reports in
lines. `enabled=False` (a `--no-progress` flag) prints nothing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

INTERVAL_S = 30.0
BAR, LINES, OFF = "bar", "lines", "off"


def mode(stream: TextIO, environ: Mapping[str, str] = os.environ, enabled: bool = True) -> str:
    """`bar` on an interactive terminal, `lines` in CI or when not a terminal, `off` if disabled."""
    if not enabled:
        return OFF
    ci = environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    isatty = getattr(stream, "isatty", None)
    return BAR if not ci and isatty is not None and isatty() else LINES


def clock_interval(seconds: float) -> str:
    """Seconds as `M:SS` or `H:MM:SS` (tqdm's notation for elapsed and remaining time)."""
    m, s = divmod(round(max(0.0, seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Counts `done` of `total` units and shows it as a bar or as periodic lines; a context
    manager, closed (a last line or the bar's end) on exit."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        stream: TextIO | None = None,
        environ: Mapping[str, str] = os.environ,
        enabled: bool = True,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.clock = clock
        self.done = 0
        self.postfix = ""
        self.started = self._last = clock()
        self.closed = False
        self.mode = mode(self.stream, environ, enabled)
        self._bar: Any = None
        if self.mode == BAR:
            try:
                from tqdm import tqdm
            except ImportError:  # an image without tqdm: report in lines instead
                self.mode = LINES
            else:
                self._bar = tqdm(
                    total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True
                )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        """Count `n` more units done; `postfix` (loss, texts/s...) is shown after the counts."""
        self.done += n
        if postfix is not None:
            self.postfix = postfix
        if self._bar is not None:
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
        elif self.mode == LINES and self.clock() - self._last >= self.interval_s:
            self._last = self.clock()
            self._write(self.line())

    def line(self, *, final: bool = False) -> str:
        """The plain line: counts, percentage, rate and ETA (elapsed time when `final`)."""
        elapsed = self.clock() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.done}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.done / self.total:.0f} %)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.1f} {self.unit}/s"
        if final:
            text += f", done in {clock_interval(elapsed)}"
        elif self.total and rate > 0:
            text += f", ETA {clock_interval((self.total - self.done) / rate)}"
        return f"{text}, {self.postfix}" if self.postfix else text

    def close(self) -> None:
        """End the bar, or write the last line (once)."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == LINES:
            self._write(self.line(final=True))

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
