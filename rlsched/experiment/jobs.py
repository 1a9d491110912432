"""Many episodes at once: jobs described by value, run in worker processes (or Ray actors) that survive a dead
worker.

When the process running a job dies (killed, out of memory) the job is retried, up to ``attempts`` runs in all,
and then reported as a ``JobFailure`` instead of taking the whole batch down. An exception raised by the episode
itself is a bug, not a fault of the machine: it propagates. Results come back in job order whatever order the
workers finish in, so tables built from them do not depend on scheduling.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import warnings
from collections import Counter, OrderedDict
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from rlsched.common.journal import Journal
from rlsched.config import Config, with_overrides
from rlsched.control.env import UNetLREnv
from rlsched.experiment.harness import Controller, EpisodeResult, Job, run_episode
from rlsched.experiment.kinds import method_kind

BACKENDS = ("local", "ray")
ATTEMPTS = 3  # runs of a job whose worker keeps dying before it is reported as failed


@dataclass(frozen=True)
class JobFailure:
    """A job whose worker died on every one of its ``attempts``: reported, never silently dropped."""

    job: Job
    attempts: int
    reason: str

    @property
    def method(self) -> str:
        return self.job.method


Outcome = EpisodeResult | JobFailure


def make_controller(job: Job) -> Controller:
    """The controller its kind declares (``experiment.kinds``); an unknown kind names the registered ones."""
    return method_kind(job.kind).control(job)


# --------------------------------------------------------------------------------------------- one worker
_worker_config: Config | None = None
_worker_envs: OrderedDict[tuple[tuple[str, str], ...], UNetLREnv] = OrderedDict()  # by job overrides
WORKER_ENVS = 4  # each env keeps its own data cache: bound the memory
_markers: Path | None = None  # where a pool worker notes the job it is running (see _iter_pool)


def init_worker(config: Config, threads: int, markers: str | None = None, parent: int | None = None) -> None:
    """Set this worker's torch threads (the env leaves them alone) and build its env. In a pool (``markers``
    set) the parent handles Ctrl-C, and a worker the pool terminates clears its marker on the way out, so the
    only marker left after a crash is the dead worker's. With ``parent`` (the pool's owner) the worker exits
    when that process dies, a kill -9 included."""
    global _worker_config, _markers
    if parent is not None:
        from rlsched.agents.workers import die_with

        die_with(parent)
    torch.set_num_threads(threads)
    _worker_config = config
    _worker_envs.clear()
    _worker_envs[()] = UNetLREnv(config=config)
    if markers is not None:
        _markers = Path(markers)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _terminated)


def _marker() -> Path:
    assert _markers is not None
    return _markers / str(os.getpid())


def _terminated(signum: int, frame: Any) -> None:
    _marker().unlink(missing_ok=True)
    os._exit(128 + signum)


def _worker_env(overrides: tuple[tuple[str, str], ...]) -> UNetLREnv:
    """The worker's env for a job's overrides, built on first use and kept for the next job that has them. They
    are pinned: in a family preset they apply after each instance's variant, so a method's optimizer wins."""
    assert _worker_config is not None, "worker not initialised"
    if overrides not in _worker_envs:
        _worker_envs[overrides] = UNetLREnv(
            config=with_overrides(_worker_config, overrides), pinned=overrides
        )
        while len(_worker_envs) > WORKER_ENVS:
            _worker_envs.popitem(last=False)
    _worker_envs.move_to_end(overrides)
    return _worker_envs[overrides]


def run_job(job: Job) -> EpisodeResult:
    return run_episode(_worker_env(job.overrides), make_controller(job), job.instance, job.initial_lr)


def _run_marked(index: int, job: Job) -> EpisodeResult:
    _marker().write_text(str(index))
    result = run_job(job)
    _marker().unlink()
    return result


# --------------------------------------------------------------------------------------------- many workers
class Retries:
    """What is left to run and how often each job's worker died: shared by the process pool and Ray."""

    def __init__(self, jobs: list[Job], attempts: int) -> None:
        if attempts < 1:
            raise ValueError(f"attempts={attempts}: a job needs at least one attempt")
        self.pending = dict(enumerate(jobs))
        self.attempts = attempts
        self.deaths: Counter[int] = Counter()

    def done(self, index: int) -> None:
        del self.pending[index]

    def died(self, index: int, reason: str) -> JobFailure | None:
        """Count a dead worker against job ``index``: a ``JobFailure`` once it used up its attempts."""
        self.deaths[index] += 1
        job, deaths = self.pending[index], self.deaths[index]
        where = f"{job.method!r} on {job.instance.split} instance {job.instance.index}"
        if deaths >= self.attempts:
            del self.pending[index]
            warnings.warn(
                f"the worker running {where} died {deaths} times ({reason}): reported as failed", stacklevel=2
            )
            return JobFailure(job, deaths, reason)
        warnings.warn(
            f"the worker running {where} died ({reason}): retrying, attempt {deaths + 1} of {self.attempts}",
            stacklevel=2,
        )
        return None


