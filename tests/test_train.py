"""End-to-end: python -m rlsched.train trains, evaluates, checkpoints, survives kill -9 and SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_fast

from rlsched.common.checkpoint import load_checkpoint
from rlsched.common.files import read_jsonl
from rlsched.config import load_config
from rlsched.control.env import UNetLREnv, make_instances
from rlsched.experiment.harness import ScheduleController, run_episode
from rlsched.experiment.tuning import probe_grid
from rlsched.train import main

TINY = [*tiny_fast(4, "env.heldout_instances=2"), "--episodes-per-rollout", "1"]


def only_run(runs: Path) -> Path:
    (run_dir,) = list(runs.iterdir())
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["sb3", "reference"])
def test_train_end_to_end_writes_a_complete_run(tmp_path, algo, capsys):
    code = main(
        TINY + ["--algo", algo, "--n-envs", "2", "--total-timesteps", "32", "--runs-dir", str(tmp_path)]
    )
    assert code == 0
    run_dir = only_run(tmp_path)
    model = run_dir / ("model.zip" if algo == "sb3" else "model.pt")
    assert model.is_file() and (run_dir / "config.toml").is_file() and (run_dir / "args.json").is_file()
    assert json.loads((run_dir / "checkpoints" / "last.json").read_text())["num_timesteps"] >= 32
    episodes = read_jsonl(run_dir / "episodes.jsonl")
    assert len(episodes) >= 6 and all(
        len(e["lrs"]) == 4 for e in episodes
    )  # NEXT_STEP autoreset: 5 calls/episode
    if (
        algo == "sb3"
    ):  # warm-started by default: the offset rule's probe and offset search and the cloned episodes count too
        searched = [e for e in episodes if e.get("phase") == "teacher-search"]
        assert len(searched) == 4 * (len(probe_grid(load_config(run_dir / "config.toml"))) + 3)
        assert json.loads((run_dir / "teacher.json").read_text())["rule"].startswith("offset:")
        assert len(episodes) >= len(searched) + 4 * 2
    assert any((run_dir / "tb").rglob("events.out.tfevents*"))
    heldout = json.loads((run_dir / "heldout.json").read_text())
    assert len(heldout["learned_final_dice"]) == len(heldout["constant_final_dice"]) == 2
    config = load_config(run_dir / "config.toml")  # the headline is test Dice: the constant's, recomputed
    env = UNetLREnv(config=config)
    constant = [
        run_episode(env, ScheduleController("constant"), i) for i in make_instances(config, "heldout")
    ]
    assert heldout["constant_test_dice"] == pytest.approx([r.test_dice for r in constant])
    assert heldout["constant_final_dice"] == pytest.approx([r.final_dice for r in constant])
    learned = heldout["learned_test_dice"]
    assert heldout["test_difference_mean"] == pytest.approx(
        sum(learned) / 2 - sum(r.test_dice for r in constant) / 2
    )
    assert (
        f"| **learned-{'sb3' if algo == 'sb3' else 'reference'}** − constant (initial LR) |"
        in (run_dir / "heldout.md").read_text()
    )
    out = capsys.readouterr().out
    assert "## Paired differences: each learned policy minus each method" in out and str(run_dir) in out


def start(tmp_path, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlsched.train",
            *TINY,
            "--n-envs",
            "1",
            "--no-eval",
            "--runs-dir",
            str(tmp_path),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


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
    assert (
        len(stepped) == target // 4
    )  # no episode of the discarded rollout kept (the search has no env steps)


def test_resume_sets_aside_episodes_recorded_after_the_last_checkpoint(tmp_path, capsys):
    from rlsched.agents.episodes import EpisodeLog
    from rlsched.common.checkpoint import save_checkpoint
    from rlsched.train import _resume_point

    def write(prefix):
        prefix.with_suffix(".pt").write_bytes(b"weights")
        return {"model": prefix.with_suffix(".pt")}

    save_checkpoint(tmp_path / "checkpoints", write, num_timesteps=8, episodes=2)
    (tmp_path / "episodes.jsonl").write_text(
        "".join(json.dumps({"final_dice": i}) + "\n" for i in range(5)) + '{"final_dice": 5, "li'
    )  # and a line a kill cut off
    assert _resume_point(tmp_path, EpisodeLog(tmp_path / "episodes.jsonl")).num_timesteps == 8
    assert [r["final_dice"] for r in read_jsonl(tmp_path / "episodes.jsonl")] == [0, 1]
    assert (tmp_path / "episodes.jsonl").read_text().endswith("\n")  # the next record starts on its own line
    assert [r["final_dice"] for r in read_jsonl(tmp_path / "episodes.discarded.jsonl")] == [2, 3, 4]
    assert "moved 3 episode record(s)" in capsys.readouterr().out


def test_total_timesteps_extends_a_finished_run_and_the_policy_keeps_its_normalisation(tmp_path):
    import numpy as np
    from stable_baselines3 import PPO

    from rlsched.agents.loading import load_policy
    from rlsched.agents.normalize import NormalizedPredictor, ObsNorm

    assert (
        main(
            TINY
            + [
                "--n-envs",
                "1",
                "--total-timesteps",
                "8",
                "--bc-episodes",
                "0",
                "--no-eval",
                "--runs-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
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

    def logits(o):
        return raw.policy.get_distribution(raw.policy.obs_to_tensor(o)[0]).distribution.logits

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
    for bad in (
        ["--bc-episodes", "2", "--algo", "reference"],
        ["--bc-episodes", "-1"],
        ["--bc-explore", "1.5"],
    ):
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


# ------------------------------------------------------------------------------------ bad input: one line, no run
QUICK = TINY + ["--n-envs", "1", "--total-timesteps", "4", "--bc-episodes", "0", "--no-eval"]


def refused(argv, capsys):
    """``main(argv)`` exits non-zero with one error line and no traceback: that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    code, err = exit_info.value.code, capsys.readouterr().err
    if isinstance(
        code, str
    ):  # SystemExit("error: ..."): Python prints it as the last stderr line, exit status 1
        err += code + "\n"
    else:
        assert code != 0
    lines = err.strip().splitlines()  # other lines are progress notes (the dataset's summary)
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--total-timesteps", "-5"),
        ("--gamma", "2"),
        ("--gamma", "nan"),
        ("--gae-lambda", "1.5"),
        ("--clip-range", "0"),
        ("--ent-coef", "-0.1"),
        ("--n-epochs", "0"),
        ("--episodes-per-rollout", "0"),
        ("--batch-size", "-1"),
        ("--learning-rate", "-1"),
        ("--learning-rate", "inf"),
        ("--teacher-lr", "0"),
        ("--teacher-lr", "-1"),
        ("--n-envs", "0"),
        ("--num-env-runners", "-1"),
        ("--num-gpus-per-env-runner", "-1"),
        ("--seed", "-1"),
        ("--bc-episodes", "-1"),
        ("--bc-explore", "1.5"),
        ("--teacher-search-instances", "0"),
        ("--teacher-offsets", "nan"),
    ],
)
def test_a_flag_out_of_its_range_is_refused_before_anything_runs(tmp_path, capsys, flag, value):
    """These trained anyway (--gamma 2, --total-timesteps -5 wrote an untrained model.zip) or crashed after the
    run directory existed, some after the episodes ran (--n-epochs 0, --teacher-lr 0)."""
    line = refused(QUICK + ["--runs-dir", str(tmp_path), flag, value], capsys)
    assert f"argument {flag}: " in line and ("expected" in line or "invalid" in line)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "extra, flag, need",
    [
        (["--num-env-runners", "4"], "--num-env-runners", "--backend rllib"),
        (["--num-gpus-per-env-runner", "0.5"], "--num-gpus-per-env-runner", "--backend rllib"),
        (["--teacher-lr", "0.01"], "--teacher-lr", "the warm start"),
        (["--teacher", "scripted"], "--teacher", "the warm start"),
        (["--teacher-search-instances", "2"], "--teacher-search-instances", "the warm start"),
        (["--teacher-offsets", "-0.5"], "--teacher-offsets", "the warm start"),
        (
            ["--bc-episodes", "1", "--teacher", "suggested", "--teacher-offsets", "-0.5"],
            "--teacher-offsets",
            "--teacher offset",
        ),
        (["--bc-explore", "0.25"], "--bc-explore", "the warm start"),
        (["--algo", "reference", "--no-normalize-obs"], "--no-normalize-obs", "--algo sb3 --backend sb3"),
    ],
)
def test_a_flag_this_run_would_ignore_is_refused(tmp_path, capsys, extra, flag, need):
    """QUICK has no warm start (--bc-episodes 0) and the sb3 backend: each of these ran, silently ignored."""
    line = refused(QUICK + ["--runs-dir", str(tmp_path), *extra], capsys)
    assert f"{flag} (needs {need}" in line
    assert not list(tmp_path.iterdir())


