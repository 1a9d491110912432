"""Env steps per second: RLlib PPO with Ray env runners vs the single-process SB3 run, in one script run.

    python benchmarks/rllib_throughput.py [--preset fast] [--total-timesteps 192] [--num-env-runners 2]

Both train PPO through ``python -m rlsched.train`` (no held-out evaluation) for the same env steps with the same
rollout size per env. One env step is one UNet epoch, so env steps/s is what scaling out buys. Wall time runs
from the call to the saved model; Ray itself is started before the clock (a cluster would already be up), the
RLlib Algorithm and its env-runner actors are built inside it. The training iterations alone are printed too.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from rlsched import train
from rlsched.common.files import read_jsonl


def timed_run(argv: list[str], runs: Path) -> tuple[float, Path]:
    start = time.perf_counter()
    assert train.main([*argv, "--no-eval", "--runs-dir", str(runs)]) == 0
    seconds = time.perf_counter() - start
    (run_dir,) = runs.iterdir()
    return seconds, run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--total-timesteps", type=int, default=192)
    parser.add_argument("--num-env-runners", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = [
        "--preset",
        args.preset,
        "--total-timesteps",
        str(args.total_timesteps),
        "--episodes-per-rollout",
        "2",
    ]

    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "sb3").mkdir()
        (Path(root) / "rllib").mkdir()
        sb3_s, _ = timed_run([*common, "--n-envs", "1"], Path(root) / "sb3")
        rllib_s, run_dir = timed_run(
            [*common, "--backend", "rllib", "--num-env-runners", str(args.num_env_runners)],
            Path(root) / "rllib",
        )
        progress = read_jsonl(run_dir / "progress.jsonl")
    ray.shutdown()
    steps_sb3, steps_rllib = args.total_timesteps, progress[-1]["num_timesteps"]
    loop_s = progress[-1]["time_total_s"]
    sb3_rate, rllib_rate, loop_rate = steps_sb3 / sb3_s, steps_rllib / rllib_s, steps_rllib / loop_s
    print(f"\n{args.preset}: {os.cpu_count()} CPUs")
    print(f"SB3 PPO, --n-envs 1: {steps_sb3} env steps in {sb3_s:.1f} s = {sb3_rate:.2f} env steps/s")
    print(
        f"RLlib PPO, --num-env-runners {args.num_env_runners}: {steps_rllib} env steps in {rllib_s:.1f} s = "
        f"{rllib_rate:.2f} env steps/s (training iterations alone: {loop_s:.1f} s = {loop_rate:.2f} /s)"
    )
    print(f"ratio RLlib / SB3: {rllib_rate / sb3_rate:.2f} (iterations alone: {loop_rate / sb3_rate:.2f})")


if __name__ == "__main__":
    main()
