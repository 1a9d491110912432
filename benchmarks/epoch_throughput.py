"""Seconds per epoch and training images/s for each preset on the current device.

python benchmarks/epoch_throughput.py [--presets fast demo gpu] [--epochs 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from rlsched.config import available_presets, load_config
from rlsched.seg.sources import make_dataset
from rlsched.seg.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=available_presets())
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}"
    )
    print("| preset | images | size | device | s/epoch (train) | s/validation | train images/s |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        config = load_config(preset)
        try:
            data = make_dataset(config.data, seed=0)
        except ImportError as err:  # e.g. the brain preset without its extra
            print(f"| {preset} | skipped: {err} |")
            continue
        trainer = Trainer(config, data, seed=0, lr=config.env.initial_lr_min)
        trainer.train_epoch()
        start = time.perf_counter()
        for _ in range(args.epochs):
            trainer.train_epoch()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        per_epoch = (time.perf_counter() - start) / args.epochs
        evaluation = trainer.evaluate()
        n = len(data.train_images)
        print(
            f"| {preset} | {n}+{len(data.val_images)} | {data.train_images.shape[-1]} | {trainer.device} | "
            f"{per_epoch:.3f} | {evaluation.seconds:.3f} | {n / per_epoch:.0f} |"
        )


if __name__ == "__main__":
    main()
