"""Datasets: synthetic generator properties, folder loading, and the errors users see."""

from __future__ import annotations

import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlsched.config import ConfigError, DataConfig
from rlsched.seg.dataset import DatasetError, SegmentationData
from rlsched.seg.sources import make_dataset
from rlsched.seg.sources.synthetic import _REACH, SHAPES, _gaussian_blur, _inside

SMALL = DataConfig(image_size=32, n_train=24, n_val=8, n_test=8)
CLASSES = {"binary": 1, "multiclass": 3, "multilabel": 3}


def synthetic(seed: int = 0, **changes) -> SegmentationData:
    return make_dataset(replace(SMALL, **changes), seed)


def tensors(data: SegmentationData) -> list[torch.Tensor]:
    return [
        data.train_images,
        data.train_masks,
        data.val_images,
        data.val_masks,
        data.test_images,
        data.test_masks,
    ]


# ------------------------------------------------------------------------------------------------ synthetic


@pytest.mark.parametrize("task", list(CLASSES))
def test_same_seed_is_bit_identical_and_other_seed_differs(task):
    a, b, c = (synthetic(seed, task=task, classes=CLASSES[task]) for seed in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(tensors(a), tensors(b)))
    assert not torch.equal(a.train_images, c.train_images)
    assert not torch.equal(a.val_masks, c.val_masks)
    assert not torch.equal(a.test_masks, c.test_masks)


@pytest.mark.parametrize("task", list(CLASSES))
@pytest.mark.parametrize("ignore_border", [False, True])
def test_the_test_split_leaves_a_seeds_train_and_val_scenes_as_they_were(task, ignore_border):
    """Test scenes come from a stream of their own: results measured before the split existed stay valid."""
    a, b = (
        synthetic(5, task=task, classes=CLASSES[task], ignore_border=ignore_border, n_test=n) for n in (3, 9)
    )
    assert all(torch.equal(x, y) for x, y in zip(tensors(a)[:4], tensors(b)[:4]))
    assert len(a.test_images) == 3 and len(b.test_images) == 9


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("task", list(CLASSES))
def test_shapes_dtypes_and_values(task, channels):
    k = CLASSES[task]
    data = synthetic(task=task, classes=k, channels=channels, n_train=48, max_objects=6)
    assert (data.task, data.classes, data.ignore_index) == (task, k, 255)
    assert data.train_images.shape == (48, channels, 32, 32)
    assert data.val_images.shape == data.test_images.shape == (8, channels, 32, 32)
    assert data.train_images.dtype == data.val_images.dtype == data.test_images.dtype == torch.float32
    assert data.train_masks.dtype == data.val_masks.dtype == data.test_masks.dtype == torch.uint8
    mask_shape = (32, 32) if task != "multilabel" else (k, 32, 32)
    assert data.train_masks.shape == (48, *mask_shape) and data.val_masks.shape == (8, *mask_shape)
    assert data.test_masks.shape == (8, *mask_shape)
    values = set(data.train_masks.unique().tolist())
    assert values == (set(range(k + 1)) if task == "multiclass" else {0, 1})
    if task == "multilabel":  # kinds overlap, and an overlap is brighter than either kind alone
        labels = data.train_masks.sum(dim=1)
        brightness = data.train_images.mean(dim=1)
        assert (labels >= 2).any() and brightness[labels >= 2].mean() > brightness[labels == 1].mean() + 0.3
    # normalised with train statistics, per channel
    mean, std = data.train_images.mean(dim=(0, 2, 3)), data.train_images.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(channels), atol=1e-3)
    assert torch.allclose(std, torch.ones(channels), atol=1e-2)
    assert torch.isfinite(data.val_images).all() and torch.isfinite(data.test_images).all()


def test_kinds_beyond_the_shape_list_are_still_labelled():
    k = len(SHAPES) + 2
    data = synthetic(task="multiclass", classes=k, n_train=64, max_objects=6)
    assert set(data.train_masks.unique().tolist()) == set(range(k + 1))


