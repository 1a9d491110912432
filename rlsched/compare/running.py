"""Running a comparison: tune the fixed schedules' base LRs on train instances, then run every method on the
held-out (and robustness) instances through the harness."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from tqdm import tqdm

from ..config import Config, ConfigError
from ..env import Instance, make_instances
from ..harness import EpisodeResult
from ..jobs import Job, JobFailure, Outcome, run_journaled
from ..journal import Journal
from ..schedules import lr_grid
from .methods import CONSTANT_INITIAL, SCRIPTED, Comparison, Method, Settings, Tuning, baseline_methods
from .summary import run_metrics

Run = Callable[[list[Job]], list[Outcome]]


@dataclass
class Runner:
    """Runs jobs through the journal (a killed comparison loses at most the episodes in flight), keeping the
    progress bar, the failures and the count of episodes read back."""

    config: Config
    settings: Settings
    journal: Journal
    bar: tqdm
    failures: list[JobFailure] = field(default_factory=list)
    reused: int = 0  # episodes read back from the journal

    def __call__(self, jobs: list[Job]) -> list[Outcome]:
        settings = self.settings
        outcomes, reused = run_journaled(self.config, jobs, self.journal, settings.workers, self._finished,
                                         backend=settings.backend, gpus_per_worker=settings.gpus_per_worker)
        self.reused += reused
        self.bar.update(reused)
        return outcomes

    def _finished(self, job: Job, outcome: Outcome) -> None:
        if isinstance(outcome, JobFailure):
            self.failures.append(outcome)
            self.bar.set_postfix_str(f"{job.method}: FAILED (worker died)", refresh=False)
        else:
            self.bar.set_postfix_str(f"{job.method}: Dice {outcome.final_dice:.3f}", refresh=False)
        self.bar.update()


def tune_base_lrs(config: Config, schedules: tuple[str, ...], grid: list[float], instances: list[Instance],
                  run: Run) -> Tuning:
    """Grid-search each schedule's base LR on train instances (never the held-out ones it is judged on). An LR
    whose every run failed (dead workers) scores -inf: it cannot be chosen."""
    jobs = [Job(f"{name}@{lr:g}", SCRIPTED if name == SCRIPTED else "schedule", name, instance, base_lr=lr)
            for name in schedules for lr in grid for instance in instances]
    runs: dict[str, dict[float, list[dict[str, float]]]] = {s: {lr: [] for lr in grid} for s in schedules}
    for job, result in zip(jobs, run(jobs)):
        if isinstance(result, EpisodeResult):
            runs[job.arg][job.base_lr].append(run_metrics(result, config.env.steps, target=1.0))

    def score(metrics: list[dict[str, float]]) -> tuple[float, float]:
        if not metrics:
            return -math.inf, -math.inf
        return (float(np.mean([m["final_dice"] for m in metrics])),
                float(np.mean([m["auc_dice"] for m in metrics])))

    scores = {name: {lr: score(metrics) for lr, metrics in by_lr.items()} for name, by_lr in runs.items()}
    return Tuning(tuple(grid), len(instances), config.env.epochs, scores)


def search_grid(config: Config, per_decade: int) -> list[float]:
    """The preset's initial-LR range at ``per_decade`` points per decade, clipped to the env's LR limits."""
    env = config.env
    grid = lr_grid(env.initial_lr_min, env.initial_lr_max, per_decade)
    return sorted({min(max(lr, env.lr_min), env.lr_max) for lr in grid})


def check_fits(config: Config, settings: Settings) -> None:
    """The preset must have the instances the settings ask for."""
    env = config.env
    if settings.seeds is not None and settings.seeds > env.heldout_instances:
        raise ConfigError(f"--seeds {settings.seeds}: preset {config.name!r} has only "
                          f"{env.heldout_instances} held-out instances; add them with "
                          f"--set env.heldout_instances={settings.seeds}")
    if settings.tune_instances > env.train_instances:
        raise ConfigError(f"--tune-instances {settings.tune_instances}: preset {config.name!r} has only "
                          f"{env.train_instances} train instances; raise env.train_instances or lower it")


def run_comparison(config: Config, agents: list[Method], settings: Settings, progress: bool = True,
                   journal: Journal | None = None) -> Comparison:
    """Tune the fixed schedules, then run every method on the held-out (and robustness) instances. Episodes in
    ``journal`` (a resumed comparison) are read back instead of run; new ones are added as they finish."""
    check_fits(config, settings)
    journal = journal if journal is not None else Journal(None)
    env = config.env
    start = time.perf_counter()
    instances = make_instances(env, "heldout")[: settings.seeds]
    grid = search_grid(config, settings.grid_per_decade)
    n_methods = len(agents) + len(settings.schedules) + 2
    total = (len(settings.schedules) * len(grid) * settings.tune_instances
             + len(instances) * (n_methods + len(settings.robustness) * (n_methods - 1)))
    with tqdm(total=total, desc="tuning base LRs", unit="episode", disable=not progress) as bar:
        run = Runner(config, settings, journal, bar)
        train = make_instances(env, "train")[: settings.tune_instances]
        tuning = tune_base_lrs(config, settings.schedules, grid, train, run)
        methods = agents + baseline_methods(tuning)
        _, reference = tuning.reference
        robust_lrs = {f: min(max(f * reference, env.lr_min), env.lr_max) for f in settings.robustness}
        # with the initial LR forced, "constant (initial LR)" would repeat "constant"
        robust_methods = [m for m in methods if m.name != CONSTANT_INITIAL]
        jobs = [m.job(i) for m in methods for i in instances]
        jobs += [m.job(i, lr) for lr in robust_lrs.values() for m in robust_methods for i in instances]
        bar.set_description("evaluating on held-out instances")
        results = run(jobs)
    main, rest = results[: len(methods) * len(instances)], results[len(methods) * len(instances):]
    chunk = len(robust_methods) * len(instances)
    robustness = {f: (lr, _episodes(rest[k * chunk:(k + 1) * chunk])) for k, (f, lr) in enumerate(robust_lrs.items())}
    main = _episodes(main)
    if settings.pbt_population:
        method, runs = pbt_runs(config, instances, settings.pbt_population, journal, settings.gpus_per_worker)
        methods.append(method)
        main += runs
    seconds = time.perf_counter() - start
    return Comparison(config, settings, methods, tuning, instances, main, robustness, seconds, run.failures,
                      run.reused)


def _episodes(outcomes: list[Outcome]) -> list[EpisodeResult]:
    """The runs that finished; failures are kept apart (``Comparison.failures``) and reported."""
    return [o for o in outcomes if isinstance(o, EpisodeResult)]


def pbt_runs(config: Config, instances: list[Instance], population: int, journal: Journal,
             gpus_per_member: float = 0.0) -> tuple[Method, list[EpisodeResult]]:
    """PBT on every held-out instance, journaled per instance; its compute is the population's epochs beyond
    one evaluation run."""
    from ..pbt import PBTSettings, run_pbt

    runs, total = [], 0
    for instance in instances:
        key = json.dumps({"method": "pbt", "population": population, "instance": asdict(instance)}, sort_keys=True)
        if key not in journal:
            (result,), epochs = run_pbt(config, [instance], PBTSettings(population=population), gpus_per_member)
            journal.add(key, {"result": result.to_dict(), "epochs": epochs})
        entry = journal.get(key)
        runs.append(EpisodeResult.from_dict(entry["result"]))
        total += int(entry["epochs"])
    own = len(instances) * config.env.epochs
    accounting = (f"PBT: population {population} x {config.env.epochs} epochs on each of {len(instances)} "
                  f"held-out instance(s): {total:,} epochs trained in all (nominal {population * own:,}), "
                  "the best member by validation Dice reported")
    return Method("pbt", "pbt", str(population), epochs_before=float(total - own), accounting=accounting), runs
