"""Segmentation datasets from a folder of images and label masks (``<root>/images``, ``<root>/masks``), with
errors that name the file and the fix."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rlsched.config import DataConfig
from rlsched.seg.dataset import DatasetError, SegmentationData, check_memory, pack_dataset, share_text

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
            raise DatasetError(
                f"{folder}: both {files[path.stem].name} and {path.name} have the stem "
                f"{path.stem!r}; keep one file per stem so that images and masks pair up"
            )
        files[path.stem] = path
    if not files:
        raise DatasetError(
            f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}): add them, or point "
            f"[data] root at a folder laid out as {_LAYOUT}"
        )
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
        raise DatasetError(
            f"{path}: not an image PIL can read, whatever its {path.suffix} name says: "
            f"replace it with a real image or move it out of {path.parent}"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise DatasetError(
            f"{path}: cannot decode the image ({err}): replace it or move it out of {path.parent}"
        ) from None


def _square(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Centre-crop to a square, then resize, so that objects keep their aspect ratio."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize((size, size), resample, box=(left, top, left + side, top + side))


def _has_alpha(image: Image.Image) -> bool:
    """Whether the file has an alpha channel (or a transparent palette entry), which training never reads."""
    return bool({"A", "a"} & set(image.getbands())) or "transparency" in image.info


def _image_array(image: Image.Image, path: Path, cfg: DataConfig) -> tuple[np.ndarray, str]:
    """(C, S, S) float32 in 8-bit units (0..255) whatever the file's bit depth, so that the 8- and 16-bit files
    of one folder share one scale; and that depth. Float images, and 32-bit ones beyond the 16-bit range, have
    no fixed range and keep their own values ("float")."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        low, high = image.getextrema()
        depth = "16-bit" if image.mode != "F" and 0 <= low and high <= 65535 else "float"
        gray = np.asarray(_square(image.convert("F"), cfg.image_size, Image.Resampling.BILINEAR))
        if depth == "16-bit":
            gray = gray / np.float32(257)  # 65535 = 255 * 257: a 16-bit copy of an 8-bit image reads the same
        return np.repeat(gray[None], cfg.channels, axis=0).astype(np.float32), depth
    converted = image.convert("L" if cfg.channels == 1 else "RGB")
    colours = np.asarray(converted)
    if colours.min() == colours.max() and _has_alpha(image):
        low, high = image.convert("RGBA").getchannel("A").getextrema()
        if low != high:
            raise DatasetError(
                f"{path}: the image's content is only in its alpha channel (mode {image.mode}, "
                f"every colour value {colours.min()}): training reads colour, not alpha, so it "
                "would see a blank image; save the content as gray or colour, e.g. "
                "Image.open(p).getchannel('A').save(p)"
            )
    pixels = np.asarray(_square(converted, cfg.image_size, Image.Resampling.BILINEAR), dtype=np.float32)
    return (pixels[None] if cfg.channels == 1 else pixels.transpose(2, 0, 1)), "8-bit"


def _mask_array(mask: Image.Image, path: Path, cfg: DataConfig) -> np.ndarray:
    """(S, S) int64 raw label values; NEAREST resampling, so no label value is ever invented."""
    if len(mask.getbands()) != 1:
        raise DatasetError(
            f"{path}: mask has mode {mask.mode} ({len(mask.getbands())} channels); save masks "
            "as single-channel label images (mode L or P, one class value per pixel)"
        )
    return np.asarray(_square(mask, cfg.image_size, Image.Resampling.NEAREST)).astype(np.int64)


def _map_text(mapping: Mapping[int, int]) -> str:
    """A mapping as the TOML line that sets it, for error messages; cut after 8 entries (JPEG masks hold
    many values)."""
    items = [f'"{raw}" = {label}' for raw, label in sorted(mapping.items())]
    return "mask_map = {" + ", ".join(items[:8]) + (", ..." if len(items) > 8 else "") + "}"


