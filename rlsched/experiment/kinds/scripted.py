"""A scripted rule (``Job.arg``: ``control.rules.rule_arg``): steer towards a target LR (``Job.base_lr``)
grid-searched like a schedule's base LR, or (the suggested-LR rule) follow the LR its update size suggests,
times 10 ** the offset rule's tuned offset."""

from __future__ import annotations

from rlsched.control.rules import rule_settings
from rlsched.experiment.harness import Controller, Job, ScriptedController
from rlsched.experiment.kinds.schedule import GRID_SEARCH
from rlsched.experiment.kinds.spec import TUNED, MethodKind


def controller(job: Job) -> Controller:
    if job.base_lr is None:
        raise ValueError(f"job {job.method!r}: the scripted rule needs its target LR as base_lr")
    return ScriptedController(job.base_lr, job.method, *rule_settings(job.arg))


KIND = MethodKind(
    name="scripted",
    controller=controller,
    needs="an LR grid search",
    accounting=GRID_SEARCH,
    style=TUNED,
    tuned=True,
    keeps_base_lr=True,  # from a forced initial LR it keeps steering towards its tuned target
)