def run_jobs(
    config: Config,
    jobs: list[Job],
    workers: int = 1,
    on_result: Callable[[Job, Outcome], None] | None = None,
    backend: str = "local",
    gpus_per_worker: float = 0.0,
    attempts: int = ATTEMPTS,
) -> list[Outcome]:
    """Run every job, in ``workers`` one-thread processes (small UNets train fastest that way on CPUs) or,
    with ``backend="ray"``, one-CPU Ray actors (a cluster) holding ``gpus_per_worker`` of a GPU each.
    ``on_result`` sees each outcome the moment it exists (to persist it); the list comes back in job order."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if gpus_per_worker and backend != "ray":
        raise ValueError("gpus_per_worker places Ray actors: use backend='ray' (local workers see every GPU)")
    if backend == "ray":
        stream = _iter_ray(config, jobs, workers, gpus_per_worker, attempts)
    else:
        stream = _iter_local(config, jobs, workers, attempts)
    outcomes: list[Outcome | None] = [None] * len(jobs)
    for index, outcome in stream:
        outcomes[index] = outcome
        if on_result is not None:
            on_result(jobs[index], outcome)
    assert all(o is not None for o in outcomes), "a job neither finished nor failed"
    return outcomes  # type: ignore[return-value]


def run_journaled(
    config: Config,
    jobs: list[Job],
    journal: Journal,
    workers: int = 1,
    on_result: Callable[[Job, Outcome], None] | None = None,
    **options: Any,
) -> tuple[list[Outcome], int]:
    """``run_jobs`` for long batches: the jobs ``journal`` holds are read back, the others run and are journaled
    the moment each finishes (failures are not: a resume retries them). Also returns how many were read back."""
    done = {
        i: EpisodeResult.from_dict(journal.get(job.key)["result"])
        for i, job in enumerate(jobs)
        if job.key in journal
    }

    def finished(job: Job, outcome: Outcome) -> None:
        if isinstance(outcome, EpisodeResult):
            journal.add(job.key, {"result": outcome.to_dict()})
        if on_result is not None:
            on_result(job, outcome)

    todo = [job for i, job in enumerate(jobs) if i not in done]
    ran = iter(run_jobs(config, todo, workers, on_result=finished, **options))
    return [done[i] if i in done else next(ran) for i in range(len(jobs))], len(done)


def episodes(outcomes: list[Outcome]) -> list[EpisodeResult]:
    """The results of callers that need every job: a failed one is an error naming it."""
    failed = [o for o in outcomes if isinstance(o, JobFailure)]
    if failed:
        names = ", ".join(f"{f.method} (instance {f.job.instance.index})" for f in failed)
        raise RuntimeError(
            f"{len(failed)} job(s) failed: their worker died {failed[0].attempts} times: {names}; "
            "free memory (fewer --workers) and run again"
        )
    return outcomes  # type: ignore[return-value]


def _iter_local(
    config: Config, jobs: list[Job], workers: int, attempts: int
) -> Iterator[tuple[int, Outcome]]:
    if (
        workers <= 1 or len(jobs) <= 1
    ):  # in this process: nothing to survive, the caller's resume covers a kill
        init_worker(config, config.env.torch_threads or torch.get_num_threads())
        for index, job in enumerate(jobs):
            yield index, run_job(job)
        return
    from rlsched.agents.workers import start_method

    context = multiprocessing.get_context(start_method())
    retries = Retries(jobs, attempts)
    with tempfile.TemporaryDirectory(prefix="rlsched-jobs-") as markers:
        crashes = 0
        while retries.pending:
            yield from _iter_pool(config, retries, min(workers, len(retries.pending)), context, markers)
            culprits = []
            for path in Path(markers).iterdir():
                text = path.read_text().strip()
                path.unlink()
                if (
                    text.isdigit()
                ):  # empty: killed while noting its job, which is still pending and runs again
                    culprits.append(int(text))
            for index in culprits:
                failure = retries.died(index, "worker process died")
                if failure is not None:
                    yield index, failure
            crashes += not culprits
            if crashes >= attempts:
                raise RuntimeError(
                    f"worker processes died {crashes} times between jobs: check memory and the machine's logs"
                )


def _iter_pool(
    config: Config, retries: Retries, workers: int, context: Any, markers: str
) -> Iterator[tuple[int, EpisodeResult]]:
    """Run the pending jobs in one pool until they are done or a worker dies (then the caller starts a new
    pool for the rest). The pool's workers are terminated on every way out, a Ctrl-C included."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=init_worker, initargs=(config, 1, markers, os.getpid())
    )
    finished = False
    try:
        futures = {pool.submit(_run_marked, index, job): index for index, job in retries.pending.items()}
        for future in as_completed(futures):
            index = futures[future]
            result = future.result()
            retries.done(index)
            yield index, result
        finished = True
    except BrokenProcessPool:
        return
    finally:
        pool.shutdown(wait=finished, cancel_futures=True)
        if not finished:
            for process in set(multiprocessing.active_children()) - before:
                process.terminate()
                process.join()


