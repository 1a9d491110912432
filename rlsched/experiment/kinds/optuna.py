"""Optuna TPE + median pruning over (schedule, base LR) on train instances, given a learned agent's training
budget: "spend the compute on search instead". The search runs in ``compare.running`` (``experiment.search``),
before the held-out runs; its choice runs as a tuned ``schedule`` method (that kind's controller, robustness runs
and style), with this kind's needs and accounting."""

from __future__ import annotations

from rlsched.experiment.kinds.spec import MethodKind

KIND = MethodKind(
    name="optuna",
    controller=None,
    needs="an Optuna search",
    accounting="Optuna TPE + median pruning: {trials} trials over (schedule, base LR) on {instances} train "
    "instance(s), budget {budget:,} epochs",
    baselines={"optuna": ""},
)
