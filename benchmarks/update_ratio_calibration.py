"""Which ``env.target_update_ratio`` makes the suggested LR land on the best constant LR? Calibrated on *train*
instances only (the held-out ones judge the controller).

    python benchmarks/update_ratio_calibration.py [--preset demo] [--optimizers sgd adam] [--instances 2]

For each optimizer and train instance it runs constant LRs over the preset's initial-LR range (the grid the
comparison tunes on), takes the best one by final validation Dice, and for every probe LR ``p`` of the grid
reads the update ratio ``u(p)`` of the first epoch: the ratio that would have suggested exactly the best LR is
``best * u(p) / p``. A good target is one such ratio for every optimizer and probe (geometric mean printed);
if they differ by a lot across optimizers, one target cannot serve them all.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from rlsched.config import load_config
from rlsched.control.env import make_instances
from rlsched.experiment.harness import Job
from rlsched.experiment.jobs import episodes, run_jobs
from rlsched.seg.schedules import lr_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--optimizers", nargs="+", default=["sgd", "adam"])
    parser.add_argument("--instances", type=int, default=2, help="train instances per optimizer")
    parser.add_argument("--per-decade", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    config = load_config(args.preset)
    grid = lr_grid(config.env.initial_lr_min, config.env.initial_lr_max, args.per_decade)
    instances = make_instances(config, "train")[: args.instances]
    jobs = [
        Job(
            f"{name}@{lr:g}",
            "schedule",
            "constant",
            inst,
            base_lr=lr,
            initial_lr=lr,
            overrides=(("optim.name", f'"{name}"'),),
        )
        for name in args.optimizers
        for lr in grid
        for inst in instances
    ]
    results = episodes(run_jobs(config, jobs, args.workers))
    print(
        f"## {args.preset}: {len(instances)} train instances, constant LRs {', '.join(f'{g:g}' for g in grid)}"
    )
    print("| optimizer | instance | best LR | its Dice | target ratio that suggests it, per probe LR |")
    print("|---|---|---|---|---|")
    targets: dict[str, list[float]] = {}
    for name in args.optimizers:
        for inst in instances:
            runs = {
                job.base_lr: r
                for job, r in zip(jobs, results)
                if job.method.startswith(f"{name}@") and job.instance == inst
            }
            best = max(runs, key=lambda lr: runs[lr].final_dice)
            implied = {}
            for probe, run in runs.items():
                ratio = run.records[1]["update_ratio"]
                if not run.records[1]["diverged"] and math.isfinite(ratio) and ratio > 0:
                    implied[probe] = best * ratio / probe
            targets.setdefault(name, []).extend(implied.values())
            cells = ", ".join(f"{p:g}: {t:.3g}" for p, t in sorted(implied.items()))
            print(f"| {name} | {inst.index} | {best:g} | {runs[best].final_dice:.3f} | {cells} |")
    for name, values in targets.items():
        print(
            f"{name}: geometric mean target {math.exp(np.mean(np.log(values))):.3g} "
            f"(from {min(values):.3g} to {max(values):.3g}, {len(values)} probes)"
        )
    every = [v for values in targets.values() for v in values]
    print(f"all: geometric mean target {math.exp(np.mean(np.log(every))):.3g}")


if __name__ == "__main__":
    main()
