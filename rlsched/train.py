"""Learn an LR schedule: ``python -m rlsched.train [--preset demo] [--algo sb3|reference] [--resume RUN]``.

``--backend rllib --num-env-runners N [--address ADDR]`` trains RLlib PPO with N Ray env runners instead
(``pip install -e ".[ray]"``); see ``rlsched/agents/rllib.py`` for its run directory.

Writes ``runs/<preset>__ppo-<algo>__s<seed>__<time>/``: ``config.toml`` and ``args.json`` (what ran),
``tb/`` (TensorBoard: PPO diagnostics and per-episode final Dice, LR trajectory, penalties),
``episodes.jsonl`` (every training episode), ``checkpoints/`` (after every update: the parts, then the
manifest ``last.json`` naming them, see ``rlsched/common/checkpoint.py``), ``model.zip`` (SB3) or ``model.pt``
(reference PPO), ``teacher.json`` (the rule it was cloned from), and ``heldout.json`` / ``heldout.md``: the
learned policy against its teacher rule, Schedule-Free AdamW and the constant initial LR on the held-out
instances (``rlsched.evaluate``).
Ctrl-C or SIGTERM saves a checkpoint and exits; ``--resume runs/<id>`` continues from the last complete one
(or, with none, starts over and says why); the episode records of the training it repeats move from
``episodes.jsonl`` to ``episodes.discarded.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rlsched.agents.branched import BRANCH_AT
from rlsched.agents.sb3 import PPOSettings
from rlsched.common.arguments import Parser, add_set_flag, given_flags, ranged
from rlsched.common.checkpoint import MANIFEST, Checkpoint, load_checkpoint, save_checkpoint
from rlsched.common.files import (
    Interrupted,
    RunDirError,
    atomic_write_json,
    atomic_write_text,
    interrupt_on_sigterm,
    new_run_dir,
    refuse_links,
    removed_if_unstarted,
)
from rlsched.config import Config, ConfigError, config_to_toml, load_config, parse_override
from rlsched.control.interface import STALL_DICE, STALL_EPOCHS
from rlsched.control.rules import OFFSET_RULE, SCRIPTED_RULES
from rlsched.seg.dataset import DatasetError
from rlsched.seg.sources import check_dataset

ALGOS = ("sb3", "reference")
BACKENDS = ("sb3", "rllib")  # sb3: local processes (--algo picks the agent); rllib: RLlib PPO on Ray
DISCARDED = "episodes.discarded.jsonl"  # episode records of training a resume threw away (see _resume_point)


# PPO rollouts when --total-timesteps is not given, the cloned rule's episodes among them: sized so the main
# command (demo, 2 cores) stays within its time budget; --total-timesteps trains longer
DEFAULT_ROLLOUTS = 8
RESUMABLE = ("resume", "total_timesteps", "no_eval")  # what a resumed run takes from its command line
TEACHER_FLAGS = ("teacher", "teacher_lr", "teacher_offsets", "teacher_search_instances", "bc_explore")
BRANCH_FLAGS = (
    "branch_episodes",
    "branch_states",
    "branch_offsets",
    "branch_margin",
    "branch_hold",
    "branch_pool",
    "branch_at",
)
BRANCH_HELP = (
    "after cloning, this many branched episodes of the rule on train instances: in --branch-states states each, "
    "every --branch-offsets offset (log10 LR) is tried for one slice and the rule ends the run (--branch-hold: "
    "the offset is held to the end), and the policy is cloned again onto the best one where it beats the rule's "
    "by > --branch-margin (rlsched.agents.branched)"
)
OFFSETS_HELP = "offset rule: the offsets (decades from the suggestion) its search tries on train instances"
STARTED = ("config.toml", "args.json", "tb")  # what a start writes before its first episode (see main)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags, each checked against its range here: a bad value would otherwise crash the run after its
    episodes ran (--n-epochs 0), or train nonsense without a word (--gamma 2, --total-timesteps -5)."""
    p = Parser(prog="python -m rlsched.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="demo", help="preset name in envs/ or a .toml path (default: demo)")
    add_set_flag(p)
    p.add_argument(
        "--algo", choices=ALGOS, default="sb3", help="sb3 (Stable-Baselines3 PPO) or reference PPO"
    )
    p.add_argument(
        "--n-envs", type=ranged(int, 1), default=2, help="parallel env workers (subprocesses when > 1)"
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="sb3",
        help="sb3: local env processes; rllib: RLlib PPO with Ray env runners (needs the ray extra)",
    )
    p.add_argument(
        "--num-env-runners", type=ranged(int, 0), default=2, help="rllib: Ray env runners (0 = in the driver)"
    )
    p.add_argument(
        "--num-gpus-per-env-runner", type=ranged(float, 0), default=0.0, help="rllib: GPU per runner"
    )
    p.add_argument("--address", default=None, help="rllib: Ray cluster address (default: start a local Ray)")
    p.add_argument(
        "--total-timesteps",
        type=ranged(int, 0),
        default=0,
        help=f"env steps (= training slices) to train for; 0 = {DEFAULT_ROLLOUTS} rollouts",
    )
    p.add_argument("--seed", type=ranged(int, 0, 2**32 - 1), default=0)
    defaults = PPOSettings()
    p.add_argument("--episodes-per-rollout", type=ranged(int, 1), default=defaults.episodes_per_rollout)
    p.add_argument(
        "--batch-size", type=ranged(int, 0), default=defaults.batch_size, help="0 = half a rollout"
    )
    p.add_argument("--n-epochs", type=ranged(int, 1), default=defaults.n_epochs)
    p.add_argument("--learning-rate", type=ranged(float, 0, above=True), default=defaults.learning_rate)
    p.add_argument("--gamma", type=ranged(float, 0, 1), default=defaults.gamma)
    p.add_argument("--gae-lambda", type=ranged(float, 0, 1), default=defaults.gae_lambda)
    p.add_argument("--clip-range", type=ranged(float, 0, above=True), default=defaults.clip_range)
    p.add_argument(
        "--ent-coef",
        type=ranged(float, 0),
        default=None,
        help=f"entropy bonus (default: 0 after the warm start, whose clone already spreads its actions: "
        f"a bonus drags the cloned policy towards uniform over every offset; else "
        f"{defaults.ent_coef})",
    )
    p.add_argument(
        "--bc-episodes",
        type=ranged(int, 0),
        default=None,
        help="sb3: first clone a scripted rule (--teacher) from this many episodes per env "
        "(default: 4 with --algo sb3 --backend sb3, else 0; 0 = PPO from a uniform policy)",
    )
    p.add_argument(
        "--bc-explore",
        type=ranged(float, 0, 1),
        default=0.0,
        help="probability that a warm-start step takes a random action, still labelled with the rule's "
        "(so the clone learns what the rule does off its path, e.g. after an undone epoch)",
    )
    p.add_argument(
        "--teacher",
        choices=SCRIPTED_RULES,
        default=OFFSET_RULE,
        help="the rule to clone: scripted (steer towards --teacher-lr and hold), suggested (the first "
        "slice at --teacher-lr, then steer towards the LR its update size suggests) or offset (the same, "
        "to the suggestion x 10**the best --teacher-offsets)",
    )
    p.add_argument(
        "--teacher-offsets",
        type=ranged(float, -6, 6),
        nargs="+",
        default=[-1.0, -0.5, 0.0, 0.5],
        help=OFFSETS_HELP,
    )
    p.add_argument(
        "--teacher-lr",
        type=ranged(float, 0, above=True),
        default=None,
        help="the rule's target (scripted) or first-slice LR (suggested) "
        "(default: grid-searched on --teacher-search-instances train instances)",
    )
    p.add_argument(
        "--teacher-search-instances",
        type=ranged(int, 1),
        default=4,
        help="train instances of the teacher's target-LR search (its epochs count as training)",
    )
    p.add_argument("--branch-episodes", type=ranged(int, 0), default=0, help=BRANCH_HELP)
    p.add_argument("--branch-states", type=ranged(int, 1), default=3, help="branched states per episode")
    p.add_argument("--branch-offsets", type=float, nargs="+", default=[-2.0, -1.0, -0.5, 0.5], help="tried")
    p.add_argument("--branch-margin", type=ranged(float, 0), default=0.01, help="Dice margin")
    p.add_argument("--branch-hold", action="store_true", help="hold a tried offset to the run's end")
    p.add_argument(
        "--branch-pool",
        action="store_true",
        help="label from a ridge model of the branches' advantages over every state, not each state's own argmax",
    )
    p.add_argument(
        "--branch-at",
        choices=BRANCH_AT,
        default="random",
        help="where to branch: --branch-states random states; the first --branch-states where the run sat at "
        f"validation Dice < {STALL_DICE:g} for {STALL_EPOCHS} epochs; or the state after the first slice, where the "
        "suggestion is known",
    )
    p.add_argument(
        "--no-normalize-obs",
        dest="normalize_obs",
        action="store_false",
        help="sb3: train on raw observations (default: VecNormalize, statistics saved with the model)",
    )
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint, with the flags it started "
        "with (only --total-timesteps and --no-eval may be given with it)",
    )
    args = p.parse_args(argv)
    if args.resume:
        _check_resume_flags(p, argv, Path(args.resume))
    if args.bc_episodes is None:
        args.bc_episodes = 4 if (args.algo, args.backend) == ("sb3", "sb3") else 0
    if args.ent_coef is None:
        args.ent_coef = 0.0 if args.bc_episodes else defaults.ent_coef
    if args.bc_episodes and (args.backend != "sb3" or args.algo != "sb3"):
        p.error("--bc-episodes warm-starts the SB3 agent: drop it, or use --algo sb3 --backend sb3")
    if args.backend == "rllib":
        if args.algo != "sb3":
            p.error(f"--algo {args.algo} runs locally; drop --backend rllib")
        from rlsched.common.ray_backend import require_ray

        try:
            require_ray("--backend rllib")
        except ImportError as err:
            p.error(str(err))
    if not args.resume:  # a resumed run's flags are its own (checked above)
        _refuse_ignored(p, args, given_flags(p, argv))
    return args


