"""The main command's held-out table: the learned policy against its teacher rule, Schedule-Free AdamW at its
defaults and the constant initial LR, on the same held-out instances."""

import csv
import json

import pytest
from conftest import SUGGESTED_TEACHER, train_tiny

from rlsched import evaluate
from rlsched.config import load_config
from rlsched.control.env import UNetLREnv, make_instances
from rlsched.experiment.harness import ScriptedController, run_episode
from rlsched.experiment.jobs import episodes, run_jobs
from rlsched.experiment.kinds import method_job

TINY = [
    "data.image_size=16",
    "data.n_train=16",
    "data.n_val=8",
    "env.epochs=2",
    'env.action="residual"',
    "env.heldout_instances=2",
    "env.train_instances=2",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs"), TINY, *SUGGESTED_TEACHER)


def test_the_held_out_table_has_the_teacher_rule_and_schedule_free_beside_the_policy(run_dir):
    assert json.loads((run_dir / evaluate.TEACHER_FILE).read_text()) == {"rule": "suggested", "lr": 0.01}
    report = evaluate.evaluate_heldout(run_dir / "model.zip")
    summary = json.loads((run_dir / "heldout.json").read_text())
    assert summary["teacher"] == {"rule": "suggested", "lr": 0.01}
    config = load_config(run_dir / "config.toml")
    instances = make_instances(config, "heldout")
    env = UNetLREnv(config=config)
    rule = [run_episode(env, ScriptedController(0.01, follow_suggestion=True), i) for i in instances]
    assert summary["rule_test_dice"] == pytest.approx([r.test_dice for r in rule])
    free = episodes(
        run_jobs(
            config, [method_job(config, "optimizer", "schedulefree_adamw", "sf", i) for i in instances], 1
        )
    )
    assert summary["schedulefree_adamw_test_dice"] == pytest.approx(
        [r.test_dice for r in sorted(free, key=lambda r: r.instance.index)]
    )
    learned = summary["learned_test_dice"]
    for name in ("rule", "schedulefree_adamw", "constant"):
        expected = sum(learned) / 2 - sum(summary[f"{name}_test_dice"]) / 2
        assert summary["learned_minus"][name]["mean"] == pytest.approx(expected)
    with open(run_dir / "heldout_episodes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 2 * 3  # methods x instances x (epoch 0 and 2 epochs)
    ends = {
        r["instance"]: float(r["test_dice"])
        for r in rows
        if r["method"] == "schedulefree_adamw" and r["test_dice"]
    }
    assert [ends["0"], ends["1"]] == pytest.approx(summary["schedulefree_adamw_test_dice"])
    assert "| teacher rule (suggested) | its LR, searched in the policy's training | 0.01 |" in report
    assert "| **learned-sb3** − schedulefree_adamw |" in report and "## Compute before evaluation" in report


def test_without_a_teacher_record_the_table_says_so(run_dir, tmp_path):
    (run_dir / evaluate.TEACHER_FILE).rename(tmp_path / "kept.json")
    try:
        report = evaluate.evaluate_heldout(run_dir / "model.zip", out_dir=tmp_path)
    finally:
        (tmp_path / "kept.json").rename(run_dir / evaluate.TEACHER_FILE)
    summary = json.loads((tmp_path / "heldout.json").read_text())
    assert summary["teacher"] is None and "rule" not in summary["learned_minus"]
    assert "No teacher row" in report


def test_a_corrupt_teacher_record_is_an_error_that_names_the_file(run_dir, tmp_path):
    model = tmp_path / "model.zip"
    (tmp_path / evaluate.TEACHER_FILE).write_text('{"rule": "suggested"')
    with pytest.raises(ValueError, match="teacher.json: unreadable"):
        evaluate.read_teacher(model)


def test_a_two_instance_interval_is_shown_clipped_with_a_warning_and_kept_raw(run_dir, tmp_path, monkeypatch):
    """Test Dice 0.1 and 0.9 on the two held-out instances: the t interval 0.5 ± 5.08 is shown cut to [0, 1],
    marked with n, and heldout.md warns that n is too small; heldout.json keeps the raw bounds."""
    from rlsched.experiment.harness import EpisodeResult

    def results(jobs):
        return [
            EpisodeResult(
                job.method,
                job.instance,
                [{"epoch": 0, "dice_mean": 0.6, "diverged": False, "val_loss": 1.0, "lr": 0.01}],
                0.0,
                1.0,
                test_dice=(0.1, 0.9)[job.instance.index],
            )
            for job in jobs
        ]

    monkeypatch.setattr(evaluate, "run_jobs", lambda config, jobs, workers, on_result=None: jobs)
    monkeypatch.setattr(evaluate, "episodes", results)
    report = evaluate.evaluate_heldout(run_dir / "model.zip", out_dir=tmp_path)
    assert "| a trained controller | instance's initial | 6 | 0.500 [0.000, 1.000] (clipped, n=2) |" in report
    assert "n = 2 is too small a sample" in report and "env.heldout_instances" in report
    low, high = json.loads((tmp_path / "heldout.json").read_text())["learned_test_dice_ci95"]
    assert low < -4 and high > 5


def test_teacher_lr_adds_the_rule_row_for_a_policy_without_a_teacher_record(run_dir, tmp_path, capsys):
    args = [str(run_dir / "model.zip"), "--out", str(tmp_path)]
    assert evaluate.main([*args, "--teacher-lr", "0.001"]) == 0
    summary = json.loads((tmp_path / "heldout.json").read_text())
    assert summary["teacher"] == {"rule": "suggested", "lr": 0.001} and "rule" in summary["learned_minus"]
    with pytest.raises(SystemExit):
        evaluate.main([*args, "--teacher-lr", "50"])
    assert "--teacher-lr 50: outside the env's LR range" in capsys.readouterr().err


def test_teacher_names_the_rule_of_that_row(run_dir, tmp_path, capsys):
    args = [str(run_dir / "model.zip"), "--out", str(tmp_path)]
    assert evaluate.main([*args, "--teacher", "offset:-0.5", "--teacher-lr", "0.001"]) == 0
    summary = json.loads((tmp_path / "heldout.json").read_text())
    assert summary["teacher"] == {"rule": "offset:-0.5", "lr": 0.001}
    assert "| teacher rule (offset:-0.5) |" in (tmp_path / "heldout.md").read_text()
    capsys.readouterr()
    for extra, error in (
        (["--teacher", "offset:-0.5"], "needs its probe LR: add --teacher-lr"),
        (["--teacher", "offset", "--teacher-lr", "0.001"], "expected one of scripted, suggested or offset"),
    ):
        with pytest.raises(SystemExit):
            evaluate.main([*args, *extra])
        assert error in capsys.readouterr().err
