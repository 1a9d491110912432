"""The LR range test (Smith 2017, "Cyclical learning rates"; fastai's ``lr_find``): train a few mini-batches
while the LR grows exponentially, watch the smoothed loss, and suggest a base LR from where it falls fastest.

The sweep trains a *copy* of the trainer's model, optimizer, loss scale and batch generator, so the trainer is
left exactly as it was: a run that sweeps first trains bit for bit like one that did not.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from rlsched.seg.optimizers import OPTIMIZERS as TUNING_FREE
from rlsched.seg.trainer import Trainer, build_optimizer

SWEEP_BATCHES = 100  # fastai's num_it


@dataclass(frozen=True)
class RangeTest:
    """A finished sweep: the LRs tried, the smoothed loss after each, and the suggested base LR."""

    lrs: list[float]
    losses: list[float]  # bias-corrected exponential moving average of the batch losses
    suggestion: float
    batches: int  # mini-batches trained, the one that stopped the sweep included: its cost
    batches_per_epoch: int
    seconds: float

    @property
    def epochs(self) -> float:
        """The sweep's cost in epochs of training, to count next to the epoch budget."""
        return self.batches / self.batches_per_epoch


def valley(losses: list[float]) -> int:
    """fastai's ``valley`` rule: find the longest decreasing subsequence of the loss curve (the widest valley)
    and return the index halfway down it; unlike the steepest slope, one noisy dip cannot pick the LR."""
    n = len(losses)
    run = [1] * n  # length of the longest decreasing subsequence ending at i
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
            if run[end] < run[i]:
                end = i
                start = end - run[end]
    third = (end - start) / 3  # fastai's start is one before the valley's first point; kept for fidelity
    return max(0, start + int(third) + int(third / 2))


def _batches(trainer: Trainer, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, list[bool]]]:
    """The trainer's batch stream (same order and flips), epoch after epoch."""
    while True:
        batches, flips = trainer.epoch_batches(generator)
        yield from zip(batches, flips)


def range_test(
    trainer: Trainer,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    batches: int = SWEEP_BATCHES,
    beta: float = 0.98,
    explode: float = 4.0,
) -> RangeTest:
    """Sweep the LR from ``start_lr`` to ``end_lr`` over at most ``batches`` mini-batches on a copy of
    ``trainer``; stop once the smoothed loss exceeds ``explode`` x its best or is not finite."""
    name = trainer.config.optim.name
    if name in TUNING_FREE:
        raise ValueError(
            f"optim.name={name!r} sets its own step size, so an LR range test means nothing: "
            "sweep with sgd, adam or adamw"
        )
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise ValueError(f"the sweep needs 0 < start_lr < end_lr, got {start_lr!r} .. {end_lr!r}")
    if batches < 2 or not 0 <= beta < 1 or explode <= 1:
        raise ValueError(
            f"need batches >= 2, 0 <= beta < 1 and explode > 1, got {batches}, {beta}, {explode}"
        )
    began = time.perf_counter()
    model = copy.deepcopy(trainer.model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainer.config, params, start_lr)
    optimizer.load_state_dict(copy.deepcopy(trainer.optimizer.state_dict()))
    scaler = torch.amp.GradScaler(trainer.device.type, enabled=trainer.scaler.is_enabled())
    if scaler.is_enabled():
        scaler.load_state_dict(trainer.scaler.state_dict())
    generator = torch.Generator()
    generator.set_state(trainer.generator.get_state())
    clip = trainer.config.optim.grad_clip if trainer.config.optim.grad_clip > 0 else math.inf

    lrs: list[float] = []
    losses: list[float] = []
    average, best, used = 0.0, math.inf, 0
    for i, (idx, flip) in enumerate(itertools.islice(_batches(trainer, generator), batches)):
        lr = start_lr * (end_lr / start_lr) ** (i / (batches - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = trainer._batch(trainer.train_images, trainer.train_masks, idx, (flip[0], flip[1]))
        with trainer._autocast():
            logits = model(x)
        loss = trainer.head.loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        used = i + 1
        value = loss.item()  # one read-back per batch: the sweep must see the loss to stop
        if not math.isfinite(value):
            break
        average = beta * average + (1 - beta) * value
        smoothed = average / (1 - beta ** (i + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > explode * best:
            break
    if not lrs:
        raise RuntimeError(
            f"the loss was not finite at the sweep's first LR ({start_lr:g}): the model or data "
            "is broken, not the LR"
        )
    # fastai ignores the first tenth of the planned sweep (the average is still settling) and the last five
    # points (the blow-up); a sweep that stopped too early to leave two points keeps them all
    keep = slice(batches // 10, len(lrs) - 5)
    kept_lrs, kept_losses = (lrs[keep], losses[keep]) if len(lrs[keep]) >= 2 else (lrs, losses)
    suggestion = kept_lrs[valley(kept_losses)]
    per_epoch = math.ceil(len(trainer.train_images) / trainer.config.optim.batch_size)
    return RangeTest(lrs, losses, suggestion, used, per_epoch, time.perf_counter() - began)
