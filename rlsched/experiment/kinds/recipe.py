"""A fixed schedule that only means something under config overrides, for the kinds that change the training
config (a tuning-free optimizer, the nnU-Net recipe): their jobs carry the overrides (``Job.overrides``, which
``run_jobs`` applies) and their controller checks that its env has them, so a hand-made job without them fails
instead of silently training the preset's optimizer."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from rlsched.config import Config, EnvConfig, with_overrides
from rlsched.control.env import UNetLREnv
from rlsched.experiment.harness import Controller, Job, ScheduleController
from rlsched.experiment.kinds.spec import Overrides, Recipe


@dataclass
class RecipeController:
    """A fixed schedule under config overrides: refuses an env without them, and a base LR the env would clip."""

    schedule: str
    base_lr: float
    needs: Overrides
    name: str
    _follow: ScheduleController | None = field(default=None, init=False, repr=False)

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        if with_overrides(env.config, self.needs) != env.config:
            raise ValueError(
                f"job {self.name!r} must run in an env built with {dict(self.needs)}: make the job with "
                "rlsched.experiment.kinds.method_job, whose overrides run_jobs applies"
            )
        cfg = env.config.env
        if not cfg.lr_min <= self.base_lr <= cfg.lr_max:
            raise ValueError(
                f"job {self.name!r}: base LR {self.base_lr:g} lies outside env [lr_min, lr_max] = "
                f"[{cfg.lr_min:g}, {cfg.lr_max:g}] and would be clipped: method_job widens the range"
            )
        self._follow = ScheduleController(self.schedule, self.base_lr, name=self.name)
        self._follow.start(env, info)

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        assert self._follow is not None, "start() must run before act()"
        return self._follow.act(env, obs, info)


def _lr_range(env: EnvConfig, lr: float) -> Overrides:
    """Widen the env's LR range to hold ``lr`` (it clips every LR it is given): the LR is the method's choice."""
    if lr > env.lr_max:
        return (("env.lr_max", repr(lr)),)
    if lr < env.lr_min:
        return (("env.lr_min", repr(lr)),)
    return ()


def recipe_controller(recipe: Callable[[str], Recipe]) -> Callable[[Job], Controller]:
    """The controller factory of a kind whose jobs train under ``recipe``."""

    def controller(job: Job) -> Controller:
        schedule, default_lr, needs = recipe(job.arg)
        return RecipeController(
            schedule, default_lr if job.base_lr is None else job.base_lr, needs, job.method
        )

    return controller


def recipe_job(recipe: Callable[[str], Recipe]) -> Callable[[Config, Job], Job]:
    """The job maker of a kind whose jobs train under ``recipe``: the recipe's base LR unless the job has one,
    the overrides it needs on top of the config ``run_jobs`` gets, checked before anything trains."""

    def job_maker(config: Config, job: Job) -> Job:
        _, default_lr, needs = recipe(job.arg)
        lr = default_lr if job.base_lr is None else job.base_lr
        overrides = needs + _lr_range(config.env, lr)
        with_overrides(config, overrides)  # a missing package or a bad value fails now, not in a worker
        return replace(job, base_lr=lr, overrides=overrides)

    return job_maker
