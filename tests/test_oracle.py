"""The per-instance oracle row of ``python -m rlsched.compare --oracle`` and every method's regret to it: the
best of constant and cosine over an LR grid on each held-out instance, picked on validation, reported on test."""

import csv

import pytest

from rlsched import compare
from rlsched.compare.running import oracle_jobs, oracle_runs
from rlsched.config import load_config
from rlsched.control.env import Instance, UNetLREnv, make_instances
from rlsched.experiment.harness import EpisodeResult, ScheduleController, run_episode
from rlsched.experiment.kinds.oracle import ORACLE, ORACLE_SCHEDULES
from rlsched.experiment.tuning import search_grid

TINY = ["data.image_size=16", "data.n_train=16", "data.n_val=8", "env.epochs=2", "env.heldout_instances=2",
        "env.train_instances=2", "env.initial_lr_min=0.01", "env.initial_lr_max=0.1"]  # fmt: skip


def rows_of(path):
    with open(path, newline="") as handle:
        return {r["method"]: r for r in csv.DictReader(handle) if r["factor"] == ""}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    args = ["--preset", "fast", *[a for o in TINY for a in ("--set", o)], "--schedules", "constant",
            "--tune-instances", "1", "--grid-per-decade", "1", "--no-robustness", "--workers", "1",
            "--oracle", "1", "--runs-dir", str(root)]  # fmt: skip
    assert compare.main(args) == 0
    (out,) = root.iterdir()
    return out


def test_the_oracle_is_each_instances_best_run_by_validation_scored_on_test(run_dir):
    config = load_config(run_dir / "config.toml")
    env = UNetLREnv(config=config)
    expected = []
    for instance in make_instances(config, "heldout"):
        runs = [
            run_episode(env, ScheduleController(schedule, lr), instance)
            for schedule in ORACLE_SCHEDULES
            for lr in search_grid(config, 1)
        ]
        best = max(runs, key=lambda r: (r.dice_curve(2)[-1], r.dice_curve(2)[1:].mean()))
        expected.append(best.test_dice)
    rows = rows_of(run_dir / "summary.csv")
    assert float(rows[ORACLE]["test_dice_mean"]) == pytest.approx(sum(expected) / len(expected))
    runs_per_instance = len(ORACLE_SCHEDULES) * len(search_grid(config, 1))
    assert (
        float(rows[ORACLE]["epochs_before_eval"]) == 2 * (runs_per_instance - 1) * 2
    )  # 2 instances, 2 epochs


def test_every_method_reports_its_regret_to_the_oracle(run_dir):
    rows = rows_of(run_dir / "summary.csv")
    with open(run_dir / "episodes.csv", newline="") as handle:
        last = [r for r in csv.DictReader(handle) if r["test_dice"] != "" and r["factor"] == ""]
    test = {}
    for r in last:
        test.setdefault(r["method"], {})[r["instance"]] = float(r["test_dice"])
    for name in ("constant", compare.CONSTANT_INITIAL, "random"):
        gaps = [test[ORACLE][i] - test[name][i] for i in test[ORACLE]]
        assert float(rows[name]["regret_mean"]) == pytest.approx(sum(gaps) / len(gaps))
        assert float(rows[name]["regret_worst"]) == pytest.approx(max(gaps))
    assert rows[ORACLE]["regret_mean"] == ""  # NaN: the oracle has no regret to itself
    report = (run_dir / "summary.md").read_text()
    assert (
        "## Regret to the per-instance oracle" in report
        and "| oracle | a grid per held-out instance" in report
    )


def fake(method: str, index: int, dices: list[float], test: float) -> EpisodeResult:
    records = [{"epoch": e, "dice_mean": d} for e, d in enumerate(dices)]
    return EpisodeResult(method, Instance("heldout", index, 0, 0, 0.1), records, 0.0, 0.0, test_dice=test)


def test_the_oracle_picks_on_validation_never_on_test():
    config = load_config("fast", {"env": {"epochs": 2}})
    instances = make_instances(config, "heldout")[:1]
    jobs = oracle_jobs(config, instances, 1)
    results = [
        fake("oracle cosine@0.1", 0, [0.1, 0.6, 0.8], test=0.95),  # best test: must not be chosen
        fake("oracle constant@0.1", 0, [0.1, 0.2, 0.9], test=0.5),  # the best final Dice, but a smaller area
        fake("oracle constant@0.01", 0, [0.1, 0.5, 0.9], test=0.2),  # best validation
    ]
    method, (picked,) = oracle_runs(config, jobs, results, 1)
    assert picked.method == ORACLE and picked.test_dice == 0.2
    assert method.name == ORACLE and not method.robust and "constant@0.01" in method.accounting


def test_a_negative_oracle_density_is_refused():
    with pytest.raises(ValueError, match="--oracle -1"):
        compare.Settings(oracle_per_decade=-1)
