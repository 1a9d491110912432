"""``RLSchedulerCallback``: a learned LR controller (the shipped one by default) steers a Lightning run.

    callback = RLSchedulerCallback(train_loss="train_loss", val_loss="val_loss", score="val_dice")
    lightning.Trainer(max_epochs=12, callbacks=[callback]).fit(module, train_loader, val_loader)

A callback rather than a Lightning LR scheduler because the controller reads validation numbers and what
the epoch did to the weights, and undoes an epoch that blew up (parameters, buffers and optimizer state).
What it asks of the run, each refused with a one-line error when missing:

- ``configure_optimizers`` returns one optimizer and no LR scheduler: the controller owns the LR. Param
  groups keep their LR ratios to the first group, whose LR the controller sets.
- the training loss is logged with ``on_epoch=True`` (the controller reads the epoch's mean, as in
  training); the validation loss and a score in [0, 1] (Dice) in ``validation_step`` or
  ``on_validation_epoch_end``.
- validation at every epoch's end (Lightning's defaults ``val_check_interval=1.0``,
  ``check_val_every_n_epoch=1``): the controller decides once per epoch from that epoch's validation, as
  it was trained to. With other intervals ``ModelCheckpoint`` would also save on validation end, before
  the controller's step, so a resumed run would not continue the controller's state.

When: one ``step`` per epoch in ``on_train_epoch_end``, after the module's validation and before
``ModelCheckpoint`` saves (Lightning runs checkpoint callbacks last), so a checkpoint holds the LR just set
and the controller's state (``state_dict``), and ``Trainer.fit(ckpt_path=...)`` continues the LR sequence
of an uninterrupted run. The first epoch runs at ``configure_optimizers``' LR. The gradient norm is
measured in ``on_before_optimizer_step``: once per optimizer step (per accumulated batch under
``accumulate_grad_batches``), after AMP unscaling and before clipping, as the env measures it;
RLScheduler's own ``optimizer.step`` hook runs before Lightning's closure computes the gradients, so it
would see the previous step's. Logged each epoch: ``rlsched/lr`` (the LR set for the next epoch, first
param group) and ``rlsched/rolled_back`` (1 when this epoch was undone). Under multi-process strategies
rank 0's numbers drive every rank, so all ranks set one LR.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.model_helpers import is_overridden
except ImportError as err:  # an optional extra
    raise ImportError(
        "rlsched.integrations.lightning needs Lightning: pip install 'rlsched[lightning]'"
    ) from err

from rlsched.scheduler import RLScheduler

# (optimizer, total_epochs, module) -> the scheduler to drive: a policy or env config of your own
SchedulerFactory = Callable[[torch.optim.Optimizer, int, torch.nn.Module], RLScheduler]
LR_METRIC, ROLLED_BACK_METRIC = "rlsched/lr", "rlsched/rolled_back"


class RLSchedulerCallback(pl.Callback):
    """Sets the LR once per epoch from a trained controller fed the logged ``train_loss``, ``val_loss``
    and ``score`` (names as passed to ``self.log``).

    ``controller``: ``"pretrained"`` (the shipped one), a policy path (``runs/<id>/model.zip``) or a
    ``SchedulerFactory``. ``total_epochs``: the epoch budget the controller's budget fraction counts
    against; default ``Trainer(max_epochs=...)``. A blown-up epoch is undone (controllers trained with
    ``env.on_divergence = "rollback"``, the shipped one too): the module's parameters and buffers and the
    optimizer state come back, the epoch stays spent.
    """

    def __init__(
        self,
        train_loss: str = "train_loss",
        val_loss: str = "val_loss",
        score: str = "val_dice",
        controller: str | Path | SchedulerFactory = "pretrained",
        total_epochs: int | None = None,
    ) -> None:
        self.names = {"train_loss": train_loss, "val_loss": val_loss, "dice": score}
        self.controller, self.total_epochs = controller, total_epochs
        self.scheduler: RLScheduler | None = None
        self._saved: dict[str, Any] | None = None  # a checkpoint's state, applied once the scheduler exists
        self._reset()

    def _reset(self) -> None:
        self._validated = False
        self._grad_norm_sum: torch.Tensor | None = None  # on the parameters' device: no host sync per step
        self._grad_steps = 0
        self._train_loss_per_step: bool | None = None  # the training loss shows up per batch (on_step)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse what the controller cannot steer before any epoch is spent."""
        self.scheduler = None
        self._reset()
        if len(trainer.optimizers) != 1:
            raise ValueError(
                f"RLSchedulerCallback steers one optimizer, but configure_optimizers gave "
                f"{len(trainer.optimizers)}: return one (param groups are fine: they keep "
                "their LR ratios)"
            )
        if trainer.lr_scheduler_configs:
            kinds = ", ".join(type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs)
            raise ValueError(
                f"configure_optimizers returns an LR scheduler ({kinds}) for the optimizer "
                "RLSchedulerCallback steers: return only the optimizer, the controller sets "
                "the LR"
            )
        interval = trainer.val_check_interval
        if (
            getattr(trainer, "_val_check_time_interval", None) is not None
            or not isinstance(interval, float)
            or interval != 1.0
            or trainer.check_val_every_n_epoch != 1
        ):
            raise ValueError(
                f"RLSchedulerCallback decides once per epoch from that epoch's validation, but "
                f"val_check_interval={interval!r}, check_val_every_n_epoch="
                f"{trainer.check_val_every_n_epoch!r}: use Lightning's defaults (1.0 and 1)"
            )
        if trainer.limit_val_batches == 0 or not is_overridden("validation_step", pl_module):
            raise ValueError(
                "RLSchedulerCallback reads validation numbers, but this run never validates: "
                "define validation_step, pass val_dataloaders and keep limit_val_batches > 0"
            )
        if self.total_epochs is None and not (trainer.max_epochs and trainer.max_epochs > 0):
            raise ValueError(
                f"RLSchedulerCallback needs the epoch budget, but max_epochs="
                f"{trainer.max_epochs}: pass Trainer(max_epochs=N) or "
                "RLSchedulerCallback(total_epochs=N)"
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Built here, after Lightning restored a checkpoint's weights and optimizer state: the update
        ratio and what a blow-up is undone to then start from the restored run."""
        optimizer, total = trainer.optimizers[0], self.total_epochs or trainer.max_epochs
        if callable(self.controller):
            self.scheduler = self.controller(optimizer, total, pl_module)
        elif str(self.controller) == "pretrained":
            self.scheduler = RLScheduler.pretrained(optimizer, total_epochs=total, model=pl_module)
        else:
            self.scheduler = RLScheduler.load(self.controller, optimizer, total_epochs=total, model=pl_module)
        if self._saved is not None:
            self.scheduler.load_state_dict(self._saved)
            self._saved = None

    @torch.no_grad()
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
            )
            self._grad_norm_sum = norm if self._grad_norm_sum is None else self._grad_norm_sum + norm
            self._grad_steps += 1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._train_loss_per_step is None:  # a metric logged on_epoch only appears at epoch end
            self._train_loss_per_step = self.names["train_loss"] in trainer.callback_metrics

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.scheduler is not None
        if not self._validated:
            raise ValueError(
                f"RLSchedulerCallback: epoch {trainer.current_epoch} ended without validation "
                "(no validation batches?): the controller needs each epoch's validation"
            )
        self._validated = False
        grad_norm = float(self._grad_norm_sum) / self._grad_steps if self._grad_steps else 0.0
        self._grad_norm_sum, self._grad_steps = None, 0
        numbers = trainer.strategy.broadcast({**self._metrics(trainer), "grad_norm": grad_norm}, src=0)
        lr = self.scheduler.step(**numbers)
        pl_module.log(LR_METRIC, lr, on_step=False, on_epoch=True)
        pl_module.log(ROLLED_BACK_METRIC, float(self.scheduler.rolled_back), on_step=False, on_epoch=True)

    def _metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        """This epoch's logged numbers under the controller's names; a missing one lists what is logged."""
        metrics = dict(trainer.callback_metrics)
        names = dict(self.names)
        if self._train_loss_per_step:
            names["train_loss"] = f"{names['train_loss']}_epoch"  # logged on_step and on_epoch
            if names["train_loss"] not in metrics:
                raise ValueError(
                    f"RLSchedulerCallback: {self.names['train_loss']!r} is logged per step "
                    "only; log it with on_epoch=True so the controller reads the epoch's mean"
                )
        missing = ", ".join(repr(name) for name in names.values() if name not in metrics)
        if missing:
            raise ValueError(
                f"RLSchedulerCallback: no logged metric {missing}; logged: "
                f"{', '.join(sorted(metrics)) or 'nothing'}: pass the names your self.log "
                "calls use"
            )
        return {key: float(metrics[name]) for key, name in names.items()}

    def state_dict(self) -> dict[str, Any]:
        state = self.scheduler.state_dict() if self.scheduler is not None else self._saved
        return {} if state is None else {"scheduler": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called before ``on_train_start``: kept until the scheduler is built there."""
        self._saved = state_dict.get("scheduler")
