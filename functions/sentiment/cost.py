"""What an ONNX run costs, measured on the runs themselves: the batcher's split uses it.

A run pads its windows to the widest, so its time grows with the padded tokens (windows x width),
faster than linearly in the width (attention compares every token with every other), plus a
fixed cost per run (feeding the session, waking its threads, gathering the outputs). The model
`seconds ~ run_s + token_s x tokens + square_s x tokens x width` (tokens = windows x width,
padded) is fitted by least squares over the recent runs, with older runs weighted down
(half-life `HALF_LIFE_RUNS` runs), so it follows the machine: on contended cores waking the
intra-op threads costs more. Without the width term, a fit over lone texts of 4 to 250 tokens
mistakes the long texts' extra cost per token for slope and puts the fixed cost near zero, which
splits every batch into lone runs (measured: one text per run at concurrency 32).

`cost()` is what `lanes.group_by_length` minimises: the cheapest split under this model never
costs more than running every text alone would, so a batch never makes a text pay more than its
own run (the padding waste is bounded by what the model measured, not by a constant). The
batcher also asks it whether a lone text's run is short enough to make on the event loop. Until
the runs have spread enough in size (`MIN_RUNS` runs, padded tokens varying by at least a factor
of two), the prior `RUN_OVERHEAD_TOKENS` is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from functions.sentiment.lanes import RUN_OVERHEAD_TOKENS

HALF_LIFE_RUNS = 200
MIN_RUNS = 16
REFIT_RUNS = 8
INLINE_MAX_S = 0.025  # the longest run (by the model) the batcher makes on the event loop
# Bounds on the fitted ratio: below 0 is noise, above 512 tokens (two long texts) a fit is broken.
MAX_OVERHEAD_TOKENS = 512


class CostModel:
    """Exponentially weighted least squares of run seconds on (1, padded tokens, their width)."""

    def __init__(
        self, prior_tokens: int = RUN_OVERHEAD_TOKENS, half_life_runs: int = HALF_LIFE_RUNS
    ) -> None:
        self.prior_tokens = prior_tokens
        self.decay = 0.5 ** (1 / half_life_runs)
        self.runs = 0
        self._xx = np.zeros((3, 3))  # weighted sums of feature products
        self._xy = np.zeros(3)  # weighted sums of feature x seconds
        self._lo, self._hi = math.inf, 0.0
        self._fit: tuple[float, float, float] | None = None  # (run_s, token_s, square_s)

    @staticmethod
    def _features(windows: int, width: int) -> np.ndarray[Any, np.dtype[np.float64]]:
        # Scaled so the normal equations stay well conditioned: tokens / 100, tokens x width / 1e4.
        tokens = windows * width
        return np.array([1.0, tokens / 100, tokens * width / 10_000])

    def observe(self, windows: int, width: int, seconds: float) -> None:
        """Add one run: its windows, the width they were padded to, and its seconds."""
        f = self._features(windows, width)
        self._xx = self._xx * self.decay + np.outer(f, f)
        self._xy = self._xy * self.decay + f * seconds
        tokens = float(windows * width)
        self._lo, self._hi = min(self._lo, tokens), max(self._hi, tokens)
        self.runs += 1
        # Refit every REFIT_RUNS runs: the solve costs tens of microseconds, the runs milliseconds.
        if self.runs >= MIN_RUNS and self.runs % REFIT_RUNS == 0 and self._hi >= 2 * self._lo:
            self._refit()

    def _refit(self) -> None:
        # All three terms when the runs tell them apart and none comes out negative; else the
        # linear model; a fit where more tokens cost nothing or less is noise: keep the last one.
        for terms in (3, 2):
            xx, xy = self._xx[:terms, :terms], self._xy[:terms]
            if np.linalg.cond(xx) > 1e10:
                continue
            coef = np.linalg.solve(xx, xy)
            if coef[1] > 0 and (terms == 2 or coef[2] >= 0):
                run_s, token_s = max(float(coef[0]), 0.0), float(coef[1]) / 100
                square_s = float(coef[2]) / 10_000 if terms == 3 else 0.0
                if terms == 3 and coef[0] < 0:
                    continue
                self._fit = (run_s, token_s, square_s)
                return

    @property
    def fitted(self) -> tuple[float, float, float] | None:
        """(s per run, s per padded token, s per padded token x width), None while the prior is
        used."""
        return self._fit

    def overhead_tokens(self) -> int:
        """The fixed cost of one run, in padded tokens (the prior until fitted)."""
        if self._fit is None:
            return self.prior_tokens
        run_s, token_s, _ = self._fit
        return min(MAX_OVERHEAD_TOKENS, round(run_s / token_s))

    def seconds(self, windows: int, width: int) -> float | None:
        """The model's seconds for a run of `windows` padded to `width` (None until fitted)."""
        if self._fit is None:
            return None
        run_s, token_s, square_s = self._fit
        return run_s + windows * width * (token_s + square_s * width)

    def cost(self, windows: int, width: int) -> float:
        """What `lanes.group_by_length` minimises: the fitted seconds, or before the fit the
        prior (RUN_OVERHEAD_TOKENS + padded tokens, in tokens)."""
        seconds = self.seconds(windows, width)
        return float(self.prior_tokens + windows * width) if seconds is None else seconds

    def short(self, windows: Sequence[Sequence[int]], limit_s: float = INLINE_MAX_S) -> bool:
        """True when the model, once fitted, puts a run of these windows within `limit_s`."""
        seconds = self.seconds(len(windows), max(len(w) for w in windows))
        return seconds is not None and seconds <= limit_s
