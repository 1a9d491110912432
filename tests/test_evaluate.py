"""The main command's held-out table: the learned policy against its teacher rule, Schedule-Free AdamW at its
defaults and the constant initial LR, on the same held-out instances."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import SUGGESTED_TEACHER, train_tiny

from rlsched import evaluate
from rlsched.agents.loading import load_policy
from rlsched.config import load_config
from rlsched.control.env import UNetLREnv, make_instances
from rlsched.control.rules import ScriptedRule
from rlsched.experiment.harness import PolicyController, ScriptedController, run_episode
from rlsched.experiment.jobs import episodes, run_jobs
from rlsched.experiment.kinds import KINDS, method_job
from rlsched.experiment.kinds import policy as policy_kind

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
    reused = summary["rule_episodes_reused"]
    assert reused in (0, 1, 2) and (f"rule's episode on {reused} of 2 instances" in report) == (reused > 0)
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


class RuleWithSlip:
    """A predictor that takes the suggested rule's action, except in state ``slip`` (0 = never slips)."""

    def __init__(self, env_config, slip=0):
        self.rule, self.slip, self.calls = ScriptedRule(env_config, 0.01, True), slip, 0

    def predict(self, obs, deterministic=True):
        self.calls += 1
        action = int(self.rule.actions(obs)[0])
        return np.array(action + 1 if self.calls == self.slip else action), None


@pytest.fixture(scope="module")
def tiny_env(run_dir):
    return UNetLREnv(config=load_config(run_dir / "config.toml"))


def test_a_policy_that_takes_the_rule_s_action_everywhere_played_the_rule_s_episode(tiny_env):
    instance = make_instances(tiny_env.config, "heldout")[0]
    rule = run_episode(tiny_env, ScriptedController(0.01, "rule", follow_suggestion=True), instance)
    twin = ScriptedController(0.01, "rule", follow_suggestion=True)
    same = run_episode(tiny_env, PolicyController(RuleWithSlip(tiny_env.config.env), twin=twin), instance)
    assert same.twins == ("rule",)
    assert same.test_dice == rule.test_dice and same.records == rule.records
    for slip in (1, 2):  # the probe or the slice after it
        other = PolicyController(RuleWithSlip(tiny_env.config.env, slip), twin=twin)
        assert run_episode(tiny_env, other, instance).twins == ()
    assert run_episode(tiny_env, PolicyController(RuleWithSlip(tiny_env.config.env)), instance).twins == ()


def test_the_rule_row_trains_only_where_the_policy_left_the_rule(run_dir, tiny_env, monkeypatch):
    """Instance 0's policy takes the rule's action everywhere, instance 1's slips once: the rule trains on 1 alone,
    and both its rows are what the rule itself scores."""
    config = tiny_env.config
    ran = []

    def counted(config, jobs, workers, on_result=None):
        ran.extend(job.method for job in jobs)
        return run_jobs(config, jobs, 1, on_result)

    def controller(job):
        slip = 2 if job.instance.index == 1 else 0
        name, rule, lr = job.twin
        return PolicyController(
            RuleWithSlip(config.env, slip), job.method, twin=ScriptedController(lr, name, True)
        )

    monkeypatch.setattr(evaluate, "run_jobs", counted)
    monkeypatch.setitem(KINDS, "policy", replace(policy_kind.KIND, controller=controller))
    methods = {
        k: m
        for k, m in evaluate.heldout_methods(
            config, load_policy(run_dir / "model.zip", trust=True), ("suggested", 0.01)
        ).items()
        if k in ("learned", "rule")
    }
    results, reused = evaluate.run_heldout(config, methods, make_instances(config, "heldout"), 1)
    assert reused == 1 and ran.count(methods["rule"].name) == 1
    rule = {r.instance.index: r.test_dice for r in results if r.method == methods["rule"].name}
    fresh = [
        run_episode(tiny_env, ScriptedController(0.01, follow_suggestion=True), i)
        for i in make_instances(config, "heldout")
    ]
    assert rule == {r.instance.index: r.test_dice for r in fresh}