def _refuse_ignored(parser: argparse.ArgumentParser, args: argparse.Namespace, given: set[str]) -> None:
    """Flags of a part this run does not have were silently ignored: refuse them, saying what they need."""
    needs = {}
    if args.backend != "rllib":
        needs |= dict.fromkeys(("num_env_runners", "num_gpus_per_env_runner", "address"), "--backend rllib")
    else:
        needs["n_envs"] = "--backend sb3 (RLlib's workers are --num-env-runners)"
    if not args.bc_episodes:
        needs |= dict.fromkeys(
            (*TEACHER_FLAGS, *BRANCH_FLAGS),
            "the warm start, which is off: --bc-episodes N with --algo sb3 --backend sb3",
        )
    elif args.teacher != OFFSET_RULE:
        needs["teacher_offsets"] = "--teacher offset"
    if (args.algo, args.backend) != ("sb3", "sb3"):
        needs["normalize_obs"] = "--algo sb3 --backend sb3 (the other agents train on raw observations)"
    flag = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    ignored = [f"{flag[dest]} (needs {need})" for dest, need in needs.items() if dest in given]
    if ignored:
        parser.error(
            f"flags that would do nothing in this run: {'; '.join(ignored)}; drop them or add what they need"
        )


def _check_resume_flags(parser: argparse.ArgumentParser, argv: list[str] | None, run_dir: Path) -> None:
    """A resumed run trains on with the flags saved in its args.json: a flag given with --resume that differs
    from them is refused, naming it, rather than ignored (options added since the run started, absent from its
    args.json, do apply)."""
    saved_file = run_dir / "args.json"
    if not saved_file.is_file():
        return  # _open_run says that this is not a training run
    saved = json.loads(saved_file.read_text())
    given = parser.parse_args(argv)
    changed = [
        f"--{dest.replace('_', '-')} {getattr(given, dest)!r} (the run used {saved[dest]!r})"
        for dest in sorted(given_flags(parser, argv) - set(RESUMABLE))
        if dest in saved and getattr(given, dest) != saved[dest]
    ]
    if changed:
        parser.error(
            f"--resume {run_dir} continues the run with the flags it started with; these differ: "
            f"{', '.join(changed)}. Drop them (only --total-timesteps and --no-eval change a "
            "resumed run), or start a new run to change them"
        )


