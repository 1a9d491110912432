"""A fixed LR schedule (``seg.schedules``, ``Job.arg``) from a base LR grid-searched on train instances, or,
without one, untuned from each instance's initial LR (what a user who does not tune gets)."""

from __future__ import annotations

from rlsched.experiment.harness import Controller, Job, ScheduleController
from rlsched.experiment.kinds.spec import BASELINE, TUNED, MethodKind

GRID_SEARCH = "LR grid search: {lrs} LRs x {instances} train instances x {epochs} epochs"


def controller(job: Job) -> Controller:
    return ScheduleController(job.arg, job.base_lr, name=job.method)


KIND = MethodKind(
    name="schedule",
    controller=controller,
    needs="an LR grid search",
    accounting=GRID_SEARCH,
    style=TUNED,
    tuned=True,
    # from the instance's initial LR a forced initial LR would repeat the tuned schedule's robustness run
    untuned=MethodKind(name="schedule", controller=controller, needs="an LR", style=BASELINE, robust=False),
)
