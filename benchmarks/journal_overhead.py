"""What does journaling every finished episode cost a comparison? Append time vs episode time, side by side.

    python benchmarks/journal_overhead.py [--presets fast demo] [--appends 200]

Runs one constant-LR episode per preset (the size of a real journal line), then appends its record to a journal
``--appends`` times (each append is flushed and fsynced, as in ``rlsched.compare``) and reads the journal back, as a
resume does. Prints the per-episode overhead as a fraction of the episode's own wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rlsched.common.journal import Journal
from rlsched.config import available_presets, load_config
from rlsched.control.env import make_instances
from rlsched.experiment.harness import Job
from rlsched.experiment.jobs import episodes, run_jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=["fast", "demo"], help=f"from {available_presets()}")
    parser.add_argument("--appends", type=int, default=200)
    args = parser.parse_args()
    print("| preset | episode s | journal line bytes | append ms | read-back ms / line | overhead |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        config = load_config(preset)
        instance = make_instances(config, "heldout")[0]
        job = Job("constant", "schedule", "constant", instance, base_lr=0.03)
        start = time.perf_counter()
        (result,) = episodes(run_jobs(config, [job]))
        episode = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as folder:
            journal = Journal(Path(folder) / "jobs.jsonl")
            start = time.perf_counter()
            for n in range(args.appends):
                journal.add(f"{job.key}#{n}", {"result": result.to_dict()})
            append = (time.perf_counter() - start) / args.appends
            size = (Path(folder) / "jobs.jsonl").stat().st_size / args.appends
            start = time.perf_counter()
            Journal(Path(folder) / "jobs.jsonl")
            read = (time.perf_counter() - start) / args.appends
        print(
            f"| {preset} | {episode:.2f} | {size:,.0f} | {append * 1e3:.2f} | {read * 1e3:.3f} "
            f"| {append / episode:.2%} |"
        )


if __name__ == "__main__":
    main()
