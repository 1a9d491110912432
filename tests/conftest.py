"""Shared fixtures: the tiny preset every test trains on, so the suite stays fast on 2 CPU cores."""

import pytest
import torch

from rlsched.config import Config, load_config

torch.set_num_threads(1)  # tiny nets: one thread is fastest and keeps results independent of core count


@pytest.fixture(scope="session")
def fast_config() -> Config:
    return load_config("fast")
