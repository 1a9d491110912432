"""Segmentation datasets from a folder of images and label masks (``<root>/images``, ``<root>/masks``), with
errors that name the file and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .config import DataConfig
from .dataset import DatasetError, SegmentationData, pack_dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_LAYOUT = "<root>/images/<stem>.<ext> with a label mask <root>/masks/<stem>.<ext>"
_MAP_EXAMPLE = 'mask_map = {"0" = 0, "255" = 1}'


def _index(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem; other files (README, .DS_Store, ...) are skipped."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise DatasetError(f"{folder}: both {files[path.stem].name} and {path.name} have the stem "
                               f"{path.stem!r}; keep one file per stem so that images and masks pair up")
        files[path.stem] = path
    if not files:
        raise DatasetError(f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}): add them, or point "
                           f"[data] root at a folder laid out as {_LAYOUT}")
    return files


def _names(stems: list[str], files: dict[str, Path]) -> str:
    """Up to five file names, for error messages."""
    shown = ", ".join(files[stem].name for stem in stems[:5]) or "none"
    return shown + (f" (+{len(stems) - 5} more)" if len(stems) > 5 else "")


def _read(path: Path) -> Image.Image:
    """The decoded image at ``path``: a broken or mislabelled file fails here, named, not deep inside PIL."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except UnidentifiedImageError:
        raise DatasetError(f"{path}: not an image PIL can read, whatever its {path.suffix} name says: "
                           f"replace it with a real image or move it out of {path.parent}") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise DatasetError(f"{path}: cannot decode the image ({err}): replace it or move it out of "
                           f"{path.parent}") from None


