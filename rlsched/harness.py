"""One harness for every LR controller: learned policies, fixed schedules, random and constant baselines.

Every controller runs an episode of the *same* env (same instance: data, initial weights, epoch budget), so
their results differ only by the LRs they chose. Fixed schedules reach the trainer through ``env.set_lr`` and
the keep-LR action, i.e. through exactly the code path a policy's actions take. Episodes run in local worker
processes or on Ray actors (``run_jobs``), each holding one env.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import torch

from .config import Config, EnvConfig
from .control import decode_lr
from .env import Instance, UNetLREnv
from .policy import Predictor, load_policy
from .ray_backend import connect
from .schedules import FixedSchedule
from .trainer import counted_dice


class Controller(Protocol):
    """Chooses the next action; ``start`` is called with the reset info, ``act`` before every step."""

    name: str

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None: ...

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any: ...


@dataclass
class PolicyController:
    """A trained agent (SB3 or the reference PPO): anything with SB3's ``predict``."""

    policy: Predictor
    name: str = "learned"
    deterministic: bool = True

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        pass

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        action, _ = self.policy.predict(obs, deterministic=self.deterministic)
        return action


@dataclass
class ScheduleController:
    """A named torch LR schedule with its own base LR (``None``: start from the instance's initial LR)."""

    schedule: str
    base_lr: float | None = None
    name: str = ""
    _plan: FixedSchedule | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.schedule

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        base = self.base_lr if self.base_lr is not None else info["lr"]
        self._plan = FixedSchedule(self.schedule, base, env.config.env.steps)

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        assert self._plan is not None, "start() must run before act()"
        if info.get("epoch", 0) > 0:
            self._plan.step(info["dice_mean"])
        env.set_lr(self._plan.lr)
        return env.keep_action


@dataclass(frozen=True)
class ScriptedRule:
    """Steer the LR towards ``target``: the factor that brings log LR closest to log target, ties to the smaller
    change. From below it climbs by the largest factor until the next step would overshoot, then holds; from
    above it descends the same way. With relative actions, it is a constant LR at ``target`` reached as fast
    as the factors allow: the floor a learned controller must clear (and a teacher to clone)."""

    env: EnvConfig
    target: float

    def __post_init__(self) -> None:
        if self.env.action != "discrete" or 1.0 not in self.env.factors:
            raise ValueError("the scripted rule needs env.action = 'discrete' with a factor of 1.0 among "
                             f"env.factors (got action={self.env.action!r}, factors={self.env.factors})")

    def action(self, lr: float) -> int:
        gaps = [(abs(math.log(lr * f / self.target)), abs(math.log(f))) for f in self.env.factors]
        return min(range(len(gaps)), key=gaps.__getitem__)

    def actions(self, raw_obs: np.ndarray) -> np.ndarray:
        """One action per row of raw (unnormalised) observations, from their log-LR feature."""
        return np.array([self.action(decode_lr(self.env, float(row[0]))) for row in np.atleast_2d(raw_obs)])


@dataclass
class ScriptedController:
    """The scripted rule as a controller: the floor a learned controller must clear with the same actions."""

    target: float
    name: str = "scripted"

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        self._rule = ScriptedRule(env.config.env, self.target)

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        return self._rule.action(info["lr"])


@dataclass
class RandomController:
    """Uniformly random actions: the floor any learned controller must clear."""

    seed: int = 0
    name: str = "random"

    def start(self, env: UNetLREnv, info: dict[str, Any]) -> None:
        env.action_space.seed(self.seed + (env.instance.index if env.instance else 0))

    def act(self, env: UNetLREnv, obs: np.ndarray, info: dict[str, Any]) -> Any:
        return env.action_space.sample()


@dataclass
class EpisodeResult:
    """One controlled training run, step by step."""

    method: str
    instance: Instance
    records: list[dict[str, Any]]  # env info of the reset and of every step
    total_reward: float
    seconds: float  # wall time of training and validation

    @property
    def diverged(self) -> bool:
        return bool(self.records[-1].get("diverged", False))

    @property
    def dices(self) -> list[float]:
        """The Dice that counts after the reset and after every step (``trainer.counted_dice``)."""
        return [counted_dice(r) for r in self.records]

    @property
    def final_dice(self) -> float:
        return self.dices[-1]

    @property
    def epochs(self) -> int:
        return int(self.records[-1]["epoch"])



