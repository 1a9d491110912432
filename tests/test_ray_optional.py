"""Without the ray extra the project works, and asking for a Ray feature names the install command."""

import json
import sys

import pytest

from rlsched import compare, train
from rlsched.agents import rllib

INSTALL = 'pip install -e ".[ray]"'


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError


def test_rllib_backend_without_ray_names_the_extra(no_ray, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--preset", "fast", "--backend", "rllib", "--runs-dir", str(tmp_path)])
    assert INSTALL in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before a run directory was made


def test_compare_ray_backend_without_ray_names_the_extra(no_ray, tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main(["--preset", "fast", "--backend", "ray", "--runs-dir", str(tmp_path)])
    assert INSTALL in capsys.readouterr().err


def test_ray_only_flags_need_their_backend(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--preset", "fast", "--address", "auto", "--runs-dir", str(tmp_path)])
    assert "--backend rllib" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--preset", "fast", "--pbt-population", "4", "--runs-dir", str(tmp_path)])
    assert "--backend ray" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--preset", "fast", "--num-gpus-per-worker", "0.5", "--runs-dir", str(tmp_path)])
    assert "--num-gpus-per-worker places Ray actors: add --backend ray" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(
            [
                "--preset",
                "fast",
                "--backend",
                "ray",
                "--num-gpus-per-worker",
                "-1",
                "--runs-dir",
                str(tmp_path),
            ]
        )
    assert "a GPU share is a number >= 0" in capsys.readouterr().err


def test_a_run_started_before_the_backend_options_existed_still_resumes_on_sb3(tmp_path):
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text('name = "fast"\n')
    (run_dir / "args.json").write_text(json.dumps({"preset": "fast", "algo": "sb3", "n_envs": 1, "seed": 3}))
    _, args, _ = train._open_run(train.parse_args(["--resume", str(run_dir)]))
    assert (args.backend, args.algo, args.n_envs, args.seed) == ("sb3", "sb3", 1, 3)


def test_rllib_resumes_from_the_previous_save_when_a_kill_fell_between_the_renames(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "last.old").mkdir(parents=True)
    assert rllib._saved(tmp_path) == checkpoints / "last.old"
    (checkpoints / "last").mkdir()
    assert rllib._saved(tmp_path) == checkpoints / "last"
