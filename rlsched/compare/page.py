"""A results page (``docs/results/<preset>.md``) written from a finished comparison's run directory, so every
published figure traces back to one run: ``python -m rlsched.compare --report runs/<compare-id> --to DIR``.

The page holds one section per run, fenced by comment lines naming the run id. Reporting a run again replaces
its own section in place; another run of the same preset is appended; text outside the sections is kept. A page
that exists but holds no generated section (written by hand) is refused rather than mixed with generated ones.

A section is the run's record (``run.json``: dates, commit, command, resumes), its held-out instances and
``instance_seed`` (``config.toml``, ``args.json``), then its ``summary.md`` as the comparison wrote it, headings
moved two levels down; the main table's test Dice and epochs before evaluation are checked against
``summary.csv`` first. Nothing on the page is typed by hand and nothing is recomputed.
"""

from __future__ import annotations

import csv
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from rlsched.common.files import atomic_write_text
from rlsched.compare.record import PROGRAM, RECORD, read_record
from rlsched.compare.report import _ci, _count

JOURNAL = "jobs.jsonl"
NEEDED = ("config.toml", "args.json", JOURNAL, RECORD, "summary.md", "summary.csv")
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class PageError(ValueError):
    """A run directory that cannot be published, or a page that cannot be written; one line naming the fix."""


def _begin(run_id: str) -> str:
    return f"<!-- {PROGRAM} --report: run {run_id} (generated: report the run again to change it) -->"


def _end(run_id: str) -> str:
    return f"<!-- end of run {run_id} -->"


ANY_BEGIN = re.compile(rf"^<!-- {re.escape(PROGRAM)} --report: run ", re.MULTILINE)


def check_complete(run_dir: Path) -> dict[str, Any]:
    """The run's record, if the run finished with every job done; else ``PageError`` naming what is missing."""
    if not run_dir.is_dir():
        raise PageError(f"--report {run_dir}: no such folder; pass a run directory of {PROGRAM}")
    missing = [name for name in NEEDED if not (run_dir / name).is_file()]
    if missing == [RECORD]:
        raise PageError(
            f"--report {run_dir}: no {RECORD} (the comparison started before rlsched recorded its command and "
            "commit): run the comparison again to publish it"
        )
    if missing:
        raise PageError(
            f"--report {run_dir}: incomplete run directory, missing {', '.join(missing)}; finish it with "
            f"{PROGRAM} --resume {run_dir}, or pass a run directory of {PROGRAM}"
        )
    record = read_record(run_dir)
    if not record.get("finished"):
        raise PageError(
            f"--report {run_dir}: the comparison has not finished ({RECORD} has no finish time: it was "
            f"interrupted, or is running); finish it with {PROGRAM} --resume {run_dir}"
        )
    if record.get("failed_jobs"):
        raise PageError(
            f"--report {run_dir}: {record['failed_jobs']} job(s) failed (their worker died on every attempt) and "
            f"are missing from {JOURNAL}; run them with {PROGRAM} --resume {run_dir}"
        )
    return record


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    """summary.csv's main rows (no robustness factor): the columns the check reads, as report.py's rows hold
    them (an empty cell is NaN)."""
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["factor"] == ""]

    def number(text: str) -> float:
        return float(text) if text else math.nan

    return [
        {
            "method": r["method"],
            "n": int(r["n"]),
            "epochs_before_eval": number(r["epochs_before_eval"]),
            **{f"test_dice_{end}": number(r[f"test_dice_{end}"]) for end in ("mean", "low", "high")},
        }
        for r in rows
    ]


def _main_table(summary: str) -> dict[str, dict[str, str]]:
    """summary.md's main table (the first one): method -> column -> cell."""
    lines = summary.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| method |")), None)
    if start is None:
        return {}
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[start:]]
    header, rows = cells[0], []
    for line, row in zip(lines[start + 2 :], cells[2:]):
        if not line.startswith("|"):
            break
        rows.append(row)
    return {row[0].strip("*"): dict(zip(header, row)) for row in rows}


