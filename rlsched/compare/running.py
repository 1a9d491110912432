"""Running a comparison: tune the fixed schedules' base LRs on train instances, then run every method on the
held-out (and robustness) instances through the harness."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from tqdm import tqdm

from rlsched.common.journal import Journal, journal_key
from rlsched.compare.methods import (
    BASELINES,
    Comparison,
    Method,
    Settings,
    baseline_methods,
    recipe_method,
    sampled_methods,
)
from rlsched.config import Config, ConfigError
from rlsched.control.env import Instance, make_instances
from rlsched.experiment.harness import EpisodeResult, Job
from rlsched.experiment.jobs import JobFailure, Outcome, run_journaled
from rlsched.experiment.kinds import method_job, method_kind, optuna, oracle, pbt, schedule
from rlsched.experiment.kinds.oracle import ORACLE, ORACLE_SCHEDULES
from rlsched.experiment.tuning import search_grid, tune_base_lrs

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
        outcomes, reused = run_journaled(
            self.config,
            jobs,
            self.journal,
            settings.workers,
            self._finished,
            backend=settings.backend,
            gpus_per_worker=settings.gpus_per_worker,
        )
        self.reused += reused
        self.bar.update(reused)
        return outcomes

    def _finished(self, job: Job, outcome: Outcome) -> None:
        if isinstance(outcome, JobFailure):
            self.failures.append(outcome)
            self.bar.set_postfix_str(f"{job.method}: FAILED (worker died)", refresh=False)
        else:
            self.bar.set_postfix_str(f"{job.method}: val Dice {outcome.final_dice:.3f}", refresh=False)
        self.bar.update()


def check_fits(config: Config, settings: Settings) -> None:
    """The preset must have the instances the settings ask for."""
    env = config.env
    if settings.seeds is not None and settings.seeds > env.heldout_instances:
        raise ConfigError(
            f"--seeds {settings.seeds}: preset {config.name!r} has only "
            f"{env.heldout_instances} held-out instances; add them with "
            f"--set env.heldout_instances={settings.seeds}"
        )
    if settings.tune_instances > env.train_instances:
        raise ConfigError(
            f"--tune-instances {settings.tune_instances}: preset {config.name!r} has only "
            f"{env.train_instances} train instances; raise env.train_instances or lower it"
        )


def run_comparison(
    config: Config,
    agents: list[Method],
    settings: Settings,
    progress: bool = True,
    journal: Journal | None = None,
) -> Comparison:
    """Tune the fixed schedules, then run every method on the held-out (and robustness) instances. Episodes in
    ``journal`` (a resumed comparison) are read back instead of run; new ones are added as they finish."""
    check_fits(config, settings)
    journal = journal if journal is not None else Journal(None)
    env = config.env
    start = time.perf_counter()
    instances = make_instances(config, "heldout")[: settings.seeds]
    grid = search_grid(config, settings.grid_per_decade)
    tuning_jobs = len(settings.schedules) * len(grid) * settings.tune_instances
    with tqdm(total=tuning_jobs, desc="tuning base LRs", unit="episode", disable=not progress) as bar:
        run = Runner(config, settings, journal, bar)
        train = make_instances(config, "train")[: settings.tune_instances]
        tuning = tune_base_lrs(config, settings.schedules, grid, train, run)
        bar.set_description("baselines")
        methods = (
            agents
            + sampled_methods(agents, settings.sampled_rollouts)
            + baseline_methods(tuning, settings.at_initial_lr)
            + extra_methods(config, settings, agents, train, journal)
        )
        _, reference = tuning.reference
        robust_lrs = robustness_lrs(settings.robustness, reference, env.lr_min, env.lr_max)
        jobs = [job for m in methods for i in instances for job in m.jobs(config, i)]
        jobs += [
            job
            for lr in robust_lrs.values()
            for m in methods
            if m.robust
            for i in instances
            for job in m.jobs(config, i, lr)
        ]
        oracle = oracle_jobs(config, instances, settings.oracle_per_decade)
        bar.total = tuning_jobs + len(jobs) + len(oracle)
        bar.set_description("evaluating on held-out instances")
        outcomes = run(jobs + oracle)
        outcomes, oracle_outcomes = outcomes[: len(jobs)], outcomes[len(jobs) :]
    main = _episodes([o for job, o in zip(jobs, outcomes) if job.initial_lr is None])
    robustness = {
        f: (lr, _episodes([o for job, o in zip(jobs, outcomes) if job.initial_lr == lr]))
        for f, lr in robust_lrs.items()
    }
    methods = [_count_sweeps(m, main) if m.declared.sweeps else m for m in methods]
    if oracle:
        method, picked = oracle_runs(config, oracle, _episodes(oracle_outcomes), settings.oracle_per_decade)
        methods.append(method)
        main += picked
    for algorithm, population in (("pbt", settings.pbt_population), ("pb2", settings.pb2_population)):
        if population:
            method, runs = pbt_runs(
                config, instances, population, journal, settings.gpus_per_worker, algorithm
            )
            methods.append(method)
            main += runs
    seconds = time.perf_counter() - start
    return Comparison(
        config, settings, methods, tuning, instances, main, robustness, seconds, run.failures, run.reused
    )


def check_baselines(config: Config, settings: Settings, agents: list[Method]) -> None:
    """Every asked-for baseline can run: its optional package is installed, Optuna has a budget. Checked before
    the run directory exists, so a missing extra costs nothing."""
    for name in settings.baselines:
        kind, arg = BASELINES[name]
        if kind == optuna.KIND.name:  # searched here, not a job
            from rlsched.experiment.search import require_optuna

            require_optuna()
            if settings.optuna_epochs is None and not any(math.isfinite(m.epochs_before) for m in agents):
                raise ConfigError(
                    "--baselines optuna: give its budget with --optuna-epochs N (no learned agent "
                    "whose training epochs are known to match)"
                )
        else:  # its kind checks its job: an optimizer's package, a range test's schedule
            method_job(config, kind, arg, name, make_instances(config, "heldout")[0])


def extra_methods(
    config: Config, settings: Settings, agents: list[Method], train: list[Instance], journal: Journal
) -> list[Method]:
    """The practitioners' alternatives asked for with ``--baselines``; Optuna searches here, on train instances."""
    methods = []
    for name in settings.baselines:
        kind, arg = BASELINES[name]
        declared = method_kind(kind)
        if kind == optuna.KIND.name:
            methods.append(optuna_method(config, settings, agents, train, journal))
        elif declared.recipe is not None:
            methods.append(recipe_method(name))
        else:  # a range test: its cost is counted after its runs (_count_sweeps)
            methods.append(Method(name, kind, arg))
    return methods


