"""A checkpoint is one atomic unit, and ``train --resume`` loses no episode record at any kill point: the new
parts written but not their manifest, the manifest gone, a part missing or damaged, a symbolic link in place of
a file the run writes."""

import json
import shutil

import pytest
from conftest import tiny_fast

from rlsched.common import checkpoint as checkpoint_module
from rlsched.common.checkpoint import MANIFEST, load_checkpoint, save_checkpoint
from rlsched.common.files import read_jsonl
from rlsched.train import main

TINY = [*tiny_fast(4), "--episodes-per-rollout", "1", "--n-envs", "1", "--bc-episodes", "0", "--no-eval"]


def writer(payload: bytes):
    def write(prefix):
        model, norm = prefix.with_suffix(".zip"), prefix.with_suffix(".obs_norm.json")
        model.write_bytes(payload)
        norm.write_text(json.dumps({"payload": payload.decode()}))
        return {"model": model, "obs_norm": norm}

    return write


def cut_off_before_the_manifest(monkeypatch):
    """A kill after the parts are on disk, before the manifest's rename."""

    def killed(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "atomic_write_json", killed)


def test_a_checkpoint_replaces_the_previous_one_whole(tmp_path):
    save_checkpoint(tmp_path, writer(b"first"), num_timesteps=4, episodes=1)
    save_checkpoint(tmp_path, writer(b"second"), num_timesteps=8, episodes=2)
    checkpoint, problem = load_checkpoint(tmp_path)
    assert problem == "" and (checkpoint.num_timesteps, checkpoint.episodes) == (8, 2)
    assert checkpoint.parts["model"].read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [MANIFEST, *(p.name for p in checkpoint.parts.values())]
    )


def test_a_save_cut_off_before_its_manifest_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, writer(b"first"), num_timesteps=4, episodes=1)
    with monkeypatch.context() as patch:
        cut_off_before_the_manifest(patch)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(tmp_path, writer(b"second"), num_timesteps=8, episodes=2)
    checkpoint, problem = load_checkpoint(tmp_path)
    assert problem == "" and (checkpoint.num_timesteps, checkpoint.episodes) == (4, 1)
    assert checkpoint.parts["model"].read_bytes() == b"first"
    save_checkpoint(tmp_path, writer(b"third"), num_timesteps=8, episodes=2)  # the cut-off parts are cleared
    assert (
        len(list(tmp_path.glob("ckpt-*"))) == 2
        and load_checkpoint(tmp_path)[0].parts["model"].read_bytes() == b"third"
    )


def test_the_first_save_cut_off_is_no_checkpoint_and_says_so(tmp_path, monkeypatch):
    assert load_checkpoint(tmp_path / "checkpoints") == (None, "")  # nothing saved yet: a plain start
    cut_off_before_the_manifest(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, writer(b"first"), num_timesteps=4, episodes=1)
    checkpoint, problem = load_checkpoint(tmp_path)
    assert checkpoint is None and f"but no {MANIFEST}" in problem and "ckpt-000001.zip" in problem


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda folder: next(folder.glob("ckpt-*.zip")).unlink(), "which is missing"),
        (
            lambda folder: next(folder.glob("ckpt-*.obs_norm.json")).write_text('{"payload": "other"}'),
            "sha256 differs",
        ),
        (lambda folder: next(folder.glob("ckpt-*.zip")).write_bytes(b"firs"), "size or sha256 differs"),
        (
            lambda folder: (folder / MANIFEST).write_text('{"num_timesteps": 4, "episodes": 1}'),
            "does not list",
        ),
        (
            lambda folder: (folder / MANIFEST).write_text(
                json.dumps(
                    {
                        "num_timesteps": 4,
                        "episodes": 1,
                        "parts": {"model": {"name": "../elsewhere.zip", "size": 1, "sha256": "0"}},
                    }
                )
            ),
            "does not list",
        ),
    ],
)
def test_a_checkpoint_whose_parts_do_not_match_its_manifest_is_refused(tmp_path, damage, reason):
    save_checkpoint(tmp_path, writer(b"first"), num_timesteps=4, episodes=1)
    damage(tmp_path)
    checkpoint, problem = load_checkpoint(tmp_path)
    assert checkpoint is None and reason in problem