def _histogram_text(histogram: Mapping[int, int]) -> str:
    """Raw mask values with their share of all mask pixels, the most frequent 8 if there are more."""
    total = sum(histogram.values())
    shown = sorted(sorted(histogram, key=lambda v: -histogram[v])[:8])
    more = f" (+{len(histogram) - 8} more values)" if len(histogram) > 8 else ""
    return ", ".join(f"{v} ({share_text(histogram[v] / total)})" for v in shown) + more


def _mapped_text(mapping: Mapping[int, int], histogram: Mapping[int, int]) -> str:
    """How the raw values the masks hold map to classes, the first 10 of them."""
    return ", ".join(f"{raw} -> {mapping[raw]}" for raw in sorted(histogram)[:10])


def _suggested_map(
    cfg: DataConfig, histogram: Mapping[int, int], given: dict[int, int] | None = None
) -> dict[int, int]:
    """A complete mask_map to propose, keeping the ``given`` entries: a guess the user confirms.

    Classes stay. In a binary task the most frequent non-zero raw value is foreground (the 255 of 0/255 masks,
    the 65535 of 16-bit ones, even beside a few stray 1s), unless ``given`` already names one. Any other value
    becomes ignore_index.
    """
    given = given or {}
    top = cfg.classes if cfg.task == "multiclass" else 1
    foreground = None
    if cfg.task == "binary" and 1 not in given.values():
        candidates = [v for v in histogram if v != 0 and v not in given]
        foreground = max(candidates, key=lambda v: histogram[v], default=None)

    def guess(value: int) -> int:
        if value == foreground:
            return 1
        return value if value <= top or value == cfg.ignore_index else cfg.ignore_index

    return {**{v: guess(v) for v in histogram}, **given}


def _mask_mapping(cfg: DataConfig, histogram: Mapping[int, int]) -> dict[int, int]:
    """Raw mask value -> class, for every raw value in ``histogram`` (raw value -> pixel count).

    Without ``cfg.mask_map``: binary masks holding only 0 and 255 get {0: 0, 255: 1}; otherwise each value
    stands for itself (0..K are classes, ignore_index is ignored). An explicit ``cfg.mask_map`` must list
    every raw value the masks hold: leaving some to stand for themselves would silently turn the 255 of 0/255
    masks from foreground into "ignore".
    """
    raw_values = set(histogram)
    if not cfg.mask_map:
        if cfg.task == "binary" and raw_values <= {0, 255}:
            return {0: 0, 255: 1}
        return {v: v for v in raw_values}
    mapping = {}
    for key, label in cfg.mask_map.items():
        try:
            mapping[int(key)] = label
        except ValueError:
            raise DatasetError(
                f"[data] mask_map key {key!r} is not an integer mask value; write e.g. {_MAP_EXAMPLE}"
            ) from None
    missing = sorted(raw_values - mapping.keys())
    if missing:
        raise DatasetError(
            f"[data] mask_map does not list the raw mask values {missing[:10]}, which the "
            "masks hold; an explicit mask_map must map every raw value, e.g. "
            f"{_map_text(_suggested_map(cfg, histogram, mapping))}"
        )
    return mapping


def _check_ignore_share(
    cfg: DataConfig, folder: Path, histogram: Mapping[int, int], mapping: dict[int, int]
) -> None:
    """Stop when the implicit mapping ignores more pixels than it labels foreground: the 255 of 0/255 masks
    beside a few stray 1s reads as "ignore", and training then learns from almost nothing (Dice 0). An
    explicit mask_map confirms such a share."""
    top = cfg.classes if cfg.task == "multiclass" else 1
    total = sum(histogram.values())
    ignored = sum(n for v, n in histogram.items() if mapping[v] == cfg.ignore_index) / total
    foreground = sum(n for v, n in histogram.items() if 1 <= mapping[v] <= top) / total
    if ignored <= foreground:
        return
    if cfg.task == "binary":
        marks = f"marks foreground, set [data] {_map_text(_suggested_map(cfg, histogram))}"
    else:
        marks = "marks a class, map it to that class in [data] mask_map"
    raise DatasetError(
        f"{folder}: {share_text(ignored)} of mask pixels are {cfg.ignore_index} = ignore_index "
        f"but only {share_text(foreground)} are foreground (raw values: "
        f"{_histogram_text(histogram)}). If {cfg.ignore_index} {marks}; if it marks pixels to "
        f"ignore, confirm that with [data] {_map_text({v: v for v in histogram})}"
    )


