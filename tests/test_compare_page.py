"""``python -m rlsched.compare --report RUN_DIR --to DIR``: a results page written from one finished comparison
(its run.json, config, summary.md checked against summary.csv), refused for an incomplete run, written to --to
only; and the run.json every comparison keeps for it."""

import csv
import json
import re
import shlex
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

import rlsched
from rlsched import compare, train
from rlsched.common import provenance

TINY = ["data.image_size=16", "data.n_train=16", "data.n_val=8", "env.epochs=2"]
INSTANCES = 2
COMPARE = TINY + [
    f"env.heldout_instances={INSTANCES}",
    "env.train_instances=1",
    "env.initial_lr_min=0.01",
    "env.initial_lr_max=0.1",
    "env.instance_seed=3",
]
DATE = "%Y-%m-%d %H:%M:%S %z"


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real tiny comparison with one (barely trained) agent, so the page has a paired-test section."""
    agents = tmp_path_factory.mktemp("agents")
    train_args = ["--preset", "fast", *sets(TINY), "--n-envs", "1", "--total-timesteps", "4"]
    train_args += [
        "--bc-episodes",
        "0",
        "--episodes-per-rollout",
        "2",
        "--no-eval",
        "--runs-dir",
        str(agents),
    ]
    assert train.main(train_args) == 0
    (agent,) = agents.glob("*/model.zip")
    root = tmp_path_factory.mktemp("compare")
    args = ["--preset", "fast", *sets(COMPARE), "--agent", str(agent), "--schedules", "constant", "cosine"]
    args += ["--tune-instances", "1", "--grid-per-decade", "1", "--no-robustness", "--workers", "1"]
    assert compare.main([*args, "--runs-dir", str(root)]) == 0
    (out,) = root.iterdir()
    return out


def record(run_dir):
    return json.loads((run_dir / "run.json").read_text())


def report(run_dir, to):
    return compare.main(["--report", str(run_dir), "--to", str(to)])


def error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], err
    return lines[0]


def test_run_json_records_the_command_commit_version_and_dates(run_dir):
    saved = record(run_dir)
    argv = saved["argv"]
    assert argv[:2] == ["--preset", "fast"] and argv[argv.index("--runs-dir") + 1] == str(run_dir.parent)
    assert saved["command"] == f"python -m rlsched.compare {shlex.join(argv)}"
    assert re.fullmatch(r"[0-9a-f]{40}", saved["commit"])
    is_ancestor = [
        "git",
        "merge-base",
        "--is-ancestor",
        saved["commit"],
        "HEAD",
    ]  # others may commit meanwhile
    assert subprocess.run(is_ancestor, cwd=Path(rlsched.__file__).parent).returncode == 0
    assert isinstance(saved["uncommitted_changes"], bool) and saved["rlsched"] == rlsched.__version__
    assert datetime.strptime(saved["started"], DATE) <= datetime.strptime(saved["finished"], DATE)
    assert saved["failed_jobs"] == 0 and saved["resumes"] == []


def test_outside_a_git_checkout_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "CHECKOUT", tmp_path)
    assert provenance.git_commit() is None and provenance.git_changed() is None


def test_the_page_names_the_command_commit_dates_and_instances_and_goes_to_to_only(
    run_dir, tmp_path, monkeypatch, capsys
):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    monkeypatch.chdir(tmp_path)  # a page written anywhere relative to the working folder would show here
    assert report(run_dir, "results") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["results"]
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["fast.md"]  # no temporary file left
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    page = (tmp_path / "results" / "fast.md").read_text()
    saved = record(run_dir)
    assert page.startswith("# Results on `fast`\n")
    assert f"## Comparison `{run_dir.name}`" in page
    assert f"  ```bash\n  {saved['command']}\n  ```" in page
    assert f"commit `{saved['commit']}`" in page
    assert f"Started: {saved['started']}" in page and f"results written {saved['finished']}" in page
    assert f"Held-out instances: {INSTANCES} (`env.instance_seed = 3`)" in page
    assert f"wrote {Path('results') / 'fast.md'}" in capsys.readouterr().out


def test_the_page_tables_are_the_run_summary_and_equal_its_csv(run_dir, tmp_path):
    assert report(run_dir, tmp_path) == 0
    page = (tmp_path / "fast.md").read_text()
    summary = (run_dir / "summary.md").read_text()
    assert re.sub(r"(?m)^#", "###", summary).rstrip("\n") in page  # every table, headings moved down
    assert "#### Paired test: learned policy vs the best fixed schedule" in page
    with open(run_dir / "summary.csv", newline="") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle) if r["factor"] == ""}
    table = [line for line in page.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    shown = {}
    for line in table[1 : 1 + len(rows)]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        shown[cells["method"].strip("*")] = cells
    assert shown.keys() == rows.keys()
    for method, row in rows.items():
        cells = shown[method]
        mean, low, high = (float(row[f"test_dice_{k}"]) for k in ("mean", "low", "high"))
        numbers = [float(x) for x in re.findall(r"\d+\.\d+", cells["test Dice"])]
        assert numbers[0] == pytest.approx(mean, abs=5e-4)
        if "[" in cells["test Dice"]:
            assert numbers[1:3] == pytest.approx([max(low, 0), min(high, 1)], abs=5e-4)
        elif "±" in cells["test Dice"]:
            assert numbers[1] == pytest.approx((high - low) / 2, abs=5e-4)
        assert cells["epochs before eval"] == f"{float(row['epochs_before_eval']):,.0f}"
        assert cells["diverged"].startswith(f"{row['diverged']}/{row['runs']}")
        assert cells["needs from the user"]


def broken_copy(run_dir, tmp_path, how):
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    if how in ("summary.csv", "jobs.jsonl", "run.json"):
        (copy / how).unlink()
    elif how == "unfinished":
        (copy / "run.json").write_text(json.dumps({**record(copy), "finished": None}))
    elif how == "failed":
        (copy / "run.json").write_text(json.dumps({**record(copy), "failed_jobs": 2}))
    elif how == "edited":  # summary.csv no longer says what summary.md shows
        with open(copy / "summary.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        rows[0]["test_dice_mean"] = "0.987654"
        with open(copy / "summary.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return copy


@pytest.mark.parametrize(
    "how, message",
    [
        ("summary.csv", "incomplete run directory, missing summary.csv"),
        ("jobs.jsonl", "incomplete run directory, missing jobs.jsonl"),
        ("run.json", "no run.json (the comparison started before rlsched recorded"),
        ("unfinished", "the comparison has not finished"),
        ("failed", "2 job(s) failed"),
        ("edited", "summary.md and summary.csv disagree on"),
    ],
)
def test_an_incomplete_or_inconsistent_run_is_refused_in_one_line(run_dir, tmp_path, capsys, how, message):
    copy = broken_copy(run_dir, tmp_path, how)
    with pytest.raises(SystemExit) as exit_info:
        report(copy, tmp_path / "results")
    line = error_line(capsys.readouterr().err)
    assert exit_info.value.code == 2 and message in line and str(copy) in line
    assert not (tmp_path / "results").exists()


def test_reporting_again_replaces_the_runs_own_section_and_keeps_the_rest(run_dir, tmp_path, capsys):
    page = tmp_path / "fast.md"
    assert report(run_dir, tmp_path) == 0
    first = page.read_text()
    page.write_text(first + "\nA maintainer's note.\n")
    other = tmp_path / "runs" / "fast__compare__other"
    shutil.copytree(run_dir, other)
    assert report(other, tmp_path) == 0 and report(run_dir, tmp_path) == 0
    text = page.read_text()
    assert text.startswith(first + "\nA maintainer's note.\n\n")  # own section in place, note kept
    begins = re.findall(r"(?m)^<!-- python -m rlsched.compare --report: run (\S+) ", text)
    assert begins == [run_dir.name, other.name]  # the other run's section appended after the note
    hand = tmp_path / "by_hand"
    hand.mkdir()
    (hand / "fast.md").write_text("# Results on `fast`\n\nWritten by hand.\n")
    with pytest.raises(SystemExit):
        report(run_dir, hand)
    assert "holds no section written by --report" in error_line(capsys.readouterr().err)
    assert (hand / "fast.md").read_text() == "# Results on `fast`\n\nWritten by hand.\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--report", "runs/x"], "--report RUN_DIR needs --to DIR"),
        (["--to", "docs/results"], "--to DIR is where --report RUN_DIR writes"),
        (["--report", "runs/x", "--to", "out", "--preset", "fast"], "runs nothing: drop --preset"),
    ],
)
def test_report_flags_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit):
        compare.main(argv)
    assert message in error_line(capsys.readouterr().err)


def test_a_resume_is_recorded_and_named_on_the_page(run_dir, tmp_path, monkeypatch, capsys):
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    real = compare.cli.run_comparison

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare.cli, "run_comparison", interrupted)
    assert compare.main(["--resume", str(copy)]) == 130
    assert f"--resume {copy}" in capsys.readouterr().err  # the hint of an interrupted comparison
    with pytest.raises(SystemExit):  # the resume started and did not finish: the run is in progress again
        report(copy, tmp_path / "results")
    assert "has not finished" in error_line(capsys.readouterr().err)
    monkeypatch.setattr(compare.cli, "run_comparison", real)
    assert compare.main(["--resume", str(copy)]) == 0
    saved = record(copy)
    assert [s["argv"] for s in saved["resumes"]] == [["--resume", str(copy)]] * 2
    assert saved["argv"] == record(run_dir)["argv"] and saved["finished"]
    assert report(copy, tmp_path / "results") == 0
    page = (tmp_path / "results" / "fast.md").read_text()
    assert page.count(f"with `python -m rlsched.compare --resume {copy}`") == 2