def check_consistent(run_dir: Path, summary: str) -> None:
    """summary.md's main table shows summary.csv's test Dice and epochs before evaluation for every method:
    a hand-edited or stale summary.md is refused, not published."""
    table = _main_table(summary)
    expected = {
        r["method"]: {
            "test Dice": _ci(r, "test_dice"),
            "epochs before eval": _count(r["epochs_before_eval"]),
        }
        for r in _csv_rows(run_dir / "summary.csv")
    }
    if table.keys() != expected.keys():
        raise PageError(
            f"--report {run_dir}: summary.md's main table lists other methods than summary.csv "
            f"({', '.join(sorted(table.keys() ^ expected.keys()))}); rewrite both with {PROGRAM} --resume {run_dir}"
        )
    for method, cells in expected.items():
        for column, text in cells.items():
            if table[method].get(column) != text:
                raise PageError(
                    f"--report {run_dir}: summary.md and summary.csv disagree on {method}'s {column} "
                    f"({table[method].get(column)!r} vs {text!r}); rewrite both with {PROGRAM} --resume {run_dir}"
                )


def _session_line(session: dict[str, Any]) -> str:
    commit = session.get("commit")
    code = f"commit `{commit}`" if commit else "no git commit (not run from a git checkout)"
    if session.get("uncommitted_changes"):
        code += " **with uncommitted changes**"
    return f"{session['started']}, {code}, rlsched {session['rlsched']}"


def section(run_dir: Path) -> tuple[str, str]:
    """(preset name, the page section) of a finished run."""
    record = check_complete(run_dir)
    summary = (run_dir / "summary.md").read_text()
    check_consistent(run_dir, summary)
    config = tomllib.loads((run_dir / "config.toml").read_text())
    seeds = json.loads((run_dir / "args.json").read_text()).get("seeds")
    heldout, instance_seed = config["env"]["heldout_instances"], config["env"]["instance_seed"]
    count = heldout if seeds is None else min(seeds, heldout)
    run_id = run_dir.resolve().name
    lines = [
        _begin(run_id),
        f"## Comparison `{run_id}`",
        "",
        f"- Started: {_session_line(record)}; results written {record['finished']}.",
        *(f"- Resumed: {_session_line(s)}, with `{s['command']}`." for s in record["resumes"]),
        f"- Held-out instances: {count} (`env.instance_seed = {instance_seed}`).",
        "- Command:",
        "",
        "  ```bash",
        f"  {record['command']}",
        "  ```",
        "",
        f"Below: the run's `summary.md` as the comparison wrote it (test Dice and epochs before evaluation "
        f"checked against its `summary.csv`). Regenerate: `{PROGRAM} --report <run directory> --to <folder>`.",
        "",
        re.sub(r"(?m)^#", "###", summary).rstrip("\n"),
        _end(run_id),
    ]
    return config["name"], "\n".join(lines) + "\n"


def merged(page: str, run_id: str, text: str, path: Path) -> str:
    """``page`` with the run's section replaced by ``text`` (or ``text`` appended)."""
    if not ANY_BEGIN.search(page):
        raise PageError(
            f"--to: {path} exists and holds no section written by --report (written by hand?): move it away, "
            "or pass another --to folder"
        )
    begin, end = _begin(run_id), _end(run_id)
    if begin not in page:
        return page.rstrip("\n") + "\n\n" + text
    head, rest = page.split(begin, 1)
    if end not in rest:
        raise PageError(
            f"--to: {path}: run {run_id}'s section has no end line ({end}); restore it or remove it"
        )
    return head + text.rstrip("\n") + rest.split(end, 1)[1]


def write_page(run_dir: Path, to: Path) -> Path:
    """Write (atomically) ``to/<preset>.md`` with the run's section; returns its path. Nothing else is written."""
    preset, text = section(run_dir)
    if not PLAIN_NAME.fullmatch(preset):
        raise PageError(
            f"--report {run_dir}: preset name {preset!r} is not a plain file name; rename the preset"
        )
    if to.exists() and not to.is_dir():
        raise PageError(f"--to {to} is a file: pass the folder of the results pages, e.g. docs/results")
    path = to / f"{preset}.md"
    if path.exists():
        text = merged(path.read_text(), run_dir.resolve().name, text, path)
    else:
        text = (
            f"# Results on `{preset}`\n\nEach section below is written by `{PROGRAM} --report` from one "
            "comparison's run directory; reporting a run again replaces its section.\n\n" + text
        )
    atomic_write_text(path, text)
    return path
