"""Score a trained policy on the held-out instances against the constant initial-LR baseline (the end of
``python -m rlsched.train``): ``heldout.json`` / ``heldout.md`` beside the model.

    python -m rlsched.evaluate runs/<id>/model.zip [--preset P] [--set SECTION.KEY=VALUE] [--workers N]
    python -m rlsched.evaluate pretrained --preset demo      # the shipped controller: a new runs/ folder
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from .config import Config, ConfigError, config_from_dict, load_config, nest_overrides, parse_override
from .env import make_instances
from .harness import Job
from .jobs import episodes, run_jobs
from .policy import check_compatible, load_policy
from .pretrained import read_provenance
from .runs import atomic_write_json, atomic_write_text, new_run_dir
from .stats import mean_ci, paired_test


def evaluate_heldout(model_path: str | Path, config: Config | None = None, workers: int = 1,
                     out_dir: str | Path | None = None) -> str:
    """Learned policy vs constant initial LR on every held-out instance; writes heldout.json/.md into
    ``out_dir`` (default: beside the model).

    The headline and the paired test are on test Dice (each instance's test split, scored once after the last
    step); the final validation Dice, which the policy observed and was rewarded on, stands beside it.
    """
    policy = load_policy(model_path)
    config = config or policy.config
    check_compatible(policy, config)
    instances = make_instances(config, "heldout")
    jobs = [Job(name, kind, arg, instance) for instance in instances
            for name, kind, arg in (("learned", "policy", str(policy.path)), ("constant", "schedule", "constant"))]
    names = ("learned", "constant")
    tests: dict[str, list[float]] = {name: [] for name in names}
    finals: dict[str, list[float]] = {name: [] for name in names}
    diverged = {name: 0 for name in names}
    with tqdm(total=len(jobs), desc="held-out evaluation", unit="episode") as bar:
        for result in episodes(run_jobs(config, jobs, workers, on_result=lambda *_: bar.update())):
            tests[result.method].append(result.test_dice)
            finals[result.method].append(result.final_dice)
            diverged[result.method] += result.diverged
    test = paired_test(tests["learned"], tests["constant"])
    summary = {"instances": len(instances), "epochs_per_episode": config.env.epochs}
    for name in names:
        for kind, values in (("test_dice", tests[name]), ("final_dice", finals[name])):
            ci = mean_ci(values)
            summary.update({f"{name}_{kind}": values, f"{name}_{kind}_mean": ci.mean,
                            f"{name}_{kind}_ci95": [ci.low, ci.high]})
        summary[f"{name}_diverged"] = diverged[name]
    summary.update({"test_difference_mean": test.mean_difference, "test_difference_ci95": [test.ci.low, test.ci.high],
                    "paired_t_pvalue": test.t_pvalue, "wilcoxon_pvalue": test.wilcoxon_pvalue})
    run_dir = Path(out_dir) if out_dir else policy.path.parent
    atomic_write_json(run_dir / "heldout.json", summary)
    lines = [
        f"Held-out evaluation of {policy.path.name}: {summary['instances']} instances, "
        f"{config.env.epochs} epochs each (preset {config.name}). Test Dice: each instance's test split, scored "
        "once after the last epoch; the policy observed and was rewarded on validation Dice.",
        "",
        "| method | test Dice (mean ± 95% CI) | final val Dice | diverged |",
        "|---|---|---|---|",
        *(f"| {label} | {mean_ci(tests[name])} | {mean_ci(finals[name])} | {diverged[name]} |"
          for name, label in (("learned", "learned policy"), ("constant", "constant initial LR"))),
        "",
        f"learned - constant, test Dice: {test.mean_difference:+.3f} (95% CI {test.ci.low:+.3f} .. "
        f"{test.ci.high:+.3f}, paired t p={test.t_pvalue:.3g}, Wilcoxon p={test.wilcoxon_pvalue:.3g})",
    ]
    report = "\n".join(lines)
    atomic_write_text(run_dir / "heldout.md", report + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlsched.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("model", help="runs/<id>/model.zip (or model.pt, model.rllib), or 'pretrained' (the controller "
                                 "shipped in the package)")
    p.add_argument("--preset", default=None,
                   help="preset name in envs/ or a .toml path (default: the config the policy trained on)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a preset value, e.g. --set env.heldout_instances=8 (repeatable)")
    p.add_argument("--workers", type=int, default=1, help="episode worker processes (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for heldout.json/.md (default: beside the model; the shipped controller, whose "
                        "folder belongs to the package: a new <runs-dir>/<preset>__heldout__<time>/)")
    p.add_argument("--runs-dir", default="runs")
    args = p.parse_args(argv)
    try:
        policy = load_policy(args.model)
        overrides = dict(parse_override(o) for o in args.set)
        config = (load_config(args.preset, overrides) if args.preset else
                  config_from_dict(nest_overrides(overrides), policy.config, source="overrides"))
        check_compatible(policy, config)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        p.error(str(err))
    out = args.out
    if out is None and read_provenance(policy.path) is not None:
        out = new_run_dir(config.name, "heldout", root=args.runs_dir)
    print(evaluate_heldout(policy.path, config, args.workers, out))
    print(f"results: {Path(out) if out else policy.path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
