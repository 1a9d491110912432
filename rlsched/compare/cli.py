"""Learned LR controllers vs every fixed schedule and a random policy on the same held-out instances.

    python -m rlsched.compare --agent runs/<id>/model.zip [--agent runs/<id2>/model.pt] [--seeds N]
    python -m rlsched.compare --agent pretrained --preset demo     # the controller shipped in the package
    python -m rlsched.compare --backend ray [--address ADDR] [--pbt-population K] [--num-gpus-per-worker G]
    python -m rlsched.compare --report runs/<compare-id> --to docs/results   # its results page (compare/page.py)

Every method trains the same UNets (same data, initial weights and epoch budget) through the same harness, so
results differ only by the LRs chosen. Fairness: each fixed schedule gets its base LR from a grid search on
*train* instances; robustness runs mis-set the initial LR (a factor of the best tuned constant LR) to show
which controllers recover; the epochs each method consumed *before* evaluation (PPO training, grid search)
are reported next to its result.

Every episode is journaled the moment it finishes (``jobs.jsonl``): after Ctrl-C, SIGTERM, a kill or a reboot,
``--resume runs/<compare-id>`` runs only the missing episodes and writes the same tables. A worker process that
dies is replaced and its episode retried (3 attempts, then it is reported as failed).

Writes ``runs/<preset>__compare__<time>/``: ``config.toml``, ``args.json``, ``run.json`` (command line, commit,
dates: compare/record.py), ``inputs.json`` (agent file hashes),
``jobs.jsonl``, ``episodes.csv`` (one row per method x instance x epoch), ``tuning.csv`` (the grid search),
``summary.csv``, ``summary.md`` and plots (``dice_vs_epoch.png``, ``lr_vs_epoch.png``, ``final_dice.png``,
``robustness.png``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from rlsched.agents.loading import load_policy, resolve_agent_path
from rlsched.common.arguments import Parser, add_set_flag, given_flags
from rlsched.common.files import (
    Interrupted,
    RunDirError,
    atomic_write_json,
    atomic_write_text,
    interrupt_on_sigterm,
    new_run_dir,
    removed_if_unstarted,
)
from rlsched.common.journal import Journal
from rlsched.compare.methods import BASELINE_GROUPS, BASELINES, Settings, agent_methods
from rlsched.compare.page import PageError, write_page
from rlsched.compare.record import RECORD, record_finish, record_resume, record_start
from rlsched.compare.report import write_results
from rlsched.compare.running import check_baselines, check_fits, run_comparison
from rlsched.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_toml,
    load_config,
    nest_overrides,
    parse_override,
)
from rlsched.experiment.jobs import BACKENDS
from rlsched.experiment.tuning import SCRIPTED
from rlsched.seg.dataset import DatasetError
from rlsched.seg.schedules import SCHEDULES
from rlsched.seg.sources import check_dataset

JOURNAL = "jobs.jsonl"
STARTED = ("config.toml", "args.json", RECORD, "inputs.json")  # what a start writes before its first episode


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    p = Parser(prog="python -m rlsched.compare", description=__doc__.split("\n")[0])
    p.add_argument(
        "--preset",
        default=None,
        help="preset name in envs/ or a .toml path (default: the first agent's config, else demo)",
    )
    add_set_flag(p)
    p.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="MODEL",
        help="runs/<id>/model.zip (SB3) or model.pt (reference PPO), or 'pretrained' (the controller "
        "shipped in the package); repeat to compare several",
    )
    defaults = Settings()
    p.add_argument("--seeds", type=int, default=None, help="held-out instances to evaluate on (default: all)")
    p.add_argument(
        "--schedules",
        nargs="+",
        default=list(defaults.schedules),
        metavar="NAME",
        help=f"fixed schedules to compare (default: all of {', '.join(SCHEDULES)}); add "
        f"'{SCRIPTED}' for the scripted rule (steer towards a target LR tuned on the same grid), "
        "'suggested' for the suggested-LR rule (first slice at a tuned LR, then the LR its update "
        "size suggests)",
    )
    p.add_argument(
        "--at-initial-lr",
        nargs="+",
        default=list(defaults.at_initial_lr),
        metavar="NAME",
        help="fixed schedules also run untuned, from each instance's own initial LR: what a user who "
        "does not tune gets (default: %(default)s)",
    )
    p.add_argument(
        "--oracle",
        type=int,
        default=defaults.oracle_per_decade,
        metavar="PER_DECADE",
        help="add the per-instance oracle row (best of constant and cosine over this many LRs per decade on each "
        "held-out instance, picked on validation Dice) and every method's regret to it; costs 2 x LRs runs per "
        "instance (default: %(default)s = off)",
    )
    p.add_argument(
        "--tune-instances",
        type=int,
        default=defaults.tune_instances,
        help="train instances of the base-LR grid search (default: %(default)s)",
    )
    p.add_argument(
        "--grid-per-decade",
        type=int,
        default=defaults.grid_per_decade,
        help="base-LR grid points per decade (default: %(default)s)",
    )
    p.add_argument(
        "--robustness",
        type=float,
        nargs="+",
        default=list(defaults.robustness),
        metavar="FACTOR",
        help="initial LR = FACTOR x best tuned constant LR (default: %(default)s)",
    )
    p.add_argument("--no-robustness", action="store_true", help="skip the mis-set initial LR runs")
    p.add_argument(
        "--dice-target",
        type=float,
        default=defaults.dice_target,
        help="Dice for the epochs-to-target column (default: %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=defaults.workers,
        help="episode worker processes, or Ray actors with --backend ray (default: %(default)s)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=defaults.backend,
        help="local: a process pool; ray: Ray actors, a cluster with --address (needs the ray extra)",
    )
    p.add_argument("--address", default=None, help="ray: Ray cluster address (default: start a local Ray)")
    p.add_argument(
        "--pb2-population",
        type=int,
        default=0,
        metavar="K",
        help="ray: add PB2 (PBT whose explore step is a GP bandit over log10 LR; needs GPy, in the ray "
        "extra) with K members per held-out instance (default: off)",
    )
    p.add_argument(
        "--pbt-population",
        type=int,
        default=0,
        metavar="K",
        help="ray: add PBT (Ray Tune) with K members per held-out instance (default: off)",
    )
    p.add_argument(
        "--num-gpus-per-worker",
        type=float,
        default=defaults.gpus_per_worker,
        metavar="G",
        help="ray: GPU share of each actor and PBT member, e.g. 0.25 = four per GPU (default: "
        "%(default)s: Ray assigns them no GPU)",
    )
    p.add_argument(
        "--baselines",
        nargs="+",
        default=[],
        metavar="NAME",
        help="add what practitioners use instead of a learned schedule: "
        f"{', '.join(BASELINES)}; or the groups {', '.join(BASELINE_GROUPS)} (default: none; "
        "the tuning-free optimizers need the tuningfree extra, optuna the search extra)",
    )
    p.add_argument(
        "--optuna-epochs",
        type=int,
        default=None,
        metavar="N",
        help="Optuna's budget of trained epochs (default: what the first --agent's PPO training spent)",
    )
    p.add_argument(
        "--sampled-rollouts",
        type=int,
        default=0,
        metavar="K",
        help="also evaluate each agent on sampled actions: K seeded rollouts per instance, averaged "
        "per instance (default: off; the agent's own row uses its most likely action)",
    )
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="allow loading --agent models by unpickling (SB3's full load, RLlib checkpoints), "
        "which can run any code: only for models from a source you trust (default: weights "
        "and plain data only)",
    )
    p.add_argument("--runs-dir", default="runs")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="finish an interrupted comparison: run only the episodes missing from RUN_DIR/jobs.jsonl, "
        "then write every result file; flags given with it must equal the run's",
    )
    p.add_argument(
        "--report",
        metavar="RUN_DIR",
        default=None,
        help="write the results page of a finished comparison, RUN_DIR's command, commit, dates and tables, "
        "into --to (as <preset>.md, replacing RUN_DIR's own section if the page has one); runs nothing",
    )
    p.add_argument("--to", metavar="DIR", default=None, help="--report: the folder of the results pages")
    args = p.parse_args(argv)
    if args.report or args.to:
        others = sorted(f"--{o.replace('_', '-')}" for o in given_flags(p, argv) - {"report", "to"})
        if others:
            p.error(
                f"--report writes a finished run's results page and runs nothing: drop {', '.join(others)}"
            )
        if not args.to:
            p.error(
                "--report RUN_DIR needs --to DIR, the folder of the results pages (e.g. --to docs/results)"
            )
        if not args.report:
            p.error("--to DIR is where --report RUN_DIR writes a results page: add --report, or drop --to")
        return p, args
    if args.no_robustness and "robustness" in given_flags(p, argv):
        p.error("--no-robustness skips the mis-set initial LR runs that --robustness sets: drop one of them")
    if args.resume:
        args = _resumed_args(p, argv, Path(args.resume))
    if args.sampled_rollouts and not args.agent:
        p.error(
            "--sampled-rollouts samples the actions of the --agent policies, and none is given: add --agent, "
            "or drop --sampled-rollouts"
        )
    return p, args


def _resumed_args(
    parser: argparse.ArgumentParser, argv: list[str] | None, run_dir: Path
) -> argparse.Namespace:
    """The run's saved flags; a flag given now with another value is refused, naming it (options added since
    the run started take their defaults)."""
    saved_file = run_dir / "args.json"
    if not saved_file.is_file() or not (run_dir / "config.toml").is_file():
        parser.error(
            f"--resume {run_dir}: not a comparison run (no args.json/config.toml there); pass a folder made "
            "by python -m rlsched.compare"
        )
    saved = {k: v for k, v in json.loads(saved_file.read_text()).items() if k != "resume"}
    args = parser.parse_args(argv, namespace=argparse.Namespace(**saved))  # explicit flags override the saved
    changed = [
        f"--{k.replace('_', '-')} {getattr(args, k)!r} (the run used {v!r})"
        for k, v in saved.items()
        if getattr(args, k) != v
    ]
    if changed:
        parser.error(
            f"--resume {run_dir}: a resumed comparison must run with its own arguments; differs: "
            f"{'; '.join(changed)}. Start a new comparison to change them."
        )
    args.resume = str(run_dir)
    return args


def _fingerprints(paths: list[Path]) -> dict[str, str]:
    """sha256 of each agent's model file (a folder: of its files): a resume must compare the same agents."""
    prints = {}
    for path in paths:
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.read_bytes())
        prints[str(path)] = digest.hexdigest()
    return prints