def n_workers(args: argparse.Namespace) -> int:
    """Parallel envs of the run: env processes, or Ray env runners (0 runners: one env in the driver)."""
    return max(1, args.num_env_runners) if args.backend == "rllib" else args.n_envs


def settings_from(args: argparse.Namespace) -> PPOSettings:
    return PPOSettings(
        episodes_per_rollout=args.episodes_per_rollout,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        learning_rate=args.learning_rate,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        clip_range=args.clip_range,
        ent_coef=args.ent_coef,
        normalize_obs=args.normalize_obs,
    )


def _open_run(args: argparse.Namespace) -> tuple[Path, argparse.Namespace, Config]:
    """A new run directory, or the one to resume with the arguments and config it was started with."""
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "args.json").is_file() or not (run_dir / "config.toml").is_file():
            raise SystemExit(
                f"--resume {run_dir}: not a training run (no args.json/config.toml there); "
                "pass a folder made by python -m rlsched.train"
            )
        # Options added since the run started (absent from its args.json) take their defaults; an explicit
        # --total-timesteps extends (or shortens) the run, also one that already finished.
        saved = argparse.Namespace(**{**vars(args), **json.loads((run_dir / "args.json").read_text())})
        saved.resume, saved.no_eval = str(run_dir), args.no_eval
        if args.total_timesteps:
            saved.total_timesteps = args.total_timesteps
            atomic_write_json(run_dir / "args.json", {k: v for k, v in vars(saved).items() if k != "resume"})
        config = load_config(run_dir / "config.toml")
        return run_dir, saved, config
    try:
        config = load_config(args.preset, dict(parse_override(o) for o in args.set))
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if args.bc_episodes and config.env.action == "continuous":
        raise SystemExit(
            "error: the scripted rules the warm start clones pick discrete, absolute or residual "
            "actions, and env.action is 'continuous': pass --bc-episodes 0 (PPO from a uniform policy)"
        )
    settings = settings_from(args)
    try:
        minibatch = settings.minibatch(config, n_workers(args))  # fail now, not after the workers started
        if minibatch < 2 and args.backend == "sb3":  # SB3 (it asserts) and reference PPO: per minibatch
            rollout = settings.n_steps(config) * n_workers(args)
            raise ValueError(
                f"a minibatch of 1 step cannot normalise its advantages (the rollout has "
                f"{rollout} steps): pass a --batch-size >= 2 that divides the rollout, or raise "
                "--episodes-per-rollout or --n-envs"
            )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    try:
        check_dataset(config.data)  # here, in one line, rather than as a traceback from every env worker
        if args.backend == "sb3":  # local env processes train on this machine (Ray's runners may have GPUs)
            from rlsched.seg.trainer import resolve_device

            resolve_device(config.optim.device)
    except (ConfigError, DatasetError, ImportError, RuntimeError) as err:  # no brain extra; no such device
        raise SystemExit(f"error: {err}") from None
    if not args.total_timesteps:
        args.total_timesteps = DEFAULT_ROLLOUTS * settings.n_steps(config) * n_workers(args)
    agent = "rllib" if args.backend == "rllib" else args.algo
    try:
        run_dir = new_run_dir(config.name, f"ppo-{agent}", f"s{args.seed}", root=args.runs_dir)
    except RunDirError as err:
        raise SystemExit(f"error: {err}") from None
    atomic_write_text(run_dir / "config.toml", config_to_toml(config))
    atomic_write_json(run_dir / "args.json", {k: v for k, v in vars(args).items() if k != "resume"})
    return run_dir, args, config


