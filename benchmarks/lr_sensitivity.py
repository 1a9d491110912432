"""How much does the LR matter on each preset? Final validation Dice across a grid of constant LRs.

    python benchmarks/lr_sensitivity.py [--presets fast demo] [--instances 4] [--workers 2] [--journal DIR]
                                        [--per-instance]

With ``--journal DIR`` every finished episode is kept in ``DIR/<preset>.jsonl``: the same command run again
(after Ctrl-C, a kill or a reboot) runs only the missing episodes.

Each constant LR runs the full epoch budget on the same held-out instances (same data and initial weights).
The spread between the best and the worst LR inside the preset's initial-LR range is the room a controller
has; a preset where every LR ends at the same Dice cannot show that a schedule matters.

``--per-instance`` adds each instance's best constant LR on the grid (and its variant, in a ``[family]`` preset)
and how many decades the best LRs span: where they differ by a decade or more, one tuned constant cannot fit
every instance and an adaptive controller has room to pay.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from rlsched.common.journal import Journal
from rlsched.common.stats import mean_ci
from rlsched.config import available_presets, config_to_toml, load_config
from rlsched.control.env import Instance, make_instances
from rlsched.experiment.harness import EpisodeResult, Job
from rlsched.experiment.jobs import episodes, run_journaled
from rlsched.seg.schedules import lr_grid

SHORT = {"batch_size": "bs", "base_width": "w", "momentum": "mom"}
LEARNED = 0.1  # an instance whose best final Dice stays below this learned nothing: its "best" LR is noise
CONTEXT = "__context__"  # the journal entry that ties a journal to the config it was run with


def require_context(journal: Journal, context: str) -> None:
    """Tie the journal to the config's TOML: the job keys do not hold the config, so a journal of other
    settings is refused rather than mixed in."""
    if CONTEXT not in journal:
        journal.add(CONTEXT, {"context": context})
    elif journal.get(CONTEXT)["context"] != context:
        raise SystemExit(
            f"{journal.path} was written with other settings: move it away (or pick another --journal) to "
            "start over, or restore the settings it was written with"
        )


def variant_label(instance: Instance) -> str:
    """``adam bs32 w4 noise0.35 multiclass classes2``: string values bare, others as key + value."""
    parts = []
    for key, value in instance.variant:
        name = key.rpartition(".")[2]
        parts.append(value.strip('"') if value.startswith('"') else f"{SHORT.get(name, name)}{value}")
    return " ".join(parts) or "-"


def per_instance(results: list[EpisodeResult], grid: list[float], instances: list[Instance]) -> None:
    """Each instance's final Dice per LR, its best LR, and how many decades the best LRs span."""
    print(
        "\n| instance | variant | initial LR | "
        + " | ".join(f"{lr:g}" for lr in grid)
        + " | best LR | best Dice |\n|---|---|---|"
        + "---|" * len(grid)
        + "---|---|"
    )
    bests, learned = [], []
    for inst in instances:
        finals = {r.method: r.final_dice for r in results if r.instance.index == inst.index}
        dices = [finals[f"{lr:g}"] for lr in grid]
        best = max(range(len(grid)), key=dices.__getitem__)
        bests.append(grid[best])
        if dices[best] >= LEARNED:
            learned.append(grid[best])
        print(
            f"| {inst.index} | {variant_label(inst)} | {inst.initial_lr:.2g} | "
            + " | ".join(f"{d:.3f}" for d in dices)
            + f" | {grid[best]:g} | {dices[best]:.3f} |"
        )
    print(
        f"\nbest constant LRs span {math.log10(max(bests) / min(bests)):.1f} decades ({min(bests):g} .. "
        f"{max(bests):g})"
    )
    if learned and len(learned) < len(bests):
        print(
            f"{math.log10(max(learned) / min(learned)):.1f} decades ({min(learned):g} .. {max(learned):g}) over the "
            f"{len(learned)} instances where some LR reaches Dice {LEARNED} (the others learned nothing)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=["fast", "demo"], help=f"from {available_presets()}")
    parser.add_argument("--instances", type=int, default=4, help="held-out instances per LR")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-decade", type=int, default=2)
    parser.add_argument(
        "--journal",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep finished episodes in DIR/<preset>.jsonl and skip them when run again",
    )
    parser.add_argument(
        "--per-instance",
        action="store_true",
        help="each instance's best constant LR (and variant), and the decades the best LRs span",
    )
    args = parser.parse_args()
    for preset in args.presets:
        config = load_config(preset)
        env = config.env
        grid = lr_grid(env.initial_lr_min, env.initial_lr_max, args.per_decade)
        instances = make_instances(config, "heldout")[: args.instances]
        jobs = [
            Job(f"{lr:g}", "schedule", "constant", inst, base_lr=lr, initial_lr=lr)
            for lr in grid
            for inst in instances
        ]
        journal = Journal(args.journal / f"{preset}.jsonl" if args.journal else None)
        require_context(journal, config_to_toml(config))
        start = time.perf_counter()
        outcomes, reused = run_journaled(config, jobs, journal, args.workers)
        results = episodes(outcomes)
        seconds = time.perf_counter() - start
        optimizer = config.optim.name + (
            f" momentum={config.optim.momentum}" if config.optim.name == "sgd" else ""
        )
        if config.family:
            optimizer = f"a family over {', '.join(axis.name for axis in config.family)}"
        print(
            f"\n## {preset}: {optimizer}, norm={config.model.norm}, "
            f"{env.epochs} epochs, {len(instances)} held-out instances, {seconds:.0f} s"
            + (f" ({reused} episodes read back from {journal.path})" if reused else "")
        )
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
        print(
            f"\nspread inside the initial-LR range [{env.initial_lr_min:g}, {env.initial_lr_max:g}]: "
            f"{sane[best] - sane[worst]:.3f} Dice (best {best:g}: {sane[best]:.3f}, worst {worst:g}: "
            f"{sane[worst]:.3f})"
        )
        if args.per_instance:
            per_instance(results, grid, instances)


if __name__ == "__main__":
    main()
