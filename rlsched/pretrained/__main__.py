"""``python -m rlsched.pretrained``: which controller the package ships (loaded and run once, as a check);
``--export runs/<id>`` ships a finished SB3 run instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from rlsched.agents.loading import check_compatible, load_policy
from rlsched.control.interface import observation_space
from rlsched.pretrained import ENV_VAR, controller_path, export, pretrained_dir, read_provenance


def describe(model: Path) -> str:
    """What is shipped, from ``controller.json`` and ``controller.toml``, after loading the policy as
    ``RLScheduler.pretrained`` does and letting it act once (a file that does not load fails here, not later)."""
    loaded = load_policy(model)
    check_compatible(loaded, loaded.config)  # the policy's observation shape is its config's
    env = loaded.config.env
    loaded.predictor.predict(np.zeros(observation_space(env).shape, np.float32), deterministic=True)
    shipped = read_provenance(model) or {}
    args = shipped.get("args", {})
    overrides = "".join(f" --set {o}" for o in args.get("set", []))
    return "\n".join(
        [
            f"pretrained controller: {model}",
            f"  trained on: preset {shipped.get('preset')!r}{overrides} ({loaded.config.description})",
            f"  source run: {shipped.get('source_run')}, trained {shipped.get('trained')}",
            (
                f"  training: {shipped.get('training_episodes')} episodes, "
                f"{shipped.get('training_epochs')} UNet epochs "
                f"(--total-timesteps {args.get('total_timesteps')}, --seed {args.get('seed')}, "
                f"--bc-episodes {args.get('bc_episodes')}, --bc-explore {args.get('bc_explore', 0.0)}, "
                f"--learning-rate {args.get('learning_rate')})"
            ),
            (
                f"  interface: {env.action} actions, LR in [{env.lr_min:g}, {env.lr_max:g}], "
                f"a {env.epochs}-epoch budget "
                f"({env.epochs_per_step} per step), observations normalised: {shipped.get('observations_normalised')}"
            ),
            f"  exported {shipped.get('exported')} at commit {shipped.get('git_commit')}",
            "  loads and acts: ok",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlsched.pretrained", description=__doc__.split("\n")[0])
    p.add_argument(
        "--export",
        metavar="RUN_DIR",
        help="ship this finished SB3 run of python -m rlsched.train (replaces the shipped controller)",
    )
    p.add_argument(
        "--dest",
        metavar="DIR",
        default=None,
        help=f"the controller folder to write or read (default: ${ENV_VAR} if set, else the package's "
        f"{pretrained_dir()})",
    )
    args = p.parse_args(argv)
    try:
        if args.export:
            export(args.export, args.dest)
            print(f"exported {args.export}")
        print(describe(controller_path(args.dest)))
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    except ValueError as err:  # ConfigError included
        p.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