def train_sb3(run_dir: Path, args: argparse.Namespace, config: Config) -> Path:
    from rlsched.agents.episodes import EpisodeLog
    from rlsched.agents.normalize import ObsNorm
    from rlsched.agents.sb3 import RunCallback, build_ppo, make_vec, save_atomic
    from rlsched.agents.sb3_safe import load_resumable

    settings = settings_from(args)
    episodes = EpisodeLog(run_dir / "episodes.jsonl")
    checkpoint = _resume_point(run_dir, episodes) if args.resume else None
    parts = checkpoint.parts if checkpoint else {}
    norm = ObsNorm.load(parts["obs_norm"]) if "obs_norm" in parts else None
    env = make_vec(config, args.n_envs, run_dir / "episodes.jsonl", settings.normalize_obs, norm)
    if checkpoint:
        model = load_resumable(parts["model"], env, settings.clip_range, str(run_dir / "tb"))  # no unpickling
        model.set_random_seed(args.seed + model.num_timesteps)  # seeds the vector env too, not only torch
    else:
        model = build_ppo(config, settings, env, args.seed, run_dir / "tb")
        if args.bc_episodes:
            from rlsched.experiment.warm_start import warm_start

            warm_start(model, run_dir, args, config)
    callback = RunCallback(run_dir, episodes)
    remaining = max(0, args.total_timesteps - model.num_timesteps)
    print(
        f"training SB3 PPO for {remaining} env steps ({model.num_timesteps} done) with {args.n_envs} env(s)"
    )
    try:
        model.learn(
            remaining,
            callback=callback,
            reset_num_timesteps=model.num_timesteps == 0,
            tb_log_name="ppo",
            progress_bar=True,
        )
    except (KeyboardInterrupt, Interrupted):
        callback.checkpoint()
        _close_quietly(env)
        raise
    callback.checkpoint()
    save_atomic(model, run_dir / "model.zip", config.env)
    env.close()
    return run_dir / "model.zip"


