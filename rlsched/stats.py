"""Small-sample statistics for honest comparisons: t confidence intervals and a paired test."""

from __future__ import annotations

import math
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
        return f"{self.mean:.3f} ± {self.half_width:.3f}" if self.n > 1 else f"{self.mean:.3f}"


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


@dataclass(frozen=True)
class PairedTest:
    mean_difference: float
    ci: MeanCI
    t_pvalue: float
    wilcoxon_pvalue: float
    n: int


def paired_test(a: list[float], b: list[float]) -> PairedTest:
    """a - b on the same instances: the mean difference with its t interval, paired t and Wilcoxon p-values."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape:
        raise ValueError("paired test needs results on the same instances (equal lengths)")
    diff = x - y
    ci = mean_ci(diff)
    if diff.size < 2 or np.allclose(diff, 0):
        return PairedTest(ci.mean, ci, 1.0, 1.0, int(diff.size))
    t_p = float(stats.ttest_rel(x, y).pvalue)
    w_p = float(stats.wilcoxon(x, y).pvalue) if np.count_nonzero(diff) > 0 else 1.0
    return PairedTest(ci.mean, ci, t_p, w_p, int(diff.size))
