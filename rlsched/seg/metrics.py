"""Dataset-level Dice and IoU from integer TP/FP/FN counts."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlsched.config import TASKS


class SegmentationMetrics:
    """Dice and IoU per foreground class over everything passed to ``update`` since the last ``reset``.

    Integer TP/FP/FN counts are summed over all updates before any ratio is taken, so the scores are those of the
    whole dataset; a mean of per-batch scores would depend on how the data was batched. Pixels whose target is
    ``ignore_index`` are left out. Foreground classes: binary -> class 1; multiclass -> classes 1..K (background 0
    is excluded); multilabel -> each of the K channels.

    Dice = 2TP / (2TP + FP + FN) and IoU = TP / (TP + FP + FN). A class absent from both prediction and target
    over the whole set has no defined score, so its Dice and IoU are NaN and it is left out of ``dice_mean`` and
    ``iou_mean``; if every class is NaN, the means are NaN too. Averaging only the non-NaN scores follows MONAI's
    DiceMetric. Unlike MONAI's ``ignore_empty`` (NaN whenever the target is empty), a class that is predicted but
    absent from the target scores 0 here, because those pixels are real false positives.

    Counting is done with tensor sums on the prediction's device (no sync per update); ``compute`` syncs once.
    """

    def __init__(self, task: str, classes: int, ignore_index: int = 255) -> None:
        if task not in TASKS:
            raise ValueError(f"task={task!r}: use one of {TASKS}")
        if classes < 1 or (task == "binary" and classes != 1):
            raise ValueError(f"classes={classes}: needs >= 1 foreground class (exactly 1 for task='binary')")
        max_value = classes if task == "multiclass" else 1
        if ignore_index <= max_value:
            raise ValueError(
                f"ignore_index={ignore_index} collides with the target values 0..{max_value}; "
                "use a larger value, e.g. 255"
            )
        self.task = task
        self.classes = classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget all counts (start of a new evaluation pass)."""
        self.counts = torch.zeros(3, self.classes, dtype=torch.int64)  # rows: TP, FP, FN per foreground class

    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add one batch: ``prediction`` from ``head.predict``, ``target`` the uint8 mask batch."""
        self._check_shapes(prediction, target)
        if self.task == "multilabel":
            pred, truth = prediction == 1, target == 1
            valid = target != self.ignore_index
        else:  # class-index maps: one (N, K, H, W) indicator per foreground class
            foreground = torch.arange(1, self.classes + 1, device=target.device).view(1, -1, 1, 1)
            pred, truth = prediction.unsqueeze(1) == foreground, target.unsqueeze(1) == foreground
            valid = (target != self.ignore_index).unsqueeze(1)
        pred = pred & valid  # truth is already False there: ignore_index is above every class value
        dims = (0, 2, 3)
        batch = torch.stack([(pred & truth).sum(dims), (pred & ~truth).sum(dims), (~pred & truth).sum(dims)])
        self.counts = self.counts.to(batch.device) + batch

    def compute(self) -> dict[str, list[float] | float]:
        """``dice`` and ``iou`` (lists, one float per foreground class) and their NaN-skipping means."""
        tp, fp, fn = self.counts.tolist()
        dice = [2 * t / (2 * t + p + n) if t + p + n else math.nan for t, p, n in zip(tp, fp, fn)]
        iou = [t / (t + p + n) if t + p + n else math.nan for t, p, n in zip(tp, fp, fn)]
        return {"dice": dice, "iou": iou, "dice_mean": _nanmean(dice), "iou_mean": _nanmean(iou)}

    def _check_shapes(self, prediction: Tensor, target: Tensor) -> None:
        expected = "(N, K, H, W)" if self.task == "multilabel" else "(N, H, W)"
        ndim = 4 if self.task == "multilabel" else 3
        if prediction.shape != target.shape or target.ndim != ndim:
            raise ValueError(
                f"{self.task} metrics need prediction and target of the same shape {expected}; got "
                f"{tuple(prediction.shape)} and {tuple(target.shape)}"
            )
        if self.task == "multilabel" and target.shape[1] != self.classes:
            raise ValueError(f"multilabel metrics for classes={self.classes} got {target.shape[1]} channels")


def _nanmean(values: list[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return math.fsum(kept) / len(kept) if kept else math.nan


__all__ = ["SegmentationMetrics"]