class EpisodeWorker:
    """One env per Ray actor, like the local pool's worker processes: the env's data cache survives jobs."""

    def __init__(self, config: Config) -> None:
        init_worker(config, 1)

    def run(self, job: Job) -> EpisodeResult:
        return run_job(job)


def _iter_ray(
    config: Config, jobs: list[Job], workers: int, gpus_per_worker: float, attempts: int
) -> Iterator[tuple[int, Outcome]]:
    """Run ``jobs`` on up to ``workers`` one-CPU Ray actors (capped at what the cluster's CPUs, and GPUs when
    ``gpus_per_worker`` > 0, hold); a dead actor is replaced and its job retried. Ray assigns a GPU only to an
    actor that asks for one: without ``gpus_per_worker`` an actor sees no GPU (older Ray empties
    ``CUDA_VISIBLE_DEVICES``: the UNets train on CPU) or every GPU (recent Ray,
    ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO`` off: all actors crowd onto GPU 0, unaccounted). Each episode runs the
    same code with one torch thread, so on CPU results equal the local backend's."""
    from rlsched.common.ray_backend import connect

    ray = connect()
    resources = ray.cluster_resources()
    fits = int(resources.get("CPU", 1))
    if gpus_per_worker:
        gpus = resources.get("GPU", 0.0)
        if gpus < gpus_per_worker:
            raise ValueError(f"{gpus_per_worker} GPU per worker, but the Ray cluster has {gpus:g} GPU(s)")
        fits = min(fits, int(gpus / gpus_per_worker))
    actor = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(EpisodeWorker)
    idle = [actor.remote(config) for _ in range(max(1, min(workers, len(jobs), fits)))]
    retries = Retries(jobs, attempts)
    queue = list(retries.pending)
    running: dict[Any, tuple[int, Any]] = {}  # object ref -> (job index, actor)
    try:
        while queue or running:
            while queue and idle:
                index, worker = queue.pop(0), idle.pop()
                running[worker.run.remote(jobs[index])] = (index, worker)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            index, worker = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as err:
                ray.kill(worker)
                idle.append(actor.remote(config))
                failure = retries.died(index, f"Ray actor died: {type(err).__name__}")
                if failure is None:
                    queue.insert(0, index)
                else:
                    yield index, failure
                continue
            idle.append(worker)
            retries.done(index)
            yield index, result
    finally:
        for worker in idle + [w for _, w in running.values()]:
            ray.kill(worker)
