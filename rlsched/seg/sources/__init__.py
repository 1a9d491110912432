"""Segmentation datasets as ready-to-train tensors, built by the source ``[data] source`` names: procedural
synthetic tasks (``sources.synthetic``), image/mask folders (``sources.folder``) or brain MRI slices
(``sources.brain``, an optional extra, imported only when asked for).

Everything is loaded into memory once (the datasets are small), so an RL episode -- a short UNet training
run -- never waits on I/O. ``make_dataset`` is a pure function of ``(cfg, seed)``: the same inputs give
bit-identical tensors, which is what makes an LR-schedule "instance" reproducible.
"""

from __future__ import annotations

import multiprocessing
import sys

from rlsched.config import DataConfig
from rlsched.seg.dataset import DatasetError, SegmentationData, check_memory, summary
from rlsched.seg.sources.folder import make_folder_dataset
from rlsched.seg.sources.synthetic import make_synthetic_dataset

_announced: set[str] = set()  # the data configs this process has printed a summary of


def make_dataset(cfg: DataConfig, seed: int) -> SegmentationData:
    """Build the dataset ``cfg.source`` names; deterministic in ``(cfg, seed)``.

    ``seed`` draws the synthetic images. Folder datasets ignore it: their split is fixed by ``cfg.split_seed``
    so that every training instance sees the same files.

    The first build of each data config prints ``dataset.summary`` to stderr (in the main process only: env
    workers rebuild the same datasets, and instances differ only by seed, so one line per config is enough).
    """
    labels = cfg.classes if cfg.task == "multiclass" else 1
    if cfg.ignore_index <= labels:
        raise DatasetError(
            f"[data] ignore_index={cfg.ignore_index} collides with the labels 0..{labels} of "
            f"task={cfg.task!r}: set ignore_index above {labels}, e.g. 255"
        )
    if cfg.source == "synthetic":
        check_memory(cfg, cfg.n_train + cfg.n_val + cfg.n_test, "data.n_train / n_val / n_test")
        data = make_synthetic_dataset(cfg, seed)
    elif cfg.source == "folder":
        data = make_folder_dataset(cfg)  # checks memory itself, once it has counted the files
    else:
        from rlsched.seg.sources.brain import (
            make_brain_dataset,
        )  # lazy: it needs the optional nilearn/nibabel extra

        check_memory(cfg, cfg.n_train + cfg.n_val + cfg.n_test, "data.n_train / n_val / n_test")
        data = make_brain_dataset(cfg, seed)
    if repr(cfg) not in _announced and multiprocessing.parent_process() is None:
        _announced.add(repr(cfg))
        print(summary(cfg, data), file=sys.stderr)
    return data


def check_dataset(cfg: DataConfig) -> None:
    """Build the dataset once and drop it, so that a command stops on bad files or settings with a one-line
    error before it creates a run directory (its env workers build their own copies later)."""
    make_dataset(cfg, seed=0)
