"""Env workers for vectorised training: thread limits, start method, Ctrl-C handling, episode records, and
an exit when the process that started them dies."""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import gymnasium as gym
import torch

from rlsched.agents.episodes import EpisodeRecorder
from rlsched.config import Config


def start_method() -> str:
    """forkserver (or spawn) rather than fork: torch in forked children breaks CUDA and can deadlock."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def die_with(parent: int) -> None:
    """Exit this worker process as soon as process ``parent`` is gone, however it went: after a kill -9 none of
    its clean-up runs, and its workers would otherwise train on for nobody. A thread waits on the parent itself
    rather than relying on the kernel's parent-death signal, which watches the *direct* parent: under
    forkserver that is the forkserver, which stays up as long as any worker does."""
    threading.Thread(target=_exit_after, args=(parent,), name="rlsched-parent-watch", daemon=True).start()


def _exit_after(parent: int) -> None:
    try:
        handle = os.pidfd_open(parent)  # Linux >= 5.3: readable once the process has exited
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd here: poll
        while _alive(parent):
            time.sleep(1.0)
        os._exit(1)
    select.select([handle], [], [])
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # PermissionError: the pid was reused by another user
        return False
    return True


def worker_threads(n_workers: int) -> int:
    """Split the cores: two 1-thread workers beat one 2-thread process on small UNets."""
    return max(1, (os.cpu_count() or 1) // max(1, n_workers))


def env_factory(
    config: Config, rank: int, episodes_path: Path | None, in_worker: bool, n_workers: int = 1
) -> Callable[[], gym.Env]:
    """A picklable factory for env ``rank``; it sets the process's torch threads (in a subprocess: its share
    of the cores; in-process: ``env.torch_threads`` if set), which the env itself never touches, and in a
    subprocess leaves Ctrl-C to the parent, which saves a checkpoint and then closes the workers, and exits
    when the parent dies."""
    threads = worker_threads(n_workers) if in_worker else config.env.torch_threads
    parent = os.getpid()  # the trainer: this runs where the factory is built

    def make() -> gym.Env:
        from rlsched.control.env import UNetLREnv

        if threads:
            torch.set_num_threads(threads)
        if in_worker:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            die_with(parent)
        env: gym.Env = UNetLREnv(config=config)
        if episodes_path is not None:
            env = EpisodeRecorder(env, episodes_path, rank)
        return env

    return make
