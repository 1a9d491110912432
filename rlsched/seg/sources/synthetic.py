"""Procedural segmentation tasks: shapes on smooth, cluttered backgrounds, binary, multiclass or multilabel,
drawn from one seed."""

from __future__ import annotations

import math

import numpy as np

from rlsched.config import DataConfig
from rlsched.seg.dataset import DatasetError, SegmentationData, pack_dataset

# Multiclass/multilabel kinds are told apart mainly by shape, most distinct pairs first (K=2: disk vs cross).
# Kind k uses SHAPES[k % 5]; kinds past the fifth reuse a shape but are brighter (see _paint_scene).
SHAPES = ("disk", "cross", "triangle", "ring", "square")
# How many radii each shape reaches from its centre; it sizes the window the shape is drawn in.
_REACH = {
    "ellipse": 1.0,
    "blob": 1.5,
    "disk": 1.0,
    "square": 1.14,
    "triangle": 1.2,
    "ring": 1.0,
    "cross": 1.06,
}
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
        rim = (
            1.0
            + amp[0] * (cos2 * np.cos(phase[0]) - sin2 * np.sin(phase[0]))
            + amp[1] * (cos3 * np.cos(phase[1]) - sin3 * np.sin(phase[1]))
        )
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


def _draw_shapes(
    names: list[str], cfg: DataConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
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
        out = taps[radius] * padded[..., radius : radius + width]
        for i in range(radius):  # the kernel is symmetric: one multiply per pair of taps
            mirror = 2 * radius - i
            out += taps[i] * (padded[..., i : i + width] + padded[..., mirror : mirror + width])
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


def _paint_scene(
    image: np.ndarray, cfg: DataConfig, rng: np.random.Generator, stripes: np.ndarray
) -> np.ndarray:
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
        hit = inside[
            ys.start - y : ys.stop - y, xs.start - x : xs.stop - x
        ]  # the window clipped to the image
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


def _scenes(cfg: DataConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scenes drawn from ``rng``: painted backgrounds, blurred (``cfg.blur``), with Gaussian noise
    (``cfg.noise``); and their masks."""
    images = _backgrounds(cfg, rng, n)
    stripes = _stripes(cfg.image_size, cfg.classes)
    masks = np.stack([_paint_scene(image, cfg, rng, stripes) for image in images])
    images = _gaussian_blur(images, cfg.blur)
    images += cfg.noise * rng.standard_normal(images.shape, dtype=np.float32)
    return images, masks


def make_synthetic_dataset(cfg: DataConfig, seed: int) -> SegmentationData:
    """Procedural task: ``n_train`` then ``n_val`` scenes drawn from one generator seeded by ``seed``, then
    ``n_test`` scenes from a second stream of ``seed`` (so a seed's train and validation scenes do not depend
    on the test split).

    With ``cfg.ignore_border`` the pixels outside a centred circular field of view become a dark constant and
    ``ignore_index`` in the mask.
    """
    if cfg.noise < 0 or cfg.blur < 0 or cfg.contrast == 0:
        raise DatasetError(
            f"[data] noise={cfg.noise}, blur={cfg.blur}, contrast={cfg.contrast}: need "
            "noise >= 0, blur >= 0 (0 = none) and contrast != 0"
        )
    seen = cfg.n_train + cfg.n_val
    images, masks = _scenes(cfg, np.random.default_rng(seed), seen)
    test_images, test_masks = _scenes(cfg, np.random.default_rng([seed, 1]), cfg.n_test)
    images, masks = np.concatenate([images, test_images]), np.concatenate([masks, test_masks])
    if cfg.ignore_border:
        outside = ~_field_of_view(cfg.image_size)
        images[..., outside] = images[:seen].min() - abs(cfg.contrast)  # darker than anything inside the view
        masks[..., outside] = cfg.ignore_index
    return pack_dataset(cfg, images, masks, cfg.n_train, cfg.n_val)