def _square(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Centre-crop to a square, then resize, so that objects keep their aspect ratio."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize((size, size), resample, box=(left, top, left + side, top + side))


def _image_array(image: Image.Image, cfg: DataConfig) -> np.ndarray:
    """(C, S, S) float32 in the file's own intensity units; 16-bit and float gray images keep their range."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        gray = np.asarray(_square(image.convert("F"), cfg.image_size, Image.Resampling.BILINEAR))
        return np.repeat(gray[None], cfg.channels, axis=0).astype(np.float32)
    converted = image.convert("L" if cfg.channels == 1 else "RGB")
    pixels = np.asarray(_square(converted, cfg.image_size, Image.Resampling.BILINEAR), dtype=np.float32)
    return pixels[None] if cfg.channels == 1 else pixels.transpose(2, 0, 1)


def _mask_array(mask: Image.Image, path: Path, cfg: DataConfig) -> np.ndarray:
    """(S, S) int64 raw label values; NEAREST resampling, so no label value is ever invented."""
    if len(mask.getbands()) != 1:
        raise DatasetError(f"{path}: mask has mode {mask.mode} ({len(mask.getbands())} channels); save masks "
                           "as single-channel label images (mode L or P, one class value per pixel)")
    return np.asarray(_square(mask, cfg.image_size, Image.Resampling.NEAREST)).astype(np.int64)


def _map_text(mapping: dict[int, int]) -> str:
    """A mapping as the TOML line that sets it, for error messages; cut after 8 entries (JPEG masks hold
    many values)."""
    items = [f'"{raw}" = {label}' for raw, label in sorted(mapping.items())]
    return "mask_map = {" + ", ".join(items[:8]) + (", ..." if len(items) > 8 else "") + "}"


def _suggested_map(cfg: DataConfig, raw_values: set[int],
                   given: dict[int, int] | None = None) -> dict[int, int]:
    """A complete mask_map to propose, keeping the ``given`` entries: classes stay, 255 is foreground in
    binary masks where nothing else is, any other value becomes ignore_index: a guess the user confirms."""
    given = given or {}
    top = cfg.classes if cfg.task == "multiclass" else 1
    foreground_255 = cfg.task == "binary" and 1 not in raw_values and 1 not in given.values()

    def guess(value: int) -> int:
        if foreground_255 and value == 255:
            return 1
        return value if value <= top or value == cfg.ignore_index else cfg.ignore_index

    return {**{v: guess(v) for v in raw_values}, **given}


def _mask_mapping(cfg: DataConfig, raw_values: set[int]) -> dict[int, int]:
    """Raw mask value -> class, for every raw value in ``raw_values``.

    Without ``cfg.mask_map``: binary masks holding only 0 and 255 get {0: 0, 255: 1}; otherwise each value
    stands for itself (0..K are classes, ignore_index is ignored). An explicit ``cfg.mask_map`` must list
    every raw value the masks hold: leaving some to stand for themselves would silently turn the 255 of 0/255
    masks from foreground into "ignore".
    """
    if not cfg.mask_map:
        if cfg.task == "binary" and raw_values <= {0, 255}:
            return {0: 0, 255: 1}
        return {v: v for v in raw_values}
    mapping = {}
    for key, label in cfg.mask_map.items():
        try:
            mapping[int(key)] = label
        except ValueError:
            raise DatasetError(f"[data] mask_map key {key!r} is not an integer mask value; write e.g. "
                               f"{_MAP_EXAMPLE}") from None
    missing = sorted(raw_values - mapping.keys())
    if missing:
        raise DatasetError(f"[data] mask_map does not list the raw mask values {missing[:10]}, which the "
                           "masks hold; an explicit mask_map must map every raw value, e.g. "
                           f"{_map_text(_suggested_map(cfg, raw_values, mapping))}")
    return mapping


def make_folder_dataset(cfg: DataConfig) -> SegmentationData:
    """Load ``<cfg.root>/images`` and ``<cfg.root>/masks``, pairs matched by file stem.

    Each pair is centre-cropped to a square and resized to ``cfg.image_size`` (bilinear for images, nearest
    for masks). The split shuffles the sorted stems with ``cfg.split_seed`` and sends the first
    ``round(val_fraction * n)`` pairs to validation, the next ``round(test_fraction * n)`` to test (at least 1
    each, leaving at least 1 to train on); ``cfg.n_train``, ``cfg.n_val`` and ``cfg.n_test`` are not used.
    """
    if cfg.task == "multilabel":
        raise DatasetError("[data] source='folder' supports only task='binary' or 'multiclass' (one label "
                           "image per case); use one of those, or source='synthetic' for a multilabel task")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"[data] root={cfg.root!r} is not a folder: set root to a folder laid out as "
                           f"{_LAYOUT}")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DatasetError(f"{root} has no {sub}/ folder: create {root / sub} (layout: {_LAYOUT})")
    images, masks = _index(root / "images"), _index(root / "masks")

    no_mask, no_image = sorted(images.keys() - masks.keys()), sorted(masks.keys() - images.keys())
    if no_mask or no_image:
        raise DatasetError(f"{root}: {len(no_mask)} image(s) without a mask: {_names(no_mask, images)}; "
                           f"{len(no_image)} mask(s) without an image: {_names(no_image, masks)}. Every "
                           "image needs a mask with the same file stem (images/case01.jpg <-> "
                           "masks/case01.png): add the missing files or remove the extra ones")
    stems = sorted(images)
    if len(stems) < 3:
        raise DatasetError(f"{root}: found {len(stems)} image/mask pair(s); need at least 3 (one each to train, "
                           "validate and test on): add more pairs")

    pixels, raw_masks = [], []
    for stem in stems:
        image, mask = _read(images[stem]), _read(masks[stem])
        if image.size != mask.size:
            raise DatasetError(f"{images[stem].name} is {image.size[0]}x{image.size[1]} but its mask "
                               f"{masks[stem].name} is {mask.size[0]}x{mask.size[1]}: save the mask at "
                               "the image's size (width x height)")
        pixels.append(_image_array(image, cfg))
        raw_masks.append(_mask_array(mask, masks[stem], cfg))

    # the default mapping depends on the values of all masks: an all-background mask alone says nothing
    raw_values = {int(v) for raw in raw_masks for v in np.unique(raw)}
    mapping = _mask_mapping(cfg, raw_values)
    top = cfg.classes if cfg.task == "multiclass" else 1
    labels = []
    for stem, raw in zip(stems, raw_masks):
        values, inverse = np.unique(raw, return_inverse=True)
        mapped = np.array([mapping[int(v)] for v in values], dtype=np.int64)
        bad = [int(v) for v, m in zip(values, mapped) if not (0 <= m <= top or m == cfg.ignore_index)]
        if bad:
            jpeg = masks[stem].suffix.lower() in (".jpg", ".jpeg")
            hint = " (JPEG compression changes label values: save masks as PNG)" if jpeg else ""
            raise DatasetError(f"{masks[stem]}: raw mask values {bad[:10]} are not classes of "
                               f"task={cfg.task!r} (allowed after mapping: 0..{top}, or {cfg.ignore_index} = "
                               f"ignore){hint}. Set [data] mask_map to map every raw value to a class, e.g. "
                               f"{_map_text(_suggested_map(cfg, raw_values))}")
        labels.append(mapped[inverse].reshape(raw.shape).astype(np.uint8))

    # without foreground the loss has nothing to learn and Dice nothing to score: training would run at Dice 0
    foreground = np.array([((label >= 1) & (label <= top)).any() for label in labels])
    if not foreground.any():
        ignored = np.mean([(label == cfg.ignore_index).mean() for label in labels])
        mapped = ", ".join(f"{raw} -> {mapping[raw]}" for raw in sorted(raw_values)[:10])
        raise DatasetError(f"{root / 'masks'}: no mask has a foreground pixel (class 1..{top}); raw values "
                           f"map {mapped} and {ignored:.0%} of pixels are ignore_index={cfg.ignore_index}. "
                           "Map the raw value that marks foreground to a class in [data] mask_map, or "
                           "replace the masks if they are empty")
    order = np.random.default_rng(cfg.split_seed).permutation(len(stems))
    n_val = min(max(1, round(cfg.val_fraction * len(stems))), len(stems) - 2)
    n_test = min(max(1, round(cfg.test_fraction * len(stems))), len(stems) - 1 - n_val)
    splits = {"training": np.sort(order[n_val + n_test:]), "validation": np.sort(order[:n_val]),
              "test": np.sort(order[n_val:n_val + n_test])}
    for name, part in splits.items():
        if not foreground[part].any():
            files = _names([stems[i] for i in part], masks)
            raise DatasetError(f"{root}: no mask of the {name} split ({files}) has a foreground pixel: "
                               "change [data] split_seed, val_fraction or test_fraction, or add images whose "
                               "masks show foreground")
    picks = np.concatenate(list(splits.values()))  # train, validation, test; each by stem
    return pack_dataset(cfg, np.stack(pixels)[picks], np.stack(labels)[picks], len(splits["training"]), n_val)
