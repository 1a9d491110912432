"""Optuna's TPE with median pruning over (fixed schedule, base LR): the hyperparameter search a practitioner
would run instead of learning a schedule, under a budget of trained epochs.

Trials train harness episodes (``run_episode`` with a ``ScheduleController``), so a trial trains exactly like
the evaluation runs, on *train* instances only. Every epoch a trial trains counts against the budget, pruned
trials included; the trial that would overrun it is stopped at the last step that fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from rlsched.config import Config
from rlsched.control.env import Instance, UNetLREnv, make_instances
from rlsched.experiment.harness import ScheduleController, run_episode
from rlsched.seg.schedules import SCHEDULES

if TYPE_CHECKING:
    import optuna

INSTALL = 'pip install -e ".[search]"'


def require_optuna() -> Any:
    """The ``optuna`` module, or an ImportError that says how to install it."""
    try:
        import optuna
    except ImportError:
        raise ImportError(f"the Optuna search needs optuna, which is not installed: {INSTALL}") from None
    return optuna


@dataclass(frozen=True)
class Trial:
    """One trial: what it tried, how it ended and what it cost."""

    number: int
    schedule: str
    base_lr: float
    state: str  # "complete" | "pruned" (by the median rule) | "budget" (stopped when the budget ran out)
    epochs: int  # trained, over all its instances
    value: float  # mean final Dice over the instances; NaN unless complete


@dataclass(frozen=True)
class SearchResult:
    """The best completed trial and what the whole search cost."""

    schedule: str
    base_lr: float
    value: float
    epochs_spent: int
    trials: tuple[Trial, ...]


class _OutOfBudget(Exception):
    """The next step would train past the search's epoch budget."""


@dataclass
class _Reporting:
    """A schedule that reports each step's Dice to the pruner and stops where the trial must end."""

    schedule: ScheduleController
    trial: optuna.Trial
    offset: int  # steps this trial trained on earlier instances: pruning compares trials step by step
    epochs_left: int
    name: str = "search"

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        self.schedule.start(env, info)

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        per_step = env.config.env.epochs_per_step
        if info["epoch"] > 0:
            self.trial.report(_dice(info["dice_mean"]), self.offset + info["epoch"] // per_step)
            if self.trial.should_prune():
                raise require_optuna().TrialPruned()
        if info["epoch"] + per_step > self.epochs_left:
            raise _OutOfBudget
        return self.schedule.act(env, obs, info)


def _dice(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _train_instances(config: Config, instances: int | Sequence[Instance]) -> list[Instance]:
    pool = make_instances(config, "train")
    if isinstance(instances, int):
        if not 1 <= instances <= len(pool):
            raise ValueError(f"instances={instances}: the train split has {len(pool)} (env.train_instances)")
        return pool[:instances]
    leaked = [i for i in instances if i.split != "train"]
    if leaked or not instances:
        raise ValueError(
            f"the search tunes on train instances only, got {leaked or 'none'}: held-out instances "
            "are for evaluation"
        )
    return list(instances)


def search(
    config: Config,
    budget_epochs: int,
    instances: int | Sequence[Instance] = 1,
    schedules: Sequence[str] = tuple(SCHEDULES),
    seed: int = 0,
    pruner: optuna.pruners.BasePruner | None = None,
) -> SearchResult:
    """TPE (seeded, so reproducible) over ``schedules`` x a log-uniform base LR in the preset's initial-LR range,
    pruned by the median rule (Optuna's defaults), until ``budget_epochs`` trained epochs are spent."""
    optuna = require_optuna()
    unknown = [s for s in schedules if s not in SCHEDULES]
    if unknown or not schedules:
        raise ValueError(
            f"search: unknown schedule(s) {unknown or 'none given'}; choose from {', '.join(SCHEDULES)}"
        )
    chosen = _train_instances(config, instances)
    cfg = config.env
    trial_epochs = cfg.epochs * len(chosen)
    if budget_epochs < trial_epochs:
        raise ValueError(
            f"budget_epochs={budget_epochs} does not cover one trial ({cfg.epochs} epochs x "
            f"{len(chosen)} instance(s) = {trial_epochs}): raise the budget or use fewer instances"
        )
    env = UNetLREnv(config=config)
    spent = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal spent
        schedule = trial.suggest_categorical("schedule", list(schedules))
        lr = trial.suggest_float("base_lr", cfg.initial_lr_min, cfg.initial_lr_max, log=True)
        finals: list[float] = []
        used = 0
        try:
            for k, instance in enumerate(chosen):
                controller = _Reporting(
                    ScheduleController(schedule, lr), trial, k * cfg.steps, budget_epochs - spent - used
                )
                try:
                    finals.append(run_episode(env, controller, instance).final_dice)
                finally:
                    assert env.trainer is not None
                    used += env.trainer.epoch
                trial.report(finals[-1], (k + 1) * cfg.steps)
                if k + 1 < len(chosen) and trial.should_prune():
                    raise optuna.TrialPruned()
        except _OutOfBudget:
            trial.set_user_attr("budget", True)
            raise optuna.TrialPruned() from None
        finally:
            spent += used
            trial.set_user_attr("epochs", used)
        return float(np.mean(finals))

    optuna.logging.set_verbosity(
        optuna.logging.WARNING
    )  # a line per trial would drown the caller's progress bar
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner or optuna.pruners.MedianPruner(),
    )
    while budget_epochs - spent >= cfg.epochs_per_step:
        study.optimize(objective, n_trials=1)
    trials = tuple(_record(t) for t in study.trials)
    complete = [t for t in trials if t.state == "complete"]
    if not complete:
        raise RuntimeError(f"no trial completed within {budget_epochs} epochs: raise the budget")
    best = max(complete, key=lambda t: t.value)
    return SearchResult(best.schedule, best.base_lr, best.value, spent, trials)


def _record(trial: optuna.trial.FrozenTrial) -> Trial:
    complete = trial.state.name == "COMPLETE"
    state = "complete" if complete else "budget" if trial.user_attrs.get("budget") else "pruned"
    return Trial(
        trial.number,
        trial.params["schedule"],
        trial.params["base_lr"],
        state,
        trial.user_attrs["epochs"],
        trial.value if complete else math.nan,
    )
