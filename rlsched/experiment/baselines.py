"""What practitioners use instead of a learned LR schedule, as harness jobs: an LR range test in front of a
fixed schedule, tuning-free optimizers, and the nnU-Net recipe.

Each runs through the same harness as the fixed schedules (same instance: data, initial weights, epoch budget;
same records). What a method changes in the training config travels with its job as ``Job.overrides`` (make
jobs with ``method_job``); its controller checks that its env has them, so a hand-made job without them fails
instead of silently training the preset's optimizer.

Job kinds (``Job.kind``, ``Job.arg``):

- ``"range_test"``, arg = a fixed schedule (``"onecycle"``, ``"cosine"``, ...): sweep the LR on a copy of the
  fresh trainer, then follow the schedule from the suggested base LR. The sweep's cost is
  ``EpisodeResult.extra_epochs``.
- ``"optimizer"``, arg = a tuning-free optimizer (``rlsched.seg.optimizers.OPTIMIZERS``) at its recommended
  constant LR (``base_lr`` overrides it).
- ``"nnunet"``, arg unused: SGD, Nesterov momentum 0.99, weight decay 3e-5, gradient-norm clip 12, poly decay
  (exponent 0.9) from LR 1e-2 (nnU-Net's ``nnUNetTrainer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlsched.config import Config, EnvConfig, with_overrides
from rlsched.control.env import Instance, UNetLREnv
from rlsched.experiment.harness import Controller, Job, ScheduleController
from rlsched.seg.optimizers import OPTIMIZERS
from rlsched.seg.range_test import SWEEP_BATCHES, range_test
from rlsched.seg.schedules import SCHEDULES

KINDS = ("range_test", "optimizer", "nnunet")
Overrides = tuple[tuple[str, str], ...]

NNUNET_LR = 1e-2
NNUNET_SCHEDULE = "poly"  # lr = base * (1 - step / steps) ** 0.9, nnU-Net's PolyLRScheduler
NNUNET: Overrides = (
    ("optim.name", "sgd"),
    ("optim.momentum", "0.99"),
    ("optim.nesterov", "true"),
    ("optim.weight_decay", "3e-05"),
    ("optim.grad_clip", "12.0"),
)


@dataclass
class RangeTestController:
    """LR range test on the episode's fresh trainer, then ``schedule`` from the suggested base LR.

    The sweep covers the env's LR range ``[lr_min, lr_max]`` (so the suggestion is never clipped); its cost goes
    into the reset record (``extra_epochs``, ``range_test_batches``, ``range_test_lr``) and its wall time into
    the episode's seconds.
    """

    schedule: str = "onecycle"
    batches: int = SWEEP_BATCHES
    name: str = ""
    _follow: ScheduleController | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"range test: unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}"
            )
        self.name = self.name or f"range_test+{self.schedule}"

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        assert env.trainer is not None, "start() runs after reset()"
        cfg = env.config.env
        sweep = range_test(env.trainer, cfg.lr_min, cfg.lr_max, self.batches)
        env.seconds += sweep.seconds
        info.update(
            extra_epochs=sweep.epochs, range_test_batches=sweep.batches, range_test_lr=sweep.suggestion
        )
        self._follow = ScheduleController(self.schedule, sweep.suggestion, name=self.name)
        self._follow.start(env, info)

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        assert self._follow is not None, "start() must run before act()"
        return self._follow.act(env, obs, info)


@dataclass
class RecipeController:
    """A fixed schedule that only means something under config overrides (a tuning-free optimizer, the nnU-Net
    recipe): refuses an env without them, and a base LR the env would clip."""

    schedule: str
    base_lr: float
    needs: Overrides
    name: str
    _follow: ScheduleController | None = field(default=None, init=False, repr=False)

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        if with_overrides(env.config, self.needs) != env.config:
            raise ValueError(
                f"job {self.name!r} must run in an env built with {dict(self.needs)}: make the job with "
                "rlsched.experiment.baselines.method_job, whose overrides run_jobs applies"
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


def recipe(kind: str, arg: str) -> tuple[str, float, Overrides]:
    """Schedule, default base LR and required config overrides of an ``optimizer`` or ``nnunet`` job."""
    if kind == "nnunet":
        return NNUNET_SCHEDULE, NNUNET_LR, NNUNET
    if arg not in OPTIMIZERS:
        raise ValueError(f"unknown tuning-free optimizer {arg!r}: use one of {', '.join(OPTIMIZERS)}")
    spec = OPTIMIZERS[arg]
    needs: Overrides = (("optim.name", arg),)
    if spec.momentum is not None:
        needs += (("optim.momentum", repr(spec.momentum)),)
    return "constant", spec.lr, needs


def _lr_range(env: EnvConfig, lr: float) -> Overrides:
    """Widen the env's LR range to hold ``lr`` (it clips every LR it is given): the LR is the method's choice."""
    if lr > env.lr_max:
        return (("env.lr_max", repr(lr)),)
    if lr < env.lr_min:
        return (("env.lr_min", repr(lr)),)
    return ()


def method_job(
    config: Config,
    kind: str,
    arg: str,
    method: str,
    instance: Instance,
    base_lr: float | None = None,
    initial_lr: float | None = None,
) -> Job:
    """The harness job of method ``kind`` (see the module docstring) on ``instance``, with the overrides it needs
    on top of ``config`` (the config ``run_jobs`` gets); checked here, before anything trains."""
    if kind == "range_test":
        if base_lr is not None:
            raise ValueError(f"job {method!r}: the range test chooses the base LR itself; pass base_lr=None")
        RangeTestController(arg)  # checks the schedule
        return Job(method, kind, arg, instance, initial_lr=initial_lr)
    if kind not in KINDS:
        raise ValueError(f"unknown method kind {kind!r}: use one of {', '.join(KINDS)}")
    _, default_lr, needs = recipe(kind, arg)
    lr = default_lr if base_lr is None else base_lr
    overrides = needs + _lr_range(config.env, lr)
    with_overrides(config, overrides)  # a missing package or a bad value fails now, not in a worker
    return Job(method, kind, arg, instance, base_lr=lr, initial_lr=initial_lr, overrides=overrides)


def method_controller(job: Job) -> Controller:
    """The controller of a job whose kind is in ``KINDS`` (``jobs.make_controller`` comes here)."""
    if job.kind == "range_test":
        return RangeTestController(job.arg, name=job.method)
    schedule, default_lr, needs = recipe(job.kind, job.arg)
    return RecipeController(schedule, default_lr if job.base_lr is None else job.base_lr, needs, job.method)