def test_the_command_line_prints_one_error_line_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rlsched.train", "--gamma", "2", "--runs-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "python -m rlsched.train: error: argument --gamma: got 2; expected a number in [0, 1]"
    ]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("algo", ["sb3", "reference"])
def test_a_minibatch_of_one_step_is_refused(tmp_path, capsys, algo):
    """SB3 asserts batch_size > 1 only after the run directory exists and the env workers started; the
    reference PPO normalises a lone advantage to 0 and learns nothing. (RLlib normalises over the whole batch.)"""
    for extra in (["--set", "env.epochs=2"], ["--batch-size", "1"]):  # a 2-step rollout halved; asked for
        line = refused(QUICK + ["--algo", algo, "--runs-dir", str(tmp_path), *extra], capsys)
        assert "minibatch of 1 step" in line and "--batch-size >= 2" in line
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_before_the_run_directory(tmp_path, capsys):
    line = refused(QUICK + ["--set", "optim.device=cuda", "--runs-dir", str(tmp_path)], capsys)
    assert "device='cuda'" in line
    assert not list(tmp_path.iterdir())


def test_a_runs_dir_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    assert f"--runs-dir {runs} is a file" in refused(QUICK + ["--runs-dir", str(runs)], capsys)
    assert f"--runs-dir {runs / 'sub'}: cannot create" in refused(
        QUICK + ["--runs-dir", str(runs / "sub")], capsys
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_runs_dir_is_a_one_line_error(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir(mode=0o555)
    assert f"--runs-dir {runs}: cannot create" in refused(QUICK + ["--runs-dir", str(runs)], capsys)


def test_resume_refuses_flags_it_would_ignore(tmp_path, capsys):
    """--resume trains on with the run's own flags: --preset and --set given with it were silently ignored."""
    from rlsched.train import parse_args

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    started = vars(parse_args(QUICK + ["--runs-dir", str(tmp_path)]))
    (run_dir / "args.json").write_text(json.dumps({k: v for k, v in started.items() if k != "resume"}))
    line = refused(["--resume", str(run_dir), "--preset", "demo", "--set", "env.epochs=8"], capsys)
    assert "--preset 'demo' (the run used 'fast')" in line and "--set ['env.epochs=8']" in line
    assert "--total-timesteps" in line  # the flags that do apply
    # what a resume can change, and the run's own flags repeated, are accepted
    assert (
        parse_args(["--resume", str(run_dir), "--total-timesteps", "99", "--no-eval"]).total_timesteps == 99
    )
    parse_args(["--resume", str(run_dir), "--preset", "fast", "--n-envs", "1"])


def fake_training(calls, error=None, episode=False):
    """A train_sb3 stand-in: what a start leaves in the run directory, then ``error`` (None: a model path)."""

    def train_sb3(run_dir, args, config):
        calls.append(run_dir)
        (run_dir / "tb").mkdir(exist_ok=True)
        (run_dir / "tb" / "events.out.tfevents.0").write_bytes(b"setup")
        (run_dir / "episodes.jsonl").touch()
        if episode:
            (run_dir / "episodes.jsonl").write_text('{"final_dice": 0.5}\n')
        if error is not None:
            raise error
        return run_dir / "model.zip"

    return train_sb3


def test_a_start_that_fails_before_its_first_episode_leaves_no_run_directory(tmp_path, monkeypatch, capsys):
    from rlsched import train
    from rlsched.config import ConfigError

    calls = []
    monkeypatch.setattr(
        train, "train_sb3", fake_training(calls, ConfigError("[env] found bad only in an env"))
    )
    assert "found bad only in an env" in refused(QUICK + ["--runs-dir", str(tmp_path)], capsys)
    assert calls and not list(tmp_path.iterdir())
    monkeypatch.setattr(train, "train_sb3", fake_training(calls, RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # not bad input: its traceback stays, the empty run goes
        main(QUICK + ["--runs-dir", str(tmp_path)])
    assert len(calls) == 2 and not list(tmp_path.iterdir())


def test_a_failed_run_that_recorded_an_episode_and_a_resumed_run_are_kept(tmp_path, monkeypatch, capsys):
    from rlsched import train

    calls = []
    monkeypatch.setattr(train, "train_sb3", fake_training(calls, RuntimeError("a bug"), episode=True))
    with pytest.raises(RuntimeError):
        main(QUICK + ["--runs-dir", str(tmp_path)])
    (run_dir,) = tmp_path.iterdir()  # it holds an episode: kept
    (run_dir / "episodes.jsonl").write_text("")
    monkeypatch.setattr(train, "train_sb3", fake_training(calls, RuntimeError("a bug")))
    with pytest.raises(RuntimeError):
        main(["--resume", str(run_dir), "--no-eval"])
    assert run_dir.is_dir() and (run_dir / "args.json").is_file()  # resumed: never removed
