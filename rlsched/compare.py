"""Learned LR controllers vs every fixed schedule and a random policy on the same held-out instances.

    python -m rlsched.compare --agent runs/<id>/model.zip [--agent runs/<id2>/model.pt] [--seeds N]
    python -m rlsched.compare --backend ray [--address ADDR] [--pbt-population K] [--num-gpus-per-worker G]

Every method trains the same UNets (same data, initial weights and epoch budget) through the same harness, so
results differ only by the LRs chosen. Fairness: each fixed schedule gets its base LR from a grid search on
*train* instances; robustness runs mis-set the initial LR (a factor of the best tuned constant LR) to show
which controllers recover; the epochs each method consumed *before* evaluation (PPO training, grid search)
are reported next to its result.

Writes ``runs/<preset>__compare__<time>/``: ``config.toml``, ``args.json``, ``episodes.csv`` (one row per
method x instance x epoch), ``tuning.csv`` (the grid search), ``summary.csv``, ``summary.md`` and plots
(``dice_vs_epoch.png``, ``lr_vs_epoch.png``, ``final_dice.png``, ``robustness.png``).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .config import (Config, ConfigError, config_from_dict, config_to_toml, load_config, nest_overrides,
                     parse_override)
from .data import check_dataset
from .env import Instance, make_instances
from .evaluate import LoadedPolicy, check_compatible, load_policy
from .harness import BACKENDS, EpisodeResult, Job, run_jobs
from .runs import atomic_write_bytes, atomic_write_json, atomic_write_text, new_run_dir, read_jsonl
from .schedules import SCHEDULES, lr_grid
from .stats import PairedTest, mean_ci, paired_test

CONSTANT_INITIAL = "constant (initial LR)"
SCRIPTED = "scripted"  # the scripted rule (harness.ScriptedRule), its target LR tuned like a base LR
TUNABLE = (*SCHEDULES, SCRIPTED)
AGENT_KINDS = {".zip": "sb3", ".pt": "reference", ".rllib": "rllib"}  # model suffix -> method name suffix
METRICS = ("final_dice", "best_dice", "auc_dice", "epochs_to_target", "seconds")


@dataclass(frozen=True)
class Settings:
    """What to compare and how hard to look (the CLI flags)."""

    seeds: int | None = None  # held-out instances to evaluate on; None = all of the preset's
    schedules: tuple[str, ...] = tuple(SCHEDULES)
    tune_instances: int = 2  # train instances of the base-LR grid search
    grid_per_decade: int = 2
    robustness: tuple[float, ...] = (0.01, 0.1, 10.0, 100.0)  # initial LR = factor x best tuned constant LR
    dice_target: float = 0.8
    workers: int = 2
    backend: str = "local"  # where episodes run: local processes or Ray actors
    gpus_per_worker: float = 0.0  # ray: GPU share of each actor / PBT member (0: Ray assigns none)
    pbt_population: int = 0  # > 0: add PBT (Ray Tune) with this population per held-out instance

    def __post_init__(self) -> None:
        unknown = [s for s in self.schedules if s not in TUNABLE]
        if unknown or not self.schedules:
            raise ValueError(f"unknown schedule(s) {', '.join(map(repr, unknown))}; choose from: "
                             f"{', '.join(TUNABLE)}" if unknown else "no schedules: pass at least one")
        if self.seeds is not None and self.seeds < 1:
            raise ValueError(f"--seeds {self.seeds}: evaluate on at least 1 held-out instance")
        if self.tune_instances < 1 or self.grid_per_decade < 1 or self.workers < 1:
            raise ValueError("--tune-instances, --grid-per-decade and --workers must be >= 1")
        if not all(f > 0 and math.isfinite(f) for f in self.robustness):
            raise ValueError(f"--robustness factors must be positive numbers, got {list(self.robustness)}")
        if not 0 < self.dice_target <= 1:
            raise ValueError(f"--dice-target {self.dice_target}: a Dice target lies in (0, 1]")
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.pbt_population and self.backend != "ray":
            raise ValueError("--pbt-population runs PBT on Ray Tune: add --backend ray")
        if not (math.isfinite(self.gpus_per_worker) and self.gpus_per_worker >= 0):
            raise ValueError(f"--num-gpus-per-worker {self.gpus_per_worker}: a GPU share is a number >= 0")
        if self.gpus_per_worker and self.backend != "ray":
            raise ValueError("--num-gpus-per-worker places Ray actors: add --backend ray "
                             "(local workers see every GPU)")
        if self.pbt_population < 0 or self.pbt_population == 1:
            raise ValueError(f"--pbt-population {self.pbt_population}: a population needs at least 2 members")


@dataclass(frozen=True)
class Method:
    """One controller under comparison, with the training epochs it consumed before evaluation."""

    name: str
    kind: str  # harness Job kind: "policy" | "schedule" | "scripted" | "random"; or "pbt" (run by rlsched.pbt)
    arg: str  # model path | schedule name | random seed
    base_lr: float | None = None  # schedules: tuned base LR (None: the instance's initial LR); scripted: target
    epochs_before: float = 0.0  # NaN when unknown (an agent without its training records)
    accounting: str = "nothing"  # how epochs_before was counted, for the report

    @property
    def learned(self) -> bool:
        return self.kind == "policy"

    @property
    def tuned(self) -> bool:
        return self.kind in ("schedule", SCRIPTED) and self.base_lr is not None

    def job(self, instance: Instance, initial_lr: float | None = None) -> Job:
        """Robustness runs (``initial_lr`` set) start every method, base LRs included, from that LR; the
        scripted rule keeps steering towards its tuned target from there."""
        base_lr = self.base_lr if initial_lr is None or self.kind == SCRIPTED else initial_lr
        return Job(self.name, self.kind, self.arg, instance, base_lr=base_lr, initial_lr=initial_lr)


@dataclass(frozen=True)
class Tuning:
    """The base-LR grid search of the fixed schedules on train instances."""

    grid: tuple[float, ...]
    instances: int
    epochs: int
    scores: dict[str, dict[float, tuple[float, float]]]  # schedule -> LR -> (mean final Dice, mean AUC)

    @property
    def base_lrs(self) -> dict[str, float]:
        """Best mean final Dice; the area under the Dice curve breaks ties (e.g. when every LR ends at 0)."""
        return {name: max(by_lr, key=by_lr.__getitem__) for name, by_lr in self.scores.items()}

    @property
    def epochs_per_schedule(self) -> int:
        return len(self.grid) * self.instances * self.epochs

    @property
    def reference(self) -> tuple[str, float]:
        """What robustness factors multiply: the tuned constant LR (else the base LR of the schedule that
        scored best on the train instances)."""
        lrs = self.base_lrs
        name = "constant" if "constant" in lrs else max(lrs, key=lambda n: self.scores[n][lrs[n]])
        return name, lrs[name]


@dataclass
class Comparison:
    """Everything one comparison ran: the input to the report and the plots."""

    config: Config
    settings: Settings
    methods: list[Method]
    tuning: Tuning
    instances: list[Instance]
    results: list[EpisodeResult]  # the main runs
    # factor -> (the initial LR it gave, the runs from it)
    robustness: dict[float, tuple[float, list[EpisodeResult]]] = field(default_factory=dict)
    seconds: float = 0.0

    def groups(self) -> list[tuple[float | None, float | None, list[EpisodeResult]]]:
        """(factor, forced initial LR, runs): the main runs (None, None), then each robustness factor."""
        return [(None, None, self.results)] + [(f, lr, runs) for f, (lr, runs) in self.robustness.items()]


# --------------------------------------------------------------------------------------------- methods
def agent_methods(policies: list[LoadedPolicy], config: Config) -> list[Method]:
    """One method per trained agent; refuses agents whose observation/action interface is not the env's."""
    methods: list[Method] = []
    for policy in policies:
        check_compatible(policy, config)
        base = f"learned-{AGENT_KINDS.get(policy.path.suffix, 'reference')}"
        name = base if all(m.name != base for m in methods) else f"{base}#{len(methods) + 1}"
        epochs, source = training_epochs(policy)
        methods.append(Method(name, "policy", str(policy.path), epochs_before=epochs,
                              accounting=f"PPO training of {policy.path} ({source})"))
    return methods


