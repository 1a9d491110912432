"""Overhead of the env over a plain Trainer loop: the same epochs both ways, interleaved, in one process.

    python benchmarks/env_overhead.py [--preset fast] [--repeats 3]

Both paths train the same instance at the same constant LR for the full budget and validate after every
step; the printed ratio is env time / plain time (target <= 1.03).
"""

from __future__ import annotations

import argparse
import time

import torch

from rlsched.config import load_config
from rlsched.control.env import UNetLREnv
from rlsched.seg.sources import make_dataset
from rlsched.seg.trainer import Trainer


def plain(config, data, instance) -> float:
    start = time.perf_counter()
    trainer = Trainer(config, data, instance.init_seed, lr=instance.initial_lr)
    trainer.evaluate()  # the env validates once at reset too
    for _ in range(config.env.steps):
        trainer.train_slice(config.env.epochs_per_step)
    return time.perf_counter() - start


def through_env(env: UNetLREnv, instance) -> float:
    start = time.perf_counter()
    env.reset(options={"instance": instance})
    done = False
    while not done:
        _, _, done, _, _ = env.step(env.keep_action)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.preset)
    env = UNetLREnv(config=config)
    instance = env.instances["heldout"][0]
    data = make_dataset(config.data, instance.data_seed)
    env._data(instance.data_seed)  # both paths start with the data already generated
    plain(config, data, instance), through_env(env, instance)  # warm-up
    plain_times, env_times = [], []
    for _ in range(args.repeats):
        plain_times.append(plain(config, data, instance))
        env_times.append(through_env(env, instance))
    p, e = min(plain_times), min(env_times)
    print(
        f"{args.preset}: {config.env.epochs} epochs; plain Trainer {p:.3f} s, env.step {e:.3f} s "
        f"(best of {args.repeats}); overhead ratio {e / p:.3f}"
    )


if __name__ == "__main__":
    main()
