"""Score a trained policy on the held-out instances against what a user would run instead (the end of
``python -m rlsched.train``): its teacher rule (the rule it was cloned from, at the probe LR its training
searched), Schedule-Free AdamW at its defaults (the strongest zero-tuning alternative) and the constant
initial LR. ``heldout.json`` / ``heldout.md`` beside the model.

    python -m rlsched.evaluate runs/<id>/model.zip [--preset P] [--set SECTION.KEY=VALUE] [--workers N]
    python -m rlsched.evaluate pretrained --preset demo      # the shipped controller: a new runs/ folder
    python -m rlsched.evaluate pretrained --preset brain-folder --teacher-lr 1e-3   # with its teacher's row
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from rlsched.agents.loading import LoadedPolicy, check_compatible, load_policy
from rlsched.common.arguments import add_set_flag
from rlsched.common.files import (
    RunDirError,
    atomic_write_json,
    atomic_write_text,
    new_run_dir,
    removed_if_unstarted,
)
from rlsched.common.stats import mean_ci
from rlsched.compare.methods import (
    CONSTANT_INITIAL,
    Comparison,
    Method,
    Settings,
    agent_methods,
    recipe_method,
)
from rlsched.compare.report import csv_text, episode_rows, report
from rlsched.compare.summary import learned_minus_each, per_instance, summarize
from rlsched.config import Config, ConfigError, config_from_dict, load_config, nest_overrides, parse_override
from rlsched.control.env import Instance, make_instances
from rlsched.control.rules import SUGGESTED_RULE, parse_rule
from rlsched.experiment.harness import EpisodeResult
from rlsched.experiment.jobs import episodes, run_jobs
from rlsched.experiment.kinds import schedule, scripted
from rlsched.experiment.tuning import Tuning
from rlsched.experiment.warm_start import TEACHER_FILE
from rlsched.pretrained import read_provenance

SCHEDULE_FREE = "schedulefree_adamw"
NO_TUNING = Tuning(grid=(), instances=0, epochs=0, scores={})  # nothing is tuned for a held-out evaluation


def read_teacher(model_path: Path) -> tuple[str, float] | None:
    """The rule a policy was cloned from and its probe / target LR, from its run directory (None: not cloned,
    or a model from before this record)."""
    path = model_path.parent / TEACHER_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        rule, lr = str(saved["rule"]), float(saved["lr"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: unreadable ({err}); delete it to evaluate without the teacher row"
        ) from None
    try:
        parse_rule(rule)
        known = lr > 0
    except ValueError:
        known = False
    if not known:
        raise ValueError(
            f"{path}: rule {rule!r} at LR {lr!r} is no teacher this version knows; delete the file"
        )
    return rule, lr


def heldout_methods(
    config: Config, policy: LoadedPolicy, teacher: tuple[str, float] | None
) -> dict[str, Method]:
    """heldout.json key -> method: the learned policy first, its teacher rule only when known, Schedule-Free at
    its recipe, the constant initial LR."""
    methods = {"learned": agent_methods([policy], config)[0]}
    if teacher is not None:
        rule, lr = teacher
        methods["rule"] = Method(
            f"teacher rule ({rule})",
            scripted.KIND.name,
            rule,
            lr,
            needs="its LR, searched in the policy's training",
            accounting="counted in the learned policy's training epochs",
        )
    methods[SCHEDULE_FREE] = recipe_method(SCHEDULE_FREE)
    methods["constant"] = Method(CONSTANT_INITIAL, schedule.KIND.name, "constant")
    return methods


def run_heldout(
    config: Config, methods: dict[str, Method], instances: list[Instance], workers: int
) -> tuple[list[EpisodeResult], int]:
    """Every method's episode on every instance, and how many of the teacher rule's were the learned policy's.
    Why: a policy still cloned from its rule takes the rule's action in every state, and on a CPU the env is
    deterministic given the actions, so on those instances its episode *is* the rule's (``PolicyController.twin``
    checks every state); only the others train the rule again."""
    learned, rule = methods["learned"], methods.get("rule")
    twin = (rule.name, rule.arg, float(rule.base_lr)) if rule is not None and rule.base_lr else None
    first = [
        replace(job, twin=twin) if job.method == learned.name else job
        for key, m in methods.items()
        if key != "rule" or twin is None
        for i in instances
        for job in m.jobs(config, i)
    ]
    total = len(first) + (len(instances) if twin else 0)
    with tqdm(total=total, desc="held-out evaluation", unit="episode") as bar:
        results = episodes(run_jobs(config, first, workers, on_result=lambda *_: bar.update()))
        if rule is None or twin is None:
            return results, 0
        reused = [replace(r, method=rule.name, twins=()) for r in results if rule.name in r.twins]
        bar.update(len(reused))
        done = {r.instance for r in reused}
        rest = [job for i in instances if i not in done for job in rule.jobs(config, i)]
        results += reused + episodes(run_jobs(config, rest, workers, on_result=lambda *_: bar.update()))
    return results, len(reused)


def evaluate_heldout(
    model_path: str | Path,
    config: Config | None = None,
    workers: int = 1,
    out_dir: str | Path | None = None,
    teacher: tuple[str, float] | None = None,
    trust: bool = False,
) -> str:
    """Learned policy vs its teacher rule, Schedule-Free AdamW and the constant initial LR on every held-out
    instance; writes heldout.md (the comparison's report: one format for every held-out table), heldout.json and
    heldout_episodes.csv (every epoch of every run, as compare's episodes.csv) into ``out_dir`` (default: beside
    the model). ``teacher``: (rule, LR), default: the run directory's
    ``teacher.json``. ``trust``: load the policy with ``load_policy(trust=True)``.

    The headline and the paired tests are on test Dice (each instance's test split, scored once after the last
    step); the final validation Dice, which the policy observed and was rewarded on, stands beside it.
    """
    start = time.perf_counter()
    policy = load_policy(model_path, trust=trust)
    config = config or policy.config
    check_compatible(policy, config)
    teacher = teacher or read_teacher(policy.path)
    instances = make_instances(config, "heldout")
    methods = heldout_methods(config, policy, teacher)
    results, reused = run_heldout(config, methods, instances, workers)
    comparison = Comparison(
        config,
        Settings(workers=workers, robustness=()),
        list(methods.values()),
        NO_TUNING,
        instances,
        sorted(results, key=lambda r: r.instance.index),
        seconds=time.perf_counter() - start,
    )
    rows = {r["method"]: r for r in summarize(comparison)}
    tests = learned_minus_each(comparison)[methods["learned"].name]
    summary: dict = {
        "instances": len(instances),
        "epochs_per_episode": config.env.epochs,
        "teacher": {"rule": teacher[0], "lr": teacher[1]} if teacher else None,
        "methods": {key: m.name for key, m in methods.items()},
    }
    for key, method in methods.items():
        runs = [r for r in comparison.results if r.method == method.name]
        for metric in ("test_dice", "final_dice"):
            values = [float(v) for v in per_instance(runs, lambda r, metric=metric: getattr(r, metric))]
            ci = mean_ci(values)
            summary.update(
                {
                    f"{key}_{metric}": values,
                    f"{key}_{metric}_mean": ci.mean,
                    f"{key}_{metric}_ci95": [ci.low, ci.high],
                }
            )
        summary[f"{key}_diverged"] = rows[method.name]["diverged"]
        summary[f"{key}_stalled"] = rows[method.name]["stalled"]
    summary["learned_minus"] = {
        key: {
            "mean": t.mean_difference,
            "ci95": [t.ci.low, t.ci.high],
            "wins": t.wins,
            "losses": t.losses,
            "paired_t_pvalue": t.t_pvalue,
            "wilcoxon_pvalue": t.wilcoxon_pvalue,
        }
        for key, method in list(methods.items())[1:]
        for t in (tests[method.name],)
    }
    constant = summary["learned_minus"]["constant"]  # the keys of earlier heldout.json files
    summary.update(
        {
            "test_difference_mean": constant["mean"],
            "test_difference_ci95": constant["ci95"],
            "paired_t_pvalue": constant["paired_t_pvalue"],
            "wilcoxon_pvalue": constant["wilcoxon_pvalue"],
        }
    )
    run_dir = Path(out_dir) if out_dir else policy.path.parent
    summary["rule_episodes_reused"] = reused
    atomic_write_json(run_dir / "heldout.json", summary)
    atomic_write_text(run_dir / "heldout_episodes.csv", csv_text(episode_rows(comparison)))
    text = report(comparison, list(rows.values()))
    if reused:
        text += (
            f"\nThe teacher rule's episode on {reused} of {len(instances)} instances is the learned policy's: "
            "the policy took the rule's action in every state of it, so it was not trained again.\n"
        )
    if teacher is None:
        text += "\nNo teacher row: the policy's run directory has no teacher.json (not cloned from a rule).\n"
    atomic_write_text(run_dir / "heldout.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlsched.evaluate", description=__doc__.split("\n")[0])
    p.add_argument(
        "model",
        help="runs/<id>/model.zip (or model.pt, model.rllib), or 'pretrained' (the controller "
        "shipped in the package)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="preset name in envs/ or a .toml path (default: the config the policy trained on)",
    )
    add_set_flag(p, "env.heldout_instances=8")
    p.add_argument("--workers", type=int, default=1, help="episode worker processes (default: %(default)s)")
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="folder for heldout.json/.md (default: beside the model; the shipped controller, whose "
        "folder belongs to the package: a new <runs-dir>/<preset>__heldout__<time>/)",
    )
    p.add_argument(
        "--teacher-lr",
        type=float,
        default=None,
        metavar="LR",
        help="add the --teacher rule with this probe LR as the teacher row (default: the run directory's "
        "teacher.json; the shipped controller has none)",
    )
    p.add_argument(
        "--teacher",
        default=None,
        metavar="RULE",
        help="with --teacher-lr: suggested (default), scripted, or offset:<decades> (the suggestion x 10**it)",
    )
    p.add_argument("--runs-dir", default="runs")
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="allow loading the model by unpickling (SB3's full load, RLlib checkpoints), which can run "
        "any code: only for a model from a source you trust (default: weights and plain data only)",
    )
    args = p.parse_args(argv)
    try:
        policy = load_policy(args.model, trust=args.trust_model)
        overrides = dict(parse_override(o) for o in args.set)
        config = (
            load_config(args.preset, overrides)
            if args.preset
            else config_from_dict(nest_overrides(overrides), policy.config, source="overrides")
        )
        check_compatible(policy, config)
        parse_rule(args.teacher or SUGGESTED_RULE)
        if args.teacher is not None and args.teacher_lr is None:
            raise ValueError(f"--teacher {args.teacher}: the rule's row needs its probe LR: add --teacher-lr")
        if args.teacher_lr is not None and not config.env.lr_min <= args.teacher_lr <= config.env.lr_max:
            raise ValueError(
                f"--teacher-lr {args.teacher_lr:g}: outside the env's LR range "
                f"[{config.env.lr_min:g}, {config.env.lr_max:g}]"
            )
    except (ConfigError, ValueError, FileNotFoundError) as err:
        p.error(str(err))
    teacher = (args.teacher or SUGGESTED_RULE, args.teacher_lr) if args.teacher_lr is not None else None
    out = args.out
    fresh = out is None and read_provenance(policy.path) is not None  # the package folder is not written into
    if fresh:
        try:
            out = new_run_dir(config.name, "heldout", root=args.runs_dir)
        except RunDirError as err:
            p.error(str(err))
    with removed_if_unstarted(Path(out or policy.path.parent), fresh=fresh, started=()):
        report = evaluate_heldout(policy.path, config, args.workers, out, teacher, trust=args.trust_model)
    print(report)
    print(f"results: {Path(out) if out else policy.path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
