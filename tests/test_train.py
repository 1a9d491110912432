"""End-to-end: python -m rlsched.train trains, evaluates, checkpoints, survives kill -9 and SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlsched.checkpoint import load_checkpoint
from rlsched.config import load_config
from rlsched.env import UNetLREnv, make_instances
from rlsched.harness import ScheduleController, run_episode
from rlsched.runs import read_jsonl
from rlsched.compare.running import search_grid
from rlsched.train import main

TINY = ["--preset", "fast", "--set", "data.image_size=16", "--set", "data.n_train=16", "--set", "data.n_val=8",
        "--set", "env.epochs=4", "--set", "env.heldout_instances=2", "--episodes-per-rollout", "1"]


def only_run(runs: Path) -> Path:
    (run_dir,) = list(runs.iterdir())
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["sb3", "reference"])
def test_train_end_to_end_writes_a_complete_run(tmp_path, algo, capsys):
    code = main(TINY + ["--algo", algo, "--n-envs", "2", "--total-timesteps", "32", "--runs-dir", str(tmp_path)])
    assert code == 0
    run_dir = only_run(tmp_path)
    model = run_dir / ("model.zip" if algo == "sb3" else "model.pt")
    assert model.is_file() and (run_dir / "config.toml").is_file() and (run_dir / "args.json").is_file()
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["num_timesteps"] >= 32
    episodes = read_jsonl(run_dir / "episodes.jsonl")
    assert len(episodes) >= 6 and all(len(e["lrs"]) == 4 for e in episodes)  # NEXT_STEP autoreset: 5 calls/episode
    if algo == "sb3":  # warm-started by default: the teacher's target search and the cloned episodes count too
        searched = [e for e in episodes if e.get("phase") == "teacher-search"]
        assert len(searched) == 4 * len(search_grid(load_config(run_dir / "config.toml"), 1))
        assert len(episodes) >= len(searched) + 4 * 2
    assert any((run_dir / "tb").rglob("events.out.tfevents*"))
    heldout = json.loads((run_dir / "heldout.json").read_text())
    assert len(heldout["learned_final_dice"]) == len(heldout["constant_final_dice"]) == 2
    config = load_config(run_dir / "config.toml")  # the headline is test Dice: the constant's, recomputed
    env = UNetLREnv(config=config)
    constant = [run_episode(env, ScheduleController("constant"), i) for i in make_instances(config, "heldout")]
    assert heldout["constant_test_dice"] == pytest.approx([r.test_dice for r in constant])
    assert heldout["constant_final_dice"] == pytest.approx([r.final_dice for r in constant])
    learned = heldout["learned_test_dice"]
    assert heldout["test_difference_mean"] == pytest.approx(sum(learned) / 2 - sum(r.test_dice for r in constant) / 2)
    assert "| method | test Dice (mean ± 95% CI) | final val Dice | diverged |" in (run_dir / "heldout.md").read_text()
    out = capsys.readouterr().out
    assert "learned policy" in out and str(run_dir) in out


def start(tmp_path, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "rlsched.train", *TINY, "--n-envs", "1", "--no-eval",
                             "--runs-dir", str(tmp_path), *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(tmp_path, proc, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = list(tmp_path.iterdir())
        if runs and (runs[0] / "checkpoints" / "last.json").exists():
            return runs[0]
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_resume_after_kill_9_finishes_the_run(tmp_path):
    proc = start(tmp_path, "--total-timesteps", "100000")  # far more than it can run before the kill
    run_dir = wait_for_checkpoint(tmp_path, proc)
    proc.kill()  # SIGKILL: no clean-up code runs
    proc.wait()
    done_before = json.loads((run_dir / "checkpoints" / "last.json").read_text())["num_timesteps"]
    assert 0 < done_before < 100000 and not (run_dir / "model.zip").exists()
    target = done_before + 8  # two more 4-step episodes
    assert main(["--resume", str(run_dir), "--total-timesteps", str(target), "--no-eval"]) == 0
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["num_timesteps"] == target
    assert (run_dir / "model.zip").is_file()
    assert not list(run_dir.rglob("*.tmp"))  # nothing half-written is left behind
    stepped = [e for e in read_jsonl(run_dir / "episodes.jsonl") if e.get("phase") != "teacher-search"]
    assert len(stepped) == target // 4  # no episode of the discarded rollout kept (the search has no env steps)


def test_resume_sets_aside_episodes_recorded_after_the_last_checkpoint(tmp_path, capsys):
    from rlsched.agents.episodes import EpisodeLog
    from rlsched.checkpoint import save_checkpoint
    from rlsched.train import _resume_point

    def write(prefix):
        prefix.with_suffix(".pt").write_bytes(b"weights")
        return {"model": prefix.with_suffix(".pt")}

    save_checkpoint(tmp_path / "checkpoints", write, num_timesteps=8, episodes=2)
    (tmp_path / "episodes.jsonl").write_text("".join(json.dumps({"final_dice": i}) + "\n" for i in range(5))
                                             + '{"final_dice": 5, "li')  # and a line a kill cut off
    assert _resume_point(tmp_path, EpisodeLog(tmp_path / "episodes.jsonl")).num_timesteps == 8
    assert [r["final_dice"] for r in read_jsonl(tmp_path / "episodes.jsonl")] == [0, 1]
    assert (tmp_path / "episodes.jsonl").read_text().endswith("\n")  # the next record starts on its own line
    assert [r["final_dice"] for r in read_jsonl(tmp_path / "episodes.discarded.jsonl")] == [2, 3, 4]
    assert "moved 3 episode record(s)" in capsys.readouterr().out


def test_total_timesteps_extends_a_finished_run_and_the_policy_keeps_its_normalisation(tmp_path):
    import numpy as np
    from stable_baselines3 import PPO

    from rlsched.agents.normalize import NormalizedPredictor, ObsNorm
    from rlsched.policy import load_policy

    assert main(TINY + ["--n-envs", "1", "--total-timesteps", "8", "--bc-episodes", "0", "--no-eval",
                        "--runs-dir", str(tmp_path)]) == 0
    run_dir = only_run(tmp_path)
    assert main(["--resume", str(run_dir), "--total-timesteps", "16", "--no-eval"]) == 0
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["num_timesteps"] == 16
    assert json.loads((run_dir / "args.json").read_text())["total_timesteps"] == 16
    assert len(read_jsonl(run_dir / "episodes.jsonl")) == 16 // 4

    policy = load_policy(run_dir / "model.zip").predictor
    assert isinstance(policy, NormalizedPredictor)
    norm = ObsNorm.load(run_dir / "model.obs_norm.json")
    assert norm.count > 16 and not np.allclose(norm.mean, 0)  # statistics of the observations it trained on
    raw = PPO.load(run_dir / "model.zip", device="cpu")
    obs = np.random.default_rng(0).uniform(-1, 1, raw.observation_space.shape).astype(np.float32)
    logits = lambda o: raw.policy.get_distribution(raw.policy.obs_to_tensor(o)[0]).distribution.logits
    assert np.allclose(logits(norm(obs)).detach().numpy(), logits(policy.norm(obs)).detach().numpy())
    assert policy.predict(obs)[0] == raw.predict(norm(obs), deterministic=True)[0]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    proc = start(tmp_path, "--total-timesteps", "400")
    run_dir = wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "--resume" in out
    assert load_checkpoint(run_dir / "checkpoints")[0] is not None


def test_bad_preset_key_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown key 'epoch'"):
        main(["--preset", "fast", "--set", "env.epoch=3", "--runs-dir", str(tmp_path)])


def test_batch_size_must_divide_the_rollout(tmp_path):
    with pytest.raises(SystemExit, match="does not divide the rollout"):
        main(TINY + ["--batch-size", "3", "--runs-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing created for a run that could not start


def test_warm_start_flags_are_checked_before_anything_starts(tmp_path, capsys):
    for bad in (["--bc-episodes", "2", "--algo", "reference"], ["--bc-episodes", "-1"], ["--bc-explore", "1.5"]):
        with pytest.raises(SystemExit):
            main(TINY + bad + ["--runs-dir", str(tmp_path)])
        assert bad[0] in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_warm_started_default_has_no_entropy_bonus():
    """After cloning, an entropy bonus drags the policy towards uniform over every offset (one seed's PPO moved
    a held-out run to offsets that collapsed it); without the warm start PPO needs the bonus to explore."""
    from rlsched.train import parse_args

    assert parse_args([]).ent_coef == 0.0 and parse_args([]).bc_episodes == 4
    assert parse_args(["--bc-episodes", "0"]).ent_coef == 0.01
    assert parse_args(["--algo", "reference"]).ent_coef == 0.01
    assert parse_args(["--ent-coef", "0.02"]).ent_coef == 0.02


def test_resume_without_a_checkpoint_starts_over_and_sets_every_episode_record_aside(tmp_path):
    from rlsched.agents.episodes import EpisodeLog
    from rlsched.train import _resume_point

    (tmp_path / "episodes.jsonl").write_text("".join(json.dumps({"final_dice": i}) + "\n" for i in range(3)))
    assert _resume_point(tmp_path, EpisodeLog(tmp_path / "episodes.jsonl")) is None
    assert read_jsonl(tmp_path / "episodes.jsonl") == []
    assert [r["final_dice"] for r in read_jsonl(tmp_path / "episodes.discarded.jsonl")] == [0, 1, 2]