def optuna_method(
    config: Config, settings: Settings, agents: list[Method], train: list[Instance], journal: Journal
) -> Method:
    """Optuna TPE + median pruning over (schedule, base LR) on the train instances, given the epochs the first
    learned agent's PPO training spent (or ``--optuna-epochs``): "spend the compute on search instead". The
    choice is journaled, so a resumed comparison does not search again."""
    from rlsched.experiment.search import search

    budget = settings.optuna_epochs
    if budget is None:
        spent = [m.epochs_before for m in agents if math.isfinite(m.epochs_before)]
        if not spent:
            raise ConfigError(
                "--baselines optuna: give its budget with --optuna-epochs N (no learned agent whose "
                "training epochs are known to match)"
            )
        budget = int(spent[0])
    key = journal_key({"method": "optuna", "budget": budget, "instances": [asdict(i) for i in train]})
    if key not in journal:
        found = search(config, budget, instances=train, seed=0)
        journal.add(
            key,
            {
                "schedule": found.schedule,
                "base_lr": found.base_lr,
                "epochs": found.epochs_spent,
                "trials": len(found.trials),
            },
        )
    chosen = journal.get(key)
    return Method(
        optuna.KIND.name,
        schedule.KIND.name,  # its choice runs as a tuned schedule
        chosen["schedule"],
        chosen["base_lr"],
        float(chosen["epochs"]),
        optuna.KIND.account(trials=chosen["trials"], instances=len(train), budget=budget),
        needs=optuna.KIND.needs,
    )


def _count_sweeps(method: Method, results: list[EpisodeResult]) -> Method:
    """A range-test method's epochs before evaluation: its sweeps, one per held-out run."""
    sweeps = [r.extra_epochs for r in results if r.method == method.name]
    per_run = sweeps[0] if sweeps else math.nan
    return replace(
        method,
        epochs_before=float(sum(sweeps)),
        accounting=method.declared.account(runs=len(sweeps), per_run=per_run),
    )