def _flat(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A TOML document as {"section.key": value}."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_unchanged(run_dir: Path, config_text: str, agents: dict[str, str]) -> None:
    """Refuse a resume whose preset or agents changed since the run started, naming what changed."""
    saved = _flat(tomllib.loads((run_dir / "config.toml").read_text()))
    now = _flat(tomllib.loads(config_text))
    keys = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if keys:
        raise ConfigError(
            f"--resume {run_dir}: the preset changed since the comparison started ({', '.join(keys)}); "
            "restore it or start a new comparison"
        )
    inputs = json.loads((run_dir / "inputs.json").read_text()) if (run_dir / "inputs.json").is_file() else {}
    moved = [path for path, digest in agents.items() if inputs.get(path) != digest]
    if moved:
        raise ValueError(
            f"--resume {run_dir}: agent model(s) changed since the comparison started: "
            f"{', '.join(moved)}; restore them or start a new comparison"
        )


def _check_device(config: Config) -> None:
    """Local workers train on this machine: a device it lacks is an error now, not one in every worker (Ray's
    actors may run where the GPUs are, so that backend is not checked here)."""
    from rlsched.seg.trainer import resolve_device

    try:
        resolve_device(config.optim.device)
    except RuntimeError as err:
        raise ConfigError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, args = parse_args(argv)
    if args.report:
        try:
            print(f"wrote {write_page(Path(args.report), Path(args.to))}")
        except (PageError, OSError) as err:
            parser.error(str(err))
        return 0
    try:
        settings = Settings(
            seeds=args.seeds,
            schedules=tuple(args.schedules),
            tune_instances=args.tune_instances,
            grid_per_decade=args.grid_per_decade,
            robustness=() if args.no_robustness else tuple(args.robustness),
            dice_target=args.dice_target,
            workers=args.workers,
            backend=args.backend,
            pbt_population=args.pbt_population,
            pb2_population=args.pb2_population,
            gpus_per_worker=args.num_gpus_per_worker,
            baselines=tuple(args.baselines),
            optuna_epochs=args.optuna_epochs,
            sampled_rollouts=args.sampled_rollouts,
            at_initial_lr=tuple(args.at_initial_lr),
            oracle_per_decade=args.oracle,
        )
        overrides = dict(parse_override(o) for o in args.set)
        agent_paths = [resolve_agent_path(path) for path in args.agent]
        policies = [load_policy(path, trust=args.trust_model) for path in agent_paths]
        if args.preset is None and policies:
            config = config_from_dict(nest_overrides(overrides), policies[0].config, source="overrides")
        else:
            config = load_config(args.preset or "demo", overrides)
        agents = agent_methods(policies, config)
        check_fits(config, settings)
        check_baselines(config, settings, agents)
        check_dataset(config.data)  # a bad dataset stops here, before the run directory exists
        if settings.backend == "ray":
            from rlsched.common.ray_backend import connect

            connect(args.address, "--backend ray")
        elif args.address:
            raise ValueError("--address applies to --backend ray")
        else:
            _check_device(config)
        fingerprints = _fingerprints(agent_paths)
        if args.resume:
            _check_unchanged(Path(args.resume), config_to_toml(config), fingerprints)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as err:
        parser.error(str(err))
    if args.resume:
        run_dir = Path(args.resume)
    else:
        try:
            run_dir = new_run_dir(config.name, "compare", root=args.runs_dir)
        except RunDirError as err:
            parser.error(str(err))
        atomic_write_text(run_dir / "config.toml", config_to_toml(config))
        atomic_write_json(run_dir / "args.json", vars(args))
        record_start(run_dir, argv)
        atomic_write_json(run_dir / "inputs.json", fingerprints)
    try:
        journal = Journal(run_dir / JOURNAL)
    except ValueError as err:  # a symbolic link in the journal's place
        parser.error(str(err))
    if args.resume:
        record_resume(run_dir, argv)
    interrupt_on_sigterm()
    try:
        with removed_if_unstarted(run_dir, fresh=not args.resume, started=STARTED):
            comparison = run_comparison(config, agents, settings, journal=journal)
    except (KeyboardInterrupt, Interrupted):
        print(
            f"\ninterrupted: {len(journal)} finished episodes are saved in {journal.path}. Continue with:\n"
            f"  python -m rlsched.compare --resume {run_dir}",
            file=sys.stderr,
        )
        return 130
    except (ConfigError, DatasetError) as err:  # bad input found late, e.g. in an instance's config
        parser.error(str(err))
    print(write_results(comparison, run_dir))
    record_finish(run_dir, len(comparison.failures))
    print(f"results: {run_dir}")
    return 0
