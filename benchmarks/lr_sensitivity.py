"""How much does the LR matter on each preset? Final validation Dice across a grid of constant LRs.

    python benchmarks/lr_sensitivity.py [--presets fast demo] [--instances 4] [--workers 2] [--journal DIR]

With ``--journal DIR`` every finished episode is kept in ``DIR/<preset>.jsonl``: the same command run again
(after Ctrl-C, a kill or a reboot) runs only the missing episodes.

Each constant LR runs the full epoch budget on the same held-out instances (same data and initial weights).
The spread between the best and the worst LR inside the preset's initial-LR range is the room a controller
has; a preset where every LR ends at the same Dice cannot show that a schedule matters.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from rlsched.config import available_presets, config_to_toml, load_config
from rlsched.env import make_instances
from rlsched.harness import Job
from rlsched.jobs import episodes, run_journaled
from rlsched.journal import Journal
from rlsched.schedules import lr_grid
from rlsched.stats import mean_ci


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=["fast", "demo"], help=f"from {available_presets()}")
    parser.add_argument("--instances", type=int, default=4, help="held-out instances per LR")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-decade", type=int, default=2)
    parser.add_argument("--journal", type=Path, default=None, metavar="DIR",
                        help="keep finished episodes in DIR/<preset>.jsonl and skip them when run again")
    args = parser.parse_args()
    for preset in args.presets:
        config = load_config(preset)
        env = config.env
        grid = lr_grid(env.initial_lr_min, env.initial_lr_max, args.per_decade)
        instances = make_instances(env, "heldout")[: args.instances]
        jobs = [Job(f"{lr:g}", "schedule", "constant", inst, base_lr=lr, initial_lr=lr)
                for lr in grid for inst in instances]
        journal = Journal(args.journal / f"{preset}.jsonl" if args.journal else None)
        journal.require_context(config_to_toml(config))
        start = time.perf_counter()
        outcomes, reused = run_journaled(config, jobs, journal, args.workers)
        results = episodes(outcomes)
        seconds = time.perf_counter() - start
        optimizer = config.optim.name + (f" momentum={config.optim.momentum}" if config.optim.name == "sgd" else "")
        print(f"\n## {preset}: {optimizer}, norm={config.model.norm}, "
              f"{env.epochs} epochs, {len(instances)} held-out instances, {seconds:.0f} s"
              + (f" ({reused} episodes read back from {journal.path})" if reused else ""))
        print("| constant LR | final Dice mean ± 95% CI | diverged |\n|---|---|---|")
        means = {}
        for lr in grid:
            finals = [r.final_dice for r in results if r.method == f"{lr:g}"]
            diverged = sum(r.diverged for r in results if r.method == f"{lr:g}")
            means[lr] = float(np.mean(finals))
            print(f"| {lr:g} | {mean_ci(finals)} | {diverged}/{len(finals)} |")
        sane = {lr: m for lr, m in means.items() if env.initial_lr_min <= lr <= env.initial_lr_max}
        best = max(sane, key=sane.get)
        worst = min(sane, key=sane.get)
        print(f"\nspread inside the initial-LR range [{env.initial_lr_min:g}, {env.initial_lr_max:g}]: "
              f"{sane[best] - sane[worst]:.3f} Dice (best {best:g}: {sane[best]:.3f}, worst {worst:g}: "
              f"{sane[worst]:.3f})")


if __name__ == "__main__":
    main()