# ------------------------------------------------------------------------------------------ train --resume
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 8-step SB3 run: two 4-step episodes, a checkpoint after each update."""
    root = tmp_path_factory.mktemp("trained")
    assert main(TINY + ["--total-timesteps", "8", "--runs-dir", str(root)]) == 0
    (run_dir,) = root.iterdir()
    return run_dir


def copy_of(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / run_dir.name)


def all_records(run_dir):
    discarded = run_dir / "episodes.discarded.jsonl"
    return read_jsonl(run_dir / "episodes.jsonl"), read_jsonl(discarded) if discarded.exists() else []


def test_resume_after_a_kill_before_the_manifest_continues_from_the_previous_checkpoint(
    trained, tmp_path, capsys
):
    run_dir = copy_of(trained, tmp_path)
    kept = read_jsonl(run_dir / "episodes.jsonl")
    # the kill: the next rollout's episodes were recorded and its parts written, its manifest not
    (run_dir / "episodes.jsonl").write_text(
        (run_dir / "episodes.jsonl").read_text()
        + "".join(json.dumps({**r, "instance": -7}) + "\n" for r in kept)
    )
    (run_dir / "checkpoints" / "ckpt-999999.zip").write_bytes(b"cut off")
    assert main(["--resume", str(run_dir), "--total-timesteps", "12", "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "(8 done)" in out and "moved 2 episode record(s)" in out
    episodes, discarded = all_records(run_dir)
    assert (
        episodes[:2] == kept and len(episodes) == 3
    )  # the discarded rollout's records are not counted twice
    assert [r["instance"] for r in discarded] == [-7, -7]  # ... and not lost
    assert load_checkpoint(run_dir / "checkpoints")[0].num_timesteps == 12
    assert not (run_dir / "checkpoints" / "ckpt-999999.zip").exists()


@pytest.mark.parametrize("damage", ["manifest missing", "model part corrupt"])
def test_resume_without_a_complete_checkpoint_starts_over_and_keeps_every_record(
    trained, tmp_path, capsys, damage
):
    run_dir = copy_of(trained, tmp_path)
    before = read_jsonl(run_dir / "episodes.jsonl")
    if damage == "manifest missing":
        (run_dir / "checkpoints" / MANIFEST).unlink()
    else:
        next((run_dir / "checkpoints").glob("ckpt-*.zip")).write_bytes(b"damaged")
    assert main(["--resume", str(run_dir), "--no-eval"]) == 0
    out = capsys.readouterr().out
    assert "training starts over" in out and "(0 done)" in out and "moved 2 episode record(s)" in out
    episodes, discarded = all_records(run_dir)
    assert discarded == before  # the records of the training thrown away are kept aside
    assert len(episodes) == 2  # and episodes.jsonl holds the run that made the policy: 8 steps, 2 episodes
    assert load_checkpoint(run_dir / "checkpoints")[0].num_timesteps == 8


def test_reference_ppo_checkpoints_are_one_unit_too(tmp_path, capsys):
    assert main(TINY + ["--algo", "reference", "--total-timesteps", "4", "--runs-dir", str(tmp_path)]) == 0
    (run_dir,) = tmp_path.iterdir()
    checkpoint, _ = load_checkpoint(run_dir / "checkpoints")
    assert (
        checkpoint.num_timesteps == 4
        and checkpoint.episodes == 1
        and checkpoint.parts["model"].suffix == ".pt"
    )
    (run_dir / "checkpoints" / MANIFEST).unlink()
    assert main(["--resume", str(run_dir), "--no-eval"]) == 0
    assert "training starts over" in capsys.readouterr().out
    assert [len(records) for records in all_records(run_dir)] == [1, 1]


@pytest.mark.parametrize("name", ["episodes.jsonl", "checkpoints"])
def test_resume_refuses_a_symbolic_link_in_place_of_a_file_it_writes(trained, tmp_path, name):
    run_dir = copy_of(trained, tmp_path)
    target = tmp_path / "elsewhere"
    shutil.move(run_dir / name, target)
    (run_dir / name).symlink_to(target)
    before = {p: p.read_bytes() for p in [target, *target.rglob("*")] if p.is_file()}
    with pytest.raises(SystemExit, match=f"{name} is a symbolic link .* replace the link"):
        main(["--resume", str(run_dir), "--total-timesteps", "12", "--no-eval"])
    assert {p: p.read_bytes() for p in [target, *target.rglob("*")] if p.is_file()} == before
