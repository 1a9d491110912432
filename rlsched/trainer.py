"""The segmentation Trainer: one UNet, one head, one optimizer, in-memory data, on CPU or CUDA.

It knows nothing of RL or schedules: callers set the LR with ``set_lr`` between epochs and read back
``EpochStats`` / ``EvalStats``. A non-finite loss or gradient is an *outcome* (``diverged=True``), never an
exception; with ``keep_last_good=True`` the state before each epoch is kept so a caller can roll back.

It leaves the process's global torch RNG alone (its init is seeded locally), so an agent sampling actions in the
same process does not see its stream depend on the instance being trained.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from .config import Config
from .data import SegmentationData
from .heads import make_head
from .metrics import SegmentationMetrics
from .unet import build_unet


@dataclass(frozen=True)
class EpochStats:
    """What one training epoch did, in numbers a controller may observe."""

    loss: float  # mean training loss over the batches that ran
    grad_norm: float  # mean global gradient norm (before clipping)
    update_ratio: float  # ||w_end - w_start|| / ||w_start|| over the epoch
    seconds: float
    batches: int
    diverged: bool
    lr: float


@dataclass(frozen=True)
class EvalStats:
    """Validation over the whole validation set (metrics accumulated, not averaged over batches)."""

    loss: float
    dice: list[float]  # per foreground class; NaN where the class is absent in prediction and target
    dice_mean: float
    iou: list[float]
    iou_mean: float
    seconds: float


@dataclass(frozen=True)
class SliceResult:
    """A slice of training (one or more epochs at one LR) and the validation after it."""

    epochs: list[EpochStats]
    evaluation: EvalStats | None  # None when the slice diverged: a dead run is not validated
    epoch: int  # epochs completed after the slice

    @property
    def diverged(self) -> bool:
        return self.evaluation is None

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.epochs) + (self.evaluation.seconds if self.evaluation else 0.0)

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
            "seconds": self.seconds,
        }


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present so the same preset runs on a laptop and a GPU box."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"[optim] device={name!r} but CUDA is not available: use device = \"auto\" or \"cpu\"")
    return device


def build_optimizer(config: Config, params: Any, lr: float) -> torch.optim.Optimizer:
    opt = config.optim
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov and opt.momentum > 0,
                               weight_decay=opt.weight_decay)
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=opt.weight_decay)


def _flat_params(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in params])


class Trainer:
    """Trains a UNet on a ``SegmentationData`` with the LR its caller sets.

    ``seed`` fixes the initial weights and the batch order/augmentation stream, so two trainers built with the
    same (config, data, seed, lr) train identically on CPU. ``keep_last_good`` snapshots the whole state before
    every epoch for ``restore_last_good``; off by default because the copy doubles the memory of model and
    optimizer and nothing on the env's path rolls back (a diverged episode ends).
    """

    def __init__(self, config: Config, data: SegmentationData, seed: int, lr: float | None = None,
                 keep_last_good: bool = False) -> None:
        self.config = config
        self.device = resolve_device(config.optim.device)
        on_cuda = self.device.type == "cuda"
        self.amp = config.optim.amp and on_cuda
        self.memory_format = torch.channels_last if (config.optim.channels_last and on_cuda) else torch.contiguous_format

        in_channels = data.train_images.shape[1]
        with torch.random.fork_rng(devices=[]):  # built on the CPU: seed only the CPU generator, then restore it
            torch.default_generator.manual_seed(seed)
            model = build_unet(config.model, in_channels, config.data.out_channels)
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.head = make_head(config.data, config.loss)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(config, self.params, lr if lr is not None else config.optim.lr)
        self.generator = torch.Generator().manual_seed(seed + 1)

        self.head.validate_target(data.train_masks[:1])
        self.train_images = data.train_images.to(self.device)
        self.train_masks = data.train_masks.to(self.device)
        self.val_images = data.val_images.to(self.device)
        self.val_masks = data.val_masks.to(self.device)
        self.metrics = SegmentationMetrics(data.task, data.classes, data.ignore_index)
        self.epoch = 0
        self.keep_last_good = keep_last_good
        self._last_good: dict[str, Any] | None = None

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
    def _batch(self, images: torch.Tensor, masks: torch.Tensor, idx: torch.Tensor, augment: bool):
        x = images[idx]
        y = masks[idx]
        if augment:
            flips = torch.rand(2, generator=self.generator)
            if flips[0] < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if flips[1] < 0.5:
                x, y = x.flip(-2), y.flip(-2)
        return x.contiguous(memory_format=self.memory_format), y

    @torch.enable_grad()  # callers may run under no_grad (e.g. an agent collecting a rollout in-process)
    def train_epoch(self) -> EpochStats:
        """One pass over the training set; stops early (``diverged``) at the first non-finite loss or gradient."""
        if self.keep_last_good:
            self._last_good = self.state_dict()
        self.model.train()
        start = time.perf_counter()
        w_start = _flat_params(self.params)
        order = torch.randperm(len(self.train_images), generator=self.generator).to(self.device)
        clip = self.config.optim.grad_clip if self.config.optim.grad_clip > 0 else math.inf
        loss_sum, grad_sum, batches, diverged = 0.0, 0.0, 0, False
        for idx in order.split(self.config.optim.batch_size):
            x, y = self._batch(self.train_images, self.train_masks, idx, self.config.optim.augment)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.model(x)
            loss = self.head.loss(logits, y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                diverged = True
                break
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
            if not math.isfinite(grad_norm):
                diverged = True
                break
            self.optimizer.step()
            loss_sum += loss_value
            grad_sum += grad_norm
            batches += 1
        w_end = _flat_params(self.params)
        update_ratio = float((w_end - w_start).norm() / w_start.norm().clamp_min(1e-12))
        diverged = diverged or not math.isfinite(update_ratio)
        self.epoch += 1
        return EpochStats(
            loss=loss_sum / batches if batches else math.nan,
            grad_norm=grad_sum / batches if batches else math.nan,
            update_ratio=update_ratio,
            seconds=time.perf_counter() - start,
            batches=batches,
            diverged=diverged,
            lr=self.lr,
        )

    def train_slice(self, epochs: int) -> SliceResult:
        """Train ``epochs`` epochs at the current LR, then validate; stop at the first diverged epoch."""
        done = []
        for _ in range(epochs):
            done.append(self.train_epoch())
            if done[-1].diverged:
                return SliceResult(done, None, self.epoch)
        evaluation = self.evaluate()
        if not math.isfinite(evaluation.loss):
            return SliceResult(done, None, self.epoch)
        return SliceResult(done, evaluation, self.epoch)

    @torch.no_grad()
    def evaluate(self) -> EvalStats:
        """Loss and Dice/IoU over the whole validation set."""
        self.model.eval()
        start = time.perf_counter()
        self.metrics.reset()
        loss_sum, samples = 0.0, 0
        for idx in torch.arange(len(self.val_images), device=self.device).split(self.config.optim.batch_size):
            x, y = self._batch(self.val_images, self.val_masks, idx, augment=False)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.model(x)
            loss_sum += self.head.loss(logits, y).item() * len(idx)
            samples += len(idx)
            self.metrics.update(self.head.predict(logits), y)
        result = self.metrics.compute()
        return EvalStats(
            loss=loss_sum / samples,
            dice=list(result["dice"]),
            dice_mean=float(result["dice_mean"]),
            iou=list(result["iou"]),
            iou_mean=float(result["iou_mean"]),
            seconds=time.perf_counter() - start,
        )

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: weights, optimizer, epoch and the trainer's own generator
        (training draws from nothing else)."""
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"])

    def restore_last_good(self) -> None:
        """Roll back to the state before the last ``train_epoch`` (use after ``diverged``); needs
        ``keep_last_good=True``."""
        if not self.keep_last_good:
            raise RuntimeError("restore_last_good needs a Trainer built with keep_last_good=True")
        if self._last_good is None:
            raise RuntimeError("no epoch has run yet, so there is no earlier state to restore")
        self.load_state_dict(self._last_good)