def training_epochs(policy: LoadedPolicy) -> tuple[float, str]:
    """UNet training epochs the agent's PPO training consumed, from the run directory it was saved in."""
    for run_dir in (policy.path.parent, policy.path.parent.parent):
        episodes = run_dir / "episodes.jsonl"
        if episodes.is_file():
            records = read_jsonl(episodes)
            return float(sum(int(r["epochs"]) for r in records)), f"{len(records)} episodes in episodes.jsonl"
        last = run_dir / "checkpoints" / "last.json"
        if last.is_file():
            steps = int(json.loads(last.read_text())["num_timesteps"])
            per_step = policy.config.env.epochs_per_step
            return float(steps * per_step), f"{steps} env steps x {per_step} epochs in checkpoints/last.json"
    return math.nan, "unknown: no episodes.jsonl or checkpoints/last.json beside the model"


def baseline_methods(tuning: Tuning) -> list[Method]:
    """Tuned fixed schedules, the constant initial-LR baseline and the random policy."""
    search = (f"LR grid search: {len(tuning.grid)} LRs x {tuning.instances} train instances x "
              f"{tuning.epochs} epochs")
    tuned = [Method(name, SCRIPTED if name == SCRIPTED else "schedule", name, lr, tuning.epochs_per_schedule,
                    search) for name, lr in tuning.base_lrs.items()]
    return tuned + [Method(CONSTANT_INITIAL, "schedule", "constant"), Method("random", "random", "0")]