@pytest.mark.parametrize("task", list(CLASSES))
def test_ignore_border_marks_exactly_the_pixels_outside_the_field_of_view(task):
    data = synthetic(task=task, classes=CLASSES[task], ignore_border=True)
    offset = torch.arange(32) - 15.5
    outside = offset[:, None] ** 2 + offset[None, :] ** 2 > 16**2
    for masks, images in (
        (data.train_masks, data.train_images),
        (data.val_masks, data.val_images),
        (data.test_masks, data.test_images),
    ):
        ignored = masks == 255
        assert ignored[..., outside].all()
        assert not ignored[..., ~outside].any()
        dark = images[..., outside]
        assert torch.equal(dark, torch.full_like(dark, dark.flatten()[0].item()))
        assert dark.flatten()[0] < images[..., ~outside].min()
    assert not (synthetic(task=task, classes=CLASSES[task]).train_masks == 255).any()


def test_foreground_fraction_grows_with_radius():
    fractions = [
        (synthetic(n_train=64, min_radius=lo, max_radius=hi).train_masks == 1).float().mean().item()
        for lo, hi in ((0.04, 0.06), (0.08, 0.12), (0.16, 0.24))
    ]
    assert 0 < fractions[0] < fractions[1] < fractions[2] < 0.9


def test_train_val_and_test_share_no_image_and_follow_one_distribution():
    data = synthetic(n_train=64, n_val=64, n_test=64)
    train, val, test = (
        images.flatten(1) for images in (data.train_images, data.val_images, data.test_images)
    )
    assert torch.cdist(val, train).min() > 1.0
    assert torch.cdist(test, train).min() > 1.0 and torch.cdist(test, val).min() > 1.0
    fractions = [
        (masks == 1).float().mean().item() for masks in (data.train_masks, data.val_masks, data.test_masks)
    ]
    assert max(fractions) - min(fractions) < 0.03
    assert (
        abs(data.test_images.mean()) < 0.1 and abs(data.test_images.std() - 1) < 0.1
    )  # train statistics fit


def test_foreground_is_brighter_but_not_separable_by_one_threshold():
    data = synthetic(n_train=64)
    pixels, foreground = data.train_images[:, 0], data.train_masks == 1
    assert pixels[foreground].mean() > pixels[~foreground].mean() + 0.5
    dice = [
        (2 * ((pixels > t) & foreground).sum() / ((pixels > t).sum() + foreground.sum())).item()
        for t in np.linspace(-1, 3, 41)
    ]
    assert max(dice) < 0.7


def test_colour_carries_signal_in_rgb():
    data = synthetic(channels=3, n_train=64)
    redness = data.train_images[:, 0] - data.train_images[:, 1:].mean(dim=1)
    foreground = data.train_masks == 1
    assert redness[foreground].mean() > redness[~foreground].mean() + 0.3


def test_shapes_fit_their_window_and_differ_from_each_other():
    axis = torch.linspace(-1.6, 1.6, 161).numpy()
    u = np.broadcast_to(axis[None, None, :], (1, 161, 161))
    v = np.broadcast_to(axis[None, :, None], (1, 161, 161))
    radius = np.sqrt(u**2 + v**2)[0]
    rng = np.random.default_rng(0)
    masks = {}
    for shape, reach in _REACH.items():
        masks[shape] = _inside(shape, u, v, rng)[0]
        assert masks[shape].any() and not masks[shape][radius > reach].any(), shape
    for i, a in enumerate(SHAPES):
        for b in SHAPES[i + 1 :]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.8, (a, b, iou)


def test_gaussian_blur_smooths_and_keeps_the_mean():
    noise = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    assert _gaussian_blur(noise, 0.0) is noise
    blurred = _gaussian_blur(noise, 1.5)
    assert blurred.shape == noise.shape and blurred.dtype == np.float32
    assert blurred.std() < 0.5 * noise.std()
    assert np.allclose(_gaussian_blur(np.full((1, 8, 8), 2.0, dtype=np.float32), 3.0), 2.0)


def test_rejects_bad_generator_settings_and_clashing_ignore_index():
    with pytest.raises(DatasetError, match="noise >= 0"):
        synthetic(noise=-0.1)
    with pytest.raises(DatasetError, match="ignore_index=2 collides"):
        synthetic(task="multiclass", classes=3, ignore_index=2)


