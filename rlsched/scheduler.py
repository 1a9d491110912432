"""``RLScheduler``: a learned LR policy as a drop-in scheduler for any PyTorch training loop.

    scheduler = RLScheduler.load("runs/<id>/model.zip", optimizer)
    for epoch in range(epochs):
        train_loss = train_one_epoch(...)
        val_loss, dice = validate(...)
        scheduler.step(train_loss=train_loss, val_loss=val_loss, dice=dice)

Like ``torch.optim.lr_scheduler``, ``step`` is called once per epoch (per *slice*, if the policy was trained
with ``env.epochs_per_step > 1``) after validation, and sets the LR for the next one. The observation is built
by the same code as the env's (``rlsched.control``), from the numbers you pass in; the gradient norm and the
update-to-weight ratio are measured from the optimizer's parameters when you don't pass them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .config import EnvConfig
from .control import ControlState, Dynamics, clip_lr, lr_factor
from .harness import Predictor


class RLScheduler:
    """Sets the optimizer's LR from a trained policy, one ``step`` per epoch (or slice).

    All param groups keep their LR ratios: the first group's LR is the one the policy controls.
    """

    def __init__(self, policy: Predictor, optimizer: torch.optim.Optimizer, env: EnvConfig,
                 total_epochs: int | None = None) -> None:
        # the observation's budget fraction counts against the run this scheduler steers
        self.policy, self.optimizer = policy, optimizer
        self.env = replace(env, epochs=total_epochs) if total_epochs else env
        self._ratios = [g["lr"] / optimizer.param_groups[0]["lr"] for g in optimizer.param_groups]
        self._state: ControlState | None = None
        self._previous_weights = self._weights()
        self.last_action: Any = None

    @classmethod
    def load(cls, path: str | Path, optimizer: torch.optim.Optimizer, total_epochs: int | None = None
             ) -> "RLScheduler":
        """Load ``runs/<id>/model.zip`` (SB3) or ``model.pt`` (reference PPO) with the env config it learned on."""
        from .evaluate import load_policy

        loaded = load_policy(path)
        return cls(loaded.predictor, optimizer, loaded.config.env, total_epochs)

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def start(self, val_loss: float, dice: float) -> float:
        """Optional, before the first epoch: the validation of the untrained model, as the env sees at reset.
        The policy then picks the first epoch's LR too (else the first epoch runs at the optimizer's LR)."""
        lr = clip_lr(self.env, self.get_last_lr()[0])
        self._state = ControlState(self.env, Dynamics(lr, val_loss, val_loss, dice, 0.0, 0.0))
        return self._act(lr)

    def step(self, train_loss: float, val_loss: float, dice: float, grad_norm: float | None = None,
             update_ratio: float | None = None) -> float:
        """Feed one epoch's numbers, let the policy act, set and return the LR for the next epoch."""
        weights = self._weights()
        if update_ratio is None:
            update_ratio = float((weights - self._previous_weights).norm() / self._previous_weights.norm().clamp_min(1e-12))
        if grad_norm is None:
            grads = [p.grad.detach().flatten() for g in self.optimizer.param_groups for p in g["params"]
                     if p.grad is not None]
            grad_norm = float(torch.cat(grads).norm()) if grads else 0.0
        self._previous_weights = weights
        lr = clip_lr(self.env, self.get_last_lr()[0])
        now = Dynamics(lr, train_loss, val_loss, dice if math.isfinite(dice) else 0.0, grad_norm, update_ratio)
        if self._state is None:
            self._state = ControlState(self.env, now)
        self._state.advance(now)
        return self._act(lr)

    def _act(self, lr: float) -> float:
        assert self._state is not None
        action, _ = self.policy.predict(self._state.observation(), deterministic=True)
        self.last_action = action
        new_lr = clip_lr(self.env, lr * lr_factor(self.env, action))
        for group, ratio in zip(self.optimizer.param_groups, self._ratios):
            group["lr"] = new_lr * ratio
        return new_lr

    def _weights(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten().float().cpu() for g in self.optimizer.param_groups
                          for p in g["params"]])

    def state_dict(self) -> dict[str, Any]:
        state = self._state
        return {"ratios": self._ratios, "step": state.step if state else 0,
                "now": vars(state.now) if state else None, "before": vars(state.before) if state else None,
                "history": list(state.history) if state else []}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self._ratios = saved["ratios"]
        if saved["now"] is None:
            self._state = None
            return
        self._state = ControlState(self.env, Dynamics(**saved["before"]))
        self._state.now = Dynamics(**saved["now"])
        self._state.step, self._state.history = saved["step"], [tuple(h) for h in saved["history"]]
