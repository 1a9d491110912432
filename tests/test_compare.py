"""``python -m rlsched.compare``: one tiny end-to-end comparison checked file by file, and its error paths."""

import csv
import json
import math
import shutil

import by_hand
import pytest
from conftest import train_tiny

from rlsched import compare
from rlsched.agents.loading import load_policy
from rlsched.common.files import read_jsonl
from rlsched.compare.plots import plot
from rlsched.config import ConfigError, load_config
from rlsched.control.env import Instance, make_instances
from rlsched.experiment.harness import EpisodeResult
from rlsched.seg.schedules import SCHEDULES

# 16x16 images and 2-epoch budgets keep every episode well under a second
TINY = ["data.image_size=16", "data.n_train=16", "data.n_val=8", "env.epochs=2"]
# 2 held-out and 2 train instances; a 2-point LR grid (0.01, 0.1) at 1 per decade
COMPARE = TINY + [
    "env.heldout_instances=2",
    "env.train_instances=2",
    "env.initial_lr_min=0.01",
    "env.initial_lr_max=0.1",
]
EPOCHS, INSTANCES, GRID = 2, 2, (0.01, 0.1)
FACTOR = 10.0
AGENTS = ["learned-sb3", "learned-sb3#2"]
METHODS = AGENTS + list(SCHEDULES) + [compare.CONSTANT_INITIAL, "random"]


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """An SB3 PPO after one tiny rollout (2 episodes of 2 epochs, no warm start): untrained, but a real run
    directory."""
    return train_tiny(tmp_path_factory.mktemp("agents"), TINY) / "model.zip"


@pytest.fixture(scope="module")
def run_dir(agent, tmp_path_factory):
    """One comparison through the CLI; the same agent twice stands in for two agents."""
    root = tmp_path_factory.mktemp("compare")
    assert (
        compare.main(
            [
                "--preset",
                "fast",
                *sets(COMPARE),
                "--agent",
                str(agent),
                "--agent",
                str(agent),
                "--tune-instances",
                "1",
                "--grid-per-decade",
                "1",
                "--robustness",
                str(FACTOR),
                "--workers",
                "1",
                "--runs-dir",
                str(root),
            ]
        )
        == 0
    )
    (out,) = root.iterdir()
    return out


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def main_rows(run_dir):
    return {r["method"]: r for r in read_csv(run_dir / "summary.csv") if r["factor"] == ""}


def dice_curves(run_dir):
    """Per method, the validation Dice curve of each held-out instance (in instance order) read back from
    episodes.csv, zero-filled after a divergence: the raw material every summary statistic is recomputed from."""
    curves = {}
    for row in read_csv(run_dir / "episodes.csv"):
        if row["factor"] == "":
            runs = curves.setdefault(row["method"], {})
            runs.setdefault(int(row["instance"]), []).append(float(row["dice"]))
    return {
        method: [dices + [0.0] * (EPOCHS + 1 - len(dices)) for _, dices in sorted(runs.items())]
        for method, runs in curves.items()
    }


def read_test_dices(run_dir, factor=""):
    """Per method, the test Dice of each held-out instance (in instance order) read back from episodes.csv:
    one per run, on its last row."""
    runs = {}
    for row in read_csv(run_dir / "episodes.csv"):
        if row["factor"] == factor and row["test_dice"] != "":
            runs.setdefault(row["method"], {})[int(row["instance"])] = float(row["test_dice"])
    return {method: [dice for _, dice in sorted(by_instance.items())] for method, by_instance in runs.items()}


def test_every_output_is_written_and_readable(run_dir):
    expected = {
        "config.toml",
        "args.json",
        "run.json",
        "inputs.json",
        "jobs.jsonl",
        "episodes.csv",
        "tuning.csv",
        "summary.csv",
        "summary.md",
        "dice_vs_epoch.png",
        "lr_vs_epoch.png",
        "final_dice.png",
        "cost_quality.png",
        "robustness.png",
    }
    assert {p.name for p in run_dir.iterdir()} == expected  # and no temporary files left behind
    assert load_config(run_dir / "config.toml").env.epochs == EPOCHS
    assert json.loads((run_dir / "args.json").read_text())["robustness"] == [FACTOR]
    for png in run_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    report = (run_dir / "summary.md").read_text()
    for section in ("Robustness", "Paired test", "Tuned base LRs", "Compute before evaluation"):
        assert f"## {section}" in report


