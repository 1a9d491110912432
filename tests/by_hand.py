"""Reference numbers computed from textbook formulas, independently of the rlsched code they check.

Not a test module (no ``test_`` prefix): test files import it to compare rlsched's statistics and metrics with
a second, deliberately plain implementation. It uses no ``scipy.stats``, which ``rlsched.common.stats`` calls.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.special import betainc

# Two-sided 95% Student t quantiles t_{0.975, df}, as printed in statistics tables.
T975 = {
    1: 12.706204736,
    2: 4.302652730,
    3: 3.182446305,
    4: 2.776445105,
    5: 2.570581836,
    6: 2.446911851,
    7: 2.364624252,
    8: 2.306004135,
}


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator)."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% Student t interval of the mean."""
    mean, sd = mean_sd(values)
    half = T975[len(values) - 1] * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


def t_test_pvalue(differences: list[float]) -> float:
    """Two-sided one-sample t test of mean 0, i.e. the paired t test of the differences.

    P(|T_df| > t) is the regularised incomplete beta function I_{df / (df + t^2)}(df / 2, 1 / 2).
    """
    mean, sd = mean_sd(differences)
    t = mean / (sd / math.sqrt(len(differences)))
    df = len(differences) - 1
    return float(betainc(df / 2, 0.5, df / (df + t * t)))


def wilcoxon_exact_pvalue(differences: list[float]) -> float:
    """Two-sided exact Wilcoxon signed-rank p-value by enumerating every sign pattern (no zeros, no ties)."""
    magnitudes = [abs(d) for d in differences]
    assert 0 not in magnitudes and len(set(magnitudes)) == len(magnitudes), "needs no zeros or ties"
    ranks = {m: r for r, m in enumerate(sorted(magnitudes), start=1)}
    positive = sum(ranks[abs(d)] for d in differences if d > 0)
    total = len(differences) * (len(differences) + 1) // 2
    statistic = min(positive, total - positive)
    as_extreme = sum(
        sum(signs) <= statistic for signs in itertools.product(*[(0, r) for r in ranks.values()])
    )
    return min(1.0, 2 * as_extreme / 2 ** len(differences))


def dice_per_class(
    prediction: np.ndarray, target: np.ndarray, classes: int, ignore_index: int = 255
) -> list[float]:
    """Dataset Dice 2TP / (2TP + FP + FN) of class-index maps, classes 1..K, ignored pixels left out."""
    kept = target != ignore_index
    scores = []
    for k in range(1, classes + 1):
        p, t = (prediction == k) & kept, (target == k) & kept
        tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan)
    return scores
