"""Segmentation datasets as ready-to-train tensors: procedural synthetic tasks and image/mask folders.

Everything is loaded into memory once (the datasets are small), so an RL episode -- a short UNet training
run -- never waits on I/O. ``make_dataset`` is a pure function of ``(cfg, seed)``: the same inputs give
bit-identical tensors, which is what makes an LR-schedule "instance" reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .config import DataConfig


class DatasetError(ValueError):
    """The files on disk (or a [data] setting) cannot form a dataset; the message says what and how to fix."""


@dataclass(frozen=True)
class SegmentationData:
    """Train and validation splits of one segmentation task.

    Images are float32 ``(N, C, H, W)``, normalised with train-split statistics. Masks are uint8:
    ``(N, H, W)`` class indices (0 = background) for binary/multiclass, ``(N, K, H, W)`` 0/1 labels for
    multilabel. A pixel equal to ``ignore_index`` (in all K channels for multilabel) carries no label.
    """

    train_images: torch.Tensor
    train_masks: torch.Tensor
    val_images: torch.Tensor
    val_masks: torch.Tensor
    task: str  # "binary" | "multiclass" | "multilabel"
    classes: int  # foreground classes K (binary: 1)
    ignore_index: int


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


def pack_dataset(cfg: DataConfig, images: np.ndarray, masks: np.ndarray, n_train: int) -> SegmentationData:
    """Wrap raw images (N, C, H, W) and uint8 masks as tensors; the first ``n_train`` form the train split.

    Every source ends here so all share one rule: per-channel zero mean / unit variance computed on the train
    split only (validation must not leak into training) and applied to both splits.
    """
    train, val = images[:n_train], images[n_train:]
    mean = train.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
    std = np.maximum(train.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64), 1e-6)

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))

    return SegmentationData(
        train_images=tensor(((train - mean) / std).astype(np.float32)),
        train_masks=tensor(masks[:n_train]),
        val_images=tensor(((val - mean) / std).astype(np.float32)),
        val_masks=tensor(masks[n_train:]),
        task=cfg.task, classes=cfg.classes, ignore_index=cfg.ignore_index,
    )


# ------------------------------------------------------------------------------------------------------------
# Synthetic tasks
# ------------------------------------------------------------------------------------------------------------

# Multiclass/multilabel kinds are told apart mainly by shape, most distinct pairs first (K=2: disk vs cross).
# Kind k uses SHAPES[k % 5]; kinds past the fifth reuse a shape but are brighter (see _paint_scene).
SHAPES = ("disk", "cross", "triangle", "ring", "square")
# How many radii each shape reaches from its centre; it sizes the window the shape is drawn in.
_REACH = {"ellipse": 1.0, "blob": 1.5, "disk": 1.0, "square": 1.14, "triangle": 1.2, "ring": 1.0,
          "cross": 1.06}
_STRIPE_PERIOD = 6.0  # pixels; multilabel texture, coarse enough to survive a blur of sigma ~1.5


def _inside(shape: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Which points of each shape's local frame (unit radius, rotated; arrays (M, h, w)) lie inside it."""
    r2 = u * u + v * v
    if shape == "ellipse":
        return u * u + (v / rng.uniform(0.45, 1.0, size=(len(u), 1, 1))) ** 2 <= 1.0
    if shape == "blob":  # a disk with a wobbly rim: random 2nd and 3rd angular harmonics of the radius
        amp = rng.uniform(0.1, 0.25, size=(2, len(u), 1, 1))
        phase = rng.uniform(0, 2 * math.pi, size=(2, len(u), 1, 1))
        rho = np.sqrt(r2) + 1e-6
        cos1, sin1 = u / rho, v / rho  # of the polar angle; multiple-angle formulas are cheaper than arctan2
        cos2, sin2 = cos1 * cos1 - sin1 * sin1, 2 * cos1 * sin1
        cos3, sin3 = cos1 * cos2 - sin1 * sin2, sin1 * cos2 + cos1 * sin2
        rim = (1.0 + amp[0] * (cos2 * np.cos(phase[0]) - sin2 * np.sin(phase[0]))
               + amp[1] * (cos3 * np.cos(phase[1]) - sin3 * np.sin(phase[1])))
        return rho <= rim
    if shape == "disk":
        return r2 <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":  # equilateral, circumradius 1.2 so its area is close to the other kinds'
        edges = [u * math.cos(a) + v * math.sin(a) <= 0.6 for a in np.deg2rad([90.0, 210.0, 330.0])]
        return edges[0] & edges[1] & edges[2]
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.33) & (av <= 1.0)) | ((av <= 0.33) & (au <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")  # pragma: no cover - programming error


def _draw_shapes(names: list[str], cfg: DataConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Randomly size, place and rotate shapes; return window corners (M, 2) and inside-masks (M, w, w).

    All windows share the size of the largest shape that could be drawn, so one image's shapes are evaluated
    in a single vectorised pass whose cost scales with object area, not image area.
    """
    size, m = cfg.image_size, len(names)
    half = math.ceil(max(_REACH[name] for name in names) * cfg.max_radius * size)
    radius = (rng.uniform(cfg.min_radius, cfg.max_radius, size=(m, 1, 1)) * size).astype(np.float32)
    centre = rng.uniform(0, size, size=(m, 2))
    angle = rng.uniform(0, 2 * math.pi, size=(m, 1, 1))
    pixel = np.floor(centre)
    fraction = (centre - pixel).astype(np.float32)
    offset = np.arange(-half, half + 1, dtype=np.float32) + 0.5  # window pixel centres, from the centre pixel
    dy = offset[None, :, None] - fraction[:, 0, None, None]
    dx = offset[None, None, :] - fraction[:, 1, None, None]
    cos, sin = np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)
    u, v = (dx * cos + dy * sin) / radius, (dy * cos - dx * sin) / radius
    inside = np.empty(u.shape, dtype=bool)
    for shape in dict.fromkeys(names):  # first-seen order, so the random draws are reproducible
        chosen = np.array([name == shape for name in names])
        inside[chosen] = _inside(shape, u[chosen], v[chosen], rng)
    return pixel.astype(np.int64) - half, inside


def _tint(hues: np.ndarray, channels: int) -> np.ndarray:
    """Per-channel gains (M, C) of mean 1: a hue for RGB (colour carries signal, not brightness); gray: 1."""
    if channels == 1:
        return np.ones((len(hues), 1))
    return 1.0 + 0.35 * np.cos(hues[:, None] - np.array([0.0, 2.0, 4.0]) * math.pi / 3)


def _stripes(size: int, kinds: int) -> np.ndarray:
    """(K, H, W) multilabel textures: stripes of one period whose direction differs per kind."""
    grid = np.arange(size)
    angles = np.arange(kinds)[:, None, None] * math.pi / kinds
    along = grid[None, None, :] * np.cos(angles) + grid[None, :, None] * np.sin(angles)
    return (1.0 + 0.5 * np.sin(2 * math.pi / _STRIPE_PERIOD * along)).astype(np.float32)


def _field_of_view(size: int) -> np.ndarray:
    """Centred inscribed disk (a fundus-like circular field of view) as an (H, W) bool mask."""
    offset = np.arange(size) - (size - 1) / 2
    return offset[:, None] ** 2 + offset[None, :] ** 2 <= (size / 2) ** 2


def _gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes (reflect padding); sigma <= 0 returns the input."""
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(images.dtype)
    out = images
    for _ in range(2):  # blur the last axis, then swap so that the other axis is last
        width = out.shape[-1]
        padded = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(radius, radius)], mode="reflect")
        out = taps[radius] * padded[..., radius:radius + width]
        for i in range(radius):  # the kernel is symmetric: one multiply per pair of taps
            mirror = 2 * radius - i
            out += taps[i] * (padded[..., i:i + width] + padded[..., mirror:mirror + width])
        out = out.swapaxes(-1, -2)
    return np.ascontiguousarray(out)


def _backgrounds(cfg: DataConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, C, H, W) smooth backgrounds: random offset, illumination gradient, faint wave, RGB colour cast."""
    size, scale = cfg.image_size, abs(cfg.contrast)
    grid = ((np.arange(size) + 0.5) / size - 0.5).astype(np.float32)
    yy, xx = grid[:, None], grid[None, :]
    slope = rng.normal(size=(n, 2))
    slope *= (rng.uniform(0.2, 0.6, size=n) / np.linalg.norm(slope, axis=1))[:, None]
    angle = rng.uniform(0, math.pi, size=(n, 1, 1))
    cycles = rng.uniform(1.0, 2.5, size=(n, 1, 1))  # per image width: smooth, unlike any object
    phase = rng.uniform(0, 2 * math.pi, size=(n, 1, 1))
    wave = np.sin(2 * math.pi * cycles * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    offset = rng.uniform(-0.2, 0.2, size=(n, 1, 1))
    background = scale * (offset + slope[:, 0, None, None] * xx + slope[:, 1, None, None] * yy + 0.15 * wave)
    cast = scale * 0.1 * rng.normal(size=(n, cfg.channels, 1, 1)) if cfg.channels == 3 else 0.0
    shape = (n, cfg.channels, size, size)
    return np.ascontiguousarray(np.broadcast_to(background[:, None] + cast, shape), dtype=np.float32)


def _paint_scene(image: np.ndarray, cfg: DataConfig, rng: np.random.Generator,
                 stripes: np.ndarray) -> np.ndarray:
    """Paint distractors and objects onto one (C, H, W) background in place; return the scene's mask.

    Distractors are low-contrast ellipses of object size, some brighter and some darker than the background.
    With the background's gradient they keep any global intensity threshold from separating the foreground:
    the net has to use local context and shape, which is what makes the learning rate matter. The mask holds
    (H, W) class indices, or (K, H, W) labels for multilabel.
    """
    size, channels, kinds, scale = cfg.image_size, cfg.channels, cfg.classes, abs(cfg.contrast)
    n_distractors = int(rng.integers(2, 6))
    n_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    if cfg.task == "binary":
        object_kinds = np.zeros(n_objects, dtype=np.int64)
        shapes = ["ellipse" if p < 0.6 else "blob" for p in rng.random(n_objects)]
        gains, hues = rng.uniform(0.8, 1.2, n_objects), rng.uniform(-0.3, 0.3, n_objects)
    else:
        object_kinds = rng.integers(kinds, size=n_objects)
        shapes = [SHAPES[k % len(SHAPES)] for k in object_kinds]
        hues = 2 * math.pi * object_kinds / kinds + rng.uniform(-0.2, 0.2, n_objects)
        if cfg.task == "multiclass":  # similar intensities: shape is the cue
            gains = (1.0 + 0.5 * (object_kinds // len(SHAPES))) * rng.uniform(0.85, 1.15, n_objects)
        else:  # multilabel: each kind has its own level, so overlaps read as sums
            gains = (0.7 + 0.6 * object_kinds / max(kinds - 1, 1)) * rng.uniform(0.9, 1.1, n_objects)
    signs = np.where(rng.random(n_distractors) < 0.5, -1.0, 1.0)
    levels = np.concatenate([scale * signs * rng.uniform(0.25, 0.45, n_distractors), cfg.contrast * gains])
    all_hues = np.concatenate([math.pi + rng.uniform(-1, 1, n_distractors), hues])
    colours = (levels[:, None] * _tint(all_hues, channels)).astype(np.float32)
    corners, insides = _draw_shapes(["ellipse"] * n_distractors + shapes, cfg, rng)

    layer = np.zeros_like(image)  # objects are painted here, then added on top of the background
    mask = np.zeros((kinds, size, size) if cfg.task == "multilabel" else (size, size), dtype=np.uint8)
    width = insides.shape[-1]
    for j, ((y, x), inside, colour) in enumerate(zip(corners.tolist(), insides, colours)):
        ys, xs = slice(max(y, 0), min(y + width, size)), slice(max(x, 0), min(x + width, size))
        hit = inside[ys.start - y:ys.stop - y, xs.start - x:xs.stop - x]  # the window clipped to the image
        if j < n_distractors:
            image[:, ys, xs] += hit * colour[:, None, None]
            continue
        kind = object_kinds[j - n_distractors]
        if cfg.task == "multilabel":
            layer[:, ys, xs] += hit * colour[:, None, None] * stripes[kind, ys, xs]
            mask[kind, ys, xs] |= hit
        else:  # one label per pixel: later objects overwrite earlier ones, in the image as in the mask
            layer[:, ys, xs][:, hit] = colour[:, None]
            mask[ys, xs][hit] = kind + 1
    image += layer
    return mask


def make_synthetic_dataset(cfg: DataConfig, seed: int) -> SegmentationData:
    """Procedural task: ``n_train`` then ``n_val`` scenes drawn from one generator seeded by ``seed``.

    Scenes are blurred (``cfg.blur``) and get Gaussian noise (``cfg.noise``); with ``cfg.ignore_border`` the
    pixels outside a centred circular field of view become a dark constant and ``ignore_index`` in the mask.
    """
    if cfg.noise < 0 or cfg.blur < 0 or cfg.contrast == 0:
        raise DatasetError(f"[data] noise={cfg.noise}, blur={cfg.blur}, contrast={cfg.contrast}: need "
                           "noise >= 0, blur >= 0 (0 = none) and contrast != 0")
    rng = np.random.default_rng(seed)
    images = _backgrounds(cfg, rng, cfg.n_train + cfg.n_val)
    stripes = _stripes(cfg.image_size, cfg.classes)
    masks = np.stack([_paint_scene(image, cfg, rng, stripes) for image in images])
    images = _gaussian_blur(images, cfg.blur)
    images += cfg.noise * rng.standard_normal(images.shape, dtype=np.float32)
    if cfg.ignore_border:
        outside = ~_field_of_view(cfg.image_size)
        images[..., outside] = images.min() - abs(cfg.contrast)  # darker than anything inside the view
        masks[..., outside] = cfg.ignore_index
    return pack_dataset(cfg, images, masks, cfg.n_train)


# ------------------------------------------------------------------------------------------------------------
# Folder datasets
# ------------------------------------------------------------------------------------------------------------

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
    for masks). The split shuffles the sorted stems with ``cfg.split_seed`` and sends ``round(val_fraction *
    n)`` pairs (at least 1, at most n - 1) to validation; ``cfg.n_train`` and ``cfg.n_val`` are not used.
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
    if len(stems) < 2:
        raise DatasetError(f"{root}: found {len(stems)} image/mask pair; need at least 2 (one to train on, "
                           "one to validate on): add more pairs")

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
    n_val = min(max(1, round(cfg.val_fraction * len(stems))), len(stems) - 1)
    splits = {"training": np.sort(order[n_val:]), "validation": np.sort(order[:n_val])}
    for name, part in splits.items():
        if not foreground[part].any():
            files = _names([stems[i] for i in part], masks)
            raise DatasetError(f"{root}: no mask of the {name} split ({files}) has a foreground pixel: "
                               "change [data] split_seed or val_fraction, or add images whose masks show "
                               "foreground")
    picks = np.concatenate(list(splits.values()))  # train first, each by stem
    return pack_dataset(cfg, np.stack(pixels)[picks], np.stack(labels)[picks], len(stems) - n_val)


__all__ = [
    "DatasetError", "SegmentationData", "check_dataset", "make_dataset", "make_folder_dataset",
    "make_synthetic_dataset", "pack_dataset",
]
