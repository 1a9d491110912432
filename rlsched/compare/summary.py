"""Per-run metrics and per-method statistics: Dice curves, summary rows with CIs, the pre-registered comparator
and the paired tests against it.

The headline is test Dice (each instance's test split, scored once after the last step). Every other Dice here
is validation Dice: what the controllers observed and were rewarded on, and what tuning, reduce-on-plateau and
PBT selected on, so it flatters the methods that select on it.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

import numpy as np

from rlsched.common.stats import PairedTest, mean_ci, paired_test
from rlsched.compare.methods import Comparison
from rlsched.experiment.harness import EpisodeResult
from rlsched.experiment.kinds.oracle import ORACLE

METRICS = ("test_dice", "final_dice", "best_dice", "auc_dice", "epochs_to_target", "seconds")


def lr_curve(result: EpisodeResult, steps: int) -> np.ndarray:
    """The LR each step trained with; NaN after a divergence."""
    lrs = np.full(steps, np.nan)
    trained = [r["lr"] for r in result.records[1:]]
    lrs[: len(trained)] = trained
    return lrs


def run_metrics(
    result: EpisodeResult, steps: int, target: float, epochs_per_step: int = 1
) -> dict[str, float]:
    """Test Dice; final and best validation Dice, area under the validation Dice curve (mean over the budget's
    steps), epochs to validation Dice ``target`` (NaN if never reached), diverged and stalled (0/1: at Dice 0 for
    more than two epochs at one LR, ``EpisodeResult.stalled``) and wall time."""
    dices = result.dice_curve(steps)
    reached = [float(r["epoch"]) for r, d in zip(result.records, result.dices) if d >= target]
    return {
        "test_dice": result.test_dice,
        "final_dice": float(dices[-1]),
        "best_dice": float(dices.max()),
        "auc_dice": float(dices[1:].mean()),
        "epochs_to_target": reached[0] if reached else math.nan,
        "diverged": float(result.diverged),
        "stalled": float(result.stalled(epochs_per_step)),
        "seconds": result.seconds,
    }


def by_method(results: list[EpisodeResult]) -> dict[str, list[EpisodeResult]]:
    """Results per method, each sorted by instance so paired tests pair the same instances."""
    grouped: dict[str, list[EpisodeResult]] = {}
    for result in results:
        grouped.setdefault(result.method, []).append(result)
    return {name: sorted(runs, key=lambda r: r.instance.index) for name, runs in grouped.items()}


def per_instance(results: list[EpisodeResult], value: Callable[[EpisodeResult], Any]) -> np.ndarray:
    """``value`` of each run averaged over the runs of the same instance, in instance order: a method with several
    sampled rollouts per instance counts each instance once in a CI (its rollouts are not independent samples)."""
    groups: dict[int, list[Any]] = {}
    for result in results:
        groups.setdefault(result.instance.index, []).append(value(result))
    return np.array([np.mean(values, axis=0) for _, values in sorted(groups.items())])


def _mean_finite(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(comparison: Comparison) -> list[dict[str, Any]]:
    """One row per method (and robustness factor): mean and 95% CI over instances of each metric (a method's
    rollouts on one instance averaged first), counts over runs, and accounting."""
    cfg, target = comparison.config.env, comparison.settings.dice_target
    failed = Counter((f.method, f.job.initial_lr) for f in comparison.failures)
    oracle = _test_dice_by_instance(comparison.results).get(ORACLE, {})
    rows = []
    for factor, initial_lr, results in comparison.groups():
        runs = by_method(results)
        for method in comparison.methods:
            if method.name not in runs:
                continue
            metrics = [run_metrics(r, cfg.steps, target, cfg.epochs_per_step) for r in runs[method.name]]
            by_instance: dict[int, list[dict[str, float]]] = {}
            for result, m in zip(runs[method.name], metrics):
                by_instance.setdefault(result.instance.index, []).append(m)
            means = [
                {key: _mean_finite([m[key] for m in ms]) for key in METRICS} for ms in by_instance.values()
            ]
            row: dict[str, Any] = {
                "method": method.name,
                "factor": factor,
                "initial_lr": initial_lr,
                "base_lr": method.base_lr if factor is None else initial_lr,
                "epochs_before_eval": method.epochs_before,
                "n": len(means),
                "runs": len(metrics),
            }
            for key in METRICS:
                ci = mean_ci([m[key] for m in means if math.isfinite(m[key])])
                row.update({f"{key}_mean": ci.mean, f"{key}_low": ci.low, f"{key}_high": ci.high})
            row["reached_target"] = sum(math.isfinite(m["epochs_to_target"]) for m in metrics)
            row["diverged"] = int(sum(m["diverged"] for m in metrics))
            row["stalled"] = int(sum(m["stalled"] for m in metrics))
            row["rollbacks"] = sum(r.rollbacks for r in runs[method.name])
            row["failed"] = failed[method.name, initial_lr]  # worker died on every attempt: not in n
            # regret to the main runs' oracle; robustness runs start elsewhere, so they have none
            own = dict(zip(by_instance, (m["test_dice"] for m in means)))
            regret = _regrets(oracle, own) if factor is None and method.name != ORACLE else []
            row["regret_mean"] = float(np.mean(regret)) if regret else math.nan
            row["regret_worst"] = float(np.max(regret)) if regret else math.nan
            rows.append(row)
    return rows


def _test_dice_by_instance(results: list[EpisodeResult]) -> dict[str, dict[int, float]]:
    """method -> instance index -> test Dice (a method's rollouts on one instance averaged)."""
    return {
        name: dict(zip(sorted({r.instance.index for r in rs}), per_instance(rs, lambda r: r.test_dice)))
        for name, rs in by_method(results).items()
    }


def _regrets(oracle: dict[int, float], method: dict[int, float]) -> list[float]:
    """Oracle minus method test Dice on each instance both have: what the method left on the table there (the
    oracle picked on validation, so a method can beat it on an instance: a negative regret)."""
    return [oracle[i] - method[i] for i in sorted(oracle.keys() & method.keys())]


def best_fixed(comparison: Comparison) -> str:
    """The comparator, pre-registered: the tuned method whose chosen base LR scored best (mean final Dice, then
    AUC) in the grid search on *train* instances. Picking it by held-out results and then testing against it
    on those same results would favour the fixed schedules."""
    tuning = comparison.tuning
    chosen = {
        m.name: tuning.scores[m.name][tuning.base_lrs[m.name]]
        for m in comparison.methods
        if m.tuned and m.name in tuning.scores
    }  # the grid-searched ones (Optuna's score is not comparable)
    return max(chosen, key=chosen.__getitem__)


def paired_tests(comparison: Comparison) -> dict[str, PairedTest]:
    """Each learned policy minus the best fixed schedule, test Dice on the instances both finished (a failed
    job removes its instance from that pair only). None without tuned schedules (a held-out evaluation)."""
    if not any(m.tuned and m.name in comparison.tuning.scores for m in comparison.methods):
        return {}
    runs = _test_dice_by_instance(comparison.results)
    best = runs.get(best_fixed(comparison), {})
    tests = {}
    for m in comparison.methods:
        if m.learned and m.name in runs:
            common = sorted(runs[m.name].keys() & best.keys())
            tests[m.name] = paired_test([runs[m.name][i] for i in common], [best[i] for i in common])
    return tests


def learned_minus_each(comparison: Comparison) -> dict[str, dict[str, PairedTest]]:
    """Each learned policy minus every other method but the oracle (its regret table covers it), test Dice on the
    instances both finished: is it better than its teacher rule, the tuning-free optimizers, each schedule?"""
    runs = _test_dice_by_instance(comparison.results)
    tests: dict[str, dict[str, PairedTest]] = {}
    for learned in (m.name for m in comparison.methods if m.learned and m.name in runs):
        tests[learned] = {}
        for other in (m.name for m in comparison.methods if m.name != learned and m.name in runs):
            if other == ORACLE:
                continue
            common = sorted(runs[learned].keys() & runs[other].keys())
            mine, theirs = [runs[learned][i] for i in common], [runs[other][i] for i in common]
            tests[learned][other] = paired_test(mine, theirs)
    return tests
