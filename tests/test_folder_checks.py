"""Folder datasets that would train on garbage stop with an error naming the fix; every build says what it
holds in one line; a dataset too large for memory is refused before it is allocated."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image

import rlsched  # noqa: F401  (registers the env ids)
from rlsched.config import DataConfig
from rlsched.seg import dataset
from rlsched.seg import sources as data_module
from rlsched.seg.dataset import DatasetError, SegmentationData
from rlsched.seg.sources import make_dataset
from rlsched.seg.sources.synthetic import _field_of_view

N, SIZE = 12, 32  # the folders: 12 images of 32x32


def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """(8-bit image, 0/1 label) pairs: a bright disk on a noisy background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    pairs = []
    for _ in range(N):
        cy, cx, r = rng.integers(8, 24), rng.integers(8, 24), rng.integers(4, 9)
        label = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.uint8)
        image = (60 + 100 * label + rng.normal(0, 20, label.shape)).clip(0, 255).astype(np.uint8)
        pairs.append((image, label))
    return pairs


def write(
    root: Path, image=lambda i, a: Image.fromarray(a), mask=lambda i, m: Image.fromarray(m * 255)
) -> Path:
    """A folder of the scenes, each image and mask saved as the given functions turn them into PIL images."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (pixels, label) in enumerate(scenes()):
        image(i, pixels).save(root / "images" / f"case{i:02d}.png")
        mask(i, label).save(root / "masks" / f"case{i:02d}.png")
    return root


def cfg(root: Path, **changes) -> DataConfig:
    return replace(DataConfig(source="folder", root=str(root), image_size=SIZE), **changes)


def everything(data: SegmentationData) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.cat([data.train_images, data.val_images, data.test_images]),
        torch.cat([data.train_masks, data.val_masks, data.test_masks]),
    )


def proposed_map(message: str, which: int = 0) -> dict[str, int]:
    """The ``which``-th mask_map an error message proposes, as the dict its TOML line sets."""
    body = re.findall(r"mask_map = \{([^}]*)\}", message)[which]
    return {key: int(value) for key, value in re.findall(r'"(-?\d+)" = (\d+)', body)}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> SegmentationData:
    return make_dataset(cfg(write(tmp_path_factory.mktemp("clean") / "data")), seed=0)


def test_the_clean_folder_loads(clean):
    _, masks = everything(clean)
    assert set(masks.unique().tolist()) == {0, 1}
    assert 0.05 < (masks == 1).float().mean() < 0.15


def test_stray_ones_in_0_255_masks_stop_with_the_histogram_and_a_map_that_works(tmp_path, clean):
    def stray(i: int, label: np.ndarray) -> Image.Image:
        raw = label * 255
        raw[0, :3] = 1  # a few stray 1s: 255 would stand for itself, i.e. "ignore"
        return Image.fromarray(raw)

    root = write(tmp_path / "data", mask=stray)
    with pytest.raises(
        DatasetError,
        match=r"masks: 8.8% of mask pixels are 255 = ignore_index but only 0.3% "
        r"are foreground \(raw values: 0 \(91.0%\), 1 \(0.3%\), 255 "
        r"\(8.8%\)\)\. If 255 marks foreground, set",
    ) as err:
        make_dataset(cfg(root), seed=0)
    fix, confirm = proposed_map(str(err.value), 0), proposed_map(str(err.value), 1)
    assert fix == {"0": 0, "1": 1, "255": 1} and confirm == {"0": 0, "1": 1, "255": 255}
    _, masks = everything(make_dataset(cfg(root, mask_map=fix), seed=0))
    _, reference = everything(clean)
    assert (masks == 1).sum() == (reference == 1).sum() + 3 * N  # the disks, plus the stray pixels
    _, masks = everything(make_dataset(cfg(root, mask_map=confirm), seed=0))  # ignore confirmed: loads
    assert (masks == 255).float().mean() > 0.08


def test_a_legitimate_ignore_band_still_loads(tmp_path):
    def band(i: int, label: np.ndarray) -> Image.Image:
        raw = label.copy()
        raw[:1] = 255  # one row of "don't care": fewer pixels than the foreground
        return Image.fromarray(raw)

    _, masks = everything(make_dataset(cfg(write(tmp_path / "data", mask=band)), seed=0))
    assert set(masks.unique().tolist()) == {0, 1, 255}


@pytest.mark.parametrize("size", [SIZE, 24])  # at the files' size, and resized
def test_8_and_16_bit_copies_of_an_image_normalise_alike(tmp_path, clean, size):
    root = write(
        tmp_path / "data",
        image=lambda i, a: Image.fromarray(a.astype(np.uint16) * 257) if i % 2 else Image.fromarray(a),
    )
    assert {Image.open(p).mode for p in (root / "images").iterdir()} == {"L", "I;16"}
    images, _ = everything(make_dataset(cfg(root, image_size=size), seed=0))
    reference = (
        clean if size == SIZE else make_dataset(cfg(write(tmp_path / "8bit"), image_size=size), seed=0)
    )
    expected, _ = everything(reference)
    if size == SIZE:
        assert torch.equal(images, expected)
    else:  # 8-bit files resample in 8 bits, 16-bit ones in float: within one gray level (~0.025 here)
        assert torch.allclose(images, expected, atol=0.04)
    assert images.std(dim=(1, 2, 3)).min() > 0.5  # no image left near-black


def test_content_only_in_alpha_is_refused_naming_the_file(tmp_path):
    def alpha_only(i: int, a: np.ndarray) -> Image.Image:
        rgba = np.zeros((*a.shape, 4), np.uint8)
        rgba[..., 3] = a
        return Image.fromarray(rgba)

    root = write(tmp_path / "alpha", image=alpha_only)
    with pytest.raises(
        DatasetError,
        match=r"alpha/images/case00.png: the image's content is only in its alpha "
        r"channel \(mode RGBA, every colour value 0\).*getchannel\('A'\)",
    ):
        make_dataset(cfg(root), seed=0)
    with pytest.raises(DatasetError, match=r"content is only in its alpha channel \(mode LA"):
        make_dataset(
            cfg(
                write(
                    tmp_path / "la",
                    image=lambda i, a: Image.fromarray(np.stack([np.zeros_like(a), a], axis=-1)),
                )
            ),
            seed=0,
        )

    def transparent_corner(i: int, a: np.ndarray) -> Image.Image:  # content in colour, some alpha: fine
        alpha = np.full_like(a, 255)
        alpha[:4, :4] = 0
        return Image.fromarray(np.stack([a, a, a, alpha], axis=-1))

    images, _ = everything(make_dataset(cfg(write(tmp_path / "ok", image=transparent_corner)), seed=0))
    assert images.std(dim=(1, 2, 3)).min() > 0.5


def test_16_bit_0_65535_masks_propose_65535_as_foreground(tmp_path, clean):
    root = write(tmp_path / "data", mask=lambda i, m: Image.fromarray(m.astype(np.uint16) * 65535))
    assert Image.open(root / "masks" / "case00.png").mode == "I;16"
    with pytest.raises(
        DatasetError,
        match=r"raw mask values \[65535\] are not classes.*the masks hold 0 "
        r"\(91.2%\), 65535 \(8.8%\)\.",
    ) as err:
        make_dataset(cfg(root), seed=0)
    fix = proposed_map(str(err.value))
    assert fix == {"0": 0, "65535": 1}
    _, masks = everything(make_dataset(cfg(root, mask_map=fix), seed=0))
    assert torch.equal(masks, everything(clean)[1])


def test_float_images_beside_8_bit_ones_are_refused(tmp_path):
    root = write(tmp_path / "data")
    pixels = np.asarray(Image.open(root / "images" / "case01.png"), dtype=np.float32) / 255
    (root / "images" / "case01.png").unlink()
    Image.fromarray(pixels).save(root / "images" / "case01.tif")
    assert Image.open(root / "images" / "case01.tif").mode == "F"
    with pytest.raises(
        DatasetError,
        match=r"images: case00.png is 8-bit and case01.tif is float: .*save all "
        r"images with one bit depth",
    ):
        make_dataset(cfg(root), seed=0)


def test_a_folder_of_constant_images_is_refused(tmp_path):
    root = write(tmp_path / "data", image=lambda i, a: Image.fromarray(np.full_like(a, 7 * i)))
    with pytest.raises(DatasetError, match=r"images: every image is one constant value \(e.g. case00.png\)"):
        make_dataset(cfg(root), seed=0)


def test_a_class_no_mask_holds_is_refused(tmp_path):
    root = write(tmp_path / "data", mask=lambda i, m: Image.fromarray(m * (1 + i % 2)))  # classes 1 and 2
    assert make_dataset(cfg(root, task="multiclass", classes=2), seed=0).classes == 2
    with pytest.raises(
        DatasetError,
        match=r"masks: no mask holds class\(es\) \[3\] of classes=3 \(raw values: "
        r"0 \(.*\), 1 \(.*\), 2 \(.*\), mapped 0 -> 0, 1 -> 1, 2 -> 2\): set "
        r"\[data\] classes",
    ):
        make_dataset(cfg(root, task="multiclass", classes=3), seed=0)


# ----------------------------------------------------------------------------------------- memory estimate


def test_a_dataset_too_large_for_memory_is_refused_before_it_is_allocated(monkeypatch, tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"^\[data\] image_size=1000000 with 384 images needs about \d+\.\d "
        r"GiB of memory to build the dataset and .* is available: lower "
        r"data.image_size or data.n_train / n_val / n_test$",
    ):
        make_dataset(DataConfig(image_size=10**6), seed=0)  # the real memory: no machine holds this
    monkeypatch.setattr(dataset, "available_memory", lambda: 2**20)
    small = DataConfig(image_size=64, n_train=24, n_val=8, n_test=8)  # 40 x 64 x 64: ~3.5 MiB to build
    with pytest.raises(
        DatasetError,
        match=r"image_size=64 with 40 images needs about 3.5 MiB of memory to "
        r"build the dataset and 1.0 MiB is available",
    ):
        make_dataset(small, seed=0)
    with pytest.raises(
        DatasetError,
        match=rf"image_size=64 with 12 images needs .* lower data.image_size or "
        rf"move some of the 12 pairs out of {tmp_path}",
    ):
        make_dataset(cfg(write(tmp_path), image_size=64), seed=0)
    monkeypatch.setattr(dataset, "available_memory", lambda: 2**22)
    assert len(make_dataset(small, seed=0).train_images) == 24


# ----------------------------------------------------------------------------------------- summary line


@pytest.fixture
def fresh_summaries(monkeypatch):
    monkeypatch.setattr(data_module, "_announced", set(), raising=False)


def test_each_distinct_dataset_prints_one_summary_line(tmp_path, capsys, fresh_summaries):
    root = write(tmp_path / "data")
    make_dataset(cfg(root), seed=0)
    make_dataset(cfg(root), seed=1)  # the same files: no second line
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        (
            f"data: folder {root}, binary: 12 images of 32x32x1 (8 train, 2 validation, 2 test); "
            "pixels: background 91.2%, foreground 8.8%, ignored 0.0%"
        )
    ]
    synthetic = DataConfig(
        task="multiclass", classes=2, image_size=16, n_train=8, n_val=4, n_test=4, ignore_border=True
    )
    make_dataset(synthetic, seed=0)
    make_dataset(synthetic, seed=1)  # another instance of that config: no second line
    make_dataset(replace(synthetic, noise=0.1), seed=0)  # another config: one more
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(
        line.startswith(
            "data: synthetic, multiclass: 16 images of 16x16x1 (8 train, "
            "4 validation, 4 test); pixels: background "
        )
        for line in lines
    )
    outside = (~_field_of_view(16)).mean()  # ignore_border: every pixel outside the field of view
    assert re.search(rf"class 1 \d+\.\d%, class 2 \d+\.\d%, ignored {outside:.1%}$", lines[0])


def test_env_instances_print_one_summary_and_workers_none(capsys, fresh_summaries, monkeypatch):
    env = gym.make("rlsched/UNetLR-fast-v0").unwrapped
    env.reset(seed=0)
    env.reset(seed=1)  # another instance: another dataset seed, the same config
    gym.make("rlsched/UNetLR-fast-v0").unwrapped.reset(seed=2)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("data: synthetic, binary: ")
    monkeypatch.setattr(data_module, "_announced", set(), raising=False)
    monkeypatch.setattr(data_module.multiprocessing, "parent_process", lambda: object())  # as in a worker
    make_dataset(DataConfig(image_size=16, n_train=4, n_val=2, n_test=2), seed=0)
    assert capsys.readouterr().err == ""