def test_summary_has_every_method_with_finite_statistics(run_dir):
    rows = main_rows(run_dir)
    assert sorted(rows) == sorted(METHODS)
    curves, tests = dice_curves(run_dir), read_test_dices(run_dir)
    for name, row in rows.items():
        assert int(row["n"]) == INSTANCES
        per_run = {
            "final_dice": [c[-1] for c in curves[name]],
            "best_dice": [max(c) for c in curves[name]],
            "auc_dice": [sum(c[1:]) / EPOCHS for c in curves[name]],
            "test_dice": tests[name],
        }
        for key, values in per_run.items():  # mean and 95% t interval over the instances, by hand
            mean, low, high = by_hand.t_interval(values)
            got = [float(row[f"{key}_{part}"]) for part in ("mean", "low", "high")]
            assert got == pytest.approx([mean, low, high], abs=1e-9), (name, key)
    assert any(rows[name]["final_dice_low"] != rows[name]["final_dice_high"] for name in rows)  # not all ties
    assert [tests[name] for name in rows] != [[c[-1] for c in curves[name]] for name in rows]  # not a copy
    report = (run_dir / "summary.md").read_text()
    assert all(f"| {name} |" in report or f"| **{name}** |" in report for name in METHODS)


def test_test_dice_is_the_headline_of_the_main_table(run_dir):
    """The main table leads with test Dice (mean ± CI half-width, clipped to [0, 1]), ranks by it, and labels
    validation as such."""
    report = (run_dir / "summary.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| method | needs"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[4:7] == ["test Dice", "final val Dice", "best val Dice"]
    body = [line for line in report.split("## Robustness")[0].splitlines() if line.startswith("| ")][1:]
    rows = main_rows(run_dir)
    ranked = sorted(rows, key=lambda name: -float(rows[name]["test_dice_mean"]))
    assert [line.split("|")[1].strip().strip("*") for line in body] == ranked
    for line in body:
        row = rows[line.split("|")[1].strip().strip("*")]
        mean, low, high = (float(row[f"test_dice_{part}"]) for part in ("mean", "low", "high"))
        cell = line.split("|")[5].strip()
        if not high > low:
            assert cell == f"{mean:.3f}"
        elif low < 0 or high > 1:  # past what a Dice can be: cut to [0, 1] and marked
            assert cell == f"{mean:.3f} [{max(low, 0):.3f}, {min(high, 1):.3f}] (clipped, n={INSTANCES})"
        else:
            assert cell == f"{mean:.3f} ± {(high - low) / 2:.3f}"


def test_robustness_runs_start_every_method_from_the_mis_set_lr(run_dir):
    rows = [r for r in read_csv(run_dir / "summary.csv") if r["factor"] != ""]
    tests = read_test_dices(run_dir, factor=str(FACTOR))
    report = (run_dir / "summary.md").read_text().split("## Robustness")[1].split("##")[0]
    assert "Test Dice when every method starts from" in report
    for row in rows:  # the robustness table is in test Dice
        mean = by_hand.t_interval(tests[row["method"]])[0]
        assert float(row["test_dice_mean"]) == pytest.approx(mean, abs=1e-12)
        line = next(
            line
            for line in report.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip(" *") == row["method"]
        )
        assert line.split("|")[2].strip().startswith(f"{mean:.3f}")
    constant_lr = float(main_rows(run_dir)["constant"]["base_lr"])
    assert sorted(r["method"] for r in rows) == sorted(m for m in METHODS if m != compare.CONSTANT_INITIAL)
    lr = min(FACTOR * constant_lr, 1.0)  # clipped to env.lr_max
    assert all(float(r["factor"]) == FACTOR and float(r["initial_lr"]) == pytest.approx(lr) for r in rows)
    episodes = [r for r in read_csv(run_dir / "episodes.csv") if r["factor"] != ""]
    assert episodes and all(float(r["base_lr"]) == pytest.approx(lr) for r in episodes)


def test_one_csv_row_per_method_instance_and_epoch(run_dir):
    rows = read_csv(run_dir / "episodes.csv")
    runs = {}
    for row in rows:
        runs.setdefault((row["method"], row["factor"], row["instance"]), []).append(row)
    assert len(runs) == len(METHODS) * INSTANCES + (len(METHODS) - 1) * INSTANCES
    for records in runs.values():
        assert [int(r["epoch"]) for r in records] == list(range(len(records)))
        assert len(records) == EPOCHS + 1 or records[-1]["diverged"] == "True"  # a diverged run stops early
        assert records[0]["lr"] == "" and all(float(r["lr"]) > 0 for r in records[1:])
        assert all(0 <= float(r["dice"]) <= 1 for r in records)
        assert all(r["test_dice"] == "" for r in records[:-1]) and 0 <= float(records[-1]["test_dice"]) <= 1


def test_tuned_base_lrs_come_from_the_grid_and_are_recorded(run_dir):
    tuning = read_csv(run_dir / "tuning.csv")
    assert sorted({float(r["lr"]) for r in tuning}) == pytest.approx(GRID)
    chosen = {r["schedule"]: float(r["lr"]) for r in tuning if r["chosen"] == "True"}
    assert sorted(chosen) == sorted(SCHEDULES)
    rows = main_rows(run_dir)
    for name, lr in chosen.items():
        assert float(rows[name]["base_lr"]) == lr
        finals = {float(r["lr"]): float(r["final_dice"]) for r in tuning if r["schedule"] == name}
        assert finals[lr] == max(finals.values())
    assert rows["random"]["base_lr"] == rows[compare.CONSTANT_INITIAL]["base_lr"] == ""


def test_compute_accounting(run_dir, agent):
    rows = main_rows(run_dir)
    ppo_epochs = sum(r["epochs"] for r in read_jsonl(agent.parent / "episodes.jsonl"))
    assert ppo_epochs == 4  # one rollout: 2 episodes x 2 epochs
    assert all(float(rows[name]["epochs_before_eval"]) == ppo_epochs for name in AGENTS)
    assert all(float(rows[name]["epochs_before_eval"]) == len(GRID) * 1 * EPOCHS for name in SCHEDULES)
    assert float(rows["random"]["epochs_before_eval"]) == 0
    assert float(rows[compare.CONSTANT_INITIAL]["epochs_before_eval"]) == 0


def test_training_epochs_fall_back_to_the_checkpoint_step_count(agent, tmp_path):
    shutil.copy(agent, tmp_path / "model.zip")
    shutil.copy(agent.parent / "config.toml", tmp_path / "config.toml")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.json").write_text('{"num_timesteps": 6}')
    epochs, source = compare.training_epochs(load_policy(tmp_path / "model.zip"))
    assert epochs == 6 and "last.json" in source  # epochs_per_step = 1
    (tmp_path / "checkpoints" / "last.json").unlink()
    assert math.isnan(compare.training_epochs(load_policy(tmp_path / "model.zip"))[0])


def test_paired_test_of_each_agent_against_the_best_fixed_schedule(run_dir):
    chosen = [r for r in read_csv(run_dir / "tuning.csv") if r["chosen"] == "True"]  # train-instance scores
    best = max(chosen, key=lambda r: (float(r["final_dice"]), float(r["auc_dice"])))["schedule"]
    report = (run_dir / "summary.md").read_text()
    assert f"vs the best fixed schedule ({best})" in report
    assert "Test Dice difference on the same held-out instances" in report
    tests = read_test_dices(run_dir)
    for name in AGENTS:
        differences = [a - b for a, b in zip(tests[name], tests[best])]  # paired by instance
        assert len(differences) == INSTANCES and all(d != 0 for d in differences)
        mean, low, high = by_hand.t_interval(differences)
        t_p, wilcoxon_p = by_hand.t_test_pvalue(differences), by_hand.wilcoxon_exact_pvalue(differences)
        assert (
            f"| **{name}** − {best} | {mean:+.3f} ({low:+.3f} .. {high:+.3f}) | {t_p:.3g} "
            f"| {wilcoxon_p:.3g} | {INSTANCES} |"
        ) in report


def test_each_agent_minus_each_method_is_paired_by_instance_with_wins_and_losses(run_dir):
    report = (run_dir / "summary.md").read_text()
    heading = "## Paired differences: each learned policy minus each method"
    section = report.split(heading)[1].split("\n## ")[0]
    tests = read_test_dices(run_dir)
    for name in AGENTS:
        for other in (o for o in tests if o != name):
            differences = [a - b for a, b in zip(tests[name], tests[other])]
            mean, _, _ = by_hand.t_interval(differences)
            wins, losses = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
            (row,) = [line for line in section.splitlines() if line.startswith(f"| **{name}** − {other} | ")]
            assert row.split(" | ")[1].startswith(f"{mean:+.3f} (") and f"| {wins} / {losses} |" in row


def test_comparator_is_chosen_on_train_instances_not_on_held_out_results():
    """'cosine' wins the grid search on train instances, 'constant' wins on held-out: the paired test must
    compare against cosine, or held-out results would pick the comparator they are then tested against."""
    tuning = compare.Tuning(
        (0.01, 0.1),
        1,
        2,
        {"constant": {0.01: (0.2, 0.1), 0.1: (0.5, 0.3)}, "cosine": {0.01: (0.1, 0.1), 0.1: (0.6, 0.3)}},
    )
    methods = [
        compare.Method("constant", "schedule", "constant", 0.1),
        compare.Method("cosine", "schedule", "cosine", 0.1),
    ]
    results = [episode([0.2, 0.9]), episode([0.2, 0.3])]
    results[0].method, results[1].method = "constant", "cosine"
    comparison = compare.Comparison(
        load_config("fast"), compare.Settings(), methods, tuning, [results[0].instance], results
    )
    assert compare.best_fixed(comparison) == "cosine"


# ------------------------------------------------------------------------------------ metrics, no training
def episode(dices, diverged_at=None, test_dice=0.5, index=0, lrs=None):
    lrs = lrs or [0.1] * len(dices)
    records = [
        {"epoch": e, "lr": lr, "dice_mean": d, "diverged": e == diverged_at}
        for e, (d, lr) in enumerate(zip(dices, lrs))
    ]
    return EpisodeResult("m", Instance("heldout", index, 0, 0, 0.1), records, 0.0, 1.0, test_dice=test_dice)


def test_the_final_dice_cost_and_robustness_figures_show_test_dice(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    shown = {}
    errorbar, imshow = Axes.errorbar, Axes.imshow
    monkeypatch.setattr(
        Axes,
        "errorbar",
        lambda self, x, y, *args, **kw: (
            shown.setdefault("bars", []).append((x, y)) or errorbar(self, x, y, *args, **kw)
        ),
    )
    monkeypatch.setattr(
        Axes,
        "imshow",
        lambda self, data, *args, **kw: (
            shown.setdefault("heatmap", data) is None or imshow(self, data, *args, **kw)
        ),
    )
    runs = [episode([0.2, 0.9, 0.9], test_dice=t, index=i) for i, t in enumerate((0.3, 0.5))]
    robust = [episode([0.2, 0.8, 0.8], test_dice=t, index=i) for i, t in enumerate((0.1, 0.2))]
    for run in runs + robust:
        run.method = "constant"
    tuning = compare.Tuning((0.1,), 1, 2, {"constant": {0.1: (0.9, 0.5)}})
    comparison = compare.Comparison(
        load_config("fast", {"env.epochs": 2}),
        compare.Settings(),
        [compare.Method("constant", "schedule", "constant", 0.1)],
        tuning,
        [r.instance for r in runs],
        runs,
        {10.0: (1.0, robust)},
    )
    plot(comparison, tmp_path)
    (final_dice, _), (cost, quality) = shown["bars"]  # final_dice.png, then cost_quality.png
    assert final_dice == pytest.approx(0.4) and quality == pytest.approx(
        0.4
    )  # test Dice, not validation's 0.9
    assert shown["heatmap"] == [[pytest.approx(0.15)]]


def test_metrics_count_a_diverged_run_as_dice_zero_for_the_rest_of_the_budget():
    steps = 4
    ok = compare.run_metrics(episode([0.2, 0.5, 0.85, 0.9, 0.8]), steps, target=0.8)
    assert ok["final_dice"] == 0.8 and ok["best_dice"] == 0.9 and ok["epochs_to_target"] == 2
    assert ok["test_dice"] == 0.5  # scored apart from the validation curve
    assert ok["auc_dice"] == pytest.approx((0.5 + 0.85 + 0.9 + 0.8) / 4)
    bad = compare.run_metrics(episode([0.2, 0.6, math.nan], diverged_at=2), steps, target=0.8)
    assert bad["final_dice"] == 0 and bad["diverged"] == 1 and math.isnan(bad["epochs_to_target"])
    assert bad["auc_dice"] == pytest.approx(0.6 / 4)
    curve = episode([0.2, 0.6, math.nan], diverged_at=2).dice_curve(steps)
    assert list(curve) == [0.2, 0.6, 0, 0, 0]


def test_a_run_stalls_when_it_sits_at_dice_zero_for_more_than_two_epochs_at_one_lr():
    # the reset's Dice (index 0) is no slice: an untrained net at 0 is not a stall
    three_at_one_lr = episode([0.0, 0.3, 0.0, 0.0, 0.0, 0.4], lrs=[0.1, 0.1, 0.5, 0.51, 0.5, 0.5])
    assert three_at_one_lr.longest_stall == 3 and three_at_one_lr.stalled(1)
    assert compare.run_metrics(three_at_one_lr, 5, target=0.8)["stalled"] == 1
    lowered = episode([0.0, 0.0, 0.0, 0.0, 0.0], lrs=[0.1, 0.5, 0.5, 0.1, 0.1])  # the controller moved the LR
    assert lowered.longest_stall == 2 and not lowered.stalled(1)
    assert lowered.stalled(2)  # two slices of two epochs each: four epochs at one LR
    recovered = episode([0.0, 0.0, 0.0, 0.5, 0.0, 0.0], lrs=[0.1] * 6)
    assert recovered.longest_stall == 2 and not recovered.stalled(1)


def test_tuning_picks_the_best_final_dice_and_breaks_ties_by_area():
    tuning = compare.Tuning(
        GRID,
        1,
        EPOCHS,
        {"cosine": {0.01: (0.5, 0.3), 0.1: (0.7, 0.2)}, "step": {0.01: (0.0, 0.1), 0.1: (0.0, 0.2)}},
    )
    assert tuning.base_lrs == {"cosine": 0.1, "step": 0.1}
    assert tuning.reference == ("cosine", 0.1)  # no constant tuned: the best schedule's base LR
    assert tuning.epochs_per_schedule == len(GRID) * 1 * EPOCHS


# ------------------------------------------------------------------------------------ bad input
def test_missing_model_file_is_a_clear_cli_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--preset", "fast", "--agent", str(tmp_path / "nope" / "model.zip")])
    assert exit_info.value.code == 2
    assert "no policy at" in capsys.readouterr().err


def test_agent_trained_on_another_interface_is_refused(agent):
    config = load_config("fast", {"env.history": 3})
    with pytest.raises(ConfigError, match=r"env\.history: policy 2 vs env 3"):
        compare.agent_methods([load_policy(agent)], config)
    policy = load_policy(agent)  # discrete actions: their factors are interface, another mode's keys are not
    assert compare.agent_methods([policy], load_config("fast", {"env.grid_points": 7, "env.probe_lr": 0.01}))
    with pytest.raises(ConfigError, match=r"env\.factors: policy"):
        compare.agent_methods([policy], load_config("fast", {"env.factors": [0.5, 1.0, 3.0]}))


def test_unknown_schedule_lists_the_choices(capsys):
    with pytest.raises(ValueError, match="unknown schedule.*'bogus'.*warmup_cosine"):
        compare.Settings(schedules=("cosine", "bogus"))
    with pytest.raises(SystemExit):
        compare.main(["--preset", "fast", "--schedules", "bogus"])
    assert "choose from: constant, step" in capsys.readouterr().err
    assert compare.Settings(schedules=("offset:-0.5",)).schedules == (
        "offset:-0.5",
    )  # the offset rule, shifted
    with pytest.raises(ValueError, match=r"unknown schedule\(s\) 'offset'.*offset:<decades>"):
        compare.Settings(schedules=("offset",))


def test_more_seeds_than_held_out_instances_is_refused(capsys):
    with pytest.raises(SystemExit):
        compare.main(["--preset", "fast", "--seeds", "99"])
    assert "env.heldout_instances=99" in capsys.readouterr().err


def test_scripted_rule_is_tuned_on_train_instances_and_compared(tmp_path):
    """The scripted rule (steer towards a target LR) gets its target from the same grid search as a base LR
    and runs on the held-out instances from each instance's own initial LR."""
    assert (
        compare.main(
            [
                "--preset",
                "fast",
                *sets(COMPARE + ["env.factors=[0.25,0.5,1.0,2.0,4.0]"]),
                "--schedules",
                "constant",
                "scripted",
                "--tune-instances",
                "1",
                "--grid-per-decade",
                "1",
                "--no-robustness",
                "--workers",
                "1",
                "--runs-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    (out,) = tmp_path.iterdir()
    tuning = read_csv(out / "tuning.csv")
    chosen = {r["schedule"]: float(r["lr"]) for r in tuning if r["chosen"] == "True"}
    assert sorted(chosen) == ["constant", "scripted"] and any(
        chosen["scripted"] == pytest.approx(g) for g in GRID
    )
    rows = main_rows(out)
    assert float(rows["scripted"]["base_lr"]) == chosen["scripted"]
    episodes = [r for r in read_csv(out / "episodes.csv") if r["method"] == "scripted"]
    first_lrs = {r["instance"]: float(r["lr"]) for r in episodes if r["epoch"] == "1"}
    heldout = {
        str(i.index): i.initial_lr for i in make_instances(load_config(out / "config.toml"), "heldout")
    }
    for instance, lr in first_lrs.items():  # one rule step from the instance's initial LR towards the target
        assert any(lr / heldout[instance] == pytest.approx(f) for f in (0.25, 0.5, 1.0, 2.0, 4.0))


def test_schedules_at_the_initial_lr_run_untuned_and_only_in_the_main_runs(tmp_path):
    """--at-initial-lr: what a user who does not tune gets, e.g. cosine from each instance's own initial LR (the
    zero-shot comparisons need it); a forced initial LR would repeat the tuned schedule's robustness run."""
    with pytest.raises(ValueError, match="--at-initial-lr 'suggested': not a fixed schedule"):
        compare.Settings(at_initial_lr=("constant", "suggested"))
    assert (
        compare.main(
            [
                "--preset",
                "fast",
                *sets(COMPARE),
                "--schedules",
                "constant",
                "--at-initial-lr",
                "constant",
                "cosine",
                "--tune-instances",
                "1",
                "--grid-per-decade",
                "1",
                "--robustness",
                "10",
                "--workers",
                "1",
                "--runs-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    (out,) = tmp_path.iterdir()
    rows = main_rows(out)
    assert rows["cosine (initial LR)"]["base_lr"] == "" and rows[compare.CONSTANT_INITIAL]["base_lr"] == ""
    episodes = read_csv(out / "episodes.csv")
    heldout = {
        str(i.index): i.initial_lr for i in make_instances(load_config(out / "config.toml"), "heldout")
    }
    first = {
        r["instance"]: float(r["lr"])
        for r in episodes
        if r["method"] == "cosine (initial LR)" and r["epoch"] == "1" and not r["factor"]
    }
    assert first == pytest.approx(heldout)  # cosine's first epoch runs at the instance's own LR
    robust = {r["method"] for r in episodes if r["factor"]}
    assert "constant" in robust and not robust & {"cosine (initial LR)", compare.CONSTANT_INITIAL}


def test_practitioners_baselines_run_end_to_end_with_their_cost(agent, tmp_path):
    """--baselines all: LR range test (+ one-cycle, + cosine), the tuning-free optimizers, the nnU-Net recipe and
    Optuna run through the same harness on the same held-out instances, each with what it needed and spent."""
    pytest.importorskip("prodigyopt")
    pytest.importorskip("optuna")
    assert (
        compare.main(
            [
                "--preset",
                "fast",
                *sets(COMPARE),
                "--agent",
                str(agent),
                "--schedules",
                "constant",
                "--baselines",
                "all",
                "--optuna-epochs",
                "6",
                "--tune-instances",
                "1",
                "--grid-per-decade",
                "1",
                "--robustness",
                str(FACTOR),
                "--workers",
                "1",
                "--runs-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    (out,) = tmp_path.iterdir()
    rows = main_rows(out)
    extras = list(compare.BASELINES)
    assert set(extras) <= set(rows) and all(rows[m]["n"] == str(INSTANCES) for m in extras)
    # the range test's sweeps count as epochs spent; recipes and tuning-free optimizers spend nothing before
    assert float(rows["range_test+cosine"]["epochs_before_eval"]) > 0
    assert float(rows["prodigy"]["epochs_before_eval"]) == 0 and float(rows["nnunet"]["base_lr"]) == 0.01
    assert 0 < float(rows["optuna"]["epochs_before_eval"]) <= 6
    # a forced initial LR means nothing to methods that pick their own LR: no robustness rows for them
    robust = {r["method"] for r in read_csv(out / "summary.csv") if r["factor"] != ""}
    assert "optuna" in robust and not robust & {"prodigy", "nnunet", "range_test+onecycle"}
    report = (out / "summary.md").read_text()
    assert "| nothing (a recipe) |" in report and "| an Optuna search |" in report
    assert (out / "cost_quality.png").stat().st_size > 10_000


def test_an_unknown_baseline_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        compare.main(["--preset", "fast", "--baselines", "adam-magic"])
    assert "unknown baseline(s) 'adam-magic'; choose from: range_test+onecycle" in capsys.readouterr().err


def test_sampled_rollouts_are_averaged_per_instance_before_the_ci(agent, tmp_path):
    """--sampled-rollouts K: K seeded rollouts of the agent's sampled actions per instance; each instance counts
    once in the CI (mean of its rollouts), while divergences are counted over all K x n runs."""
    assert (
        compare.main(
            [
                "--preset",
                "fast",
                *sets(COMPARE),
                "--agent",
                str(agent),
                "--schedules",
                "constant",
                "--sampled-rollouts",
                "3",
                "--tune-instances",
                "1",
                "--grid-per-decade",
                "1",
                "--no-robustness",
                "--workers",
                "1",
                "--runs-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    (out,) = tmp_path.iterdir()
    name = "learned-sb3 (sampled, mean of 3)"
    row = main_rows(out)[name]
    assert (row["n"], row["runs"]) == (str(INSTANCES), str(3 * INSTANCES))
    episodes = [r for r in read_csv(out / "episodes.csv") if r["method"] == name and r["test_dice"] != ""]
    tests = {}
    for r in episodes:
        tests.setdefault(int(r["instance"]), []).append(float(r["test_dice"]))
    assert all(len(v) == 3 for v in tests.values())
    per_instance = [sum(v) / 3 for _, v in sorted(tests.items())]
    ci = by_hand.t_interval(per_instance)
    assert float(row["test_dice_mean"]) == pytest.approx(ci[0])
    assert float(row["test_dice_high"]) == pytest.approx(ci[2])


def test_sampled_rollouts_are_reproducible_per_seed():
    """The same rollout seed draws the same actions; another seed may not."""
    from rlsched.control.env import UNetLREnv
    from rlsched.experiment.harness import PolicyController, run_episode

    class Sampler:
        def predict(self, obs, deterministic=True):
            import torch

            return int(torch.randint(0, 5, ())), None

    config = load_config(
        "fast", {"data.image_size": 16, "data.n_train": 16, "data.n_val": 8, "env.epochs": 3}
    )
    env = UNetLREnv(config=config)
    instance = make_instances(config, "heldout")[0]
    lrs = [
        [
            r["lr"]
            for r in run_episode(
                env, PolicyController(Sampler(), deterministic=False, seed=seed), instance
            ).records
        ]
        for seed in (0, 0, 1)
    ]
    assert lrs[0] == lrs[1] and lrs[0] != lrs[2]


def test_undone_blow_ups_are_counted_apart_from_diverged_runs():
    undone = episode([0.2, 0.5, 0.5, 0.7])
    undone.records[2]["rolled_back"] = True  # epoch 2 blew up and was rolled back; the run went on
    dead = episode([0.2, 0.6, math.nan], diverged_at=2, index=1)
    for run in (undone, dead):
        run.method = "constant"
    tuning = compare.Tuning((0.1,), 1, 2, {"constant": {0.1: (0.9, 0.5)}})
    comparison = compare.Comparison(
        load_config("fast", {"env.epochs": 3}),
        compare.Settings(),
        [compare.Method("constant", "schedule", "constant", 0.1)],
        tuning,
        [undone.instance, dead.instance],
        [undone, dead],
    )
    (row,) = compare.summarize(comparison)
    assert row["diverged"] == 1 and row["rollbacks"] == 1 and undone.rollbacks == 1 and not undone.diverged


def test_a_two_instance_test_dice_interval_is_shown_clipped_with_a_warning_and_kept_raw(tmp_path):
    """Test Dice 0.1 and 0.9 give the t interval 0.5 ± 5.08: summary.md shows it cut to [0, 1], marked with n,
    and warns that the sample is too small; summary.csv keeps the raw bounds."""
    runs = [episode([0.2, 0.9, 0.9], test_dice=t, index=i) for i, t in enumerate((0.1, 0.9))]
    for run in runs:
        run.method = "constant"
    tuning = compare.Tuning((0.1,), 1, 2, {"constant": {0.1: (0.9, 0.5)}})
    comparison = compare.Comparison(
        load_config("fast", {"env.epochs": 2}),
        compare.Settings(),
        [compare.Method("constant", "schedule", "constant", 0.1)],
        tuning,
        [r.instance for r in runs],
        runs,
    )
    (row,) = compare.summarize(comparison)
    text = compare.report(comparison, [row])
    assert "| 0.500 [0.000, 1.000] (clipped, n=2) |" in text and "±" not in text.split("| s / run |")[1]
    assert "n = 2 is too small a sample" in text and "env.heldout_instances" in text
    assert row["test_dice_low"] < -4 and row["test_dice_high"] > 5  # the CSV's numbers stay the raw interval


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--no-robustness", "--robustness", "10"], ("--no-robustness", "--robustness")),
        (["--optuna-epochs", "5"], ("--optuna-epochs", "--baselines optuna")),
        (["--sampled-rollouts", "2"], ("--sampled-rollouts", "--agent")),
    ],
)
def test_contradictory_flags_are_refused(tmp_path, capsys, argv, named):
    """Each pair ran with one of its flags silently ignored."""
    with pytest.raises(SystemExit) as exit_info:
        compare.main(
            [
                "--preset",
                "fast",
                *sets(COMPARE),
                "--tune-instances",
                "1",
                "--grid-per-decade",
                "1",
                "--workers",
                "1",
                "--runs-dir",
                str(tmp_path),
                *argv,
            ]
        )
    assert exit_info.value.code == 2
    line = error_line(capsys.readouterr().err)
    assert all(flag in line for flag in named), line
    assert not list(tmp_path.iterdir())


def error_line(err):
    """The one error line of a refused command line (other lines are progress notes, e.g. the dataset's)."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def test_a_runs_dir_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--preset", "fast", *sets(COMPARE), "--tune-instances", "1", "--runs-dir", str(runs)])
    assert exit_info.value.code == 2
    assert f"--runs-dir {runs} is a file" in error_line(capsys.readouterr().err)


def test_a_comparison_that_fails_before_its_first_episode_leaves_no_run_directory(
    tmp_path, monkeypatch, capsys
):
    def fail(config, agents, settings, journal):
        assert (journal.path.parent / "inputs.json").is_file()  # the run directory was made
        raise ConfigError("[env] a value only an instance's config shows to be bad")

    monkeypatch.setattr(compare.cli, "run_comparison", fail)
    with pytest.raises(SystemExit) as exit_info:
        compare.main(
            ["--preset", "fast", *sets(COMPARE), "--tune-instances", "1", "--runs-dir", str(tmp_path)]
        )
    assert exit_info.value.code == 2 and "only an instance's config" in error_line(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())
