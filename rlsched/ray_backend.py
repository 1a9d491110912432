"""Ray, when the optional ``ray`` extra is installed: the import with a clear error, the connection, and the
episode executor behind ``harness.run_jobs(..., backend="ray")``.

Ray is imported only inside these functions, so the project runs without it.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Iterator

from .config import Config
from .harness import EpisodeResult, Job, _init_worker, _run_job

INSTALL = 'pip install -e ".[ray]"'


def require_ray(feature: str) -> Any:
    """The ``ray`` module, or an ImportError that says which feature needed it and how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"{feature} needs Ray (RLlib and Tune), which is not installed: {INSTALL}") from None
    return ray


def connect(address: str | None = None, feature: str = "the Ray backend") -> Any:
    """A local Ray instance by default, or the cluster at ``address``; reuses one the caller already started.
    Keeps the caller's SIGTERM handler (``rlsched.train`` checkpoints on SIGTERM; Ray's would just exit)."""
    ray = require_ray(feature)
    if not ray.is_initialized():
        on_term = signal.getsignal(signal.SIGTERM)
        if address:
            ray.init(address=address)
        else:
            ray.init(include_dashboard=False)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_term)
    return ray


class EpisodeWorker:
    """One env per Ray actor, like the local pool's worker processes: the env's data cache survives jobs."""

    def __init__(self, config: Config) -> None:
        _init_worker(config, 1)

    def run(self, job: Job) -> EpisodeResult:
        return _run_job(job)


def iter_jobs(config: Config, jobs: list[Job], workers: int, gpus_per_worker: float = 0.0
              ) -> Iterator[EpisodeResult]:
    """Run ``jobs`` on up to ``workers`` one-CPU Ray actors (capped at what the cluster's CPUs, and GPUs when
    ``gpus_per_worker`` > 0, hold); results in job order. Ray assigns a GPU only to an actor that asks for
    one: without ``gpus_per_worker`` an actor sees no GPU (older Ray empties ``CUDA_VISIBLE_DEVICES``: the
    UNets train on CPU) or every GPU (recent Ray, ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO`` off: all actors crowd
    onto GPU 0, unaccounted). Each episode runs the same code with one torch thread, so on CPU results equal
    the local backend's."""
    ray = connect()
    from ray.util import ActorPool

    resources = ray.cluster_resources()
    fits = int(resources.get("CPU", 1))
    if gpus_per_worker:
        gpus = resources.get("GPU", 0.0)
        if gpus < gpus_per_worker:
            raise ValueError(f"{gpus_per_worker} GPU per worker, but the Ray cluster has {gpus:g} GPU(s)")
        fits = min(fits, int(gpus / gpus_per_worker))
    actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(EpisodeWorker)
    actors = [actor.remote(config) for _ in range(max(1, min(workers, len(jobs), fits)))]
    try:
        yield from ActorPool(actors).map(lambda a, job: a.run.remote(job), jobs)
    finally:
        for a in actors:
            ray.kill(a)
