"""Train one UNet with one fixed LR schedule: ``python -m rlsched.fixed --schedule cosine --preset fast``.

Writes ``runs/<preset>__fixed-<schedule>__s<seed>__<time>/`` with ``config.toml``, one JSON line per step in
``metrics.jsonl`` and ``summary.json``. The schedule is stepped once per env step (``env.epochs_per_step``
epochs) over the preset's budget ``env.epochs``, the same granularity the RL controller gets.
"""

from __future__ import annotations

import sys
from typing import Iterator

from tqdm import tqdm

from rlsched.common.arguments import Parser, add_set_flag, ranged
from rlsched.common.files import (
    RunDirError,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    new_run_dir,
    removed_if_unstarted,
)
from rlsched.config import Config, ConfigError, config_to_toml, load_config, parse_override
from rlsched.seg.dataset import DatasetError, SegmentationData
from rlsched.seg.schedules import SCHEDULES, FixedSchedule
from rlsched.seg.sources import make_dataset
from rlsched.seg.trainer import Trainer, counted_dice


def run_schedule(
    config: Config, schedule: FixedSchedule, data: SegmentationData, seed: int
) -> Iterator[dict]:
    """Yield one record per step; stops after a diverged step (which is reported, not raised)."""
    trainer = Trainer(config, data, seed, lr=schedule.lr)
    for _ in range(config.env.steps):
        result = trainer.train_slice(schedule.lr, config.env.epochs_per_step)
        yield result.record()
        if result.diverged:
            return
        schedule.step(result.evaluation.dice_mean)


def summarize(records: list[dict]) -> dict:
    """The run's outcome, scored as the comparison scores it (``counted_dice``: a diverged run ends at 0)."""
    dices = [counted_dice(r) for r in records]
    return {
        "final_dice": dices[-1],
        "best_dice": max(dices),
        "diverged": records[-1]["diverged"],
        "epochs": records[-1]["epoch"],
        "seconds": sum(r["seconds"] for r in records),
    }


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m rlsched.fixed", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset", default="demo", help="preset name in envs/ or path to a .toml (default: demo)"
    )
    parser.add_argument("--schedule", default="cosine", choices=sorted(SCHEDULES))
    parser.add_argument(
        "--lr",
        type=ranged(float, 0, above=True),
        default=None,
        help="base LR (default: the preset's optim.lr)",
    )
    parser.add_argument(
        "--seed", type=ranged(int, 0, 2**32 - 1), default=0, help="seeds the data and the initial weights"
    )
    add_set_flag(parser, "env.epochs=20")
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.preset, dict(parse_override(o) for o in args.set))
        if config.family:
            raise ConfigError(
                f"preset {config.name!r} has a [family] (axes {', '.join(a.name for a in config.family)}): "
                "its instances train different configs and this command trains one; run fixed "
                "schedules on the family's instances with python -m rlsched.compare, or use a copy of "
                "the preset without [family]"
            )
        data = make_dataset(config.data, args.seed)  # before the run directory: a bad dataset leaves none
    except (ConfigError, DatasetError, ImportError) as err:  # ImportError: the brain extra is missing
        parser.error(str(err))
    base_lr = args.lr if args.lr is not None else config.optim.lr
    schedule = FixedSchedule(args.schedule, base_lr, config.env.steps)

    try:
        run_dir = new_run_dir(config.name, f"fixed-{args.schedule}", f"s{args.seed}", root=args.runs_dir)
    except RunDirError as err:
        parser.error(str(err))
    atomic_write_text(run_dir / "config.toml", config_to_toml(config))
    records = []
    with (
        removed_if_unstarted(run_dir, fresh=True, started=("config.toml",)),
        tqdm(total=config.env.epochs, desc=f"{args.schedule} lr={base_lr:g}", unit="epoch") as bar,
    ):
        for record in run_schedule(config, schedule, data, args.seed):
            records.append(record)
            append_jsonl(run_dir / "metrics.jsonl", [record])
            bar.update(config.env.epochs_per_step)
            bar.set_postfix(
                lr=f"{record['lr']:.2g}",
                dice=f"{record['dice_mean']:.3f}",
                loss=f"{record['train_loss']:.3g}",
            )
    summary = {"schedule": args.schedule, "base_lr": base_lr, "seed": args.seed, **summarize(records)}
    atomic_write_json(run_dir / "summary.json", summary)
    status = "DIVERGED" if summary["diverged"] else f"final Dice {summary['final_dice']:.3f}"
    print(
        f"{args.schedule} (base LR {base_lr:g}): {status} after {summary['epochs']} epochs, "
        f"{summary['seconds']:.1f} s\nresults: {run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
