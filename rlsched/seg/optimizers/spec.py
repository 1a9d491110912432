"""What the catalogue holds about one tuning-free optimizer and what the trainer asks of it; its own module so
each family file can import it while the package's ``__init__`` imports the families."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # config.py validates names through this package: keep it free of torch at import
    import torch

INSTALL = 'pip install -e ".[tuningfree]"'


@dataclass(frozen=True)
class Request:
    """What the trainer asks of an optimizer: the config's settings and what it knows of the run."""

    lr: float
    momentum: float
    weight_decay: float
    total_steps: int  # optimizer steps of the whole run (Schedule-Free's warmup)
    batch_norm: bool  # the model normalises with batch norm (DoG's first step size depends on it)


def construct(spec: TuningFree, package: ModuleType, params: Any, request: Request) -> torch.optim.Optimizer:
    """The usual build: class ``spec.cls`` of the package with the LR, weight decay and (SGD variants) momentum."""
    return getattr(package, spec.cls)(params, **spec.kwargs(request))


@dataclass(frozen=True)
class TuningFree:
    """One optimizer: where it lives, the settings its documentation recommends and how to build it."""

    package: str  # the module to import (its absence is a one-line install hint)
    cls: str  # the optimizer class (a wrapper like Mechanic: the torch.optim class it wraps)
    lr: float  # the recommended LR (for most, a multiplier of the step size they estimate)
    momentum: float | None = None  # SGD variants: the momentum they were designed and evaluated with
    warmup: float = 0.0  # linear warmup, as a fraction of the run's optimizer steps
    # (spec, imported package, params, request) -> optimizer
    build: Callable[[TuningFree, ModuleType, Any, Request], torch.optim.Optimizer] = construct

    def kwargs(self, request: Request) -> dict[str, Any]:
        """The constructor arguments every family shares."""
        kwargs: dict[str, Any] = {"lr": request.lr, "weight_decay": request.weight_decay}
        if self.momentum is not None:
            kwargs["momentum"] = request.momentum
        return kwargs