def run_episode(env: UNetLREnv, controller: Controller, instance: Instance, initial_lr: float | None = None
                ) -> EpisodeResult:
    """Run one full episode of ``controller`` on ``instance`` (optionally forcing the initial LR)."""
    options: dict[str, Any] = {"instance": instance}
    if initial_lr is not None:
        options["lr"] = initial_lr
    obs, info = env.reset(options=options)
    controller.start(env, info)
    records, total = [info], 0.0
    terminated = truncated = False
    while not (terminated or truncated):
        action = controller.act(env, obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        records.append(info)
        total += reward
    return EpisodeResult(controller.name, env.instance, records, total, env.seconds)


# --------------------------------------------------------------------------------------------- many episodes
@dataclass(frozen=True)
class Job:
    """One episode to run, described by value so it can travel to a worker process."""

    method: str  # the name results are reported under
    kind: str  # "policy" (arg = model path) | "schedule" (arg = schedule name) | "random" | "scripted" (base_lr
    # = its target LR)
    arg: str
    instance: Instance
    base_lr: float | None = None  # schedules: their base LR (None = the instance's initial LR)
    initial_lr: float | None = None  # force the episode's initial LR (robustness runs)


@functools.lru_cache(maxsize=8)
def _policy(path: str) -> Predictor:
    return load_policy(path).predictor


def make_controller(job: Job) -> Controller:
    if job.kind == "policy":
        return PolicyController(_policy(job.arg), name=job.method)
    if job.kind == "schedule":
        return ScheduleController(job.arg, job.base_lr, name=job.method)
    if job.kind == "random":
        return RandomController(seed=int(job.arg or 0), name=job.method)
    if job.kind == "scripted":
        if job.base_lr is None:
            raise ValueError(f"job {job.method!r}: the scripted rule needs its target LR as base_lr")
        return ScriptedController(job.base_lr, name=job.method)
    raise ValueError(f"unknown job kind {job.kind!r}: use 'policy', 'schedule', 'random' or 'scripted'")


_worker_env: UNetLREnv | None = None


def _init_worker(config: Config, threads: int) -> None:
    """Set this worker's torch threads (the env leaves them alone) and build its env."""
    global _worker_env
    torch.set_num_threads(threads)
    _worker_env = UNetLREnv(config=config)


def _run_job(job: Job) -> EpisodeResult:
    assert _worker_env is not None, "worker not initialised"
    return run_episode(_worker_env, make_controller(job), job.instance, job.initial_lr)


BACKENDS = ("local", "ray")


def run_jobs(config: Config, jobs: list[Job], workers: int = 1,
             on_result: Callable[[EpisodeResult], None] | None = None, backend: str = "local",
             gpus_per_worker: float = 0.0) -> list[EpisodeResult]:
    """Run every job, in ``workers`` one-thread processes (small UNets train fastest that way on CPUs) or,
    with ``backend="ray"``, one-CPU Ray actors (a cluster) holding ``gpus_per_worker`` of a GPU each; results
    come back in job order."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if gpus_per_worker and backend != "ray":
        raise ValueError("gpus_per_worker places Ray actors: use backend='ray' (local workers see every GPU)")
    if backend == "ray":
        stream = _iter_ray_jobs(config, jobs, workers, gpus_per_worker)
    else:
        stream = _iter_jobs(config, jobs, workers)
    results: list[EpisodeResult] = []
    for result in stream:
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _iter_jobs(config: Config, jobs: list[Job], workers: int) -> Iterator[EpisodeResult]:
    if workers <= 1:
        _init_worker(config, config.env.torch_threads or torch.get_num_threads())
        yield from map(_run_job, jobs)
        return
    from .agents.workers import start_method

    context = multiprocessing.get_context(start_method())
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(config, 1)) as pool:
        yield from pool.map(_run_job, jobs)


class EpisodeWorker:
    """One env per Ray actor, like the local pool's worker processes: the env's data cache survives jobs."""

    def __init__(self, config: Config) -> None:
        _init_worker(config, 1)

    def run(self, job: Job) -> EpisodeResult:
        return _run_job(job)


def _iter_ray_jobs(config: Config, jobs: list[Job], workers: int, gpus_per_worker: float = 0.0
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
