"""The segmentation Trainer: one UNet, one head, one optimizer, in-memory data, on CPU or CUDA.

It knows nothing of RL or schedules: every controller (the env's actions, a fixed schedule, a PBT member) runs
training as ``train_slice(lr, epochs)`` and reads back a ``SliceResult``. A non-finite loss or gradient is an
*outcome* (``diverged=True``), never an exception, and ``counted_dice`` is the one rule for what such a run
scores; with ``train_slice(..., undo_divergence=True)`` a slice that blew up is undone (a ``RestorePoint``).

On a GPU the host waits for the device once per epoch and once per validation, not once per batch: losses,
gradient norms and the finiteness flag are accumulated as device tensors and read back together. It leaves
the process's global torch RNG alone (its init is seeded locally), so an agent sampling actions in the same
process does not see its stream depend on the instance being trained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rlsched.config import Config
from rlsched.seg import optimizers
from rlsched.seg.dataset import SegmentationData
from rlsched.seg.heads import make_head
from rlsched.seg.metrics import SegmentationMetrics
from rlsched.seg.restore_point import RestorePoint
from rlsched.seg.unet import build_unet


@dataclass(frozen=True)
class EpochStats:
    """What one training epoch did, in numbers a controller may observe."""

    loss: float  # mean training loss over the batches that stepped before any non-finite one
    grad_norm: float  # mean global gradient norm (before clipping) over the same batches
    update_ratio: float  # ||w_end - w_start|| / ||w_start|| over the epoch
    seconds: float
    batches: int  # that stepped and were counted in loss and grad_norm
    diverged: bool
    lr: float


@dataclass(frozen=True)
class EvalStats:
    """Evaluation over a whole split (metrics accumulated, not averaged over batches)."""

    loss: float
    dice: list[float]  # per foreground class; NaN where the class is absent in prediction and target
    dice_mean: float
    iou: list[float]
    iou_mean: float
    seconds: float

    def record(self, lr: float, epoch: int) -> dict[str, Any]:
        """A validation without training before it (a run's start), in the keys of ``SliceResult.record``."""
        return {
            "lr": lr,
            "epoch": epoch,
            "val_loss": self.loss,
            "dice_mean": self.dice_mean,
            "dice": self.dice,
            "diverged": False,
            "rolled_back": False,
        }


def counted_dice(record: Mapping[str, Any]) -> float:
    """The Dice a record scores: 0 once the run diverged, and 0 where Dice is undefined (NaN: nothing to find
    and nothing found), so a blown-up run never outscores one that trained and every mean stays finite."""
    dice = record["dice_mean"]
    return 0.0 if record.get("diverged") or not math.isfinite(dice) else dice


@dataclass(frozen=True)
class SliceResult:
    """A slice of training (one or more epochs at one LR) and the validation after it."""

    epochs: list[EpochStats]
    # None when the slice diverged: a dead run is not validated; after an undone blow-up, the restored network's
    evaluation: EvalStats | None
    epoch: int  # epochs spent after the slice (an undone slice's included)
    rolled_back: bool = False  # the slice blew up and was undone (train_slice's undo_divergence)

    @property
    def diverged(self) -> bool:
        return self.evaluation is None

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.epochs) + (self.evaluation.seconds if self.evaluation else 0.0)

    @property
    def counted_dice(self) -> float:
        """The Dice this slice scores (``counted_dice`` of its record)."""
        return counted_dice(self.record())

    def record(self) -> dict[str, Any]:
        """Flat numbers for metrics files and env ``info`` (NaN where a diverged run has no value)."""
        last, ev = self.epochs[-1], self.evaluation
        nan = math.nan
        return {
            "epoch": self.epoch,
            "lr": last.lr,
            "train_loss": last.loss,
            "grad_norm": sum(e.grad_norm for e in self.epochs) / len(self.epochs),
            "update_ratio": sum(e.update_ratio for e in self.epochs) / len(self.epochs),
            "val_loss": ev.loss if ev else nan,
            "dice_mean": ev.dice_mean if ev else nan,
            "dice": ev.dice if ev else [],
            "iou_mean": ev.iou_mean if ev else nan,
            "iou": ev.iou if ev else [],
            "diverged": self.diverged,
            "rolled_back": self.rolled_back,
            "seconds": self.seconds,
        }


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present so the same preset runs on a laptop and a GPU box."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f'[optim] device={name!r} but CUDA is not available: use device = "auto" or "cpu"')
    return device


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast dtype (None: full precision): bf16 where the GPU has it, else fp16, which needs loss
    scaling (``torch.amp.GradScaler``, which reads back its overflow flag every step) because its 5-bit
    exponent underflows small gradients to zero."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def build_optimizer(config: Config, params: Any, lr: float, total_steps: int = 0) -> torch.optim.Optimizer:
    """The configured optimizer; ``total_steps`` (optimizer steps of the whole run) sets Schedule-Free's warmup."""
    opt = config.optim
    if opt.name in optimizers.OPTIMIZERS:
        batch_norm = config.model.norm == "batch"
        request = optimizers.Request(lr, opt.momentum, opt.weight_decay, total_steps, batch_norm)
        return optimizers.build(opt.name, params, request)
    if opt.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=opt.momentum,
            nesterov=opt.nesterov and opt.momentum > 0,
            weight_decay=opt.weight_decay,
        )
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=opt.weight_decay)


