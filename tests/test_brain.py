"""The offline brain-tissue task built from the MNI152 template shipped inside nilearn."""

import sys
from dataclasses import replace

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
    data = brain.make_brain_dataset(replace(CFG, channels=3, planes=("axial", "coronal")), seed=0)
    assert data.train_images.shape == (48, 3, 32, 32) and data.val_images.shape == (16, 3, 32, 32)
    assert data.train_masks.shape == (48, 32, 32) and data.val_masks.shape == (16, 32, 32)
    assert data.train_images.dtype == data.val_images.dtype == torch.float32
    assert data.train_masks.dtype == data.val_masks.dtype == torch.uint8
    assert set(data.train_masks.unique().tolist()) == set(data.val_masks.unique().tolist()) == {0, 1, 2}
    assert (data.task, data.classes, data.ignore_index) == ("multiclass", 2, CFG.ignore_index)
    assert abs(data.train_images.mean().item()) < 1e-4 and abs(data.train_images.std().item() - 1) < 1e-3
    assert torch.equal(data.train_images[:, 0], data.train_images[:, 2])  # gray replicated to 3 channels


def test_both_tissues_present_in_reasonable_amounts():
    data = brain.make_brain_dataset(replace(CFG, image_size=64, n_train=1000, n_val=1000), seed=0)
    for masks in (data.train_masks, data.val_masks):
        background, grey, white = fractions(masks)
        assert 0.4 < background < 0.8 and grey > 0.1 and white > 0.05


def test_caps_use_whole_pool_when_it_is_smaller():
    cfg = replace(CFG, n_train=10_000, n_val=10_000)
    split, data = brain.brain_split(cfg), brain.make_brain_dataset(cfg, seed=0)
    assert len(data.train_images) == len(split.train) and len(data.val_images) == len(split.val)


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
