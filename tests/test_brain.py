"""The offline brain-tissue task built from the MNI152 template shipped inside nilearn."""

import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("nilearn")
pytest.importorskip("nibabel")

from rlsched import brain  # noqa: E402
from rlsched.config import ConfigError, DataConfig  # noqa: E402

CFG = DataConfig(source="brain", task="multiclass", classes=2, image_size=32, n_train=48, n_val=16)


def fractions(masks: torch.Tensor) -> list[float]:
    return (torch.bincount(masks.flatten().long(), minlength=3).float() / masks.numel()).tolist()


def test_shapes_dtypes_and_labels():
    data = brain.make_brain_dataset(replace(CFG, channels=3), seed=0)
    assert data.train_images.shape == (48, 3, 32, 32) and data.val_images.shape == (16, 3, 32, 32)
    assert data.train_masks.shape == (48, 32, 32) and data.val_masks.shape == (16, 32, 32)
    assert data.train_images.dtype == data.val_images.dtype == torch.float32
    assert data.train_masks.dtype == data.val_masks.dtype == torch.uint8
    assert set(data.train_masks.unique().tolist()) == set(data.val_masks.unique().tolist()) == {0, 1, 2}
    assert (data.task, data.classes, data.ignore_index) == ("multiclass", 2, CFG.ignore_index)
    assert abs(data.train_images.mean().item()) < 1e-4 and abs(data.train_images.std().item() - 1) < 1e-3
    assert torch.equal(data.train_images[:, 0], data.train_images[:, 2])  # gray replicated to 3 channels


def test_both_tissues_present_in_reasonable_amounts():
    split = brain.brain_split(CFG)
    cfg = replace(CFG, image_size=64, n_train=len(split.train), n_val=len(split.val))
    data = brain.make_brain_dataset(cfg, seed=0)
    assert len(data.train_images) == len(split.train) and len(data.val_images) == len(split.val)
    for masks in (data.train_masks, data.val_masks):
        background, grey, white = fractions(masks)
        assert 0.4 < background < 0.8 and grey > 0.1 and white > 0.05


@pytest.mark.parametrize("extra", [{"n_train": 1}, {"n_val": 1}])
def test_asking_for_more_slices_than_the_split_holds_is_an_error(extra):
    split = brain.brain_split(CFG)
    cfg = replace(CFG, **{key: len(split.train if key == "n_train" else split.val) + more
                          for key, more in extra.items()})
    n_train, n_val = len(split.train), len(split.val)
    with pytest.raises(ConfigError, match=f"holds {n_train} training and {n_val} validation slices; set "
                                          f"n_train <= {n_train} and n_val <= {n_val}"):
        brain.make_brain_dataset(cfg, seed=0)


AXIS = {"axial": 2, "coronal": 1}  # the (X, Y, Z) axis each plane's slice index runs along, in RAS


def voxels(slices: tuple, shape: tuple[int, ...]) -> np.ndarray:
    """Bool (X, Y, Z) volume of the voxels the given whole slices hold."""
    out = np.zeros(shape, dtype=bool)
    for plane, axis in AXIS.items():
        index = [slice(None)] * 3
        index[axis] = [i for p, i in slices if p == plane]
        out[tuple(index)] = True
    return out


def leaked(slices: brain.BrainSlices, train_volume: np.ndarray) -> float:
    """Share of the validation brain voxels (and those within ``GAP`` slices of them, near-copies at 1 mm)
    that a training slice cut from ``train_volume`` still holds."""
    template = brain.load_template()
    tissue = template[1].astype(np.uint16) + template[2] >= 128
    near = {(p, j) for p, i in slices.val for j in range(max(i - brain.GAP, 0), i + brain.GAP + 1)}
    val = voxels(tuple(near), tissue.shape) & tissue
    shown = voxels(slices.train, tissue.shape) & (train_volume[:3] != 0).any(axis=0)
    return float((val & shown).sum() / val.sum())


@pytest.mark.parametrize("planes", [("axial",), ("coronal",), ("axial", "coronal")])
def test_no_validation_voxel_reaches_a_training_slice(planes):
    split = brain.brain_split(replace(CFG, planes=planes))
    assert leaked(split, brain.blocked_template(split.val)) == 0
    if len(planes) == 2:  # whole crossing slices would share ~3/4 of the validation tissue with training
        assert leaked(split, brain.load_template()) > 0.5


def test_training_pixels_touched_by_the_validation_block_carry_no_label():
    one = brain.make_brain_dataset(CFG, seed=0)
    both = brain.make_brain_dataset(replace(CFG, planes=("axial", "coronal")), seed=0)
    assert not (one.train_masks == CFG.ignore_index).any()  # one plane: no training slice crosses the block
    ignored = (both.train_masks == CFG.ignore_index).float().mean()
    assert 0.05 < ignored < 0.5 and not (both.val_masks == CFG.ignore_index).any()


def test_same_seed_same_data_other_seed_other_images_same_split():
    a, b = brain.make_brain_dataset(CFG, seed=1), brain.make_brain_dataset(CFG, seed=1)
    c = brain.make_brain_dataset(CFG, seed=2)
    for name in ("train_images", "train_masks", "val_images", "val_masks"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.allclose(a.train_images, c.train_images)
    assert not torch.allclose(a.val_images, c.val_images)
    pool = brain.brain_split(CFG)
    picks = [brain.select_slices(CFG, seed) for seed in (1, 2)]
    assert picks[0].val == picks[1].val  # validation anatomy is the same for every instance
    assert picks[0].train != picks[1].train and all(set(p.train) <= set(pool.train) for p in picks)


def test_split_is_by_separated_slabs():
    cfg = replace(CFG, planes=("axial", "coronal"))
    split = brain.brain_split(cfg)
    assert not set(split.train) & set(split.val)
    for plane in cfg.planes:
        train = torch.tensor([i for p, i in split.train if p == plane])
        val = torch.tensor([i for p, i in split.val if p == plane])
        assert len(val) >= brain.SLAB and 0.1 < len(val) / (len(train) + len(val)) < 0.35
        assert (train[:, None] - val[None, :]).abs().min() > brain.GAP
    assert brain.brain_split(replace(cfg, split_seed=1)).val != split.val


@pytest.mark.parametrize("changes, match", [
    ({"planes": ("sagittal",)}, "planes"),
    ({"planes": ()}, "planes"),
    ({"planes": ("axial", "axial")}, "planes"),
    ({"classes": 3}, "classes=2"),
    ({"task": "binary", "classes": 1}, "multiclass"),
    ({"task": "multilabel"}, "multiclass"),
])
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