def _flat_params(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in params])


class Trainer:
    """Trains a UNet on a ``SegmentationData`` with the LR its caller sets.

    ``seed`` fixes the initial weights and the batch order/augmentation stream, so two trainers built with the
    same (config, data, seed, lr) train identically on CPU.
    """

    def __init__(self, config: Config, data: SegmentationData, seed: int, lr: float | None = None) -> None:
        self.config = config
        self.device = resolve_device(config.optim.device)
        on_cuda = self.device.type == "cuda"
        self.amp_dtype = autocast_dtype(self.device, config.optim.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.memory_format = (
            torch.channels_last if (config.optim.channels_last and on_cuda) else torch.contiguous_format
        )

        in_channels = data.train_images.shape[1]
        with torch.random.fork_rng(devices=[]):  # built on the CPU: seed the CPU generator, restore it after
            torch.default_generator.manual_seed(seed)
            model = build_unet(config.model, in_channels, config.data.out_channels)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.head = make_head(config.data, config.loss)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        steps = config.env.epochs * math.ceil(len(data.train_images) / config.optim.batch_size)
        self.optimizer = build_optimizer(
            config, self.params, lr if lr is not None else config.optim.lr, steps
        )
        # Schedule-Free: kept in eval mode (weights = the averaged point) outside train_epoch, so validation,
        # state_dict and any caller always see the weights to evaluate
        self._has_modes = optimizers.has_modes(self.optimizer)
        self.generator = torch.Generator().manual_seed(seed + 1)

        self.head.validate_target(data.train_masks[:1])
        self.train_images = data.train_images.to(self.device)
        self.train_masks = data.train_masks.to(self.device)
        self.val_images = data.val_images.to(self.device)
        self.val_masks = data.val_masks.to(self.device)
        self.test_images = data.test_images.to(self.device)  # read by test_dice alone, once a run is over
        self.test_masks = data.test_masks.to(self.device)
        self.metrics = SegmentationMetrics(data.task, data.classes, data.ignore_index)
        self.epoch = 0
        self._diverged = False  # the last epoch diverged: skip training until a state is loaded

    # ----------------------------------------------------------------------------------------------- LR
    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rate must be a positive finite number, got {lr!r}")
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ----------------------------------------------------------------------------------------------- train
    def _batch(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        idx: torch.Tensor,
        flips: tuple[bool, bool] = (False, False),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather a batch, mirrored left-right and/or up-down as ``flips`` says (decided on the host)."""
        x = images[idx]
        y = masks[idx]
        if flips[0]:
            x, y = x.flip(-1), y.flip(-1)
        if flips[1]:
            x, y = x.flip(-2), y.flip(-2)
        return x.contiguous(memory_format=self.memory_format), y

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None
        )

    def epoch_batches(self, generator: torch.Generator) -> tuple[list[torch.Tensor], list[list[bool]]]:
        """One epoch's batches (indices on the device) and their flips, drawn from ``generator``."""
        order = torch.randperm(len(self.train_images), generator=generator).to(self.device)
        batches = list(order.split(self.config.optim.batch_size))
        if self.config.optim.augment:
            return batches, (torch.rand(len(batches), 2, generator=generator) < 0.5).tolist()
        return batches, [[False, False]] * len(batches)

    @torch.no_grad()
    def _recalibrate_batchnorm(self) -> None:
        """Schedule-Free evaluates other weights than it trains: batch-norm statistics gathered during training
        belong to the training point, so recompute them at the evaluation point (schedulefree's README) with
        one pass over the training set in order (drawing nothing from the generator)."""
        norms = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the pass
        for idx in torch.arange(len(self.train_images), device=self.device).split(
            self.config.optim.batch_size
        ):
            with self._autocast():
                self.model(self._batch(self.train_images, self.train_masks, idx)[0])
        for m, momentum in zip(norms, saved):
            m.momentum = momentum

    @torch.enable_grad()  # callers may run under no_grad (e.g. an agent collecting a rollout in-process)
    def train_epoch(self) -> EpochStats:
        """One pass over the training set; ``diverged`` if any batch had a non-finite loss or gradient.

        Loss, gradient norm and finiteness stay on the device and are read back once, at the end: stopping at
        the first bad batch would cost a host sync per batch. So the batches after a bad one still run (on
        non-finite weights), the stats cover the batches before it, and a diverged trainer skips later epochs
        until a state is loaded (``load_state_dict``; ``train_slice(..., undo_divergence=True)`` does it).
        """
        start = time.perf_counter()
        if self._diverged:
            self.epoch += 1
            return EpochStats(math.nan, math.nan, math.nan, time.perf_counter() - start, 0, True, self.lr)
        self.model.train()
        w_start = _flat_params(self.params)
        if self._has_modes:
            self.optimizer.train()
        batches, flips = self.epoch_batches(self.generator)
        clip = self.config.optim.grad_clip if self.config.optim.grad_clip > 0 else math.inf
        scaling = self.scaler.is_enabled()
        loss_sum, grad_sum, counted = (torch.zeros((), device=self.device) for _ in range(3))
        finite = torch.ones((), dtype=torch.bool, device=self.device)  # no bad batch so far
        for idx, flip in zip(batches, flips):
            x, y = self._batch(self.train_images, self.train_masks, idx, tuple(flip))
            with self._autocast():
                logits = self.model(x)
            loss = self.head.loss(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss = loss.detach()
            stepped = grad_norm.isfinite()
            # with fp16 loss scaling a non-finite gradient is an overflow the scaler skipped, not a divergence
            finite &= loss.isfinite() if scaling else loss.isfinite() & stepped
            took = finite & stepped
            loss_sum += torch.where(took, loss, 0.0)
            grad_sum += torch.where(took, grad_norm, 0.0)
            counted += took
        if self._has_modes:
            self.optimizer.eval()
            self._recalibrate_batchnorm()
        w_end = _flat_params(self.params)
        ratio = (w_end - w_start).norm() / w_start.norm().clamp_min(1e-12)
        loss_total, grad_total, n, ok, update_ratio = torch.stack(
            [loss_sum, grad_sum, counted, finite.float(), ratio.float()]
        ).tolist()  # the one read-back
        self._diverged = not ok or not math.isfinite(update_ratio)
        self.epoch += 1
        return EpochStats(
            loss=loss_total / n if n else math.nan,
            grad_norm=grad_total / n if n else math.nan,
            update_ratio=update_ratio,
            seconds=time.perf_counter() - start,
            batches=int(n),
            diverged=self._diverged,
            lr=self.lr,
        )

    def train_slice(
        self,
        lr: float,
        epochs: int,
        undo_divergence: bool = False,
        loss_limit: float = math.inf,
        val_loss_limit: float = math.inf,
    ) -> SliceResult:
        """Set the LR to ``lr``, train ``epochs`` epochs, then validate; stop at the first diverged epoch.

        ``undo_divergence``: a slice that blows up is undone, so one LR that was too high costs its epochs, not
        the run; so is one whose mean training loss of an epoch exceeds ``loss_limit`` (a spike: finite, yet
        the run is thrown off), or whose validation loss exceeds ``val_loss_limit`` (the net was thrown off
        though its training loss looked sane). Weights and optimizer state from before the slice come back; the
        epochs stay counted as spent and the batch stream goes on (as a plain loop's data loader would:
        ``RLScheduler`` undoes an epoch the same way); the result is ``rolled_back`` with the restored network's
        validation. The copy taken before the slice doubles the memory of model and optimizer, hence off by
        default.
        """
        # the generator is not kept: the batch stream goes on past an undone slice
        before = RestorePoint(self._tensors(), self.optimizer, self.scaler) if undo_divergence else None
        self.set_lr(lr)
        done = []
        for _ in range(epochs):
            done.append(self.train_epoch())
            if done[-1].diverged:
                break
        spiked = undo_divergence and any(e.loss > loss_limit for e in done)
        evaluation = None if done[-1].diverged or spiked else self.evaluate()  # a spiked net is not worth one
        healthy = evaluation is not None and math.isfinite(evaluation.loss)
        if healthy and not (undo_divergence and evaluation.loss > val_loss_limit):
            return SliceResult(done, evaluation, self.epoch)
        if before is None:
            return SliceResult(done, None, self.epoch)
        before.restore()
        self._diverged = False
        return SliceResult(done, self.evaluate(), self.epoch, rolled_back=True)

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> EvalStats:
        """Loss and Dice/IoU over a whole split (read back once, at the end): ``"val"``, which every decision
        reads, or ``"test"``, which only ``test_dice`` reads."""
        if split not in ("val", "test"):
            raise ValueError(f"split={split!r}: evaluate 'val' or 'test'")
        images, masks = (
            (self.val_images, self.val_masks) if split == "val" else (self.test_images, self.test_masks)
        )
        self.model.eval()
        start = time.perf_counter()
        self.metrics.reset()
        loss_sum = torch.zeros((), device=self.device)
        for idx in torch.arange(len(images), device=self.device).split(self.config.optim.batch_size):
            x, y = self._batch(images, masks, idx)
            with self._autocast():
                logits = self.model(x)
            loss_sum += self.head.loss(logits, y) * len(idx)
            self.metrics.update(self.head.predict(logits), y)
        result = self.metrics.compute()  # waits for the device; the loss below is then ready
        return EvalStats(
            loss=loss_sum.item() / len(images),
            dice=list(result["dice"]),
            dice_mean=float(result["dice_mean"]),
            iou=list(result["iou"]),
            iou_mean=float(result["iou_mean"]),
            seconds=time.perf_counter() - start,
        )

    def test_dice(self, diverged: bool) -> float:
        """The test Dice a finished run reports, read once after its last step so no decision can see it; a
        run that ``diverged`` scores 0 (``counted_dice``) and its dead weights are not evaluated."""
        dice = math.nan if diverged else self.evaluate("test").dice_mean
        return counted_dice({"dice_mean": dice, "diverged": diverged})

    # ----------------------------------------------------------------------------------------------- state
    def _tensors(self) -> dict[str, torch.Tensor]:
        """The model's parameters and buffers by name, the live tensors (what a ``RestorePoint`` overwrites)."""
        return self.model.state_dict(keep_vars=True)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: weights, optimizer, loss scale, epoch and the trainer's
        own generator (training draws from nothing else). A ``RestorePoint``'s state plus the epoch: it is also
        the checkpoint format (PBT's, resuming), so it stays a plain dict that a fresh trainer can load."""
        point = RestorePoint(self._tensors(), self.optimizer, self.scaler, self.generator)
        return {**point.state, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a ``state_dict`` (also how a diverged trainer is revived)."""
        RestorePoint(self._tensors(), self.optimizer, self.scaler, self.generator, state).restore()
        self.epoch = int(state["epoch"])
        self._diverged = False
