"""The offline brain-tissue task built from the MNI152 template shipped inside nilearn."""

import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("nilearn")
pytest.importorskip("nibabel")

from rlsched.config import ConfigError, DataConfig, load_config  # noqa: E402
from rlsched.seg.sources import brain

CFG = DataConfig(source="brain", task="multiclass", classes=2, image_size=32, n_train=48, n_val=16, n_test=8)


def fractions(masks: torch.Tensor) -> list[float]:
    return (torch.bincount(masks.flatten().long(), minlength=3).float() / masks.numel()).tolist()


def test_shapes_dtypes_and_labels():
    data = brain.make_brain_dataset(replace(CFG, channels=3), seed=0)
    assert data.train_images.shape == (48, 3, 32, 32) and data.val_images.shape == (16, 3, 32, 32)
    assert data.train_masks.shape == (48, 32, 32) and data.val_masks.shape == (16, 32, 32)
    assert data.test_images.shape == (8, 3, 32, 32) and data.test_masks.shape == (8, 32, 32)
    assert data.train_images.dtype == data.val_images.dtype == data.test_images.dtype == torch.float32
    assert data.train_masks.dtype == data.val_masks.dtype == data.test_masks.dtype == torch.uint8
    for masks in (data.train_masks, data.val_masks, data.test_masks):
        assert set(masks.unique().tolist()) == {0, 1, 2}
    assert (data.task, data.classes, data.ignore_index) == ("multiclass", 2, CFG.ignore_index)
    assert abs(data.train_images.mean().item()) < 1e-4 and abs(data.train_images.std().item() - 1) < 1e-3
    assert torch.equal(data.train_images[:, 0], data.train_images[:, 2])  # gray replicated to 3 channels


def test_both_tissues_present_in_reasonable_amounts():
    split = brain.brain_split(CFG)
    cfg = replace(CFG, image_size=64, n_train=len(split.train), n_val=len(split.val), n_test=len(split.test))
    data = brain.make_brain_dataset(cfg, seed=0)
    assert len(data.train_images) == len(split.train) and len(data.val_images) == len(split.val)
    assert len(data.test_images) == len(split.test)
    for masks in (data.train_masks, data.val_masks, data.test_masks):
        background, grey, white = fractions(masks)
        assert 0.4 < background < 0.8 and grey > 0.1 and white > 0.05


@pytest.mark.parametrize("key", ["n_train", "n_val", "n_test"])
def test_asking_for_more_slices_than_the_split_holds_is_an_error(key):
    split = brain.brain_split(CFG)
    pools = {"n_train": split.train, "n_val": split.val, "n_test": split.test}
    cfg = replace(CFG, **{key: len(pools[key]) + 1})
    n_train, n_val, n_test = len(split.train), len(split.val), len(split.test)
    with pytest.raises(
        ConfigError,
        match=f"holds {n_train} training, {n_val} validation and {n_test} test "
        f"slices; set n_train <= {n_train}, n_val <= {n_val} and n_test <= "
        f"{n_test} \\(or raise val_fraction",
    ):
        brain.make_brain_dataset(cfg, seed=0)


def test_the_brain_preset_fits_its_split():
    cfg = load_config("brain").data
    split = brain.brain_split(cfg)
    assert (cfg.n_train, cfg.n_val, cfg.n_test) == (len(split.train), len(split.val), len(split.test))
    assert cfg.n_test >= 16


AXIS = {"axial": 2, "coronal": 1}  # the (X, Y, Z) axis each plane's slice index runs along, in RAS


def voxels(slices: tuple, shape: tuple[int, ...]) -> np.ndarray:
    """Bool (X, Y, Z) volume of the voxels the given whole slices hold."""
    out = np.zeros(shape, dtype=bool)
    for plane, axis in AXIS.items():
        index = [slice(None)] * 3
        index[axis] = [i for p, i in slices if p == plane]
        out[tuple(index)] = True
    return out


def leaked(held_out: tuple, shown_slices: tuple, volume: np.ndarray) -> float:
    """Share of the brain voxels of the ``held_out`` slices (and those within ``GAP`` slices of them,
    near-copies at 1 mm) that the ``shown_slices``, cut from ``volume``, still hold."""
    template = brain.load_template()
    tissue = template[1].astype(np.uint16) + template[2] >= 128
    near = {(p, j) for p, i in held_out for j in range(max(i - brain.GAP, 0), i + brain.GAP + 1)}
    held = voxels(tuple(near), tissue.shape) & tissue
    shown = voxels(shown_slices, tissue.shape) & (volume[:3] != 0).any(axis=0)
    return float((held & shown).sum() / held.sum())