def make_folder_dataset(cfg: DataConfig) -> SegmentationData:
    """Load ``<cfg.root>/images`` and ``<cfg.root>/masks``, pairs matched by file stem.

    Each pair is centre-cropped to a square and resized to ``cfg.image_size`` (bilinear for images, nearest
    for masks). The split shuffles the sorted stems with ``cfg.split_seed`` and sends the first
    ``round(val_fraction * n)`` pairs to validation, the next ``round(test_fraction * n)`` to test (at least 1
    each, leaving at least 1 to train on); ``cfg.n_train``, ``cfg.n_val`` and ``cfg.n_test`` are not used.

    Every image is put on the 8-bit scale (a 16-bit file divided by 257) before the shared normalisation, so a
    folder may mix bit depths. Files that would train on nothing stop with an error naming the fix: content
    only in alpha, only constant images, float beside 8/16-bit images, masks whose implicit mapping ignores
    more pixels than it labels foreground, a class no mask holds.
    """
    if cfg.task == "multilabel":
        raise DatasetError(
            "[data] source='folder' supports only task='binary' or 'multiclass' (one label "
            "image per case); use one of those, or source='synthetic' for a multilabel task"
        )
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            f"[data] root={cfg.root!r} is not a folder: set root to a folder laid out as {_LAYOUT}"
        )
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise DatasetError(f"{root} has no {sub}/ folder: create {root / sub} (layout: {_LAYOUT})")
    images, masks = _index(root / "images"), _index(root / "masks")

    no_mask, no_image = sorted(images.keys() - masks.keys()), sorted(masks.keys() - images.keys())
    if no_mask or no_image:
        raise DatasetError(
            f"{root}: {len(no_mask)} image(s) without a mask: {_names(no_mask, images)}; "
            f"{len(no_image)} mask(s) without an image: {_names(no_image, masks)}. Every "
            "image needs a mask with the same file stem (images/case01.jpg <-> "
            "masks/case01.png): add the missing files or remove the extra ones"
        )
    stems = sorted(images)
    if len(stems) < 3:
        raise DatasetError(
            f"{root}: found {len(stems)} image/mask pair(s); need at least 3 (one each to train, "
            "validate and test on): add more pairs"
        )

    check_memory(cfg, len(stems), f"move some of the {len(stems)} pairs out of {root}")

    pixels, depths, raw_masks = [], {}, []
    histogram: Counter[int] = Counter()  # raw mask value -> pixels, over all masks
    for stem in stems:
        image, mask = _read(images[stem]), _read(masks[stem])
        if image.size != mask.size:
            raise DatasetError(
                f"{images[stem].name} is {image.size[0]}x{image.size[1]} but its mask "
                f"{masks[stem].name} is {mask.size[0]}x{mask.size[1]}: save the mask at "
                "the image's size (width x height)"
            )
        array, depth = _image_array(image, images[stem], cfg)
        pixels.append(array)
        depths.setdefault(depth, images[stem].name)
        raw_masks.append(_mask_array(mask, masks[stem], cfg))
        values, counts = np.unique(raw_masks[-1], return_counts=True)
        histogram.update(dict(zip(values.tolist(), counts.tolist())))
    if "float" in depths and len(depths) > 1:
        kinds = " and ".join(f"{name} is {depth}" for depth, name in depths.items())
        raise DatasetError(
            f"{root / 'images'}: {kinds}: float images (and 32-bit ones past 65535) have no "
            "fixed range to put on the 8/16-bit scale, so they cannot share a folder with "
            "8- or 16-bit ones; save all images with one bit depth"
        )
    if all(array.min() == array.max() for array in pixels):
        raise DatasetError(
            f"{root / 'images'}: every image is one constant value (e.g. "
            f"{images[stems[0]].name}), so there is nothing to learn from: check that the "
            "files hold the images (not, say, a blank export)"
        )

    # the default mapping depends on the values of all masks: an all-background mask alone says nothing
    mapping = _mask_mapping(cfg, histogram)
    top = cfg.classes if cfg.task == "multiclass" else 1
    labels = []
    for stem, raw in zip(stems, raw_masks):
        values, inverse = np.unique(raw, return_inverse=True)
        mapped = np.array([mapping[int(v)] for v in values], dtype=np.int64)
        bad = [int(v) for v, m in zip(values, mapped) if not (0 <= m <= top or m == cfg.ignore_index)]
        if bad:
            jpeg = masks[stem].suffix.lower() in (".jpg", ".jpeg")
            hint = " (JPEG compression changes label values: save masks as PNG)" if jpeg else ""
            raise DatasetError(
                f"{masks[stem]}: raw mask values {bad[:10]} are not classes of "
                f"task={cfg.task!r} (allowed after mapping: 0..{top}, or {cfg.ignore_index} = "
                f"ignore){hint}; the masks hold {_histogram_text(histogram)}. Set [data] "
                "mask_map to map every raw value to a class, e.g. "
                f"{_map_text(_suggested_map(cfg, histogram))}"
            )
        labels.append(mapped[inverse].reshape(raw.shape).astype(np.uint8))
    if not cfg.mask_map:
        _check_ignore_share(cfg, root / "masks", histogram, mapping)

    # without foreground the loss has nothing to learn and Dice nothing to score: training would run at Dice 0
    foreground = np.array([((label >= 1) & (label <= top)).any() for label in labels])
    if not foreground.any():
        ignored = np.mean([(label == cfg.ignore_index).mean() for label in labels])
        raise DatasetError(
            f"{root / 'masks'}: no mask has a foreground pixel (class 1..{top}); raw values "
            f"map {_mapped_text(mapping, histogram)} and {ignored:.0%} of pixels are "
            f"ignore_index={cfg.ignore_index}. "
            "Map the raw value that marks foreground to a class in [data] mask_map, or "
            "replace the masks if they are empty"
        )
    # a class no mask holds can be neither learned nor scored: classes is set too high, or a raw value unmapped
    absent = [k for k in range(1, top + 1) if k not in {mapping[v] for v in histogram}]
    if absent:
        raise DatasetError(
            f"{root / 'masks'}: no mask holds class(es) {absent} of classes={cfg.classes} (raw "
            f"values: {_histogram_text(histogram)}, mapped {_mapped_text(mapping, histogram)}): "
            "set [data] classes to the number of classes the masks hold, or map each class's "
            "raw value to it in mask_map"
        )
    order = np.random.default_rng(cfg.split_seed).permutation(len(stems))
    n_val = min(max(1, round(cfg.val_fraction * len(stems))), len(stems) - 2)
    n_test = min(max(1, round(cfg.test_fraction * len(stems))), len(stems) - 1 - n_val)
    splits = {
        "training": np.sort(order[n_val + n_test :]),
        "validation": np.sort(order[:n_val]),
        "test": np.sort(order[n_val : n_val + n_test]),
    }
    for name, part in splits.items():
        if not foreground[part].any():
            files = _names([stems[i] for i in part], masks)
            raise DatasetError(
                f"{root}: no mask of the {name} split ({files}) has a foreground pixel: "
                "change [data] split_seed, val_fraction or test_fraction, or add images whose "
                "masks show foreground"
            )
    picks = np.concatenate(list(splits.values()))  # train, validation, test; each by stem
    return pack_dataset(cfg, np.stack(pixels)[picks], np.stack(labels)[picks], len(splits["training"]), n_val)
