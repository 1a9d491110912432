"""Env workers for vectorised training: thread limits, start method, Ctrl-C handling, episode records."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Callable

import gymnasium as gym
import torch

from ..config import Config
from .episodes import EpisodeRecorder


def start_method() -> str:
    """forkserver (or spawn) rather than fork: torch in forked children breaks CUDA and can deadlock."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def worker_threads(n_workers: int) -> int:
    """Split the cores: two 1-thread workers beat one 2-thread process on small UNets."""
    return max(1, (os.cpu_count() or 1) // max(1, n_workers))


def env_factory(config: Config, rank: int, episodes_path: Path | None, in_worker: bool,
                n_workers: int = 1) -> Callable[[], gym.Env]:
    """A picklable factory for env ``rank``; it sets the process's torch threads (in a subprocess: its share
    of the cores; in-process: ``env.torch_threads`` if set), which the env itself never touches, and in a
    subprocess leaves Ctrl-C to the parent, which saves a checkpoint and then closes the workers."""
    threads = worker_threads(n_workers) if in_worker else config.env.torch_threads

    def make() -> gym.Env:
        from ..env import UNetLREnv

        if threads:
            torch.set_num_threads(threads)
        if in_worker:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        env: gym.Env = UNetLREnv(config=config)
        if episodes_path is not None:
            env = EpisodeRecorder(env, episodes_path, rank)
        return env

    return make