# --------------------------------------------------------------------------------------------- running
def tune_base_lrs(config: Config, schedules: tuple[str, ...], grid: list[float], instances: list[Instance],
                  workers: int = 1, on_result: Callable[[EpisodeResult], None] | None = None,
                  backend: str = "local", gpus_per_worker: float = 0.0) -> Tuning:
    """Grid-search each schedule's base LR on train instances (never the held-out ones it is judged on)."""
    jobs = [Job(f"{name}@{lr:g}", SCRIPTED if name == SCRIPTED else "schedule", name, instance, base_lr=lr)
            for name in schedules for lr in grid for instance in instances]
    results = run_jobs(config, jobs, workers, on_result=on_result, backend=backend,
                       gpus_per_worker=gpus_per_worker)
    runs: dict[str, dict[float, list[dict[str, float]]]] = {s: {lr: [] for lr in grid} for s in schedules}
    for job, result in zip(jobs, results):
        runs[job.arg][job.base_lr].append(run_metrics(result, config.env.steps, target=1.0))

    def score(metrics: list[dict[str, float]]) -> tuple[float, float]:
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


def run_comparison(config: Config, agents: list[Method], settings: Settings, progress: bool = True
                   ) -> Comparison:
    """Tune the fixed schedules, then run every method on the held-out (and robustness) instances."""
    check_fits(config, settings)
    env = config.env
    start = time.perf_counter()
    instances = make_instances(env, "heldout")[: settings.seeds]
    grid = search_grid(config, settings.grid_per_decade)
    n_methods = len(agents) + len(settings.schedules) + 2
    total = (len(settings.schedules) * len(grid) * settings.tune_instances
             + len(instances) * (n_methods + len(settings.robustness) * (n_methods - 1)))
    with tqdm(total=total, desc="tuning base LRs", unit="episode", disable=not progress) as bar:
        def advance(result: EpisodeResult) -> None:
            bar.set_postfix_str(f"{result.method}: Dice {result.final_dice:.3f}", refresh=False)
            bar.update()

        train = make_instances(env, "train")[: settings.tune_instances]
        tuning = tune_base_lrs(config, settings.schedules, grid, train, settings.workers, advance,
                               settings.backend, settings.gpus_per_worker)
        methods = agents + baseline_methods(tuning)
        _, reference = tuning.reference
        robust_lrs = {f: min(max(f * reference, env.lr_min), env.lr_max) for f in settings.robustness}
        # with the initial LR forced, "constant (initial LR)" would repeat "constant"
        robust_methods = [m for m in methods if m.name != CONSTANT_INITIAL]
        jobs = [m.job(i) for m in methods for i in instances]
        jobs += [m.job(i, lr) for lr in robust_lrs.values() for m in robust_methods for i in instances]
        bar.set_description("evaluating on held-out instances")
        results = run_jobs(config, jobs, settings.workers, on_result=advance, backend=settings.backend,
                           gpus_per_worker=settings.gpus_per_worker)
    main, rest = results[: len(methods) * len(instances)], results[len(methods) * len(instances):]
    chunk = len(robust_methods) * len(instances)
    robustness = {f: (lr, rest[k * chunk:(k + 1) * chunk]) for k, (f, lr) in enumerate(robust_lrs.items())}
    if settings.pbt_population:
        method, runs = pbt_runs(config, instances, settings.pbt_population, settings.gpus_per_worker)
        methods.append(method)
        main += runs
    seconds = time.perf_counter() - start
    return Comparison(config, settings, methods, tuning, instances, main, robustness, seconds)


def pbt_runs(config: Config, instances: list[Instance], population: int, gpus_per_member: float = 0.0
             ) -> tuple[Method, list[EpisodeResult]]:
    """PBT on every held-out instance; its compute is the population's epochs beyond one evaluation run."""
    from .pbt import PBTSettings, run_pbt

    runs, total = run_pbt(config, instances, PBTSettings(population=population), gpus_per_member)
    own = len(instances) * config.env.epochs
    accounting = (f"PBT: population {population} x {config.env.epochs} epochs on each of {len(instances)} "
                  f"held-out instance(s): {total:,} epochs trained in all (nominal {population * own:,}), "
                  "the best member by validation Dice reported")
    return Method("pbt", "pbt", str(population), epochs_before=float(total - own), accounting=accounting), runs


