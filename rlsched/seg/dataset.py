"""What every data source produces: ``SegmentationData`` (ready-to-train tensors), ``DatasetError`` (files or
settings that cannot form a dataset) and ``pack_dataset`` (the one normalisation rule all sources share).

Its own module so that the sources (``synthetic``, ``folder``, ``brain``), the dispatcher ``data`` and the
``Trainer`` share the type without importing one another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from rlsched.config import DataConfig


class DatasetError(ValueError):
    """The files on disk (or a [data] setting) cannot form a dataset; the message says what and how to fix."""


# Peak memory while a source builds its dataset, per byte of the finished tensors (measured with ru_maxrss:
# synthetic 4.4 gray, 3.5 RGB; folder 5.5 gray, 4.8 RGB; brain ~8 at 256 px, plus the template).
_BUILD_FACTOR = {"synthetic": 4.5, "folder": 6.0, "brain": 8.0}
_GIB = 2**30


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get (Linux MemAvailable, else physical memory); None if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def check_memory(cfg: DataConfig, n_images: int, fewer: str) -> None:
    """Refuse a dataset whose build would not fit in memory, before any of it is allocated: a too large
    ``image_size`` otherwise ends in a traceback of a numpy allocation (or the OOM killer).

    ``fewer`` says how to build fewer images, for the fix.
    """
    label_planes = cfg.classes if cfg.task == "multilabel" else 1
    pixels = n_images * cfg.image_size**2
    needed = _BUILD_FACTOR[cfg.source] * pixels * (4 * cfg.channels + label_planes)
    free = available_memory()
    if free is not None and needed > free:
        raise DatasetError(
            f"[data] image_size={cfg.image_size} with {n_images} images needs about "
            f"{_bytes_text(needed)} of memory to build the dataset and {_bytes_text(free)} is "
            f"available: lower data.image_size or {fewer}"
        )


def _bytes_text(size: float) -> str:
    """A memory size in GiB, or in MiB below one GiB."""
    return f"{size / _GIB:.1f} GiB" if size >= _GIB else f"{size / 2**20:.1f} MiB"


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


def pack_dataset(
    cfg: DataConfig, images: np.ndarray, masks: np.ndarray, n_train: int, n_val: int
) -> SegmentationData:
    """Wrap raw images (N, C, H, W) and uint8 masks as tensors: the first ``n_train`` form the train split, the
    next ``n_val`` the validation split and the rest the test split.

    Every source ends here so all share one rule: per-channel zero mean / unit variance computed on the train
    split only (neither held-out split may leak into training) and applied to all three.
    """
    train, val, test = images[:n_train], images[n_train : n_train + n_val], images[n_train + n_val :]
    mean = train.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
    std = np.maximum(train.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64), 1e-6)

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))

    return SegmentationData(
        train_images=tensor(((train - mean) / std).astype(np.float32)),
        train_masks=tensor(masks[:n_train]),
        val_images=tensor(((val - mean) / std).astype(np.float32)),
        val_masks=tensor(masks[n_train : n_train + n_val]),
        test_images=tensor(((test - mean) / std).astype(np.float32)),
        test_masks=tensor(masks[n_train + n_val :]),
        task=cfg.task,
        classes=cfg.classes,
        ignore_index=cfg.ignore_index,
    )


def share_text(share: float) -> str:
    """A share as a percentage with one decimal; a share too small for that reads "<0.1%", not "0.0%"."""
    return f"{share:.1%}" if share == 0 or share >= 0.0005 else "<0.1%"


def summary(cfg: DataConfig, data: SegmentationData) -> str:
    """One line that says what a run trains on: the source, image count and size, the splits, and the share
    of pixels per class and ignored, so that a dataset that is mostly "ignore" or one class shows at once."""
    masks = [data.train_masks, data.val_masks, data.test_masks]
    n = [len(m) for m in masks]
    size = tuple(data.train_images.shape[-2:])
    source = f"folder {cfg.root}" if cfg.source == "folder" else cfg.source
    if data.task == "multilabel":  # (N, K, H, W): a pixel is ignored when all K planes say so
        total = sum(m[:, 0].numel() for m in masks)
        ignored = sum(int((m == data.ignore_index).all(dim=1).sum()) for m in masks)
        shares = [
            (f"label {k + 1}", sum(int((m[:, k] == 1).sum()) for m in masks) / total)
            for k in range(data.classes)
        ]
    else:
        total = sum(m.numel() for m in masks)
        counts = sum(torch.bincount(m.flatten().long(), minlength=256) for m in masks)
        ignored = int(counts[data.ignore_index])
        names = ["background"] + (
            ["foreground"] if data.task == "binary" else [f"class {k}" for k in range(1, data.classes + 1)]
        )
        shares = [(name, int(counts[k]) / total) for k, name in enumerate(names)]
    classes = ", ".join(f"{name} {share_text(share)}" for name, share in shares[:9])
    more = f" (+{len(shares) - 9} more)" if len(shares) > 9 else ""
    return (
        f"data: {source}, {data.task}: {sum(n)} images of {size[0]}x{size[1]}x{data.train_images.shape[1]} "
        f"({n[0]} train, {n[1]} validation, {n[2]} test); pixels: {classes}{more}, ignored "
        f"{share_text(ignored / total)}"
    )
