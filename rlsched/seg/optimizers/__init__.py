"""Tuning-free optimizers: what practitioners use *instead* of tuning an LR schedule, built with the settings
their authors recommend. One module per family (its ``OPTIMIZERS``: name -> ``TuningFree``); the catalogue is
their union, and every name in it is an ``optim.name`` and a ``python -m rlsched.compare --baselines`` method.

Each comes from an optional package (the ``tuningfree`` extra), imported only when a config names it. The
recommended "LR" is passed by the caller (the env's constant LR): for most it is a multiplier of the step size
they estimate themselves (1.0 = as estimated), for Schedule-Free a real LR.

A new family: a module here with its ``OPTIMIZERS`` and its line in ``_FAMILIES``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable

from rlsched.seg.optimizers import dadaptation, dog, mechanic, prodigy, schedulefree
from rlsched.seg.optimizers.spec import INSTALL, Request, TuningFree

if TYPE_CHECKING:  # config.py validates names through this package: keep it free of torch at import
    import torch

__all__ = ["INSTALL", "OPTIMIZERS", "Request", "TuningFree", "build", "catalogue", "has_modes", "require"]

_FAMILIES = (prodigy, schedulefree, dadaptation, mechanic, dog)


def catalogue(families: Iterable[ModuleType]) -> dict[str, TuningFree]:
    """The families' optimizers in order; a name two families claim is refused."""
    merged: dict[str, TuningFree] = {}
    for family in families:
        taken = sorted(set(merged) & set(family.OPTIMIZERS))
        if taken:
            raise ValueError(f"optimizer name(s) {taken} of {family.__name__} are taken: rename them")
        merged.update(family.OPTIMIZERS)
    return merged


OPTIMIZERS: dict[str, TuningFree] = catalogue(_FAMILIES)


def require(name: str) -> ModuleType:
    """The package behind optimizer ``name``, or an ImportError that says how to install it."""
    package = OPTIMIZERS[name].package
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(
            f"optimizer {name!r} needs the {package!r} package, which is not installed: {INSTALL}"
        ) from None


def build(name: str, params: Any, request: Request) -> torch.optim.Optimizer:
    """Optimizer ``name`` with its recommended defaults and the trainer's ``request``."""
    spec = OPTIMIZERS[name]
    return spec.build(spec, require(name), params, request)


def has_modes(optimizer: torch.optim.Optimizer) -> bool:
    """Schedule-Free optimizers train at one point and must be evaluated at another: they need ``train()``
    before training and ``eval()`` before validation and checkpoints (torch's own optimizers have neither)."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))
