"""Every kind of method a harness job or a comparison can carry, one module each (its ``KIND``: a
``MethodKind`` that declares the kind's controller, recipe, needs, cost accounting, robustness, plot style and
``compare --baselines`` names); the registry is their union. ``experiment.jobs.make_controller`` and
``compare``'s methods, running, report and plots read a kind's declaration here instead of naming it.

A new kind: a module here with its ``KIND`` and its line in ``_KINDS``. (A new tuning-free optimizer is no new
kind: it is a family file in ``seg.optimizers``, which ``optimizer`` reads.)
"""

from __future__ import annotations

from typing import Iterable

from rlsched.config import Config
from rlsched.control.env import Instance
from rlsched.experiment.harness import Job
from rlsched.experiment.kinds import (
    nnunet,
    optimizer,
    optuna,
    oracle,
    pbt,
    policy,
    random_policy,
    range_test,
    schedule,
    scripted,
)
from rlsched.experiment.kinds.spec import MethodKind

__all__ = ["KINDS", "MethodKind", "method_job", "method_kind", "registry"]

_KINDS = (
    schedule.KIND,
    scripted.KIND,
    random_policy.KIND,
    policy.KIND,
    policy.SAMPLED,
    range_test.KIND,
    optimizer.KIND,
    nnunet.KIND,
    optuna.KIND,
    pbt.KIND,
    oracle.KIND,
)


def registry(kinds: Iterable[MethodKind]) -> dict[str, MethodKind]:
    """Name -> declaration, in order; a name two declarations claim is refused."""
    merged: dict[str, MethodKind] = {}
    for kind in kinds:
        if kind.name in merged:
            raise ValueError(f"method kind {kind.name!r} is declared twice: rename one")
        merged[kind.name] = kind
    return merged


KINDS: dict[str, MethodKind] = registry(_KINDS)


def method_kind(name: str) -> MethodKind:
    """The declaration of kind ``name``, or a one-line error naming the registered ones."""
    if name not in KINDS:
        raise ValueError(f"unknown method kind {name!r}: the registered kinds are {', '.join(KINDS)}")
    return KINDS[name]


def method_job(
    config: Config,
    kind: str,
    arg: str,
    method: str,
    instance: Instance,
    base_lr: float | None = None,
    initial_lr: float | None = None,
) -> Job:
    """The harness job of method ``kind`` on ``instance``, with the config overrides its kind needs on top of
    ``config`` (the config ``run_jobs`` gets); checked here, before anything trains."""
    declared = method_kind(kind)
    if declared.controller is None:
        raise ValueError(f"method kind {kind!r} does not run as a harness job: see rlsched/experiment/kinds/")
    job = Job(method, kind, arg, instance, base_lr=base_lr, initial_lr=initial_lr)
    return declared.job(config, job) if declared.job is not None else job