def train_reference(run_dir: Path, args: argparse.Namespace, config: Config) -> Path:
    import gymnasium as gym
    from torch.utils.tensorboard import SummaryWriter

    from rlsched.agents.episodes import EpisodeLog
    from rlsched.agents.policy_meta import write_meta
    from rlsched.agents.ppo import PPOConfig, ReferencePPO
    from rlsched.agents.workers import env_factory, start_method

    settings = settings_from(args)
    factories = [
        env_factory(config, i, run_dir / "episodes.jsonl", in_worker=args.n_envs > 1, n_workers=args.n_envs)
        for i in range(args.n_envs)
    ]
    envs = (
        gym.vector.AsyncVectorEnv(factories, context=start_method())
        if args.n_envs > 1
        else gym.vector.SyncVectorEnv(factories)
    )
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    writer = SummaryWriter(str(run_dir / "tb" / "reference"))
    episodes = EpisodeLog(run_dir / "episodes.jsonl")

    def log(stats: dict[str, float], step: int) -> None:
        for key, value in {**{f"train/{k}": v for k, v in stats.items()}, **episodes.new_means()}.items():
            writer.add_scalar(key, value, step)
        writer.flush()

    checkpoint = _resume_point(run_dir, episodes) if args.resume else None
    if checkpoint:
        agent = ReferencePPO.load(checkpoint.parts["model"], envs=envs, log_fn=log)
    else:
        ppo_config = PPOConfig(
            n_steps=settings.n_steps(config),
            batch_size=settings.minibatch(config, args.n_envs),
            n_epochs=settings.n_epochs,
            learning_rate=settings.learning_rate,
            gamma=settings.gamma,
            gae_lambda=settings.gae_lambda,
            clip_range=settings.clip_range,
            ent_coef=settings.ent_coef,
            vf_coef=settings.vf_coef,
            max_grad_norm=settings.max_grad_norm,
            hidden=settings.hidden,
        )
        agent = ReferencePPO(envs, ppo_config, seed=args.seed, log_fn=log)
    bar = tqdm(total=args.total_timesteps, initial=agent.num_timesteps, desc="reference PPO", unit="step")

    def save() -> None:
        def write(prefix: Path) -> dict[str, Path]:
            agent.save(prefix.with_suffix(".pt"))
            return {"model": prefix.with_suffix(".pt")}

        save_checkpoint(run_dir / "checkpoints", write, agent.num_timesteps, episodes.count())

    def after_update(agent: ReferencePPO) -> bool:
        save()
        bar.update(agent.num_timesteps - bar.n)
        return True

    print(
        f"training reference PPO for {args.total_timesteps - agent.num_timesteps} env steps "
        f"with {args.n_envs} env(s)"
    )
    try:
        agent.learn(args.total_timesteps, callback=after_update)
    except (KeyboardInterrupt, Interrupted):
        save()
        _close_quietly(envs)
        raise
    finally:
        bar.close()
        writer.close()
    write_meta(run_dir / "model.pt", config.env, normalize_obs=False)
    agent.save(run_dir / "model.pt")
    envs.close()
    return run_dir / "model.pt"


