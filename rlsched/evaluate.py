"""Score a trained policy on the held-out instances against what a user would run instead (the end of
``python -m rlsched.train``): its teacher rule (the rule it was cloned from, at the probe LR its training
searched), Schedule-Free AdamW at its defaults (the strongest zero-tuning alternative) and the constant
initial LR. ``heldout.json`` / ``heldout.md`` beside the model.

    python -m rlsched.evaluate runs/<id>/model.zip [--preset P] [--set SECTION.KEY=VALUE] [--workers N]
    python -m rlsched.evaluate pretrained --preset demo      # the shipped controller: a new runs/ folder
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from rlsched.agents.loading import check_compatible, load_policy
from rlsched.common.arguments import add_set_flag
from rlsched.common.files import (
    RunDirError,
    atomic_write_json,
    atomic_write_text,
    new_run_dir,
    removed_if_unstarted,
)
from rlsched.common.stats import DIFFERENCE, UNIT, clipped_note, mean_ci, paired_test
from rlsched.config import Config, ConfigError, config_from_dict, load_config, nest_overrides, parse_override
from rlsched.control.env import Instance, make_instances
from rlsched.control.rules import SCRIPTED_RULES
from rlsched.experiment.harness import Job
from rlsched.experiment.jobs import episodes, run_jobs
from rlsched.experiment.kinds import method_job
from rlsched.pretrained import read_provenance

TEACHER_FILE = "teacher.json"  # written by train's warm start: {"rule": ..., "lr": ...}
SCHEDULE_FREE = "schedulefree_adamw"


@dataclass(frozen=True)
class Row:
    """One method of the held-out table and how to make its job on an instance."""

    name: str  # key in heldout.json
    label: str  # what heldout.md calls it
    job: Callable[[Instance], Job]


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
    if rule not in SCRIPTED_RULES or not lr > 0:
        raise ValueError(
            f"{path}: rule {rule!r} at LR {lr!r} is no teacher this version knows; delete the file"
        )
    return rule, lr


def heldout_rows(
    config: Config, model_path: Path, teacher: tuple[str, float] | None, trust: bool = False
) -> list[Row]:
    """Learned first (``trust``: its workers load it with trust=True); the teacher rule only when known;
    Schedule-Free with the overrides it needs."""
    rows = [
        Row("learned", "learned policy", lambda i: Job("learned", "policy", str(model_path), i, trust=trust))
    ]
    if teacher is not None:
        rule, lr = teacher
        rows.append(
            Row(
                "rule",
                f"its teacher rule ({rule}, LR {lr:g}), no learning",
                lambda i: Job("rule", "scripted", rule, i, base_lr=lr),
            )
        )
    rows.append(
        Row(
            SCHEDULE_FREE,
            "Schedule-Free AdamW, its defaults",
            lambda i: method_job(config, "optimizer", SCHEDULE_FREE, SCHEDULE_FREE, i),
        )
    )
    rows.append(Row("constant", "constant initial LR", lambda i: Job("constant", "schedule", "constant", i)))
    return rows


def evaluate_heldout(
    model_path: str | Path,
    config: Config | None = None,
    workers: int = 1,
    out_dir: str | Path | None = None,
    teacher: tuple[str, float] | None = None,
    trust: bool = False,
) -> str:
    """Learned policy vs its teacher rule, Schedule-Free AdamW and the constant initial LR on every held-out
    instance; writes heldout.json/.md into ``out_dir`` (default: beside the model). ``teacher``: (rule, LR),
    default: the run directory's ``teacher.json``. ``trust``: load the policy with ``load_policy(trust=True)``.

    The headline and the paired tests are on test Dice (each instance's test split, scored once after the last
    step); the final validation Dice, which the policy observed and was rewarded on, stands beside it.
    """
    policy = load_policy(model_path, trust=trust)
    config = config or policy.config
    check_compatible(policy, config)
    teacher = teacher or read_teacher(policy.path)
    instances = make_instances(config, "heldout")
    rows = heldout_rows(config, policy.path, teacher, trust)
    jobs = [row.job(instance) for instance in instances for row in rows]
    tests: dict[str, list[float]] = {row.name: [] for row in rows}
    finals: dict[str, list[float]] = {row.name: [] for row in rows}
    diverged = {row.name: 0 for row in rows}
    with tqdm(total=len(jobs), desc="held-out evaluation", unit="episode") as bar:
        results = sorted(
            episodes(run_jobs(config, jobs, workers, on_result=lambda *_: bar.update())),
            key=lambda r: r.instance.index,
        )
    for result in results:
        tests[result.method].append(result.test_dice)
        finals[result.method].append(result.final_dice)
        diverged[result.method] += result.diverged
    summary: dict = {
        "instances": len(instances),
        "epochs_per_episode": config.env.epochs,
        "teacher": {"rule": teacher[0], "lr": teacher[1]} if teacher else None,
    }
    for row in rows:
        for kind, values in (("test_dice", tests[row.name]), ("final_dice", finals[row.name])):
            ci = mean_ci(values)
            summary.update(
                {
                    f"{row.name}_{kind}": values,
                    f"{row.name}_{kind}_mean": ci.mean,
                    f"{row.name}_{kind}_ci95": [ci.low, ci.high],
                }
            )
        summary[f"{row.name}_diverged"] = diverged[row.name]
    paired = {row.name: paired_test(tests["learned"], tests[row.name]) for row in rows[1:]}
    differences = {
        name: {
            "mean": test.mean_difference,
            "ci95": [test.ci.low, test.ci.high],
            "paired_t_pvalue": test.t_pvalue,
            "wilcoxon_pvalue": test.wilcoxon_pvalue,
        }
        for name, test in paired.items()
    }
    summary["learned_minus"] = differences
    constant = differences["constant"]  # the keys of earlier heldout.json files
    summary.update(
        {
            "test_difference_mean": constant["mean"],
            "test_difference_ci95": constant["ci95"],
            "paired_t_pvalue": constant["paired_t_pvalue"],
            "wilcoxon_pvalue": constant["wilcoxon_pvalue"],
        }
    )
    run_dir = Path(out_dir) if out_dir else policy.path.parent
    atomic_write_json(run_dir / "heldout.json", summary)
    lines = [
        f"Held-out evaluation of {policy.path.name}: {summary['instances']} instances, "
        f"{config.env.epochs} epochs each (preset {config.name}). Test Dice: each instance's test split, scored "
        "once after the last epoch; the policy observed and was rewarded on validation Dice.",
        "",
        "| method | test Dice (mean ± 95% CI) | final val Dice | diverged |",
        "|---|---|---|---|",
        *(
            f"| {row.label} | {mean_ci(tests[row.name]).text(bounds=UNIT)} "
            f"| {mean_ci(finals[row.name]).text(bounds=UNIT)} | {diverged[row.name]} |"
            for row in rows
        ),
        "",
        *(
            f"learned - {row.label}, test Dice: {t.mean_difference:+.3f} (95% CI {t.ci.span(DIFFERENCE)}, "
            f"paired t p={t.t_pvalue:.3g}, Wilcoxon p={t.wilcoxon_pvalue:.3g})"
            for row in rows[1:]
            for t in (paired[row.name],)
        ),
    ]
    note = clipped_note(
        [(mean_ci(v), UNIT) for v in (*tests.values(), *finals.values())]
        + [(t.ci, DIFFERENCE) for t in paired.values()],
        "evaluate on more held-out instances (--set env.heldout_instances=N)",
    )
    if note:
        lines += ["", note]
    if teacher is None:
        lines += [
            "",
            "No teacher row: the policy's run directory has no teacher.json (not cloned from a rule).",
        ]
    report = "\n".join(lines)
    atomic_write_text(run_dir / "heldout.md", report + "\n")
    return report


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
    except (ConfigError, ValueError, FileNotFoundError) as err:
        p.error(str(err))
    out = args.out
    fresh = out is None and read_provenance(policy.path) is not None  # the package folder is not written into
    if fresh:
        try:
            out = new_run_dir(config.name, "heldout", root=args.runs_dir)
        except RunDirError as err:
            p.error(str(err))
    with removed_if_unstarted(Path(out or policy.path.parent), fresh=fresh, started=()):
        report = evaluate_heldout(policy.path, config, args.workers, out, trust=args.trust_model)
    print(report)
    print(f"results: {Path(out) if out else policy.path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
