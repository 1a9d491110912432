"""Worker processes exit when the process that started them is killed with -9: the job pool behind compare and
evaluate, and the SB3 env processes behind train, leave nothing training for nobody (forkserver included)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")

# episodes (and env steps) of minutes: a worker left behind would still be training when the test looks
LONG = '{"env.epochs": 600, "env.epochs_per_step": 300}'
STARTERS = {
    "job pool": f"""
from rlsched.config import load_config
from rlsched.control.env import make_instances
from rlsched.experiment.harness import Job
from rlsched.experiment.jobs import run_jobs
config = load_config("fast", {LONG})
run_jobs(config, [Job("constant", "schedule", "constant", i) for i in make_instances(config, "heldout")[:2]],
         workers=2)
""",
    "SB3 env processes": f"""
import numpy as np
from rlsched.agents.sb3 import make_vec
from rlsched.config import load_config
env = make_vec(load_config("fast", {LONG}), 2, None)
env.reset()
env.step_async(np.zeros(2, dtype=int))
print("stepping", flush=True)
env.step_wait()
""",
}


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state, parent pid, ...); None once the pid is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def running(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has exited


def wait_until(condition, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    return condition()


@pytest.mark.parametrize("kind", STARTERS)
def test_workers_exit_when_their_parent_is_killed_with_9(kind, tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", STARTERS[kind]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    workers: set[int] = set()
    try:
        if kind == "job pool":  # each pool worker names the job it runs by a marker file named by its pid
            busy = wait_until(
                lambda: len(list(tmp_path.glob("rlsched-jobs-*/*"))) == 2 or parent.poll() is not None, 120
            )
        else:
            busy = wait_until(
                lambda: parent.poll() is not None or "stepping" in parent.stdout.readline(), 120
            )
        assert busy and parent.poll() is None, parent.communicate()
        time.sleep(0.5)  # the env processes are inside their long step now
        workers = descendants(parent.pid)
        assert len(workers) >= 3  # the forkserver and two workers (and multiprocessing's resource tracker)
        parent.kill()
        parent.wait()
        left = wait_until(lambda: not any(running(pid) for pid in workers), 10)
        assert left, (
            f"still running 10 s after the parent's kill -9: {sorted(p for p in workers if running(p))}"
        )
    finally:
        parent.kill()
        for pid in filter(running, workers):  # the test's own processes, by pid, should a check above fail
            os.kill(pid, signal.SIGKILL)