def _resume_point(run_dir: Path, episodes: Any) -> Checkpoint | None:
    """The complete checkpoint ``--resume`` continues from; ``None`` (training starts over, saying why) when
    there is none. Episodes recorded after those the checkpoint accounts for (all of them when starting over)
    belong to training the kill threw away and that runs again: they move to ``episodes.discarded.jsonl``, so
    episodes.jsonl counts each epoch of the policy's training once and no record is lost."""
    checkpoint, problem = load_checkpoint(run_dir / "checkpoints")
    if problem:
        print(f"{problem}; no complete checkpoint to continue from: training starts over")
    moved = episodes.set_aside(checkpoint.episodes if checkpoint else 0, run_dir / DISCARDED)
    if moved:
        print(f"moved {moved} episode record(s) of discarded training from episodes.jsonl to {DISCARDED}")
    return checkpoint


def _refuse_links(run_dir: Path) -> None:
    """A resumed run appends to its files: refuse a symbolic link that would send writes out of the run."""
    try:
        refuse_links(run_dir, "episodes.jsonl", DISCARDED, "progress.jsonl", f"checkpoints/{MANIFEST}")
    except ValueError as err:
        raise SystemExit(f"error: --resume {run_dir}: {err}") from None


def _close_quietly(env: Any) -> None:
    try:
        env.close()
    except Exception:  # workers may already be gone after Ctrl-C; the checkpoint is what matters
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir, args, config = _open_run(args)
    if args.resume:
        _refuse_links(run_dir)
    interrupt_on_sigterm()
    start = time.perf_counter()
    try:
        with removed_if_unstarted(run_dir, fresh=not args.resume, started=STARTED):
            if args.backend == "rllib":
                from rlsched.agents.rllib import train_rllib

                model_path = train_rllib(run_dir, args, config, settings_from(args))
            else:
                model_path = (train_sb3 if args.algo == "sb3" else train_reference)(run_dir, args, config)
    except (KeyboardInterrupt, Interrupted):
        print(
            f"\ninterrupted: checkpoint saved. Continue with:\n  python -m rlsched.train --resume {run_dir}"
        )
        return 130
    except (ConfigError, DatasetError) as err:  # bad input found late, e.g. in an env's instance config
        raise SystemExit(f"error: {err}") from None
    print(f"trained in {time.perf_counter() - start:.0f} s; policy: {model_path}")
    if not args.no_eval:
        from rlsched.evaluate import evaluate_heldout

        # trust: the model this process just wrote (an RLlib one loads no other way)
        report = evaluate_heldout(model_path, config, workers=n_workers(args), trust=True)
        print(report)
    print(f"results: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
