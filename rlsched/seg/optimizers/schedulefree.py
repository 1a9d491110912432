"""Schedule-Free SGD and AdamW (Defazio et al. 2024, ``schedulefree``): no schedule, a real LR, and weights that
are evaluated at another point than they train at (the trainer's ``train()`` / ``eval()`` calls)."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from rlsched.seg.optimizers.spec import Request, TuningFree

if TYPE_CHECKING:
    import torch


def build(spec: TuningFree, package: ModuleType, params: Any, request: Request) -> torch.optim.Optimizer:
    """The class with its warmup over ``spec.warmup`` of the run's steps (rounded down, as the reference does)."""
    warmup = int(spec.warmup * request.total_steps)
    return getattr(package, spec.cls)(params, **spec.kwargs(request), warmup_steps=warmup)


OPTIMIZERS = {
    # docstring: "Learning rate parameter (default 1.0)", momentum 0.9; README: "a learning rate 10x-50x larger
    # than classical rates" (0.1 for SGD with momentum) and "Using learning rate warmup is recommended"; the
    # authors' AlgoPerf self-tuning submission warms up over 2% of the steps (warmup_factor = 0.02)
    "schedulefree_sgd": TuningFree(
        "schedulefree", "SGDScheduleFree", lr=1.0, momentum=0.9, warmup=0.02, build=build
    ),
    # docstring: "Learning rate parameter (default 0.0025)"; same warmup
    "schedulefree_adamw": TuningFree(
        "schedulefree", "AdamWScheduleFree", lr=0.0025, warmup=0.02, build=build
    ),
}
