"""What an ONNX run costs, measured on the runs themselves: the batcher's split uses it.

A run pads its windows to the widest, so its time grows with the padded tokens (windows x width),
plus a fixed cost per run (feeding the session, waking its threads, gathering the outputs). The
model `seconds ~ run_s + token_s x padded tokens` is fitted by least squares over the recent runs,
with older runs weighted down (half-life `HALF_LIFE_RUNS` runs), so it follows the machine: on
contended cores waking the intra-op threads costs more, and the fixed cost grows relative to the
per-token one. `overhead_tokens()` is that ratio, the fixed cost expressed in padded tokens, and is
what `lanes.group_by_length` weighs one more run against: the cheapest split under this model
never costs more than running every text alone would, so a batch never makes a text pay more than
its own run (the padding waste is bounded by what the model measured, not by a constant).

The batcher also asks it whether a lone text's run is short enough to make on the event loop.
Until the runs have spread enough in size to fit both terms (`MIN_RUNS` runs, padded tokens
varying by at least a factor of two), the prior `RUN_OVERHEAD_TOKENS` is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from functions.sentiment.lanes import RUN_OVERHEAD_TOKENS

HALF_LIFE_RUNS = 200
MIN_RUNS = 16
INLINE_MAX_S = 0.025  # the longest run (by the model) the batcher makes on the event loop
# Bounds on the fitted ratio: below 0 is noise, above 512 tokens (two long texts) a fit is broken.
MAX_OVERHEAD_TOKENS = 512


class CostModel:
    """Exponentially weighted least squares of run seconds on padded tokens."""

    def __init__(
        self, prior_tokens: int = RUN_OVERHEAD_TOKENS, half_life_runs: int = HALF_LIFE_RUNS
    ) -> None:
        self.prior_tokens = prior_tokens
        self.decay = 0.5 ** (1 / half_life_runs)
        self.runs = 0
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self._lo, self._hi = math.inf, 0.0
        self._fit: tuple[float, float] | None = None  # (run_s, token_s)

    def observe(self, padded_tokens: int, seconds: float) -> None:
        """Add one run: its windows x width and its seconds."""
        d, x = self.decay, float(padded_tokens)
        self._w = self._w * d + 1
        self._x = self._x * d + x
        self._y = self._y * d + seconds
        self._xx = self._xx * d + x * x
        self._xy = self._xy * d + x * seconds
        self._lo, self._hi = min(self._lo, x), max(self._hi, x)
        self.runs += 1
        if self.runs >= MIN_RUNS and self._hi >= 2 * self._lo:
            self._refit()

    def _refit(self) -> None:
        spread = self._w * self._xx - self._x * self._x
        if spread <= 0:
            return
        token_s = (self._w * self._xy - self._x * self._y) / spread
        run_s = (self._y - token_s * self._x) / self._w
        if token_s > 0:  # a run cannot get cheaper with more tokens: keep the last good fit
            self._fit = (max(run_s, 0.0), token_s)

    @property
    def fitted(self) -> tuple[float, float] | None:
        """(seconds per run, seconds per padded token), or None while the prior is used."""
        return self._fit

    def overhead_tokens(self) -> int:
        """The fixed cost of one run, in padded tokens (the prior until fitted)."""
        if self._fit is None:
            return self.prior_tokens
        run_s, token_s = self._fit
        return min(MAX_OVERHEAD_TOKENS, round(run_s / token_s))

    def seconds(self, windows: int, width: int) -> float | None:
        """The model's seconds for a run of `windows` padded to `width` (None until fitted)."""
        if self._fit is None:
            return None
        run_s, token_s = self._fit
        return run_s + token_s * windows * width

    def short(self, windows: Sequence[Sequence[int]], limit_s: float = INLINE_MAX_S) -> bool:
        """True when the model, once fitted, puts a run of these windows within `limit_s`."""
        seconds = self.seconds(len(windows), max(len(w) for w in windows))
        return seconds is not None and seconds <= limit_s