# --------------------------------------------------------------------------------------------- metrics
def dice_curve(result: EpisodeResult, steps: int) -> np.ndarray:
    """Dice after each step (index 0: before training); a diverged run scores 0 for the rest of the budget."""
    dices = np.zeros(steps + 1)
    dices[: len(result.dices)] = result.dices
    return dices


def lr_curve(result: EpisodeResult, steps: int) -> np.ndarray:
    """The LR each step trained with; NaN after a divergence."""
    lrs = np.full(steps, np.nan)
    trained = [r["lr"] for r in result.records[1:]]
    lrs[: len(trained)] = trained
    return lrs


def run_metrics(result: EpisodeResult, steps: int, target: float) -> dict[str, float]:
    """Final and best Dice, area under the Dice curve (mean Dice over the budget's steps), epochs to
    ``target`` (NaN if never reached), diverged (0/1) and wall time."""
    dices = dice_curve(result, steps)
    reached = [float(r["epoch"]) for r, d in zip(result.records, result.dices) if d >= target]
    return {"final_dice": float(dices[-1]), "best_dice": float(dices.max()),
            "auc_dice": float(dices[1:].mean()), "epochs_to_target": reached[0] if reached else math.nan,
            "diverged": float(result.diverged), "seconds": result.seconds}


def by_method(results: list[EpisodeResult]) -> dict[str, list[EpisodeResult]]:
    """Results per method, each sorted by instance so paired tests pair the same instances."""
    grouped: dict[str, list[EpisodeResult]] = {}
    for result in results:
        grouped.setdefault(result.method, []).append(result)
    return {name: sorted(runs, key=lambda r: r.instance.index) for name, runs in grouped.items()}


def summarize(comparison: Comparison) -> list[dict[str, Any]]:
    """One row per method (and robustness factor): mean and 95% CI of each metric, counts and accounting."""
    cfg, target = comparison.config.env, comparison.settings.dice_target
    rows = []
    for factor, initial_lr, results in comparison.groups():
        runs = by_method(results)
        for method in comparison.methods:
            if method.name not in runs:
                continue
            metrics = [run_metrics(r, cfg.steps, target) for r in runs[method.name]]
            row: dict[str, Any] = {
                "method": method.name, "factor": factor, "initial_lr": initial_lr,
                "base_lr": method.base_lr if factor is None else initial_lr,
                "epochs_before_eval": method.epochs_before, "n": len(metrics)}
            for key in METRICS:
                ci = mean_ci([m[key] for m in metrics if math.isfinite(m[key])])
                row.update({f"{key}_mean": ci.mean, f"{key}_low": ci.low, f"{key}_high": ci.high})
            row["reached_target"] = sum(math.isfinite(m["epochs_to_target"]) for m in metrics)
            row["diverged"] = int(sum(m["diverged"] for m in metrics))
            rows.append(row)
    return rows


def best_fixed(comparison: Comparison) -> str:
    """The comparator, pre-registered: the tuned method whose chosen base LR scored best (mean final Dice, then
    AUC) in the grid search on *train* instances. Picking it by held-out results and then testing against it
    on those same results would favour the fixed schedules."""
    tuning = comparison.tuning
    chosen = {m.name: tuning.scores[m.name][tuning.base_lrs[m.name]] for m in comparison.methods if m.tuned}
    return max(chosen, key=chosen.__getitem__)


def paired_tests(comparison: Comparison) -> dict[str, PairedTest]:
    """Each learned policy minus the best fixed schedule, final Dice on the same instances."""
    runs = by_method(comparison.results)
    best = [r.final_dice for r in runs[best_fixed(comparison)]]
    return {m.name: paired_test([r.final_dice for r in runs[m.name]], best)
            for m in comparison.methods if m.learned}


# --------------------------------------------------------------------------------------------- report
def _ci(row: dict[str, Any], key: str, digits: int = 3) -> str:
    mean, low, high = row[f"{key}_mean"], row[f"{key}_low"], row[f"{key}_high"]
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}" if high > low else f"{mean:.{digits}f}"


def _count(value: float) -> str:
    return "unknown" if not math.isfinite(value) else f"{value:,.0f}"


