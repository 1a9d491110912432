"""What every data source produces: ``SegmentationData`` (ready-to-train tensors), ``DatasetError`` (files or
settings that cannot form a dataset) and ``pack_dataset`` (the one normalisation rule all sources share).

Its own module so that the sources (``synthetic``, ``folder``, ``brain``), the dispatcher ``data`` and the
``Trainer`` share the type without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import DataConfig


class DatasetError(ValueError):
    """The files on disk (or a [data] setting) cannot form a dataset; the message says what and how to fix."""


@dataclass(frozen=True)
class SegmentationData:
    """Train, validation and test splits of one segmentation task, disjoint and of one distribution.

    Validation is what every decision reads (the controller's observation and reward, base-LR tuning,
    reduce-on-plateau, PBT's selection); test is read once after a run's last step, for the reported score, so
    that score is not flattered by the selection (``Trainer.test_dice``).

    Images are float32 ``(N, C, H, W)``, normalised with train-split statistics. Masks are uint8: ``(N, H, W)``
    class indices (0 = background) for binary/multiclass, ``(N, K, H, W)`` 0/1 labels for multilabel. A pixel
    equal to ``ignore_index`` (in all K channels for multilabel) carries no label.
    """

    train_images: torch.Tensor
    train_masks: torch.Tensor
    val_images: torch.Tensor
    val_masks: torch.Tensor
    test_images: torch.Tensor
    test_masks: torch.Tensor
    task: str  # "binary" | "multiclass" | "multilabel"
    classes: int  # foreground classes K (binary: 1)
    ignore_index: int


def pack_dataset(cfg: DataConfig, images: np.ndarray, masks: np.ndarray, n_train: int,
                 n_val: int) -> SegmentationData:
    """Wrap raw images (N, C, H, W) and uint8 masks as tensors: the first ``n_train`` form the train split, the
    next ``n_val`` the validation split and the rest the test split.

    Every source ends here so all share one rule: per-channel zero mean / unit variance computed on the train
    split only (neither held-out split may leak into training) and applied to all three.
    """
    train, val, test = images[:n_train], images[n_train:n_train + n_val], images[n_train + n_val:]
    mean = train.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
    std = np.maximum(train.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64), 1e-6)

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))

    return SegmentationData(
        train_images=tensor(((train - mean) / std).astype(np.float32)),
        train_masks=tensor(masks[:n_train]),
        val_images=tensor(((val - mean) / std).astype(np.float32)),
        val_masks=tensor(masks[n_train:n_train + n_val]),
        test_images=tensor(((test - mean) / std).astype(np.float32)),
        test_masks=tensor(masks[n_train + n_val:]),
        task=cfg.task, classes=cfg.classes, ignore_index=cfg.ignore_index,
    )
