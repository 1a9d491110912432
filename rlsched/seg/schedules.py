"""Fixed LR schedules, built on ``torch.optim.lr_scheduler``, stepped once per env step (slice of training).

A ``FixedSchedule`` drives a private proxy optimizer and only *reports* the LR for the next step, so the same
object can steer a bare ``Trainer`` loop or the Gymnasium env through the comparison harness: fixed schedules
and learned policies then reach the trainer through exactly the same path.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.optim import lr_scheduler

SchedulerFactory = Callable[[torch.optim.Optimizer, int], object]


def lr_grid(low: float, high: float, per_decade: int = 2) -> list[float]:
    """Log-spaced LRs at round values (``per_decade`` per decade) covering ``[low, high]``."""
    start, stop = math.floor(math.log10(low) * per_decade), math.ceil(math.log10(high) * per_decade)
    return [round(10 ** (k / per_decade), 12) for k in range(start, stop + 1)]


def _warmup_cosine(opt: torch.optim.Optimizer, steps: int) -> lr_scheduler.LRScheduler:
    warmup = max(1, round(0.1 * steps))
    if steps <= warmup:
        return lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=steps)
    return lr_scheduler.SequentialLR(
        opt,
        [
            lr_scheduler.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=warmup),
            lr_scheduler.CosineAnnealingLR(opt, T_max=steps - warmup),
        ],
        milestones=[warmup],
    )


SCHEDULES: dict[str, SchedulerFactory] = {
    "constant": lambda opt, steps: lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0),
    # three equal phases, each 0.3x the previous (the classic "divide by ~3 at 1/3 and 2/3")
    "step": lambda opt, steps: lr_scheduler.StepLR(opt, step_size=max(1, math.ceil(steps / 3)), gamma=0.3),
    # decays to 5% of the base LR at the end of the budget
    "exponential": lambda opt, steps: lr_scheduler.ExponentialLR(opt, gamma=0.05 ** (1 / max(1, steps - 1))),
    "cosine": lambda opt, steps: lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
    "warmup_cosine": _warmup_cosine,
    # base LR is the peak; starts at peak/25 as torch's default, three-phase off
    "onecycle": lambda opt, steps: lr_scheduler.OneCycleLR(
        opt, max_lr=opt.param_groups[0]["lr"], total_steps=steps
    ),
    # nnU-Net: lr = base * (1 - t/T) ** 0.9
    "poly": lambda opt, steps: lr_scheduler.PolynomialLR(opt, total_iters=steps, power=0.9),
    # halve when validation Dice has not improved for 2 steps
    "plateau": lambda opt, steps: lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2),
}


class FixedSchedule:
    """The LR sequence of a named torch scheduler over ``steps`` steps, starting from ``base_lr``.

    Use: read ``lr`` before a step, call ``step(dice)`` after it (``dice`` feeds reduce-on-plateau).
    """

    def __init__(self, name: str, base_lr: float, steps: int) -> None:
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
        if not (base_lr > 0 and math.isfinite(base_lr)):
            raise ValueError(f"base_lr must be a positive finite number, got {base_lr!r}")
        self.name, self.base_lr, self.steps = name, base_lr, steps
        self._optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
        self._scheduler = SCHEDULES[name](self._optimizer, steps)
        self._taken = 0

    @property
    def lr(self) -> float:
        return float(self._optimizer.param_groups[0]["lr"])

    def step(self, dice: float | None = None) -> None:
        self._taken += 1
        if self._taken >= self.steps:  # OneCycleLR refuses to step past its budget; nothing follows anyway
            return
        self._optimizer.step()  # a no-op (the proxy has no gradient) that keeps torch's call-order check quiet
        if isinstance(self._scheduler, lr_scheduler.ReduceLROnPlateau):
            self._scheduler.step(dice if dice is not None and math.isfinite(dice) else -math.inf)
        else:
            self._scheduler.step()

    def lrs(self) -> list[float]:
        """The whole sequence, for schedules that don't depend on validation (plot/preview)."""
        preview = FixedSchedule(self.name, self.base_lr, self.steps)
        values = []
        for _ in range(self.steps):
            values.append(preview.lr)
            preview.step(0.0)
        return values
