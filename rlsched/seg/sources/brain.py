"""Brain-tissue segmentation slices cut from the MNI152 template shipped inside nilearn: a real task, offline.

The ICBM 2009a symmetric template (197 x 233 x 189 voxels at 1 mm, RAS) comes as a skull-stripped T1 image and
grey/white-matter probability maps. Slices of it become a multiclass task with two foreground classes:

* labels: every pixel takes the most probable of background (0), grey matter (1) and white matter (2), with
  P(background) = 1 - P(GM) - P(WM); CSF and everything outside the brain count as background. The rule runs
  on the probability maps *after* they are resampled to the output size, so a label is the most probable
  tissue of the output pixel rather than a nearest-neighbour pick that aliases the thin cortex.
* slices: along ``cfg.planes`` ("axial", "coronal"), keeping those whose brain area (GM + WM >= 0.5) is at
  least ``MIN_BRAIN_AREA`` of the plane's largest, which drops the tips of the brain: a few specks of tissue.
  Sagittal slices are refused: the template is left-right symmetric, so every sagittal slice has a mirror twin
  that a split would put on the other side.
* crop: one square window per plane around the bounding box of the brain over all kept slices, plus a margin,
  so all slices of a plane share one pixel size and keep their real proportions.
* split: contiguous slabs, fixed by ``cfg.split_seed`` (see ``brain_split``), held out for validation and test.
  Both are within-subject: one template, so held-out anatomy, not a new brain. Axial and coronal slices cross,
  so with both planes every training slice is rendered from a template whose validation and test blocks are
  zeroed, and every test slice from one whose validation block is (see ``blocked_template``): no validation or
  test voxel ever reaches training, and no voxel is both validated and tested on.
* variety: the template gives the same slices every time, so ``seed`` draws a mild augmentation (see
  ``make_brain_dataset``) that makes every environment instance a slightly different problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from rlsched.config import ConfigError, DataConfig
from rlsched.seg.dataset import SegmentationData

# axes of a (map, X, Y, Z) RAS volume in the order slice, map, row, column; rows are later flipped so that
# anterior (axial) or superior (coronal) is up
_AXES = {"axial": (3, 0, 2, 1), "coronal": (2, 0, 3, 1)}
PLANES = tuple(_AXES)
_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_MAPS = ("t1", "gm", "wm")
Slice = tuple[str, int]  # (plane, slice index along that plane's axis)

MIN_BRAIN_AREA = 0.2  # keep slices whose brain area is at least this fraction of the plane's largest slice
MARGIN = 0.05  # crop margin on each side, as a fraction of the brain's larger extent
SLAB = 8  # slices per split slab: ~8 mm, well beyond the smoothness of neighbouring 1 mm slices
GAP = 2  # voxels within this many slices of a validation slice are kept out of training, in every plane
MAX_SHIFT = 0.04  # largest random shift of the crop window, as a fraction of its side
NOISE = (0.01, 0.04)  # per-instance Gaussian noise std, on T1 intensities in [0, 1] (GM ~0.65, WM ~0.84)
BIAS = (0.0, 0.15)  # per-instance bias-field strength: the field lies in exp([-s, s])
GAIN = (0.9, 1.1)  # per-slice intensity gain
GAMMA = (0.8, 1.25)  # per-slice gamma, drawn log-uniformly


class BrainExtraMissing(ImportError):
    """nilearn or nibabel is missing; the message gives the pip command that installs them."""


@dataclass(frozen=True)
class BrainSlices:
    """Template slices of the train, validation and test pools, as (plane, slice index) pairs in ascending
    order."""

    train: tuple[Slice, ...]
    val: tuple[Slice, ...]
    test: tuple[Slice, ...]


@dataclass(frozen=True)
class _Layout:
    """What one plane contributes: its kept slices and the crop window they all share."""

    slices: tuple[int, ...]
    top: int
    left: int
    size: int


@lru_cache(maxsize=1)
def load_template() -> np.ndarray:
    """T1, GM and WM as one read-only uint8 array (3, X, Y, Z); cached as envs rebuild data every reset."""
    try:
        import nibabel
        import nilearn
    except ImportError as err:
        raise BrainExtraMissing(
            'data source "brain" needs nilearn and nibabel, which ship and read the MNI152 template: '
            'pip install "rlsched[brain]"'
        ) from err
    folder = resources.files(nilearn) / "datasets" / "data"
    maps = []
    for name in _MAPS:
        ref = folder / _TEMPLATE.format(name)
        if not ref.is_file():
            raise FileNotFoundError(
                f"nilearn {nilearn.__version__} does not ship {ref.name}; "
                'upgrade it: pip install -U "rlsched[brain]"'
            )
        with resources.as_file(ref) as path:
            volume = np.asarray(nibabel.load(path).dataobj)
        if volume.dtype != np.uint8:
            raise ValueError(
                f"{ref.name}: expected uint8 voxels (0..255), got {volume.dtype}; "
                "this nilearn version packs the template differently"
            )
        maps.append(volume)
    volumes = np.stack(maps)
    volumes.flags.writeable = False
    return volumes


def _plane_stack(volumes: np.ndarray, plane: str) -> np.ndarray:
    """View of the volumes as (slice, map, row, column) for one plane, upright."""
    return volumes.transpose(_AXES[plane])[:, :, ::-1, :]


@lru_cache(maxsize=None)
def _layout(plane: str) -> _Layout:
    """Kept slices and crop window of a plane; cached because they depend on the template only."""
    stack = _plane_stack(load_template(), plane)
    brain = stack[:, 1].astype(np.uint16) + stack[:, 2] >= 128  # P(GM) + P(WM) >= 0.5 on the 0..255 scale
    area = brain.sum(axis=(1, 2))
    slices = np.flatnonzero(area >= MIN_BRAIN_AREA * area.max())
    rows = np.flatnonzero(brain[slices].any(axis=(0, 2)))
    cols = np.flatnonzero(brain[slices].any(axis=(0, 1)))
    extent = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    size = math.ceil(extent * (1 + 2 * MARGIN))
    top = (rows[0] + rows[-1] + 1 - size) // 2
    left = (cols[0] + cols[-1] + 1 - size) // 2
    return _Layout(tuple(int(i) for i in slices), int(top), int(left), size)


def tissue_labels(gm: torch.Tensor, wm: torch.Tensor) -> torch.Tensor:
    """uint8 labels (0 background, 1 grey, 2 white matter) from GM and WM probabilities in [0, 1]: the most
    probable of the three, with P(background) = 1 - P(GM) - P(WM). One rule for every user of the template."""
    return torch.stack([1 - gm - wm, gm, wm], dim=1).argmax(dim=1).to(torch.uint8)


def full_slices(plane: str) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """A plane's kept slices at the template's own 1 mm resolution, uncropped and unaugmented: slice indices,
    T1 (N, H, W) uint8 and ``tissue_labels`` (N, H, W) uint8, upright. For exporting the template's slices as
    they are (``rlsched.brain_folder``), rather than as an environment instance sees them."""
    if plane not in PLANES:
        raise ValueError(
            f"plane {plane!r}: use one of {list(PLANES)} (sagittal slices of the symmetric "
            "template come in mirror-twin pairs)"
        )
    slices = _layout(plane).slices
    stack = _plane_stack(load_template(), plane)[list(slices)]
    gm, wm = torch.from_numpy(stack[:, 1:3].astype(np.float32) / 255).unbind(1)
    return slices, stack[:, 0].copy(), tissue_labels(gm, wm).numpy()


def _check(cfg: DataConfig) -> None:
    """Refuse settings the template cannot serve, with the fix in the message."""
    if cfg.task != "multiclass" or cfg.classes != 2:
        raise ConfigError(
            f"[data] source='brain' is a multiclass task with 2 classes (grey, white matter); "
            f"got task={cfg.task!r}, classes={cfg.classes}: set task='multiclass', classes=2"
        )
    if not cfg.planes or len(set(cfg.planes)) != len(cfg.planes) or not set(cfg.planes) <= set(PLANES):
        raise ConfigError(
            f"[data] planes={list(cfg.planes)}: use distinct planes out of {list(PLANES)} "
            "(sagittal slices of the symmetric template come in mirror-twin pairs that leak "
            "across a split)"
        )


def _far(slices: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Which ``slices`` lie more than ``GAP`` slices from every one of ``others`` (one plane's indices)."""
    return np.abs(slices[:, None] - others[None, :]).min(axis=1) > GAP


