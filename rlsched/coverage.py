"""Do the states met in training cover those met on an evaluation task? ``python -m rlsched.coverage``.

A policy acts on a task through its observation alone, so where a task's observations fall outside anything its
training family showed it, each action there is an extrapolation. This runs one controller (the suggested-LR
rule by default: the teacher every policy is cloned from) on train instances of the training preset and on
held-out instances of each evaluation preset, then reports per feature how many evaluation states fall outside
the training range. It also reports how far each evaluation state is from its nearest training state, in
training-standardised units, against the same distance between training states.

    python -m rlsched.coverage --train mix-real --eval brain-folder demo [--instances 16] [--workers 2]

Writes ``<runs-dir>/coverage__<train>__<time>/coverage.json`` and ``coverage.md``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist

from rlsched.common.arguments import add_set_flag, ranged
from rlsched.common.files import RunDirError, atomic_write_json, atomic_write_text, new_run_dir
from rlsched.config import Config, ConfigError, load_config, parse_override
from rlsched.control.env import make_instances
from rlsched.control.interface import observation_names
from rlsched.control.rules import SUGGESTED_RULE, parse_rule
from rlsched.experiment.harness import Job
from rlsched.experiment.jobs import episodes, run_jobs
from rlsched.experiment.kinds import scripted
from rlsched.seg.dataset import DatasetError

NOVEL_QUANTILE = 0.95  # an evaluation state farther from training than this share of training's own is novel


def visited_states(
    config: Config, split: str, instances: int, rule: str, lr: float, workers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every observation the scripted ``rule`` (probing at ``lr``) acted on, over the first ``instances`` of
    ``split``: one row per state, and the run each came from."""
    chosen = make_instances(config, split)[:instances]
    jobs = [Job(rule, scripted.KIND.name, rule, instance, base_lr=lr) for instance in chosen]
    results = episodes(run_jobs(config, jobs, workers))
    states = [(row, run) for run, result in enumerate(results) for row in result.observations]
    return np.array([row for row, _ in states], dtype=float), np.array([run for _, run in states])


@dataclass(frozen=True)
class Coverage:
    """How one evaluation task's states sit against the training states (``measure``)."""

    names: list[str]
    outside: np.ndarray  # per feature: share of evaluation states below the training minimum or above its max
    outside_any: float  # share of evaluation states with at least one feature outside the training range
    novel: float  # share whose nearest training state is farther than NOVEL_QUANTILE of training's own
    distance_ratio: float  # median nearest-training distance, evaluation over training's (other runs)
    train_range: np.ndarray  # (features, 2): training min and max
    eval_range: np.ndarray  # (features, 2): evaluation min and max
    states: tuple[int, int]  # training and evaluation states measured


def measure(train: np.ndarray, runs: np.ndarray, evaluated: np.ndarray, names: list[str]) -> Coverage:
    """Per-feature range coverage and nearest-neighbour novelty of ``evaluated`` against ``train`` (rows are
    states; ``runs``: the training run of each). A training state's own nearest neighbour is sought in the
    *other* runs: the next state of the same run is always close, and would make any new run look novel.
    Distances use the training mean and spread; features constant in training count only through the range
    test (no spread to scale them by)."""
    low, high = train.min(axis=0), train.max(axis=0)
    out = (evaluated < low - 1e-9) | (evaluated > high + 1e-9)
    spread = train.std(axis=0)
    varying = spread > 1e-9
    scale = lambda x: (x[:, varying] - train.mean(axis=0)[varying]) / spread[varying]  # noqa: E731
    t, e = scale(train), scale(evaluated)
    within = cdist(t, t)
    within[runs[:, None] == runs[None, :]] = np.inf
    own = within.min(axis=1)
    nearest = cdist(e, t).min(axis=1)
    return Coverage(
        names,
        out.mean(axis=0),
        float(out.any(axis=1).mean()),
        float((nearest > np.quantile(own, NOVEL_QUANTILE)).mean()),
        float(np.median(nearest) / max(np.median(own), 1e-12)),
        np.stack([low, high], axis=1),
        np.stack([evaluated.min(axis=0), evaluated.max(axis=0)], axis=1),
        (len(train), len(evaluated)),
    )


