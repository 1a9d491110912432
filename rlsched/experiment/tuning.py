"""Base-LR tuning on train instances: the grid search every tuned fixed schedule and scripted rule gets (in
``rlsched.compare``) and the teacher rule's probe-LR search before cloning (``python -m rlsched.train``). Decisions
read validation Dice only, never test Dice."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rlsched.config import Config
from rlsched.control.env import Instance, make_instances
from rlsched.control.rules import OFFSET_RULE, SUGGESTED_RULE, parse_rule, rule_arg
from rlsched.experiment.harness import EpisodeResult, Job
from rlsched.experiment.jobs import Outcome, episodes, run_jobs
from rlsched.experiment.kinds import schedule, scripted
from rlsched.seg.schedules import SCHEDULES, lr_grid

# the Job kind of the scripted rules (control.rules.ScriptedRule), their target LR tuned like a base LR
SCRIPTED = scripted.KIND.name
TUNABLE = (*SCHEDULES, "scripted", SUGGESTED_RULE)  # and the offset rule at any offset (is_tunable)

Run = Callable[[list[Job]], list[Outcome]]


def is_rule(name: str) -> bool:
    """Whether tunable method ``name`` is a scripted rule (``control.rules.rule_arg``)."""
    try:
        parse_rule(name)
    except ValueError:
        return False
    return True


def is_tunable(name: str) -> bool:
    return name in SCHEDULES or is_rule(name)


def tuned_kind(name: str) -> str:
    """The harness Job kind that runs tunable method ``name``: a scripted rule or a fixed schedule."""
    return SCRIPTED if is_rule(name) else schedule.KIND.name


@dataclass(frozen=True)
class Tuning:
    """The base-LR grid search of the fixed schedules on train instances."""

    grid: tuple[float, ...]
    instances: int
    epochs: int
    scores: dict[str, dict[float, tuple[float, float]]]  # schedule -> LR -> (mean final Dice, mean AUC)

    @property
    def base_lrs(self) -> dict[str, float]:
        """Best mean final Dice; the area under the Dice curve breaks ties (e.g. when every LR ends at 0)."""
        return {name: max(by_lr, key=by_lr.__getitem__) for name, by_lr in self.scores.items()}

    @property
    def epochs_per_schedule(self) -> int:
        return len(self.grid) * self.instances * self.epochs

    @property
    def reference(self) -> tuple[str, float]:
        """What robustness factors multiply: the tuned constant LR (else the base LR of the schedule that
        scored best on the train instances)."""
        lrs = self.base_lrs
        name = "constant" if "constant" in lrs else max(lrs, key=lambda n: self.scores[n][lrs[n]])
        return name, lrs[name]


def tune_base_lrs(
    config: Config, schedules: tuple[str, ...], grid: list[float], instances: list[Instance], run: Run
) -> Tuning:
    """Grid-search each schedule's base LR on train instances (never the held-out ones it is judged on), by
    validation Dice: a choice, so never by test Dice. Scores are the mean final validation Dice and the mean
    area under the validation Dice curve (the tie-break). An LR whose every run failed (dead workers) scores
    -inf: it cannot be chosen."""
    jobs = [
        Job(f"{name}@{lr:g}", tuned_kind(name), name, instance, base_lr=lr)
        for name in schedules
        for lr in grid
        for instance in instances
    ]
    curves: dict[str, dict[float, list[np.ndarray]]] = {s: {lr: [] for lr in grid} for s in schedules}
    for job, result in zip(jobs, run(jobs)):
        if isinstance(result, EpisodeResult):
            curves[job.arg][job.base_lr].append(result.dice_curve(config.env.steps))

    def score(runs: list[np.ndarray]) -> tuple[float, float]:
        if not runs:
            return -math.inf, -math.inf
        return float(np.mean([c[-1] for c in runs])), float(np.mean([c[1:].mean() for c in runs]))

    scores = {name: {lr: score(runs) for lr, runs in by_lr.items()} for name, by_lr in curves.items()}
    return Tuning(tuple(grid), len(instances), config.env.epochs, scores)


def search_grid(config: Config, per_decade: int) -> list[float]:
    """The preset's initial-LR range at ``per_decade`` points per decade, clipped to the env's LR limits."""
    env = config.env
    grid = lr_grid(env.initial_lr_min, env.initial_lr_max, per_decade)
    return sorted({min(max(lr, env.lr_min), env.lr_max) for lr in grid})


def probe_grid(config: Config) -> list[float]:
    """``search_grid`` at one point per decade, clipped to the LRs a scripted rule's first slice can reach: with
    residual actions, ``env.probe_lr`` times 10 ** the offsets' range (the points beyond would run one rule
    twice, and report an LR it never trained at)."""
    env = config.env
    if env.action != "residual":
        return search_grid(config, 1)
    low, high = (env.probe_lr * 10 ** f(env.offsets) for f in (min, max))
    return sorted({min(max(lr, low), high) for lr in search_grid(config, 1)})


def search_target(
    config: Config,
    instances: int,
    workers: int,
    rule: str = "scripted",
    offsets: tuple[float, ...] = (0.0,),
    target: float | None = None,
) -> tuple[str, float, list[EpisodeResult]]:
    """Scripted rule ``rule`` (``control.rules.SCRIPTED_RULES``) tuned on the first ``instances`` *train*
    instances: its target LR (unless given) grid-searched like a fixed schedule's base LR in ``rlsched.compare``
    (``probe_grid``: one point per decade of the initial-LR range). The offset rule probes at the suggested
    rule's target, then takes the best of ``offsets`` (decades from the suggestion) on the same instances, ties
    to the first.
    Returns the rule's Job arg (``rule_arg``), its target LR and the episodes it cost."""
    spent: list[EpisodeResult] = []

    def run(jobs: list[Job]) -> list[EpisodeResult]:
        spent.extend(episodes(run_jobs(config, jobs, workers)))
        return spent[-len(jobs) :]

    train = make_instances(config, "train")[:instances]
    probed = SUGGESTED_RULE if rule == OFFSET_RULE else rule
    found: dict[str, tuple[float, float]] = {}
    if target is None:
        probing = tune_base_lrs(config, (probed,), probe_grid(config), train, run)
        target = probing.base_lrs[probed]
        # the suggested rule at that target is the offset rule at offset 0: no need to run it again
        found[rule_arg(OFFSET_RULE, 0.0)] = probing.scores[probed][target]
    if rule != OFFSET_RULE:
        return rule, target, spent
    if len(offsets) == 1:
        return rule_arg(OFFSET_RULE, offsets[0]), target, spent
    names = [rule_arg(OFFSET_RULE, k) for k in offsets]
    missing = tuple(name for name in dict.fromkeys(names) if name not in found)
    if missing:
        scores = tune_base_lrs(config, missing, [target], train, run).scores
        found |= {name: by_lr[target] for name, by_lr in scores.items()}
    return max(names, key=found.__getitem__), target, spent
