"""The template's slices exported as a folder dataset, read back through the folder source and its preset."""

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nilearn")
pytest.importorskip("nibabel")

from rlsched import brain_folder
from rlsched.config import load_config  # noqa: E402
from rlsched.seg.sources import (
    brain,
    make_dataset,  # noqa: E402
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export") / "brain"
    root.mkdir()  # an existing empty folder is a valid destination
    count = brain_folder.export_folder(root)
    return root, count


def test_every_kept_axial_slice_is_an_8bit_image_with_a_tissue_mask(exported):
    root, count = exported
    stems = [f"axial_{i:03d}" for i in brain.full_slices("axial")[0]]
    assert count == len(stems) > 50
    assert sorted(p.stem for p in (root / "images").iterdir()) == stems
    assert sorted(p.stem for p in (root / "masks").iterdir()) == stems
    values = set()
    for stem in stems[::10]:
        image, mask = Image.open(root / "images" / f"{stem}.png"), Image.open(root / "masks" / f"{stem}.png")
        assert image.mode == mask.mode == "L" and image.size == mask.size == (197, 233)  # 1 mm, uncropped
        pixels = np.asarray(image)
        assert pixels.min() == 0 and pixels.max() == 255  # scaled per slice
        assert len(np.unique(pixels)) > 50  # a real image, not a constant or a binary picture
        values |= set(np.unique(np.asarray(mask)).tolist())
    assert values == {0, 1, 2}
    assert [p.name for p in root.parent.iterdir()] == ["brain"]  # the temporary folder was renamed, not left


def test_the_folder_loads_through_the_preset_with_both_tissues_in_every_split(exported):
    root, count = exported
    config = load_config("brain-folder", {"data.root": str(root)})
    data = make_dataset(config.data, seed=0)
    assert len(data.train_images) + len(data.val_images) + len(data.test_images) == count
    assert data.train_images.shape[1:] == (1, 48, 48) and (data.task, data.classes) == ("multiclass", 2)
    for masks in (data.train_masks, data.val_masks, data.test_masks):
        assert set(masks.unique().tolist()) == {0, 1, 2}


def test_a_second_export_into_the_same_folder_is_refused(exported):
    root, _ = exported
    before = sorted(root.rglob("*"))
    with pytest.raises(FileExistsError, match="is not empty: the export never overwrites.*rm -r"):
        brain_folder.export_folder(root)
    assert sorted(root.rglob("*")) == before and len(list(root.parent.iterdir())) == 1


def test_cli_reports_the_count_and_the_override(tmp_path, capsys):
    dest = tmp_path / "coronal"
    assert brain_folder.main([str(dest), "--plane", "coronal"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {len(brain.full_slices('coronal')[0])} coronal slices" in out
    assert f"--preset brain-folder --set data.root={dest}" in out
    with pytest.raises(SystemExit):
        brain_folder.main([str(dest)])
    assert "is not empty" in capsys.readouterr().err


def test_the_preset_parses_and_keeps_brains_model_optim_and_env():
    config, reference = load_config("brain-folder"), load_config("brain")
    data = config.data
    assert (data.source, data.root, data.task, data.classes, data.image_size) == (
        "folder",
        "runs/brain-axial-folder",
        "multiclass",
        2,
        48,
    )
    assert (config.model, config.optim, config.env) == (reference.model, reference.optim, reference.env)
