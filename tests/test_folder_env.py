"""A user's own images/ + masks/ folder, as real PNG files, through a preset into the env."""

import subprocess
import sys

import by_hand
import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image

import rlsched  # noqa: F401  (registers the env ids)
from rlsched import compare, fixed, train


def write_dataset(root, n=10, classes=1, ignore=None):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        size = (37, 29) if i == 0 else (24, 24)  # one odd-sized pair must be cropped/resized
        yy, xx = np.mgrid[: size[1], : size[0]]
        label = np.zeros(size[::-1], np.uint8)
        for k in range(1, classes + 1):
            cy, cx, r = rng.integers(4, size[1] - 4), rng.integers(4, size[0] - 4), rng.integers(3, 7)
            label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
        image = (60 + 60 * label + rng.normal(0, 20, label.shape)).clip(0, 255).astype(np.uint8)
        if i % 3 == 0:  # some RGB images
            Image.fromarray(np.stack([image, image // 2, image], -1)).save(
                root / "images" / f"case{i:02d}.png"
            )
        else:
            Image.fromarray(image).save(root / "images" / f"case{i:02d}.png")
        mask = label * 255 if classes == 1 else label
        if ignore is not None:
            mask = mask.copy()
            mask[:2, :] = ignore  # a "don't care" band
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"case{i:02d}.png")


def preset(tmp_path, root, task, extra=""):
    path = tmp_path / f"{task}.toml"
    path.write_text(f"""
[data]
source = "folder"
root = "{root}"
task = "{task}"
{extra}
image_size = 24
val_fraction = 0.3

[model]
depth = 2
base_width = 4

[env]
epochs = 3
train_instances = 2
heldout_instances = 1
""")
    return path


def run_episode(path):
    env = gym.make("rlsched/UNetLR-v0", preset=str(path))
    obs, info = env.reset(seed=0)
    done = False
    while not done:
        obs, reward, done, _, info = env.step(2)
        assert np.isfinite(reward) and env.observation_space.contains(obs)
    return env.unwrapped, info


def test_binary_folder_dataset_trains_through_the_env(tmp_path):
    write_dataset(tmp_path / "data")
    _, info = run_episode(preset(tmp_path, tmp_path / "data", "binary"))
    assert info["epoch"] == 3 and 0 <= info["final_dice"] <= 1
    data = gym.make("rlsched/UNetLR-v0", preset=str(preset(tmp_path, tmp_path / "data", "binary"))).unwrapped
    data.reset(seed=0)
    assert len(data.trainer.train_images) == 5 and len(data.trainer.val_images) == 3  # 10 files, 30 % val,
    assert len(data.trainer.test_images) == 2  # 20 % test (the default test_fraction)


def test_multiclass_folder_dataset_with_ignore_value(tmp_path):
    write_dataset(tmp_path / "data", classes=2, ignore=255)
    path = preset(tmp_path, tmp_path / "data", "multiclass", "classes = 2\nignore_index = 255")
    env, info = run_episode(path)
    assert info["epoch"] == 3
    masks = env.trainer.val_masks
    assert set(masks.unique().tolist()) == {0, 1, 2, 255}  # the band is loaded as ignore, not as a class
    with torch.no_grad():
        prediction = env.trainer.model(env.trainer.val_images).argmax(1).numpy()
    expected = by_hand.dice_per_class(prediction, masks.numpy(), classes=2, ignore_index=255)
    assert info["dice"] == pytest.approx(expected) and info["dice_mean"] == pytest.approx(np.mean(expected))
    # the sharpness of that check: counting the band's pixels would change the score
    counting_the_band = by_hand.dice_per_class(prediction, masks.numpy(), classes=2, ignore_index=-1)
    assert counting_the_band != pytest.approx(expected)


def test_mask_values_outside_the_classes_name_the_fix(tmp_path):
    write_dataset(tmp_path / "data", classes=2)
    with pytest.raises(ValueError, match="mask_map"):
        run_episode(preset(tmp_path, tmp_path / "data", "binary"))


def test_partial_mask_map_is_an_error_not_a_run_at_dice_zero(tmp_path):
    write_dataset(tmp_path / "data")  # 0/255 masks
    mask = np.asarray(Image.open(tmp_path / "data" / "masks" / "case01.png")).copy()
    mask[0, 0] = 128  # one stray value
    Image.fromarray(mask).save(tmp_path / "data" / "masks" / "case01.png")
    path = preset(tmp_path, tmp_path / "data", "binary", 'mask_map = {"128" = 0}')
    with pytest.raises(ValueError, match=r"mask_map does not list the raw mask values \[0, 255\]"):
        run_episode(path)
    path = preset(tmp_path, tmp_path / "data", "binary", 'mask_map = {"0" = 0, "128" = 0, "255" = 1}')
    env = gym.make("rlsched/UNetLR-v0", preset=str(path)).unwrapped
    env.reset(seed=0)
    masks = torch.cat([env.trainer.train_masks, env.trainer.val_masks, env.trainer.test_masks])
    assert set(masks.unique().tolist()) == {0, 1}  # foreground kept, nothing turned into "ignore"


@pytest.mark.parametrize(
    "cli, argv",
    [(fixed, []), (train, ["--n-envs", "1"]), (compare, ["--tune-instances", "1", "--seeds", "1"])],
)
def test_a_broken_file_is_a_one_line_error_and_leaves_no_run(tmp_path, capsys, cli, argv):
    write_dataset(tmp_path / "data")
    (tmp_path / "data" / "images" / "case04.png").write_text("not an image")
    runs = tmp_path / "runs"
    path = preset(tmp_path, tmp_path / "data", "binary")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--preset", str(path), "--runs-dir", str(runs), *argv])
    code = exit_info.value.code  # train exits with the message; fixed and compare print it via argparse
    message = code if isinstance(code, str) else capsys.readouterr().err.splitlines()[-1]
    assert code and "error: " in message and "images/case04.png: not an image PIL can read" in message
    assert not runs.exists() or not any(runs.iterdir())


def test_dataset_error_from_the_command_line_has_no_traceback(tmp_path):
    path = preset(tmp_path, tmp_path / "nowhere", "binary")
    result = subprocess.run(
        [sys.executable, "-m", "rlsched.fixed", "--preset", str(path), "--runs-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.endswith(
        f"error: [data] root='{tmp_path / 'nowhere'}' is not a folder: set root to a folder "
        "laid out as <root>/images/<stem>.<ext> with a label mask <root>/masks/<stem>.<ext>"
    )
    assert not (tmp_path / "runs").exists()