def brain_split(cfg: DataConfig) -> BrainSlices:
    """Split each plane's kept slices into train, validation and test pools by contiguous slabs.

    Neighbouring 1 mm slices are nearly identical, so a random split would validate on near-copies of training
    slices. Each plane's slices are cut into slabs of ``SLAB`` consecutive slices; ``round(val_fraction *
    slabs)`` of them (at least two, never all) are held out, drawn from ``cfg.split_seed`` alone, and half of
    those (rounded down; a second stream of the seed) hold the test slices, the rest the validation slices.
    Train slices within ``GAP`` slices of a held-out slice, and test slices within ``GAP`` of a validation
    slice, are dropped so that no pair straddles a cut. The split does not depend on the instance seed. A
    slice of one plane still crosses the held-out slices of the other; ``blocked_template`` removes those
    voxels before training and test slices are rendered.
    """
    _check(cfg)
    train: list[Slice] = []
    val: list[Slice] = []
    test: list[Slice] = []
    for plane in PLANES:
        if plane not in cfg.planes:
            continue
        slices = np.asarray(_layout(plane).slices)
        slab = (slices - slices[0]) // SLAB
        n_slabs = int(slab[-1]) + 1
        n_held = min(max(2, round(cfg.val_fraction * n_slabs)), n_slabs - 1)
        held = np.random.default_rng([cfg.split_seed, PLANES.index(plane)]).choice(
            n_slabs, n_held, replace=False
        )
        test_rng = np.random.default_rng([cfg.split_seed, PLANES.index(plane), 1])
        is_held = np.isin(slab, held)
        is_test = np.isin(slab, test_rng.choice(held, n_held // 2, replace=False))
        is_val = is_held & ~is_test
        train += [(plane, int(i)) for i in slices[~is_held & _far(slices, slices[is_held])]]
        val += [(plane, int(i)) for i in slices[is_val]]
        test += [(plane, int(i)) for i in slices[is_test & _far(slices, slices[is_val])]]
    return BrainSlices(tuple(train), tuple(val), tuple(test))


def _subset(pool: tuple[Slice, ...], n: int, rng: np.random.Generator) -> tuple[Slice, ...]:
    """``n`` slices of a pool, sampled without replacement and kept in pool order."""
    if len(pool) == n:
        return pool
    return tuple(pool[i] for i in np.sort(rng.choice(len(pool), n, replace=False)))


def select_slices(cfg: DataConfig, seed: int) -> BrainSlices:
    """The slices one instance uses: ``cfg.n_train`` / ``n_val`` / ``n_test`` slices of ``brain_split``'s pools.

    The validation and test samples depend on ``cfg.split_seed`` only, so every instance is validated and
    tested on the same anatomy; the training sample is drawn from ``seed``. Asking for more slices than a pool
    holds is an error, so a preset's counts are the counts that train.
    """
    split = brain_split(cfg)
    if cfg.n_train > len(split.train) or cfg.n_val > len(split.val) or cfg.n_test > len(split.test):
        raise ConfigError(
            f"[data] n_train={cfg.n_train}, n_val={cfg.n_val}, n_test={cfg.n_test}: the brain split "
            f"of planes {list(cfg.planes)} (val_fraction={cfg.val_fraction}) holds "
            f"{len(split.train)} training, {len(split.val)} validation and {len(split.test)} test "
            f"slices; set n_train <= {len(split.train)}, n_val <= {len(split.val)} and n_test <= "
            f"{len(split.test)} (or raise val_fraction for more held-out slices)"
        )
    # the held-out samples draw from streams of the split seed that brain_split does not use
    val_rng, test_rng = (np.random.default_rng([cfg.split_seed, len(PLANES) + k]) for k in (0, 1))
    return BrainSlices(
        train=_subset(split.train, cfg.n_train, np.random.default_rng([seed, 0])),
        val=_subset(split.val, cfg.n_val, val_rng),
        test=_subset(split.test, cfg.n_test, test_rng),
    )


def _crop(slice_: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """Square window of a (map, row, column) slice; zero (background) where it leaves the volume."""
    _, height, width = slice_.shape
    out = np.zeros((slice_.shape[0], size, size), slice_.dtype)
    r0, r1 = max(top, 0), min(top + size, height)
    c0, c1 = max(left, 0), min(left + size, width)
    out[:, r0 - top : r1 - top, c0 - left : c1 - left] = slice_[:, r0:r1, c0:c1]
    return out


@lru_cache(maxsize=3)
def blocked_template(val: tuple[Slice, ...]) -> np.ndarray:
    """T1, GM, WM and a block map as read-only uint8 (4, X, Y, Z), with the block of the slices ``val`` zeroed.

    The block is every voxel within ``GAP`` slices of a slice in ``val``. An axial training slice runs through
    every coronal held-out slice (and vice versa), so training slices are cut from the volume that blocks the
    validation and test slices, and test slices from the one that blocks the validation slices: the block
    reads as background and the block map (255 inside it) marks the pixels it touched, which carry no label.
    ``val=()`` gives the whole template, for the validation slices themselves. Cached (those three volumes):
    envs rebuild data every reset, and the held-out samples are the same for every instance.
    """
    template = load_template()
    block = np.zeros(template.shape[1:], dtype=bool)
    for plane, i in val:
        index: list[slice] = [slice(None)] * 3
        index[_AXES[plane][0] - 1] = slice(max(i - GAP, 0), i + GAP + 1)
        block[tuple(index)] = True
    volumes = np.concatenate([template, np.zeros((1, *block.shape), np.uint8)])
    volumes[:3, block] = 0
    volumes[3, block] = 255
    volumes.flags.writeable = False
    return volumes


def _render(
    volumes: np.ndarray,
    slices: tuple[Slice, ...],
    image_size: int,
    ignore_index: int,
    noise: float,
    bias: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, S, S) on the raw T1 scale and masks (N, S, S) uint8 for slices of ``blocked_template``.

    A pixel that any blocked voxel contributed to is ``ignore_index`` in the mask.
    """
    maps = []
    for plane in PLANES:
        indices = [i for p, i in slices if p == plane]
        if not indices:
            continue
        layout, stack = _layout(plane), _plane_stack(volumes, plane)
        shift = round(MAX_SHIFT * layout.size)
        offsets = rng.integers(-shift, shift + 1, size=(len(indices), 2))
        windows = np.stack(
            [
                _crop(stack[i], layout.top + dy, layout.left + dx, layout.size)
                for i, (dy, dx) in zip(indices, offsets)
            ]
        )
        # resample all maps alike (antialiased: this mostly shrinks), then label as the module docstring says
        maps.append(
            F.interpolate(
                torch.from_numpy(windows).float().div_(255),
                size=(image_size, image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        )
    t1, gm, wm, blocked = torch.cat(maps).unbind(1)
    masks = tissue_labels(gm, wm)
    masks[blocked > 0] = ignore_index

    n = len(t1)
    gain = torch.from_numpy(rng.uniform(*GAIN, size=(n, 1, 1))).float()
    gamma = torch.from_numpy(np.exp(rng.uniform(*np.log(GAMMA), size=(n, 1, 1)))).float()
    grid = torch.linspace(-1, 1, image_size)
    y, x = grid[:, None], grid[None, :]
    c = torch.from_numpy(rng.uniform(-1, 1, size=(n, 3, 1, 1))).float()
    field = torch.exp(bias * (c[:, 0] * x + c[:, 1] * y + c[:, 2] * x * y) / 3)  # smooth, within exp([-b, b])
    images = gain * t1.pow(gamma) * field + noise * torch.from_numpy(rng.standard_normal(t1.shape)).float()
    return images.unsqueeze(1), masks


def make_brain_dataset(cfg: DataConfig, seed: int) -> SegmentationData:
    """Brain-tissue slices (0 background, 1 grey matter, 2 white matter) for one environment instance.

    The slices come from ``select_slices``, so the train/validation/test split does not depend on ``seed``;
    training slices are cut from ``blocked_template`` so they hold no validation or test voxel, test slices so
    they hold no validation voxel. What ``seed`` (>= 0) changes is a mild augmentation, the same kind for every
    split so they stay one distribution: per instance a noise level and bias-field strength (a "scanner"), per
    slice a crop shift of up to ``MAX_SHIFT``, an intensity gain and gamma, a smooth multiplicative bias field
    and Gaussian noise (test slices draw theirs from a second stream of ``seed``, leaving the train and
    validation slices of a seed as they were). Images are then standardised with the training mean and std and
    repeated to ``cfg.channels``.
    """
    slices = select_slices(cfg, seed)
    rng = np.random.default_rng([seed, 1])
    noise, bias = rng.uniform(*NOISE), rng.uniform(*BIAS)
    train_images, train_masks = _render(
        blocked_template(slices.val + slices.test),
        slices.train,
        cfg.image_size,
        cfg.ignore_index,
        noise,
        bias,
        rng,
    )
    val_images, val_masks = _render(
        blocked_template(()), slices.val, cfg.image_size, cfg.ignore_index, noise, bias, rng
    )
    test_images, test_masks = _render(
        blocked_template(slices.val),
        slices.test,
        cfg.image_size,
        cfg.ignore_index,
        noise,
        bias,
        np.random.default_rng([seed, 2]),
    )
    mean, std = train_images.mean(), train_images.std()

    def standardised(images: torch.Tensor) -> torch.Tensor:
        return ((images - mean) / std).repeat(1, cfg.channels, 1, 1)

    return SegmentationData(
        train_images=standardised(train_images),
        train_masks=train_masks,
        val_images=standardised(val_images),
        val_masks=val_masks,
        test_images=standardised(test_images),
        test_masks=test_masks,
        task="multiclass",
        classes=2,
        ignore_index=cfg.ignore_index,
    )


__all__ = [
    "BrainExtraMissing",
    "BrainSlices",
    "PLANES",
    "blocked_template",
    "brain_split",
    "full_slices",
    "load_template",
    "make_brain_dataset",
    "select_slices",
    "tissue_labels",
]