def report(comparison: Comparison, rows: list[dict[str, Any]]) -> str:
    """summary.md: main table, robustness table, paired test, tuned base LRs and compute accounting."""
    cfg, settings, tuning = comparison.config.env, comparison.settings, comparison.tuning
    methods = {m.name: m for m in comparison.methods}
    main = sorted((r for r in rows if r["factor"] is None), key=lambda r: -r["final_dice_mean"])
    n, target = len(comparison.instances), settings.dice_target

    def label(name: str) -> str:
        return f"**{name}**" if methods[name].learned else name

    lines = [
        f"# {comparison.config.name}: {len(methods)} methods on {n} held-out instances, "
        f"{cfg.epochs} epochs each",
        "",
        f"Mean ± 95% CI over instances (Student t). AUC = mean Dice over the {cfg.epochs} epochs "
        f"(diverged = 0 from then on). Epochs to Dice {target:g}: mean over the runs that reached it. Wall "
        f"time: training and validation per run. The comparison took {comparison.seconds:.0f} s with "
        f"{settings.workers} worker(s).",
        "",
        f"| method | base LR | epochs before eval | final Dice | best Dice | AUC Dice "
        f"| epochs to {target:g} (reached) | diverged | s / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in main:
        base = (f"{r['base_lr']:.3g}" if r["base_lr"] is not None
                else "PBT" if methods[r["method"]].kind == "pbt" else "instance's initial")
        lines.append(
            f"| {label(r['method'])} | {base} | {_count(r['epochs_before_eval'])} | {_ci(r, 'final_dice')} "
            f"| {_ci(r, 'best_dice')} | {_ci(r, 'auc_dice')} | {_ci(r, 'epochs_to_target', 1)} "
            f"({r['reached_target']}/{r['n']}) | {r['diverged']}/{r['n']} | {_ci(r, 'seconds', 2)} |")
    if comparison.robustness:
        factors = list(comparison.robustness)
        source, reference = tuning.reference
        headers = [f"{f:g}x (LR {lr:.3g}{'' if math.isclose(lr, f * reference) else ', clipped'})"
                   for f, (lr, _) in comparison.robustness.items()]
        lines += [
            "", "## Robustness: mis-set initial LR",
            "",
            f"Final Dice when every method starts from factor x {reference:.3g} (the tuned base LR of "
            f"{source}), clipped to [{cfg.lr_min:g}, {cfg.lr_max:g}]: learned and random policies start "
            "there, fixed schedules use it as their base LR. (d = diverged runs)",
            "",
            "| method | " + " | ".join(headers) + " |",
            "|---|" + "---|" * len(factors),
        ]
        cells = {(r["method"], r["factor"]): r for r in rows if r["factor"] is not None}
        for name in (r["method"] for r in main if (r["method"], factors[0]) in cells):
            row = [_ci(c, "final_dice") + (f" ({c['diverged']} d)" if c["diverged"] else "")
                   for c in (cells[name, f] for f in factors)]
            lines.append(f"| {label(name)} | " + " | ".join(row) + " |")
    tests = paired_tests(comparison)
    if tests:
        best = best_fixed(comparison)
        lines += ["", f"## Paired test: learned policy vs the best fixed schedule ({best})", "",
                  f"Final Dice difference on the same held-out instances. The comparator ({best}) was chosen by "
                  "its score in the grid search on train instances, before any held-out run.", "",
                  "| policy | difference (95% CI) | paired t p | Wilcoxon p | n |", "|---|---|---|---|---|"]
        for name, t in tests.items():
            lines.append(f"| **{name}** − {best} | {t.mean_difference:+.3f} "
                         f"({t.ci.low:+.3f} .. {t.ci.high:+.3f}) | {t.t_pvalue:.3g} "
                         f"| {t.wilcoxon_pvalue:.3g} | {t.n} |")
    lines += ["", "## Tuned base LRs", "",
              f"Grid: {len(tuning.grid)} LRs from {tuning.grid[0]:g} to {tuning.grid[-1]:g} "
              f"({settings.grid_per_decade} per decade over the preset's initial-LR range), each on "
              f"{tuning.instances} train instance(s); best mean final Dice wins.", "",
              "| schedule | tuned base LR | train final Dice | train AUC Dice |", "|---|---|---|---|"]
    for name, lr in tuning.base_lrs.items():
        final, auc = tuning.scores[name][lr]
        lines.append(f"| {name} | {lr:g} | {final:.3f} | {auc:.3f} |")
    lines += ["", "## Compute before evaluation", "",
              "UNet training epochs each method consumed before the evaluation; the evaluation itself costs "
              f"every method the same {n} x {cfg.epochs} epochs.", "",
              "| method | epochs | counted from |", "|---|---|---|"]
    for m in comparison.methods:
        lines.append(f"| {label(m.name)} | {_count(m.epochs_before)} | {m.accounting} |")
    return "\n".join(lines) + "\n"


def episode_rows(comparison: Comparison) -> list[dict[str, Any]]:
    """episodes.csv: one row per method x instance x epoch (``factor`` empty for the main runs)."""
    methods = {m.name: m for m in comparison.methods}
    rows = []
    for factor, _, results in comparison.groups():
        for result in results:
            tuned = methods[result.method].base_lr if factor is None else None
            base_lr = tuned if tuned is not None else result.instance.initial_lr
            for record, dice in zip(result.records, result.dices):
                rows.append({"method": result.method, "factor": factor, "instance": result.instance.index,
                             "base_lr": base_lr, "epoch": record["epoch"],
                             "lr": record["lr"] if record["epoch"] else None,  # epoch 0: nothing trained yet
                             "train_loss": record.get("train_loss"), "val_loss": record["val_loss"],
                             "dice": dice, "diverged": record["diverged"]})
    return rows


def tuning_rows(tuning: Tuning) -> list[dict[str, Any]]:
    chosen = tuning.base_lrs
    return [{"schedule": name, "lr": lr, "final_dice": final, "auc_dice": auc, "chosen": lr == chosen[name]}
            for name, by_lr in tuning.scores.items() for lr, (final, auc) in by_lr.items()]


def _csv(rows: list[dict[str, Any]]) -> str:
    """CSV text; missing and non-finite values are empty cells."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v
                         for k, v in row.items()})
    return buffer.getvalue()


def write_results(comparison: Comparison, out_dir: Path) -> str:
    """Every result file (atomically); returns the markdown summary."""
    rows = summarize(comparison)
    text = report(comparison, rows)
    atomic_write_text(out_dir / "episodes.csv", _csv(episode_rows(comparison)))
    atomic_write_text(out_dir / "tuning.csv", _csv(tuning_rows(comparison.tuning)))
    atomic_write_text(out_dir / "summary.csv", _csv(rows))
    atomic_write_text(out_dir / "summary.md", text)
    plot(comparison, out_dir)
    return text


# --------------------------------------------------------------------------------------------- plots
# tab10 without its red and grey, which mark learned policies and baselines
SCHEDULE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
LEARNED_COLOURS = ("#d62728", "#111111", "#8b0000", "#6a3d9a")


def styles(methods: list[Method]) -> dict[str, dict[str, Any]]:
    """Learned policies bold red/black on top; schedules in distinct colours; baselines grey and dashed."""
    learned, fixed = itertools.cycle(LEARNED_COLOURS), itertools.cycle(SCHEDULE_COLOURS)
    out = {}
    for m in methods:
        if m.learned:
            out[m.name] = {"color": next(learned), "lw": 3.0, "ls": "-"}
        elif m.tuned or m.kind == "pbt":
            out[m.name] = {"color": next(fixed), "lw": 1.8, "ls": "-"}
        else:
            out[m.name] = {"color": "#7f7f7f" if m.kind == "random" else "#444444", "lw": 1.8,
                           "ls": "--" if m.kind == "random" else ":"}
    return out


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean and t 95% CI (columns are epochs, rows instances; NaNs skipped)."""
    cis = [mean_ci(column[np.isfinite(column)]) for column in values.T]
    return np.array([c.mean for c in cis]), np.array([c.low for c in cis]), np.array([c.high for c in cis])


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    atomic_write_bytes(path, buffer.getvalue())


def _small_multiples(curves: dict[str, np.ndarray], epochs: np.ndarray, order: list[str],
                     references: list[str], style: dict[str, dict[str, Any]], finals: dict[str, float], *,
                     log: bool, ylabel: str, ylim: tuple[float, float], title: str,
                     target: float | None = None) -> Any:
    """One panel per method (mean line, 95% CI band), ranked by final Dice, with the ``references`` (the
    learned policies) overlaid in every panel: eleven overlapping bands on one axis would be unreadable."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    cols = min(4, len(order))
    rows = math.ceil(len(order) / cols)
    fig = Figure(figsize=(3.4 * cols, 2.5 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    for rank, (ax, name) in enumerate(zip(axes, order), start=1):
        for other in [r for r in references if r != name] + [name]:
            s, own = style[other], other == name
            mean, low, high = _band(np.log10(curves[other]) if log else curves[other])
            if log:
                mean, low, high = 10 ** mean, 10 ** low, 10 ** high
            ax.plot(epochs, mean, drawstyle="steps-post" if log else "default", color=s["color"], ls=s["ls"],
                    lw=s["lw"] if own else 1.2, alpha=1.0 if own else 0.75, zorder=4 if own else 3)
            if own:
                ax.fill_between(epochs, np.clip(low, *ylim), np.clip(high, *ylim),
                                step="post" if log else None, color=s["color"], alpha=0.2, lw=0)
        ax.set_title(f"{rank}. {name}  ({finals[name]:.3f})", color=style[name]["color"], fontsize=10,
                     fontweight="bold" if name in references else "normal")
        if target is not None:
            ax.axhline(target, color="#999999", lw=0.8, ls="-.", zorder=1)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[len(order):]:
        ax.set_visible(False)
    for ax in axes[max(0, len(order) - cols):len(order)]:  # the lowest panel of each column
        ax.set_xlabel("epoch")
        ax.tick_params(labelbottom=True)
    axes[0].set(ylim=ylim, xlim=(epochs[0], epochs[-1]), yscale="log" if log else "linear")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.supylabel(ylabel)
    fig.suptitle(f"{title}\npanels ranked by final Dice (in brackets); line: mean, band: 95% CI")
    if references:
        handles = [Line2D([], [], color=style[r]["color"], lw=1.2, alpha=0.75) for r in references]
        fig.legend(handles, [f"{r} (thin, in every panel)" for r in references], loc="outside lower center",
                   ncols=len(references), frameon=False)
    return fig


def plot(comparison: Comparison, out_dir: Path) -> None:
    """dice_vs_epoch.png, lr_vs_epoch.png, final_dice.png and (with robustness runs) robustness.png."""
    from matplotlib.figure import Figure

    cfg = comparison.config.env
    runs = by_method(comparison.results)
    style = styles(comparison.methods)
    finals = {name: float(np.mean([r.final_dice for r in rs])) for name, rs in runs.items()}
    order = sorted(runs, key=lambda name: -finals[name])
    learned = [m.name for m in comparison.methods if m.learned]
    epochs = np.arange(cfg.steps + 1) * cfg.epochs_per_step
    where = f"preset {comparison.config.name}, {len(comparison.instances)} held-out instances"

    dices = {name: np.array([dice_curve(r, cfg.steps) for r in rs]) for name, rs in runs.items()}
    fig = _small_multiples(dices, epochs, order, learned, style, finals, log=False, ylabel="validation Dice",
                           ylim=(0.0, 1.0), title=f"Validation Dice vs epoch — {where}",
                           target=comparison.settings.dice_target)
    _save(fig, out_dir / "dice_vs_epoch.png")
    # the LR of step k holds from epoch k-1 to k: repeat the last one so steps-post reaches the budget's end
    lrs = {name: np.array([np.append(c, c[-1]) for c in (lr_curve(r, cfg.steps) for r in rs)])
           for name, rs in runs.items()}
    fig = _small_multiples(lrs, epochs, order, learned, style, finals, log=True, ylabel="learning rate",
                           ylim=(cfg.lr_min, cfg.lr_max),
                           title=f"Learning rate vs epoch — {where} (geometric mean)")
    _save(fig, out_dir / "lr_vs_epoch.png")

    fig = Figure(figsize=(9, 0.45 * len(order) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for y, name in enumerate(reversed(order)):  # best on top
        s, values = style[name], np.array([r.final_dice for r in runs[name]])
        ci = mean_ci(values)
        ax.errorbar(ci.mean, y, xerr=[[ci.mean - ci.low], [ci.high - ci.mean]], fmt="D", color=s["color"],
                    ms=8, capsize=4, lw=1.5, alpha=0.55, zorder=2)
        ax.scatter(values, y + rng.uniform(-0.2, 0.2, values.size), s=30, color=s["color"], alpha=0.9, lw=0,
                   zorder=3)
    ax.set_yticks(range(len(order)), list(reversed(order)))
    for tick, name in zip(ax.get_yticklabels(), reversed(order)):
        tick.set_fontweight("bold" if name in learned else "normal")
    ax.set(xlabel="final validation Dice", xlim=(0, 1), title=f"Final Dice per method — {where}\n"
           "(dots: instances; diamond and bar: mean, 95% CI)")
    ax.grid(alpha=0.3, axis="x")
    _save(fig, out_dir / "final_dice.png")

    if comparison.robustness:
        robust = {r.method for _, results in comparison.robustness.values() for r in results}
        _save(_robustness_heatmap(comparison, [n for n in order if n in robust], learned, where),
              out_dir / "robustness.png")


def _robustness_heatmap(comparison: Comparison, order: list[str], learned: list[str], where: str) -> Any:
    """Methods x initial-LR factors, coloured by mean final Dice and annotated with its CI and divergences:
    with a handful of instances the error bars of a line plot would cover everything."""
    from matplotlib.figure import Figure

    factors = list(comparison.robustness)
    runs = {f: by_method(results) for f, (_, results) in comparison.robustness.items()}
    cis = [[mean_ci([r.final_dice for r in runs[f][name]]) for f in factors] for name in order]
    diverged = [[sum(r.diverged for r in runs[f][name]) for f in factors] for name in order]
    fig = Figure(figsize=(2.0 * len(factors) + 3.5, 0.5 * len(order) + 2.0), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow([[c.mean for c in row] for row in cis], cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for y, (row, counts) in enumerate(zip(cis, diverged)):
        for x, (ci, count) in enumerate(zip(row, counts)):
            text = f"{ci.mean:.2f} ± {ci.half_width:.2f}" + (f"\n{count} diverged" if count else "")
            ax.text(x, y, text, ha="center", va="center", fontsize=8,
                    color="black" if ci.mean > 0.6 else "white")
    source, reference = comparison.tuning.reference
    labels = [f"{f:g}x\n(LR {lr:.2g})" for f, (lr, _) in comparison.robustness.items()]
    ax.set_xticks(range(len(factors)), labels)
    ax.set_yticks(range(len(order)), order)
    for tick, name in zip(ax.get_yticklabels(), order):
        tick.set_fontweight("bold" if name in learned else "normal")
    ax.set(xlabel=f"initial LR as a multiple of the tuned {source} base LR {reference:.2g}",
           title=f"Robustness to a mis-set initial LR — {where}\nfinal Dice, mean ± 95% CI half-width")
    fig.colorbar(image, ax=ax, label="mean final Dice", shrink=0.8)
    return fig


# --------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m rlsched.compare", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default=None,
                   help="preset name in envs/ or a .toml path (default: the first agent's config, else demo)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a preset value, e.g. --set env.epochs=8 (repeatable)")
    p.add_argument("--agent", action="append", default=[], metavar="MODEL",
                   help="runs/<id>/model.zip (SB3) or model.pt (reference PPO); repeat to compare several")
    defaults = Settings()
    p.add_argument("--seeds", type=int, default=None, help="held-out instances to evaluate on (default: all)")
    p.add_argument("--schedules", nargs="+", default=list(defaults.schedules), metavar="NAME",
                   help=f"fixed schedules to compare (default: all of {', '.join(SCHEDULES)}); add "
                        f"'{SCRIPTED}' for the scripted rule (steer towards a target LR tuned on the same grid)")
    p.add_argument("--tune-instances", type=int, default=defaults.tune_instances,
                   help="train instances of the base-LR grid search (default: %(default)s)")
    p.add_argument("--grid-per-decade", type=int, default=defaults.grid_per_decade,
                   help="base-LR grid points per decade (default: %(default)s)")
    p.add_argument("--robustness", type=float, nargs="+", default=list(defaults.robustness), metavar="FACTOR",
                   help="initial LR = FACTOR x best tuned constant LR (default: %(default)s)")
    p.add_argument("--no-robustness", action="store_true", help="skip the mis-set initial LR runs")
    p.add_argument("--dice-target", type=float, default=defaults.dice_target,
                   help="Dice for the epochs-to-target column (default: %(default)s)")
    p.add_argument("--workers", type=int, default=defaults.workers,
                   help="episode worker processes, or Ray actors with --backend ray (default: %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default=defaults.backend,
                   help="local: a process pool; ray: Ray actors, a cluster with --address (needs the ray extra)")
    p.add_argument("--address", default=None, help="ray: Ray cluster address (default: start a local Ray)")
    p.add_argument("--pbt-population", type=int, default=0, metavar="K",
                   help="ray: add PBT (Ray Tune) with K members per held-out instance (default: off)")
    p.add_argument("--num-gpus-per-worker", type=float, default=defaults.gpus_per_worker, metavar="G",
                   help="ray: GPU share of each actor and PBT member, e.g. 0.25 = four per GPU (default: "
                        "%(default)s: Ray assigns them no GPU)")
    p.add_argument("--runs-dir", default="runs")
    return p, p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    try:
        settings = Settings(seeds=args.seeds, schedules=tuple(args.schedules),
                            tune_instances=args.tune_instances, grid_per_decade=args.grid_per_decade,
                            robustness=() if args.no_robustness else tuple(args.robustness),
                            dice_target=args.dice_target, workers=args.workers, backend=args.backend,
                            pbt_population=args.pbt_population, gpus_per_worker=args.num_gpus_per_worker)
        overrides = dict(parse_override(o) for o in args.set)
        policies = [load_policy(path) for path in args.agent]
        if args.preset is None and policies:
            config = config_from_dict(nest_overrides(overrides), policies[0].config, source="overrides")
        else:
            config = load_config(args.preset or "demo", overrides)
        agents = agent_methods(policies, config)
        check_fits(config, settings)
        check_dataset(config.data)  # a bad dataset stops here, before the run directory exists
        if settings.backend == "ray":
            from .ray_backend import connect

            connect(args.address, "--backend ray")
        elif args.address:
            raise ValueError("--address applies to --backend ray")
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as err:
        parser.error(str(err))
    run_dir = new_run_dir(config.name, "compare", root=args.runs_dir)
    atomic_write_text(run_dir / "config.toml", config_to_toml(config))
    atomic_write_json(run_dir / "args.json", vars(args))
    comparison = run_comparison(config, agents, settings)
    print(write_results(comparison, run_dir))
    print(f"results: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