def robustness_lrs(
    factors: tuple[float, ...], reference: float, lr_min: float, lr_max: float
) -> dict[float, float]:
    """factor -> the initial LR it forces (clipped to the env's range); a factor that clips to the LR of an earlier
    one would only repeat its runs, so it is dropped with a warning."""
    lrs: dict[float, float] = {}
    for factor in factors:
        lr = min(max(factor * reference, lr_min), lr_max)
        if lr in lrs.values():
            warnings.warn(
                f"robustness factor {factor:g} clips to LR {lr:g} like an earlier factor: skipped",
                stacklevel=2,
            )
            continue
        lrs[factor] = lr
    return lrs


def oracle_jobs(config: Config, instances: list[Instance], per_decade: int) -> list[Job]:
    """Every ``ORACLE_SCHEDULES`` schedule at every LR of the tuning grid's range (``per_decade`` points a decade)
    on every held-out instance: what the per-instance best fixed schedule is picked from."""
    if not per_decade:
        return []
    grid = search_grid(config, per_decade)
    return [
        Job(f"{ORACLE} {name}@{lr:g}", schedule.KIND.name, name, instance, base_lr=lr)
        for instance in instances
        for name in ORACLE_SCHEDULES
        for lr in grid
    ]


def oracle_runs(
    config: Config, jobs: list[Job], results: list[EpisodeResult], per_decade: int
) -> tuple[Method, list[EpisodeResult]]:
    """Per held-out instance, the oracle grid's run with the best final validation Dice (its area under the
    validation curve breaks ties), reported under ``ORACLE`` with its test Dice: the room a schedule has there,
    picked without reading test Dice, and an upper bound for any single method (it saw every schedule's end)."""
    steps = config.env.steps
    best: dict[int, EpisodeResult] = {}
    for result in results:
        index = result.instance.index
        if index not in best or _score(result, steps) > _score(best[index], steps):
            best[index] = result
    picked = [replace(best[i], method=ORACLE) for i in sorted(best)]
    per_instance = len(jobs) // max(len(best), 1)
    spent = float(sum(r.epochs for r in results) - sum(r.epochs for r in picked))
    choices = ", ".join(f"{i}: {best[i].method.removeprefix(ORACLE + ' ')}" for i in sorted(best))
    accounting = oracle.KIND.account(
        runs=per_instance,
        schedules=", ".join(ORACLE_SCHEDULES),
        lrs=per_instance // len(ORACLE_SCHEDULES),
        per_decade=per_decade,
        choices=choices,
    )
    return Method(
        ORACLE, oracle.KIND.name, ",".join(ORACLE_SCHEDULES), epochs_before=spent, accounting=accounting
    ), picked


def _score(result: EpisodeResult, steps: int) -> tuple[float, float]:
    curve = result.dice_curve(steps)
    return curve[-1], curve[1:].mean()


def _episodes(outcomes: list[Outcome]) -> list[EpisodeResult]:
    """The runs that finished; failures are kept apart (``Comparison.failures``) and reported."""
    return [o for o in outcomes if isinstance(o, EpisodeResult)]


def pbt_runs(
    config: Config,
    instances: list[Instance],
    population: int,
    journal: Journal,
    gpus_per_member: float = 0.0,
    algorithm: str = "pbt",
) -> tuple[Method, list[EpisodeResult]]:
    """PBT on every held-out instance, journaled per instance; its compute is the population's epochs beyond
    one evaluation run."""
    from rlsched.experiment.pbt import PBTSettings, run_pbt

    runs, total = [], 0
    for instance in instances:
        key = journal_key({"method": algorithm, "population": population, "instance": asdict(instance)})
        if key not in journal:
            settings = PBTSettings(population=population, algorithm=algorithm)
            (result,), epochs = run_pbt(config, [instance], settings, gpus_per_member)
            journal.add(key, {"result": result.to_dict(), "epochs": epochs})
        entry = journal.get(key)
        runs.append(EpisodeResult.from_dict(entry["result"]))
        total += int(entry["epochs"])
    own = len(instances) * config.env.epochs
    accounting = pbt.KIND.account(
        algorithm=algorithm.upper(),
        population=population,
        epochs=config.env.epochs,
        instances=len(instances),
        total=total,
        nominal=population * own,
    )
    method = Method(
        algorithm, pbt.KIND.name, str(population), epochs_before=float(total - own), accounting=accounting
    )
    return method, runs
