"""Segmentation datasets as ready-to-train tensors, built by the source ``[data] source`` names: procedural
synthetic tasks (``rlsched.synthetic``), image/mask folders (``rlsched.folder``) or brain MRI slices
(``rlsched.brain``, an optional extra, imported only when asked for).

Everything is loaded into memory once (the datasets are small), so an RL episode -- a short UNet training
run -- never waits on I/O. ``make_dataset`` is a pure function of ``(cfg, seed)``: the same inputs give
bit-identical tensors, which is what makes an LR-schedule "instance" reproducible.
"""

from __future__ import annotations

from .config import DataConfig
from .dataset import DatasetError, SegmentationData
from .folder import make_folder_dataset
from .synthetic import make_synthetic_dataset


def make_dataset(cfg: DataConfig, seed: int) -> SegmentationData:
    """Build the dataset ``cfg.source`` names; deterministic in ``(cfg, seed)``.

    ``seed`` draws the synthetic images. Folder datasets ignore it: their split is fixed by ``cfg.split_seed``
    so that every training instance sees the same files.
    """
    labels = cfg.classes if cfg.task == "multiclass" else 1
    if cfg.ignore_index <= labels:
        raise DatasetError(f"[data] ignore_index={cfg.ignore_index} collides with the labels 0..{labels} of "
                           f"task={cfg.task!r}: set ignore_index above {labels}, e.g. 255")
    if cfg.source == "synthetic":
        return make_synthetic_dataset(cfg, seed)
    if cfg.source == "folder":
        return make_folder_dataset(cfg)
    from .brain import make_brain_dataset  # lazy: it needs the optional nilearn/nibabel extra

    return make_brain_dataset(cfg, seed)


def check_dataset(cfg: DataConfig) -> None:
    """Build the dataset once and drop it, so that a command stops on bad files or settings with a one-line
    error before it creates a run directory (its env workers build their own copies later)."""
    make_dataset(cfg, seed=0)

