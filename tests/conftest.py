"""Shared fixtures: the tiny preset every test trains on, so the suite stays fast on 2 CPU cores."""

import pytest
import torch

from rlsched.config import Config, load_config

torch.set_num_threads(1)  # tiny nets: one thread is fastest and keeps results independent of core count


def tiny_fast(epochs: int, *more: str) -> list[str]:
    """Command-line flags that shrink ``fast`` to seconds an episode: 16 px, 16 train and 8 validation images,
    ``epochs`` epochs, then ``more`` ``section.key=value`` overrides."""
    sets = ("data.image_size=16", "data.n_train=16", "data.n_val=8", f"env.epochs={epochs}", *more)
    return ["--preset", "fast", *(arg for o in sets for arg in ("--set", o))]


@pytest.fixture(scope="session")
def fast_config() -> Config:
    return load_config("fast")


# a warm start of one episode per env from the suggested rule at a given probe LR: no teacher search to wait for
SUGGESTED_TEACHER = ("--bc-episodes", "1", "--teacher", "suggested", "--teacher-lr", "0.01")


def train_tiny(root, overrides, *extra: str):
    """``python -m rlsched.train`` on ``fast`` with ``overrides`` (``section.key=value`` strings): one rollout of 2
    episodes, no warm start unless ``extra`` asks for one, no held-out evaluation; returns the run directory."""
    from rlsched import train

    sets = [arg for o in overrides for arg in ("--set", o)]
    defaults = {
        "--n-envs": "1",
        "--total-timesteps": "4",
        "--bc-episodes": "0",
        "--episodes-per-rollout": "2",
    }
    flags = [arg for flag, value in defaults.items() if flag not in extra for arg in (flag, value)]
    assert train.main(["--preset", "fast", *sets, *flags, *extra, "--no-eval", "--runs-dir", str(root)]) == 0
    (run,) = root.iterdir()
    return run
