"""Uniformly random actions (seed ``Job.arg``): the floor any learned controller must clear."""

from __future__ import annotations

from rlsched.experiment.harness import Controller, Job, RandomController
from rlsched.experiment.kinds.spec import MethodKind, Style


def controller(job: Job) -> Controller:
    return RandomController(seed=int(job.arg or 0), name=job.method)


KIND = MethodKind(name="random", controller=controller, needs="nothing", style=Style("--", colour="#7f7f7f"))