def report(train_name: str, results: dict[str, Coverage], rule: str, lr: float) -> str:
    """The markdown page: one summary row per evaluation task, then each task's features that leave the range."""
    lines = [
        f"# Coverage: do `{train_name}`'s train states cover the evaluation tasks'?",
        "",
        f"States: every observation the {rule} rule (probing at {lr:g}) acted on. Novel: nearest training state "
        f"farther than {NOVEL_QUANTILE:.0%} of training states are from their own nearest neighbour in another "
        "run (training-standardised features). The training preset's own held-out instances as a task give "
        "the reference: about 5 % novel and a distance ratio near 1.",
        "",
        "| evaluation task | states (train / eval) | outside the training range (any feature) | novel | "
        "median distance to training / training's own |",
        "|---|---|---|---|---|",
    ]
    for name, c in results.items():
        lines.append(
            f"| `{name}` | {c.states[0]} / {c.states[1]} | {c.outside_any:.0%} | {c.novel:.0%} | "
            f"{c.distance_ratio:.2f} |"
        )
    for name, c in results.items():
        lines += ["", f"## `{name}`: features outside `{train_name}`'s range", ""]
        leaving = [i for i in np.argsort(-c.outside) if c.outside[i] > 0]
        if not leaving:
            lines.append("None: every evaluation state is inside the training range, feature by feature.")
            continue
        lines += ["| feature | outside | training range | evaluation range |", "|---|---|---|---|"]
        for i in leaving:
            (tl, th), (el, eh) = c.train_range[i], c.eval_range[i]
            lines.append(
                f"| {c.names[i]} | {c.outside[i]:.0%} | {tl:.3g} .. {th:.3g} | {el:.3g} .. {eh:.3g} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlsched.coverage", description=__doc__.split("\n")[0])
    p.add_argument(
        "--train", required=True, metavar="PRESET", help="the training preset (name or .toml path)"
    )
    p.add_argument("--eval", nargs="+", required=True, metavar="PRESET", help="evaluation presets")
    p.add_argument("--instances", type=ranged(int, 2), default=16, help="instances per preset (default: 16)")
    p.add_argument("--teacher", default=SUGGESTED_RULE, help="the rule to run (default: %(default)s)")
    p.add_argument(
        "--teacher-lr",
        type=ranged(float, 0, above=True),
        default=None,
        help="its probe LR (default: the training preset's env.probe_lr)",
    )
    add_set_flag(p, "env.epochs=8")
    p.add_argument("--workers", type=ranged(int, 1), default=1, help="episode worker processes")
    p.add_argument("--runs-dir", default="runs")
    args = p.parse_args(argv)
    try:
        parse_rule(args.teacher)
        overrides = dict(parse_override(o) for o in args.set)
        train = load_config(args.train, overrides)
        tasks = {Path(name).stem: load_config(name, overrides) for name in args.eval}
        names = observation_names(train.env)
        for name, config in tasks.items():
            if observation_names(config.env) != names:
                raise ValueError(
                    f"--eval {name} observes other features than --train {args.train} (env.history or the "
                    "observation differ): coverage compares like with like; align them with --set"
                )
    except (ConfigError, ValueError, FileNotFoundError) as err:
        p.error(str(err))
    lr = args.teacher_lr or train.env.probe_lr
    try:
        seen, runs = visited_states(train, "train", args.instances, args.teacher, lr, args.workers)
        results = {
            name: measure(
                seen,
                runs,
                visited_states(config, "heldout", args.instances, args.teacher, lr, args.workers)[0],
                names,
            )
            for name, config in tasks.items()
        }
    except DatasetError as err:
        p.error(str(err))
    try:
        run_dir = new_run_dir("coverage", Path(args.train).stem, root=args.runs_dir)
    except RunDirError as err:
        p.error(str(err))
    text = report(Path(args.train).stem, results, args.teacher, lr)
    atomic_write_text(run_dir / "coverage.md", text)
    atomic_write_json(
        run_dir / "coverage.json",
        {
            "train": args.train,
            "rule": args.teacher,
            "lr": lr,
            "tasks": {
                name: {
                    "states": list(c.states),
                    "outside_any": c.outside_any,
                    "novel": c.novel,
                    "distance_ratio": c.distance_ratio,
                    "outside": dict(zip(names, map(float, c.outside))),
                }
                for name, c in results.items()
            },
        },
    )
    print(text)
    print(f"written to {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
