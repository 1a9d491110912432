"""``RestorePoint``: training state kept so that a blow-up can be undone exactly, in place.

The one way rlsched puts training back: the trainer undoing a slice (``Trainer.train_slice``) and loading a
checkpoint (``Trainer.load_state_dict``), and ``RLScheduler`` undoing an epoch of someone else's loop (the
Lightning callback through it). It copies named tensors (parameters and buffers, e.g. BatchNorm statistics,
each in its own dtype and device), the optimizer's state and, when given, a ``GradScaler``'s loss scale and a
``torch.Generator``'s state; ``restore`` writes them back into the same objects: tensors are overwritten in
place, so a training loop, a model or an optimizer holding them keeps working on the restored values.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch


class RestorePoint:
    """The state of ``tensors``, ``optimizer`` and optionally ``scaler`` and ``generator``, taken now or (a
    checkpoint's) passed as ``state``; ``restore`` puts it back and can do so any number of times.

    ``state`` holds ``"model"`` (name -> tensor), ``"optimizer"``, ``"scaler"`` (``{}`` without loss scaling) and
    ``"generator"`` (``None`` without a generator): plain tensors and numbers, so ``torch.save`` can store it.
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None = None,
        generator: torch.Generator | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.tensors, self.optimizer, self.scaler, self.generator = (
            dict(tensors),
            optimizer,
            scaler,
            generator,
        )
        self.state = self._capture() if state is None else self._fitting(state)

    def _capture(self) -> dict[str, Any]:
        return {
            "model": {name: t.detach().clone() for name, t in self.tensors.items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},  # {} when scaling is off
            "generator": self.generator.get_state() if self.generator is not None else None,
        }

    def _fitting(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """A given state, refused (changing nothing) unless it holds exactly these tensors, shape for shape."""
        saved = state["model"]
        problems = [f"missing {name}" for name in self.tensors if name not in saved]
        problems += [f"unexpected {name}" for name in saved if name not in self.tensors]
        problems += [
            f"{name} is {tuple(saved[name].shape)}, here {tuple(t.shape)}"
            for name, t in self.tensors.items()
            if name in saved and saved[name].shape != t.shape
        ]
        if problems:
            raise ValueError(
                f"the saved state does not fit this model ({'; '.join(problems[:3])}"
                f"{'; ...' if len(problems) > 3 else ''}): load a state saved with the same model config"
            )
        return dict(state)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the kept state back (the optimizer gets a copy, so the point stays intact for another restore)."""
        for name, tensor in self.tensors.items():
            tensor.copy_(self.state["model"][name])
        self.optimizer.load_state_dict(copy.deepcopy(self.state["optimizer"]))
        if self.scaler is not None and self.state.get("scaler"):
            self.scaler.load_state_dict(self.state["scaler"])
        if self.generator is not None:
            self.generator.set_state(self.state["generator"])
