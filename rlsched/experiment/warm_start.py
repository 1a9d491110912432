"""The SB3 agent's warm start (``python -m rlsched.train``, on by default): tune the teacher rule on train
instances, clone it into the fresh policy, and optionally improve the clone from branched rollouts. Its own module
because it is the one part of training that runs harness jobs (the teacher's search) before PPO starts."""

from __future__ import annotations

import argparse
from pathlib import Path

from stable_baselines3 import PPO

from rlsched.agents.branched import improve_from_branches
from rlsched.agents.episodes import harness_record
from rlsched.agents.teacher import behaviour_clone
from rlsched.common.files import append_jsonl, atomic_write_json
from rlsched.config import Config
from rlsched.control.rules import ScriptedRule
from rlsched.experiment.tuning import search_target

TEACHER_FILE = "teacher.json"  # the rule cloned, {"rule": rule_arg, "lr": ...}: the held-out table's rule row


def warm_start(model: PPO, run_dir: Path, args: argparse.Namespace, config: Config) -> None:
    """Clone the ``--teacher`` rule into ``model``'s fresh policy, its probe / target LR (and the offset rule's
    offset) searched on train instances unless given, then ``--branch-episodes`` of branched improvement. Every
    episode this costs lands in the run's episodes.jsonl: it is training compute."""
    name, target, searched = search_target(
        config,
        args.teacher_search_instances,
        args.n_envs,
        args.teacher,
        tuple(args.teacher_offsets),
        args.teacher_lr,
    )
    if searched:
        append_jsonl(run_dir / "episodes.jsonl", [harness_record(r, "teacher-search") for r in searched])
        print(f"teacher {name} at LR {target:g}, searched with {len(searched)} episodes on train instances")
    rule = ScriptedRule.named(config.env, name, target)
    atomic_write_json(run_dir / TEACHER_FILE, {"rule": name, "lr": target})
    stats = behaviour_clone(model, rule, args.bc_episodes, explore=args.bc_explore, seed=args.seed)
    print(
        f"behaviour cloning of the {name} rule (LR {target:g}): "
        f"{args.bc_episodes * args.n_envs} episodes, accuracy {stats['bc/accuracy']:.2f}"
    )
    if not args.branch_episodes:
        return
    try:
        summary = improve_from_branches(
            model,
            config,
            rule,
            run_dir / "episodes.jsonl",
            args.branch_episodes,
            args.branch_states,
            tuple(args.branch_offsets),
            args.branch_margin,
            args.n_envs,
            args.seed,
            args.branch_hold,
            args.branch_pool,
            args.branch_at,
        )
    except ValueError as err:
        raise SystemExit(f"error: --branch-offsets: {err}") from None
    print(summary)