def test_brain_source_is_dispatched_lazily(monkeypatch):
    calls, stand_in = [], synthetic()
    module = types.ModuleType("rlsched.seg.sources.brain")
    module.make_brain_dataset = lambda cfg, seed: calls.append((cfg.source, seed)) or stand_in
    monkeypatch.setitem(sys.modules, "rlsched.seg.sources.brain", module)
    assert make_dataset(DataConfig(source="brain"), 7) is stand_in and calls == [("brain", 7)]


# -------------------------------------------------------------------------------------------------- folders

SIZE = 16
N_REGULAR = 6  # pairs case0..case5; mask of case i has its top i+1 rows set, image brightness grows with i


def save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode).save(path)


def make_folder(root: Path) -> Path:
    """Gray and RGB PNGs, one JPG, 0/255 masks, and a 40x24 pair ("odd") that must be cropped and resized."""
    for i in range(N_REGULAR):
        gray = np.full((SIZE, SIZE), 20 + 30 * i)
        gray[::2, ::2] += 10  # some texture
        image = gray if i % 2 else np.stack([gray] * 3, axis=-1)
        suffix = ".jpg" if i == 3 else ".png"
        save(root / "images" / f"case{i}{suffix}", image)
        mask = np.zeros((SIZE, SIZE))
        mask[: i + 1] = 255
        save(root / "masks" / f"case{i}.png", mask)
    save(root / "images" / "odd.png", np.full((24, 40, 3), 230))
    mask = np.zeros((24, 40))
    mask[:, 8:20] = 255  # the left half of the centred 24x24 crop (columns 8..31)
    save(root / "masks" / "odd.png", mask)
    return root


def folder_cfg(root: Path, **changes) -> DataConfig:
    return replace(DataConfig(source="folder", root=str(root), image_size=SIZE), **changes)


