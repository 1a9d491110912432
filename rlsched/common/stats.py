"""Small-sample statistics for honest comparisons: t confidence intervals and a paired test."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return self.text()

    def exceeds(self, bounds: tuple[float, float]) -> bool:
        """The interval runs past ``bounds``, the values the quantity can take."""
        return self.n > 1 and (self.low < bounds[0] or self.high > bounds[1])

    def bounded(self, bounds: tuple[float, float]) -> tuple[float, float]:
        """``low`` and ``high`` clipped to ``bounds``, for display only."""
        return max(self.low, bounds[0]), min(self.high, bounds[1])

    def text(self, digits: int = 3, bounds: tuple[float, float] | None = None) -> str:
        """``mean ± half-width`` (the mean alone from one value). With ``bounds`` (e.g. ``UNIT`` for a Dice), an
        interval that runs past them is shown clipped, ``mean [low, high] (clipped, n=N)``: a t interval wider
        than the quantity's range claims impossible values and says the sample is too small. ``low`` and
        ``high`` themselves stay raw (JSON, CSV)."""
        if self.n <= 1:
            return f"{self.mean:.{digits}f}"
        if bounds is not None and self.exceeds(bounds):
            low, high = self.bounded(bounds)
            return f"{self.mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] (clipped, n={self.n})"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"

    def span(self, bounds: tuple[float, float], digits: int = 3) -> str:
        """``low .. high`` with signs (for a difference), clipped to ``bounds`` and marked if it ran past them."""
        low, high = self.bounded(bounds)
        return f"{low:+.{digits}f} .. {high:+.{digits}f}" + (", clipped" if self.exceeds(bounds) else "")


def mean_ci(values: list[float] | np.ndarray, confidence: float = 0.95) -> MeanCI:
    """Student-t interval of the mean (the right one for the handful of instances/seeds we can afford)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if x.size == 1:
        return MeanCI(mean, mean, mean, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return MeanCI(mean, mean - half, mean + half, int(x.size))


UNIT = (0.0, 1.0)  # what a Dice can be
DIFFERENCE = (-1.0, 1.0)  # what a difference of two Dice can be


def clipped_note(shown: Iterable[tuple[MeanCI, tuple[float, float]]], fix: str) -> str:
    """A warning for a report whose intervals ``MeanCI.text`` clipped (empty if none): the sample sizes that
    made them too wide to bound the mean, and ``fix`` (how to get more instances). ``shown``: each interval the
    report displays with the bounds it was displayed with."""
    sizes = sorted({ci.n for ci, bounds in shown if ci.exceeds(bounds)})
    if not sizes:
        return ""
    return (
        f"Warning: the intervals marked 'clipped' ran past the values they bound (a Dice lies in [0, 1], a "
        f"difference of two in [-1, 1]) and are shown cut to them: n = {', '.join(map(str, sizes))} is too "
        f"small a sample for a t interval to say much; {fix}. The raw bounds are in the JSON/CSV files."
    )


@dataclass(frozen=True)
class PairedTest:
    mean_difference: float
    ci: MeanCI
    t_pvalue: float
    wilcoxon_pvalue: float
    n: int
    wins: int = 0  # pairs where a ended above b
    losses: int = 0  # pairs where a ended below b


def paired_test(a: list[float], b: list[float]) -> PairedTest:
    """a - b on the same instances: the mean difference with its t interval, paired t and Wilcoxon p-values."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape:
        raise ValueError("paired test needs results on the same instances (equal lengths)")
    diff = x - y
    ci = mean_ci(diff)
    wins, losses = int(np.sum(diff > 0)), int(np.sum(diff < 0))
    if diff.size < 2 or np.allclose(diff, 0):
        return PairedTest(ci.mean, ci, 1.0, 1.0, int(diff.size), wins, losses)
    t_p = float(stats.ttest_rel(x, y).pvalue)
    w_p = float(stats.wilcoxon(x, y).pvalue) if np.count_nonzero(diff) > 0 else 1.0
    return PairedTest(ci.mean, ci, t_p, w_p, int(diff.size), wins, losses)
