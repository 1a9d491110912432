"""``run.json``: the exact command line, commit, rlsched version and dates of a comparison, so a results page
written from its run directory (``compare.page``) names what produced every figure.

Written atomically at the start (``finished`` empty), updated when a resume starts (one more entry in
``resumes``, ``finished`` emptied: the run is in progress again) and when the result files are written
(``finished`` and ``failed_jobs`` set). A run directory made before this file existed has none, and is not
published.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from rlsched import __version__
from rlsched.common.files import atomic_write_json
from rlsched.common.provenance import git_changed, git_commit, now

RECORD = "run.json"
PROGRAM = "python -m rlsched.compare"


def command(argv: list[str]) -> str:
    """The command line as a shell would run it again (each argument quoted where it needs to be)."""
    return " ".join([PROGRAM, *(shlex.quote(a) for a in argv)])


def _session(argv: list[str]) -> dict[str, Any]:
    return {
        "argv": argv,
        "command": command(argv),
        "commit": git_commit(),
        "uncommitted_changes": git_changed(),
        "rlsched": __version__,
        "started": now(),
    }


def read_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / RECORD).read_text())


def record_start(run_dir: Path, argv: list[str]) -> None:
    """A fresh comparison: its command line and code, before its first episode."""
    atomic_write_json(
        run_dir / RECORD, {**_session(argv), "resumes": [], "finished": None, "failed_jobs": None}
    )


def record_resume(run_dir: Path, argv: list[str]) -> None:
    """A resume session: appended to the record (it may run at another commit than the start did). A run
    started before run.json existed stays without one: its first command is unknown."""
    if not (run_dir / RECORD).is_file():
        return
    record = read_record(run_dir)
    record["resumes"].append(_session(argv))
    atomic_write_json(run_dir / RECORD, {**record, "finished": None, "failed_jobs": None})


def record_finish(run_dir: Path, failed_jobs: int) -> None:
    """The result files are written: when, and how many jobs their workers failed on every attempt."""
    if not (run_dir / RECORD).is_file():
        return
    atomic_write_json(
        run_dir / RECORD, {**read_record(run_dir), "finished": now(), "failed_jobs": failed_jobs}
    )