def everything(data: SegmentationData) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks of the train, validation and test splits, in that order."""
    return (
        torch.cat([data.train_images, data.val_images, data.test_images]),
        torch.cat([data.train_masks, data.val_masks, data.test_masks]),
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_loads_pairs_resized_and_mapped(tmp_path, channels):
    data = make_dataset(
        folder_cfg(make_folder(tmp_path), channels=channels, n_train=99, n_val=99, n_test=99), seed=0
    )
    assert data.train_images.shape == (5, channels, SIZE, SIZE)  # 7 pairs: round(0.2 * 7) = 1 val, 1 test
    assert data.val_images.shape == data.test_images.shape == (1, channels, SIZE, SIZE)
    assert data.train_masks.shape == (5, SIZE, SIZE) and data.train_masks.dtype == torch.uint8
    images, masks = everything(data)
    assert set(masks.unique().tolist()) == {0, 1}  # 0/255 masks became 0/1
    fractions = (masks == 1).float().mean(dim=(1, 2))
    # every pair's mask has its own foreground fraction: each file lands in exactly one split
    expected = sorted([(i + 1) / SIZE for i in range(N_REGULAR)] + [0.5])
    assert torch.allclose(fractions.sort().values, torch.tensor(expected))
    # each image stays with its own mask: brightness was made to rise with the foreground fraction
    brightness = images.mean(dim=(1, 2, 3))[fractions.argsort()]
    assert (brightness.diff() > 0).all()
    # one affine normalisation (fitted on train) maps raw brightness to tensors for every split alike
    raw = torch.tensor([22.5 + 30 * i for i in range(N_REGULAR)] + [230.0])[fractions.argsort().argsort()]
    n_train = len(data.train_images)
    slope, offset = np.polyfit(raw[:n_train].numpy(), images[:n_train].mean(dim=(1, 2, 3)).numpy(), 1)
    assert abs(images[:n_train].mean()) < 1e-4
    assert torch.allclose(images[n_train:].mean(dim=(1, 2, 3)), slope * raw[n_train:] + offset, atol=0.05)


def test_folder_odd_size_pair_is_centre_cropped_then_resized(tmp_path):
    _, masks = everything(make_dataset(folder_cfg(make_folder(tmp_path)), seed=0))
    odd = masks[(masks == 1).float().mean(dim=(1, 2)) == 0.5][0]
    assert (odd[:, : SIZE // 2] == 1).all() and (odd[:, SIZE // 2 :] == 0).all()


def test_folder_split_is_deterministic_and_follows_split_seed(tmp_path):
    root = make_folder(tmp_path)

    def val_fractions(split_seed: int, test_fraction: float = 0.2) -> list[float]:
        cfg = folder_cfg(root, val_fraction=0.5, test_fraction=test_fraction, split_seed=split_seed)
        data = make_dataset(cfg, seed=split_seed + 10)
        n_test = round(test_fraction * 7)
        assert len(data.val_masks) == 4 and len(data.test_masks) == n_test  # round(0.5 * 7) = 4
        assert len(data.train_masks) == 3 - n_test
        return sorted((data.val_masks == 1).float().mean(dim=(1, 2)).tolist())

    assert val_fractions(0) == val_fractions(0)
    assert val_fractions(0) != val_fractions(1)
    assert val_fractions(0) == val_fractions(0, test_fraction=0.3)  # the test files come out of training


def test_folder_fractions_must_leave_files_to_train_on(tmp_path):
    with pytest.raises(ConfigError, match=r"val_fraction=0.5, test_fraction=0.5: .* together below 1"):
        folder_cfg(tmp_path, val_fraction=0.5, test_fraction=0.5)


def test_folder_mask_map_and_default_mappings(tmp_path):
    root = make_folder(tmp_path)
    for path in (root / "masks").iterdir():  # relabel foreground 255 -> 128, and mark the last row "ignore"
        raw = np.asarray(Image.open(path)).copy()
        raw[raw == 255] = 128
        raw[-1] = 255
        save(path, raw)
    with pytest.raises(DatasetError, match=r"raw mask values \[128\].*mask_map"):
        make_dataset(folder_cfg(root), seed=0)
    _, masks = everything(make_dataset(folder_cfg(root, mask_map={"0": 0, "128": 1, "255": 255}), seed=0))
    assert set(masks.unique().tolist()) == {0, 1, 255}
    assert (masks[:, -1] == 255).all()

    for path in (root / "masks").iterdir():  # 0/1/2 labels: identity for multiclass
        raw = np.asarray(Image.open(path)).copy()
        save(path, np.select([raw == 128, raw == 255], [1, 2], 0))
    _, masks = everything(make_dataset(folder_cfg(root, task="multiclass", classes=2), seed=0))
    assert set(masks.unique().tolist()) == {0, 1, 2}
    with pytest.raises(DatasetError, match=r"values \[2\] are not classes of task='binary'"):
        make_dataset(folder_cfg(root), seed=0)


def stray_value(root: Path) -> Path:
    """0/255 masks of make_folder with one pixel of 128 in one mask: the case that calls for a mask_map."""
    raw = np.asarray(Image.open(root / "masks" / "case2.png")).copy()
    raw[-1, -1] = 128
    save(root / "masks" / "case2.png", raw)
    return root


def test_folder_mask_map_must_list_every_raw_value(tmp_path):
    root = stray_value(make_folder(tmp_path))
    with pytest.raises(
        DatasetError,
        match=r'raw mask values \[128\].*mask_map = \{"0" = 0, "128" = 255, '
        r'"255" = 1\}',
    ):
        make_dataset(folder_cfg(root), seed=0)
    # a partial map used to leave 255 standing for itself, i.e. "ignore": every foreground pixel was lost
    with pytest.raises(
        DatasetError,
        match=r"does not list the raw mask values \[0, 255\].*"
        r'mask_map = \{"0" = 0, "128" = 0, "255" = 1\}',
    ):
        make_dataset(folder_cfg(root, mask_map={"128": 0}), seed=0)
    _, masks = everything(make_dataset(folder_cfg(root, mask_map={"0": 0, "128": 0, "255": 1}), seed=0))
    assert set(masks.unique().tolist()) == {0, 1}


@pytest.mark.parametrize(
    "mask_map, cause",
    [
        ({}, r"0 -> 0 and 0% of pixels are ignore_index=255"),  # every mask is empty
        ({"0": 255, "255": 255}, r"0 -> 255, 255 -> 255 and 100% of pixels are ignore_index=255"),
    ],
)
def test_folder_without_foreground_is_an_error_naming_the_cause(tmp_path, mask_map, cause):
    root = make_folder(tmp_path)
    if not mask_map:
        for path in (root / "masks").iterdir():
            save(path, np.zeros_like(np.asarray(Image.open(path))))
    with pytest.raises(
        DatasetError,
        match=f"no mask has a foreground pixel \\(class 1..1\\); raw values "
        f"map {cause}. Map the raw value that marks foreground",
    ):
        make_dataset(folder_cfg(root, mask_map=mask_map), seed=0)


def test_folder_split_without_foreground_is_an_error(tmp_path):
    root = make_folder(tmp_path)
    for path in (root / "masks").iterdir():  # foreground in one mask only: one split has none
        if path.stem != "case5":
            save(path, np.zeros_like(np.asarray(Image.open(path))))
    with pytest.raises(
        DatasetError,
        match=r"no mask of the (training|validation|test) split \(case\d.png.*\) "
        r"has a foreground pixel: change \[data\] split_seed",
    ):
        make_dataset(folder_cfg(root), seed=0)


def test_folder_errors_for_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="is not a folder: set root"):
        make_dataset(folder_cfg(tmp_path / "nowhere"), seed=0)
    with pytest.raises(DatasetError, match="has no images/ folder"):
        make_dataset(folder_cfg(tmp_path), seed=0)
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="has no masks/ folder"):
        make_dataset(folder_cfg(tmp_path), seed=0)
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"images holds no image files \(\.png"):
        make_dataset(folder_cfg(tmp_path), seed=0)


def test_folder_error_names_a_file_that_is_no_readable_image(tmp_path):
    root = make_folder(tmp_path)
    (root / "images" / "case1.png").write_text("not an image")
    with pytest.raises(
        DatasetError,
        match=r"images/case1.png: not an image PIL can read, whatever its "
        r"\.png name says: replace it",
    ):
        make_dataset(folder_cfg(root), seed=0)
    save(root / "images" / "case1.png", np.random.default_rng(0).integers(0, 256, (64, 64)))
    data = (root / "images" / "case1.png").read_bytes()
    (root / "images" / "case1.png").write_bytes(data[: len(data) // 2])  # cut off: the header still parses
    with pytest.raises(
        DatasetError,
        match=r"images/case1.png: cannot decode the image \(image file is "
        r"truncated\): replace it",
    ):
        make_dataset(folder_cfg(root), seed=0)


def test_folder_error_lists_unmatched_files(tmp_path):
    root = make_folder(tmp_path)
    (root / "masks" / "case0.png").rename(root / "masks" / "other.png")
    (root / "images" / "case1.png").unlink()
    (root / "masks" / "odd.png").unlink()
    with pytest.raises(DatasetError, match=r"2 image\(s\) without a mask: case0.png, odd.png") as err:
        make_dataset(folder_cfg(root), seed=0)
    assert "2 mask(s) without an image: case1.png, other.png" in str(err.value)
    assert "same file stem" in str(err.value)


def test_folder_error_names_size_mismatch(tmp_path):
    root = make_folder(tmp_path)
    save(root / "masks" / "case2.png", np.zeros((SIZE, SIZE + 4)))
    with pytest.raises(DatasetError, match=r"case2.png is 16x16 but its mask case2.png is 20x16"):
        make_dataset(folder_cfg(root), seed=0)


def test_folder_error_for_rgb_masks(tmp_path):
    root = make_folder(tmp_path)
    save(root / "masks" / "case1.png", np.zeros((SIZE, SIZE, 3)))
    with pytest.raises(DatasetError, match="single-channel label images"):
        make_dataset(folder_cfg(root), seed=0)


def test_folder_error_for_too_few_pairs(tmp_path):
    for name in ("one", "two"):
        save(tmp_path / "images" / f"{name}.png", np.zeros((SIZE, SIZE)))
        save(tmp_path / "masks" / f"{name}.png", np.zeros((SIZE, SIZE)))
    with pytest.raises(
        DatasetError,
        match=r"found 2 image/mask pair\(s\); need at least 3 \(one each to train, "
        r"validate and test on\)",
    ):
        make_dataset(folder_cfg(tmp_path), seed=0)


def test_folder_rejects_multilabel(tmp_path):
    with pytest.raises(DatasetError, match="supports only task='binary' or 'multiclass'"):
        make_dataset(folder_cfg(make_folder(tmp_path), task="multilabel", classes=2), seed=0)
