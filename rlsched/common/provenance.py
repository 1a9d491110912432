"""Where a run's code came from: the git commit of the rlsched checkout and whether it had uncommitted changes,
so a published figure or a shipped model names the code that produced it. Imports nothing of rlsched."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent  # inside the rlsched package: git finds the checkout holding it
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def now() -> str:
    """The local time with its UTC offset, as every provenance record writes it."""
    return time.strftime(DATE_FORMAT)


def _git(*args: str) -> str | None:
    """``git args`` run in the package's folder; None when git is missing or this is no git checkout (an
    installed wheel)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str | None:
    """The commit the rlsched checkout is at (``git rev-parse HEAD``); None outside a git checkout."""
    return _git("rev-parse", "HEAD")


def git_changed() -> bool | None:
    """Whether tracked files differ from that commit: then the commit alone does not name the code that ran.
    None outside a git checkout."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)
