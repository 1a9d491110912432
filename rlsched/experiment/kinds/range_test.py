"""LR range test in front of a fixed schedule (``Job.arg``): sweep the LR on a copy of the episode's fresh
trainer, then follow the schedule from the suggested base LR. The sweep's cost is
``EpisodeResult.extra_epochs``, counted after the runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlsched.config import Config
from rlsched.control.env import UNetLREnv
from rlsched.experiment.harness import Controller, Job, ScheduleController
from rlsched.experiment.kinds.spec import ALTERNATIVE, MethodKind
from rlsched.seg.range_test import SWEEP_BATCHES, range_test
from rlsched.seg.schedules import SCHEDULES


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


def controller(job: Job) -> Controller:
    return RangeTestController(job.arg, name=job.method)


def checked(config: Config, job: Job) -> Job:
    if job.base_lr is not None:
        raise ValueError(f"job {job.method!r}: the range test chooses the base LR itself; pass base_lr=None")
    RangeTestController(job.arg)  # checks the schedule
    return job


KIND = MethodKind(
    name="range_test",
    controller=controller,
    needs="nothing (an LR sweep per run)",
    accounting="an LR sweep before each of {runs} runs ({per_run:.2f} epochs each)",
    style=ALTERNATIVE,
    robust=False,  # it picks its own LR
    sweeps=True,
    base_lr_text="LR sweep",
    job=checked,
    baselines={f"range_test+{schedule}": schedule for schedule in ("onecycle", "cosine")},
    group="range_test",
)
