"""Named, composable reward penalties.

The env's reward is ``(Dice after - Dice before) * reward_scale - penalty``. A penalty is any callable that
maps a ``Transition`` to a float; the built-ins below are combined with the weights of a preset's
``[penalty]`` table, and a user callable can be added on top (``gymnasium.make(..., penalty=my_fn)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from rlsched.config import PenaltyConfig


@dataclass(frozen=True)
class Transition:
    """What happened in one env step, as a penalty sees it."""

    lr_before: float  # LR of the previous slice (the initial LR on the first step)
    lr_after: float  # LR the action chose for this slice
    dice_before: float
    dice_after: float  # 0 when the run diverged
    val_loss_before: float
    val_loss_after: float  # NaN when the run diverged
    diverged: bool
    step: int  # 1-based index of this step
    steps: int  # steps in the episode
    seconds: float  # wall time of the slice


Penalty = Callable[[Transition], float]


def lr_change(t: Transition) -> float:
    """|log10 LR change|: discourages jittery schedules."""
    return abs(math.log10(t.lr_after / t.lr_before))


def divergence(t: Transition) -> float:
    """1 when the run blew up (NaN/inf loss)."""
    return float(t.diverged)


def compute(t: Transition) -> float:
    """1 per step: a price on every slice of training."""
    return 1.0


def val_loss_increase(t: Transition) -> float:
    """Increase of the natural-log validation loss, 0 when it fell (overfitting / instability signal)."""
    if not (math.isfinite(t.val_loss_before) and math.isfinite(t.val_loss_after)):
        return 0.0
    return max(0.0, math.log(max(t.val_loss_after, 1e-12)) - math.log(max(t.val_loss_before, 1e-12)))


BUILTIN: dict[str, Penalty] = {
    "lr_change": lr_change,
    "divergence": divergence,
    "compute": compute,
    "val_loss_increase": val_loss_increase,
}


class CombinedPenalty:
    """Weighted sum of the built-ins plus an optional user callable; reports each term for ``info``."""

    def __init__(self, weights: PenaltyConfig, extra: Penalty | None = None) -> None:
        if extra is not None and not callable(extra):
            raise TypeError(f"penalty must be a callable Transition -> float, got {extra!r}")
        self.terms: dict[str, tuple[float, Penalty]] = {
            name: (getattr(weights, name), fn) for name, fn in BUILTIN.items() if getattr(weights, name) > 0
        }
        if extra is not None:
            self.terms["custom"] = (1.0, extra)

    def __call__(self, transition: Transition) -> tuple[float, dict[str, float]]:
        parts = {name: weight * float(fn(transition)) for name, (weight, fn) in self.terms.items()}
        return sum(parts.values()), parts