@pytest.mark.parametrize("planes", [("axial",), ("coronal",), ("axial", "coronal")])
def test_no_validation_or_test_voxel_reaches_a_training_slice_and_none_is_both(planes, monkeypatch):
    """0 % leak, checked on the volumes ``make_brain_dataset`` really cuts each split's slices from."""
    cfg = replace(CFG, planes=planes)
    split, used = brain.brain_split(cfg), brain.select_slices(cfg, seed=3)
    assert split.val and split.test and not set(split.test) & set(split.val)
    cut_from = {}
    render = brain._render

    def spy(volumes, slices, *args):
        cut_from[slices] = volumes
        return render(volumes, slices, *args)

    monkeypatch.setattr(brain, "_render", spy)
    brain.make_brain_dataset(cfg, seed=3)
    assert leaked(used.val, used.train, cut_from[used.train]) == 0
    assert leaked(used.test, used.train, cut_from[used.train]) == 0
    assert leaked(used.val, used.test, cut_from[used.test]) == 0
    if len(planes) == 2:  # whole crossing slices would share held-out tissue: ~3/4 of it with training
        whole = brain.load_template()
        assert leaked(split.val, split.train, whole) > 0.5 and leaked(split.test, split.train, whole) > 0.5
        assert leaked(split.val, split.test, whole) > 0.05


def test_pixels_touched_by_a_held_out_block_carry_no_label():
    one = brain.make_brain_dataset(CFG, seed=0)
    both = brain.make_brain_dataset(replace(CFG, planes=("axial", "coronal")), seed=0)
    for masks in (one.train_masks, one.test_masks):  # one plane: no slice crosses a block
        assert not (masks == CFG.ignore_index).any()
    for masks in (both.train_masks, both.test_masks):
        assert 0.05 < (masks == CFG.ignore_index).float().mean() < 0.5
    assert not (both.val_masks == CFG.ignore_index).any()


def test_same_seed_same_data_other_seed_other_images_same_split():
    a, b = brain.make_brain_dataset(CFG, seed=1), brain.make_brain_dataset(CFG, seed=1)
    c = brain.make_brain_dataset(CFG, seed=2)
    for name in ("train_images", "train_masks", "val_images", "val_masks", "test_images", "test_masks"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.allclose(a.train_images, c.train_images)
    assert not torch.allclose(a.val_images, c.val_images)
    assert not torch.allclose(a.test_images, c.test_images)
    pool = brain.brain_split(CFG)
    picks = [brain.select_slices(CFG, seed) for seed in (1, 2)]
    assert picks[0].val == picks[1].val and picks[0].test == picks[1].test  # the same held-out anatomy
    assert picks[0].train != picks[1].train and all(set(p.train) <= set(pool.train) for p in picks)


@pytest.mark.parametrize("split_seed", [0, 1, 3])  # 1 and 3: a test slab touches a validation slab
def test_split_is_by_separated_slabs(split_seed):
    cfg = replace(CFG, planes=("axial", "coronal"), split_seed=split_seed)
    split = brain.brain_split(cfg)
    assert not set(split.train) & set(split.val) and not set(split.train) & set(split.test)
    for plane in cfg.planes:
        train, val, test = (
            torch.tensor([i for p, i in pool if p == plane]) for pool in (split.train, split.val, split.test)
        )
        assert len(val) >= brain.SLAB and len(test) >= brain.SLAB - 2 * brain.GAP
        assert 0.1 < (len(val) + len(test)) / (len(train) + len(val) + len(test)) < 0.35
        for a, b in ((train, val), (train, test), (test, val)):
            assert (a[:, None] - b[None, :]).abs().min() > brain.GAP
    assert brain.brain_split(replace(cfg, split_seed=split_seed + 1)).val != split.val


def test_the_test_split_leaves_training_and_the_old_held_out_block_as_they_were():
    """Test slices come out of the block validation used to hold: training keeps every slice and every
    augmentation draw it had, so a seed's training data did not change."""
    split = brain.brain_split(CFG)
    slices = np.asarray(brain._layout("axial").slices)
    slab = (slices - slices[0]) // brain.SLAB
    n_slabs = int(slab[-1]) + 1
    rng = np.random.default_rng([CFG.split_seed, brain.PLANES.index("axial")])
    held = np.isin(slab, rng.choice(n_slabs, round(CFG.val_fraction * n_slabs), replace=False))
    assert {i for _, i in split.val + split.test} <= set(slices[held].tolist())
    assert {i for _, i in split.train} == set(slices[~held].tolist()) - {
        int(i) for i in slices if np.abs(slices[held] - i).min() <= brain.GAP
    }
    a, b = (brain.make_brain_dataset(replace(CFG, n_test=n), seed=4) for n in (2, 8))
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.val_images, b.val_images)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"planes": ("sagittal",)}, "planes"),
        ({"planes": ()}, "planes"),
        ({"planes": ("axial", "axial")}, "planes"),
        ({"classes": 3}, "classes=2"),
        ({"task": "binary", "classes": 1}, "multiclass"),
        ({"task": "multilabel"}, "multiclass"),
    ],
)
def test_bad_settings_are_rejected(changes, match):
    with pytest.raises(ConfigError, match=match):
        brain.make_brain_dataset(replace(CFG, **changes), seed=0)


def test_missing_extra_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # makes `import nibabel` raise ImportError
    brain.load_template.cache_clear()
    try:
        with pytest.raises(ImportError, match=r'pip install "rlsched\[brain\]"') as info:
            brain.load_template()
        assert isinstance(info.value, brain.BrainExtraMissing)
    finally:
        brain.load_template.cache_clear()
