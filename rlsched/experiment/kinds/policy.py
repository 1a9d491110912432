"""A trained controller (``Job.arg``: its model path), acting on its most likely action (``policy``) or on
sampled ones (``policy_sample``: rollout ``Job.rollout`` seeds the sampling)."""

from __future__ import annotations

import functools
from dataclasses import replace

from rlsched.agents.loading import Predictor, load_policy
from rlsched.control.rules import rule_settings
from rlsched.experiment.harness import Controller, Job, PolicyController, ScriptedController
from rlsched.experiment.kinds.spec import LEARNED, MethodKind


@functools.lru_cache(maxsize=8)
def _policy(path: str, trust: bool) -> Predictor:
    return load_policy(path, trust=trust).predictor


def argmax(job: Job) -> Controller:
    twin = None
    if job.twin is not None:
        name, rule, lr = job.twin
        twin = ScriptedController(lr, name, *rule_settings(rule))
    return PolicyController(
        _policy(job.arg, job.trust), name=job.method, deterministic=True, seed=job.rollout, twin=twin
    )


def sampled(job: Job) -> Controller:
    return PolicyController(
        _policy(job.arg, job.trust), name=job.method, deterministic=False, seed=job.rollout
    )


KIND = MethodKind(
    name="policy",
    controller=argmax,
    needs="a trained controller",
    accounting="PPO training of {model} ({source})",
    style=LEARNED,
    learned=True,
)
# one way more to use the same stochastic policy: its robustness is the argmax row's
SAMPLED = replace(KIND, name="policy_sample", controller=sampled, robust=False)
