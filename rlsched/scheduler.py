"""``RLScheduler``: a learned LR policy as a drop-in scheduler for any PyTorch training loop.

    scheduler = RLScheduler.load("runs/<id>/model.zip", optimizer)   # or RLScheduler.pretrained(optimizer)
    for epoch in range(epochs):
        train_loss = train_one_epoch(...)
        val_loss, dice = validate(...)
        scheduler.step(train_loss=train_loss, val_loss=val_loss, dice=dice)

Like ``torch.optim.lr_scheduler``, ``step`` is called once per epoch (per *slice*, if the policy was trained
with ``env.epochs_per_step > 1``) after validation, and sets the LR for the next one. The observation is built
by the same code as the env's (``rlsched.control.interface``), from the numbers you pass in; the gradient norm and the
update-to-weight ratio are measured as the env measures them when you don't pass them: the mean global gradient
norm over the epoch's optimizer steps (a hook on ``optimizer.step``; pass ``grad_norm`` yourself if you clip
gradients, since the env reports the norm before clipping) and ``||w_end - w_start|| / ||w_start||``.

A policy trained with ``env.on_divergence = "rollback"`` gets the same safety net here: when an epoch blows up
(a non-finite loss or weight, or a train / validation loss above ``env.loss_spike`` / ``env.val_spike`` x the
last healthy epoch's), ``step`` puts back the parameters and optimizer state from before that epoch (and the
model's buffers, e.g. BatchNorm statistics, when you passed ``model=``), sets ``rolled_back``, and the policy
sees the blow-up exactly as in training (the suggested LR drops below the LR that blew up). What an epoch
is undone to, and what its update ratio counts from, is the state at the last ``step``; after construction or
a ``load_state_dict`` (of the optimizer, of ``model=`` or of the scheduler) it is taken at the first forward
pass of ``model=`` or the first ``optimizer.step``, so a checkpoint loaded after the scheduler was built is
what counts.

What ``step`` accepts: losses >= 0 (the policy reads ln(loss), and a spike is a loss above ``env.loss_spike``
x the last healthy one), NaN or inf for a blown-up epoch; ``dice`` in [0, 1], NaN where it is undefined (a
class absent from prediction and target alike, see ``rlsched.seg.metrics``): the policy then sees the last finite
Dice again (0 before any, or after a blown-up epoch that is not undone, as the env scores it). Anything else
is a clear error that changes nothing. The scheduler must be the only one setting the LR: it warns once when
the LR changed between its steps (e.g. a ``torch.optim.lr_scheduler`` stepping alongside), since it reads the
first group's LR as the one the epoch trained at.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from rlsched.agents.loading import Predictor, load_policy
from rlsched.config import EnvConfig
from rlsched.control.interface import ControlState, Dynamics, clip_lr, next_lr, undone
from rlsched.seg.restore_point import RestorePoint


class RLScheduler:
    """Sets the optimizer's LR from a trained policy, one ``step`` per epoch (or slice).

    All param groups keep their LR ratios: the first group's LR is the one the policy controls.
    """

    def __init__(
        self,
        policy: Predictor,
        optimizer: torch.optim.Optimizer,
        env: EnvConfig,
        total_epochs: int | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        first_lr = float(optimizer.param_groups[0]["lr"])
        if not (math.isfinite(first_lr) and first_lr > 0):
            raise ValueError(
                f"the first param group's LR is {first_lr!r}: RLScheduler sets it and scales "
                "the other groups by their ratio to it, so put a group with a positive LR first"
            )
        if total_epochs is not None and (
            isinstance(total_epochs, bool)
            or total_epochs < 1
            or not isinstance(total_epochs, numbers.Integral)
        ):
            raise ValueError(
                f"total_epochs={total_epochs!r}: pass your loop's epoch count (an integer >= "
                f"1), or leave it out for the policy's own budget of {env.epochs} epochs"
            )
        # the observation's budget fraction counts against the run this scheduler steers
        self.policy, self.optimizer, self.model = policy, optimizer, model
        self.env = env if total_epochs is None else replace(env, epochs=int(total_epochs))
        self._ratios = [g["lr"] / first_lr for g in optimizer.param_groups]
        self._state: ControlState | None = None
        self._previous_weights = self._weights()
        self.rolled_back = False  # the last step undid a blown-up epoch (env.on_divergence = "rollback")
        self.rollbacks = 0
        self._before: RestorePoint | None = None
        self._keep_state()  # taken again at the first forward / optimizer step: after a checkpoint is loaded
        self._snapshot_due = True
        self._lr_set = first_lr  # the LR this scheduler last left in the first group
        self._lr_changed: tuple[float, float] | None = None  # (set, found) once something else changed it
        self.last_action: Any = None
        self._grad_norm_sum: torch.Tensor | None = None  # on the parameters' device: no host sync per batch
        self._grad_steps = 0
        self._hooks = [
            optimizer.register_step_pre_hook(self._before_optimizer_step),
            optimizer.register_load_state_dict_post_hook(lambda _: self._loaded()),
        ]
        if model is not None:
            self._hooks += [
                model.register_forward_pre_hook(lambda *_: self._snapshot_if_due()),
                model.register_load_state_dict_post_hook(lambda *_: self._loaded()),
            ]
        self._warned_budget = self._warned_lr = False

    def _loaded(self) -> None:
        """A state was loaded into the optimizer, the model or this scheduler: the next epoch starts there."""
        self._snapshot_due = True
        self._lr_set = float(self.optimizer.param_groups[0]["lr"])

    def _snapshot_if_due(self) -> None:
        if self._snapshot_due:
            self._snapshot_due = False
            self._previous_weights = self._weights()
            self._keep_state()

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._snapshot_if_due()
        self._note_lr_change()
        self._measure_grad_norm(optimizer)

    def _note_lr_change(self) -> None:
        """Remember the first LR found in the first group that this scheduler did not set there."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self._lr_changed is None and not math.isclose(lr, self._lr_set, rel_tol=1e-6):
            self._lr_changed = (self._lr_set, lr)

    def _measure_grad_norm(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad.detach() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self._grad_norm_sum = norm if self._grad_norm_sum is None else self._grad_norm_sum + norm
        self._grad_steps += 1

    def _epoch_grad_norm(self) -> float:
        """Mean global gradient norm over the optimizer steps since the last ``step`` (0 if none ran)."""
        mean = float(self._grad_norm_sum) / self._grad_steps if self._grad_steps else 0.0
        self._grad_norm_sum, self._grad_steps = None, 0
        return mean

    @classmethod
    def load(
        cls,
        path: str | Path,
        optimizer: torch.optim.Optimizer,
        total_epochs: int | None = None,
        model: torch.nn.Module | None = None,
        trust: bool = False,
    ) -> "RLScheduler":
        """Load ``runs/<id>/model.zip`` (SB3) or ``model.pt`` (reference PPO) with the env config it learned on;
        ``model``: also put its buffers back when an epoch blows up (rollback policies). Nothing in the files
        runs; ``trust=True`` allows unpickling (``policy.load_policy``): only for a file you trust."""
        loaded = load_policy(path, trust=trust)
        return cls(loaded.predictor, optimizer, loaded.config.env, total_epochs, model)

    @classmethod
    def pretrained(
        cls,
        optimizer: torch.optim.Optimizer,
        total_epochs: int | None = None,
        model: torch.nn.Module | None = None,
    ) -> "RLScheduler":
        """The controller shipped in the package (``rlsched/pretrained/``), with its observation statistics.

        It sees only training dynamics (LR, budget fraction, losses, a validation score, gradient norm, update
        ratio), never the model, so any model and optimizer (SGD, Adam, ...) can use it; pass your validation
        metric in [0, 1] as ``dice`` (it trained on Dice). What it trained on (preset, UNet epochs spent, source
        run, commit) is in ``controller.json``: ``python -m rlsched.pretrained`` prints it. It trained on one
        epoch budget (``env.epochs`` of ``controller.toml``): pass ``total_epochs=`` your loop's epoch count so
        its budget fraction counts against your run; stepping past the budget warns once. Raises
        ``FileNotFoundError``, saying how to export one, when no controller is shipped.
        """
        from rlsched.pretrained import controller_path

        return cls.load(controller_path(), optimizer, total_epochs, model)

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def start(self, val_loss: float, dice: float) -> float:
        """Optional, before the first epoch: the validation of the untrained model, as the env sees at reset.
        The policy then picks the first epoch's LR too (else the first epoch runs at the optimizer's LR)."""
        val_loss, dice = _loss("val_loss", val_loss), _dice(dice)
        lr = clip_lr(self.env, self.get_last_lr()[0])
        dice = 0.0 if math.isnan(dice) else dice
        self._state = ControlState(self.env, Dynamics(lr, val_loss, val_loss, dice, 0.0, 0.0))
        return self._act(lr)

    def step(
        self,
        train_loss: float,
        val_loss: float,
        dice: float,
        grad_norm: float | None = None,
        update_ratio: float | None = None,
    ) -> float:
        """Feed one epoch's numbers, let the policy act, set and return the LR for the next epoch (what each
        number may be: the module docstring)."""
        train_loss, val_loss, dice = _loss("train_loss", train_loss), _loss("val_loss", val_loss), _dice(dice)
        grad_norm = None if grad_norm is None else _number("grad_norm", grad_norm)
        update_ratio = None if update_ratio is None else _number("update_ratio", update_ratio)
        self._warn_if_lr_changed()
        weights = self._weights()
        if update_ratio is None:
            update_ratio = float(
                (weights - self._previous_weights).norm() / self._previous_weights.norm().clamp_min(1e-12)
            )
        measured = self._epoch_grad_norm()
        if grad_norm is None:
            grad_norm = measured
        lr = clip_lr(self.env, self.get_last_lr()[0])
        blew_up = not (
            math.isfinite(train_loss) and math.isfinite(val_loss) and bool(weights.isfinite().all())
        )
        if self._state is not None:
            loss_limit, val_loss_limit = self._state.loss_limits()
            blew_up = blew_up or train_loss > loss_limit or val_loss > val_loss_limit
        self.rolled_back = blew_up and self._before is not None
        if self.rolled_back:
            self._before.restore()
            self.rollbacks += 1
            # the network is the one before the epoch again: so are its validation numbers
            restored = self._state.now if self._state else Dynamics(lr, math.nan, math.nan, 0.0, 0.0, 0.0)
            now = undone(lr, restored)
        else:
            self._previous_weights = weights
            self._keep_state()
            if math.isnan(dice):  # undefined: the last finite Dice again; 0 where the env scores 0 (diverged)
                dice = self._state.now.dice if self._state is not None and not blew_up else 0.0
            now = Dynamics(lr, train_loss, val_loss, dice, grad_norm, update_ratio)
        self._snapshot_due = False  # the snapshot is this state: the next epoch starts from it
        if self._state is None:
            self._state = ControlState(self.env, now)
        self._state.advance(now, rolled_back=self.rolled_back)
        if self._state.step > self.env.steps and not self._warned_budget:
            self._warned_budget = True
            warnings.warn(
                f"RLScheduler stepped past its budget of {self.env.epochs} epochs: the policy only saw "
                "budget fractions up to 1 in training, and from here on sees 1 every step. Pass "
                "total_epochs=<your epoch count> so the budget matches your loop.",
                stacklevel=2,
            )
        return self._act(lr)

    def _act(self, lr: float) -> float:
        assert self._state is not None
        action, _ = self.policy.predict(self._state.observation(), deterministic=True)
        self.last_action = action
        new_lr = next_lr(self.env, lr, action, self._state.suggested)
        for group, ratio in zip(self.optimizer.param_groups, self._ratios):
            group["lr"] = new_lr * ratio
        self._lr_set, self._lr_changed = float(self.optimizer.param_groups[0]["lr"]), None
        return new_lr

    def _warn_if_lr_changed(self) -> None:
        """Once: something else set the LR since this scheduler did (seen at an optimizer step or now)."""
        self._note_lr_change()
        if self._lr_changed is None or self._warned_lr:
            return
        self._warned_lr = True
        was, now = self._lr_changed
        warnings.warn(
            f"the optimizer's LR changed from {was:.4g} to {now:.4g} since RLScheduler set it: "
            "RLScheduler reads the first group's LR as the one the epoch trained at, so let it "
            "alone set the LR (no torch.optim.lr_scheduler stepping alongside, no LR set by hand)",
            stacklevel=3,
        )

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _undoable(self) -> dict[str, torch.Tensor]:
        """What an undone epoch puts back besides the optimizer state: parameters, and the model's buffers."""
        buffers = self.model.named_buffers() if self.model is not None else ()
        return {
            **{f"param.{i}": p for i, p in enumerate(self._params())},
            **{f"buffer.{name}": b for name, b in buffers},
        }

    def _keep_state(self) -> None:
        """What a blown-up epoch is undone to, in each tensor's own dtype and device (rollback policies only:
        it costs a copy of the parameters and of the optimizer state)."""
        if self.env.on_divergence != "rollback":
            return
        self._before = None  # the old copy goes before the new one is made: one copy held at a time
        self._before = RestorePoint(self._undoable(), self.optimizer)

    def _weights(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten().float().cpu() for p in self._params()])

    def state_dict(self) -> dict[str, Any]:
        state = self._state
        return {
            "ratios": self._ratios,
            "groups": len(self.optimizer.param_groups),
            "optimizer": type(self.optimizer).__name__,
            "step": state.step if state else 0,
            "now": vars(state.now) if state else None,
            "before": vars(state.before) if state else None,
            "history": list(state.history) if state else [],
            "suggested": state.suggested if state else None,
            "healthy_loss": state.healthy_loss if state else None,
            "healthy_val_loss": state.healthy_val_loss if state else None,
            "rollbacks": self.rollbacks,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from ``state_dict``; refused (changing nothing) when saved with another optimizer."""
        groups, name = len(self.optimizer.param_groups), type(self.optimizer).__name__
        saved_groups = saved.get("groups", len(saved["ratios"]))  # states saved before 'groups': their ratios
        differences = []
        if saved_groups != groups:
            differences.append(f"{saved_groups} param group(s), this optimizer has {groups}")
        if saved.get("optimizer", name) != name:
            differences.append(f"optimizer {saved['optimizer']}, this optimizer is {name}")
        if differences:
            raise ValueError(
                f"RLScheduler state saved with another optimizer ({'; '.join(differences)}): "
                "load the state saved with this optimizer, or start this scheduler afresh"
            )
        self._ratios = list(saved["ratios"])
        self._loaded()
        if saved["now"] is None:
            self._state = None
            return
        self._state = ControlState(self.env, Dynamics(**saved["before"]))
        self._state.now = Dynamics(**saved["now"])
        self._state.step, self._state.history = saved["step"], [tuple(h) for h in saved["history"]]
        self._state.suggested = saved.get("suggested")
        for key in ("healthy_loss", "healthy_val_loss"):
            if saved.get(key) is not None:
                setattr(self._state, key, saved[key])
        self.rollbacks = saved.get("rollbacks", 0)


def _number(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r}: pass a number (a float, e.g. loss.item())")
    return float(value)


def _loss(name: str, value: Any) -> float:
    """A loss as the policy reads it: >= 0; NaN or inf is a blown-up epoch, not an error."""
    loss = _number(name, value)
    if math.isfinite(loss) and loss < 0:
        raise ValueError(
            f"{name}={loss!r} is negative: the policy reads ln(loss) and calls a loss above "
            "loss_spike x the last healthy one a blow-up, so pass a loss >= 0 that falls as the "
            "model improves (e.g. 1 - accuracy, not -accuracy)"
        )
    return loss


def _dice(value: Any) -> float:
    """A validation score in [0, 1]; NaN (undefined) is kept for ``step`` to replace."""
    dice = _number("dice", value)
    if not math.isnan(dice) and not 0.0 <= dice <= 1.0:
        raise ValueError(
            f"dice={dice!r} is outside [0, 1]: pass a fraction (a percentage 85 -> 0.85), or "
            "NaN where the score is undefined"
        )
    return dice
