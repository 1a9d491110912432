"""Write the MNI152 template's slices of one plane as an images/ + masks/ folder dataset.

``python -m rlsched.brain_folder DEST [--plane axial|coronal]``

Why: a learned LR controller is evaluated zero-shot through ``[data] source = "folder"``
(``envs/brain-folder.toml``) on real images it never trained on, made offline from the template that
``rlsched.seg.sources.brain`` already slices. The default plane, axial, is one the ``brain`` preset neither trains nor
evaluates on.

What: every slice that ``rlsched.seg.sources.brain`` keeps for the plane, at the template's own 1 mm resolution (the
folder loader crops to a square and resizes): ``images/<plane>_<index>.png``, 8-bit gray, the slice's T1
values scaled to 0..255, and ``masks/<plane>_<index>.png`` with ``brain.tissue_labels`` (0 background, 1 grey
matter, 2 white matter), the labels ``source = "brain"`` trains on.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from rlsched.config import load_config
from rlsched.seg.sources.brain import PLANES, full_slices

PRESET = "brain-folder"  # the shipped preset that reads such a folder


def _refuse_to_overwrite(dest: Path) -> None:
    """An export never mixes with or replaces files already there: stale slices would join the dataset."""
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(
            f"{dest} is a file, not a folder: pass a new destination folder, or remove the "
            f"file (rm {shlex.quote(str(dest))})"
        )
    if dest.is_dir() and any(dest.iterdir()):
        raise FileExistsError(
            f"{dest} is not empty: the export never overwrites; pass a new destination "
            f"folder, or remove the old export first (rm -r {shlex.quote(str(dest))})"
        )


def _to_8bit(t1: np.ndarray) -> np.ndarray:
    """One slice's T1 values scaled to the full 0..255 range, so every PNG uses the whole gray scale."""
    low, high = int(t1.min()), int(t1.max())
    return np.round((t1.astype(np.float64) - low) * 255 / max(high - low, 1)).astype(np.uint8)


def export_folder(dest: str | Path, plane: str = "axial") -> int:
    """Write ``plane``'s kept template slices to ``dest`` as images/ and masks/ PNGs; returns the count.

    The files are written to a temporary folder next to ``dest`` and renamed into place, so an interrupted
    export leaves no half-written dataset behind. ``dest`` must not exist or be an empty folder.
    """
    dest = Path(dest).expanduser()
    _refuse_to_overwrite(dest)
    indices, t1, labels = full_slices(plane)  # before any file is touched: a missing extra leaves nothing
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        for index, image, mask in zip(indices, t1, labels):
            stem = f"{plane}_{index:03d}"
            Image.fromarray(_to_8bit(image)).save(tmp / "images" / f"{stem}.png")
            Image.fromarray(mask).save(tmp / "masks" / f"{stem}.png")
        if dest.is_dir():
            dest.rmdir()  # empty, as checked; fails rather than deletes if files appeared since
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(indices)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlsched.brain_folder", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dest", help="new or empty folder to write images/ and masks/ into")
    parser.add_argument(
        "--plane",
        default="axial",
        choices=PLANES,
        help="slicing plane (default: axial, which the brain preset never trains on)",
    )
    args = parser.parse_args(argv)
    try:
        count = export_folder(args.dest, args.plane)
    except (OSError, ImportError) as err:  # a non-empty destination, the missing brain extra, a full disk
        parser.error(str(err))
    print(
        f"wrote {count} {args.plane} slices to {args.dest}: images/*.png (8-bit T1), masks/*.png "
        "(0 background, 1 grey matter, 2 white matter)"
    )
    if Path(args.dest).expanduser().resolve() == Path(load_config(PRESET).data.root).resolve():
        print(f"use it with: --preset {PRESET} (its data.root is this folder)")
    else:
        print(
            f"use it with: --preset {PRESET} --set data.root={shlex.quote(args.dest)}  "
            "(a relative root is read from the current directory)"
        )
    if args.plane == "coronal":
        print("note: the brain preset trains and evaluates on coronal slices: these are not unseen anatomy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
