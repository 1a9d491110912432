"""Tuning-free optimizers (Prodigy, Schedule-Free, D-Adaptation): what practitioners use *instead* of tuning an
LR schedule, built with the settings their authors recommend.

Each comes from an optional package (the ``tuningfree`` extra), imported only when a config names it. The
recommended "LR" is passed by the caller (the env's constant LR): for Prodigy and D-Adaptation it is a
multiplier of the step size they estimate themselves (1.0 = as estimated), for Schedule-Free a real LR.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # config.py validates names through this module: keep it free of torch at import
    import torch

INSTALL = 'pip install -e ".[tuningfree]"'


@dataclass(frozen=True)
class TuningFree:
    """One optimizer: where it lives and the settings its documentation recommends."""

    package: str
    cls: str
    lr: float  # the recommended LR (a multiplier of the estimated step size for Prodigy and D-Adaptation)
    momentum: float | None = None  # SGD variants: the momentum they were designed and evaluated with
    warmup: float = 0.0  # linear warmup, as a fraction of the run's optimizer steps


OPTIMIZERS: dict[str, TuningFree] = {
    # README: "We recommend using lr=1. (default) for all networks"; no scheduler (or cosine)
    "prodigy": TuningFree("prodigyopt", "Prodigy", lr=1.0),
    # docstring: "Learning rate parameter (default 1.0)", momentum 0.9; README: "a learning rate 10x-50x larger
    # than classical rates" (0.1 for SGD with momentum) and "Using learning rate warmup is recommended"; the
    # authors' AlgoPerf self-tuning submission warms up over 2% of the steps (warmup_factor = 0.02)
    "schedulefree_sgd": TuningFree("schedulefree", "SGDScheduleFree", lr=1.0, momentum=0.9, warmup=0.02),
    # docstring: "Learning rate parameter (default 0.0025)"; same warmup
    "schedulefree_adamw": TuningFree("schedulefree", "AdamWScheduleFree", lr=0.0025, warmup=0.02),
    # README: "Set the LR parameter to 1.0"; the paper's SGD runs use momentum 0.9 (the package default is 0)
    "dadapt_sgd": TuningFree("dadaptation", "DAdaptSGD", lr=1.0, momentum=0.9),
    "dadapt_adam": TuningFree("dadaptation", "DAdaptAdam", lr=1.0),
}


def require(name: str) -> ModuleType:
    """The package behind optimizer ``name``, or an ImportError that says how to install it."""
    package = OPTIMIZERS[name].package
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(
            f"optimizer {name!r} needs the {package!r} package, which is not installed: {INSTALL}"
        ) from None


def build(
    name: str, params: Any, lr: float, momentum: float, weight_decay: float, total_steps: int
) -> torch.optim.Optimizer:
    """Optimizer ``name`` with its recommended defaults; ``total_steps`` (batches of the whole run) sets the
    Schedule-Free warmup."""
    spec = OPTIMIZERS[name]
    cls = getattr(require(name), spec.cls)
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if spec.momentum is not None:
        kwargs["momentum"] = momentum
    if spec.package == "schedulefree":
        kwargs["warmup_steps"] = int(spec.warmup * total_steps)  # rounded down, as the reference does
    return cls(params, **kwargs)


def has_modes(optimizer: torch.optim.Optimizer) -> bool:
    """Schedule-Free optimizers train at one point and must be evaluated at another: they need ``train()``
    before training and ``eval()`` before validation and checkpoints (torch's own optimizers have neither)."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))
