"""Score a trained policy on the held-out instances against the constant initial-LR baseline (the end of
``python -m rlsched.train``): ``heldout.json`` / ``heldout.md`` beside the model."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from .config import Config
from .env import make_instances
from .harness import Job
from .jobs import episodes, run_jobs
from .policy import check_compatible, load_policy
from .runs import atomic_write_json, atomic_write_text
from .stats import mean_ci, paired_test


def evaluate_heldout(model_path: str | Path, config: Config | None = None, workers: int = 1) -> str:
    """Learned policy vs constant initial LR on every held-out instance; writes heldout.json/.md beside it."""
    policy = load_policy(model_path)
    config = config or policy.config
    check_compatible(policy, config)
    instances = make_instances(config.env, "heldout")
    jobs = [Job(name, kind, arg, instance) for instance in instances
            for name, kind, arg in (("learned", "policy", str(model_path)), ("constant", "schedule", "constant"))]
    finals: dict[str, list[float]] = {"learned": [], "constant": []}
    diverged = {"learned": 0, "constant": 0}
    with tqdm(total=len(jobs), desc="held-out evaluation", unit="episode") as bar:
        for result in episodes(run_jobs(config, jobs, workers, on_result=lambda *_: bar.update())):
            finals[result.method].append(result.final_dice)
            diverged[result.method] += result.diverged
    test = paired_test(finals["learned"], finals["constant"])
    summary = {
        "instances": len(instances), "epochs_per_episode": config.env.epochs,
        **{f"{name}_final_dice": values for name, values in finals.items()},
        **{f"{name}_mean": mean_ci(values).mean for name, values in finals.items()},
        **{f"{name}_ci95": [mean_ci(values).low, mean_ci(values).high] for name, values in finals.items()},
        **{f"{name}_diverged": count for name, count in diverged.items()},
        "difference_mean": test.mean_difference, "difference_ci95": [test.ci.low, test.ci.high],
        "paired_t_pvalue": test.t_pvalue, "wilcoxon_pvalue": test.wilcoxon_pvalue,
    }
    run_dir = Path(model_path).parent
    atomic_write_json(run_dir / "heldout.json", summary)
    lines = [
        f"Held-out evaluation of {Path(model_path).name}: {summary['instances']} instances, "
        f"{config.env.epochs} epochs each (preset {config.name})",
        "",
        "| method | final Dice (mean ± 95% CI) | diverged |",
        "|---|---|---|",
        f"| learned policy | {mean_ci(finals['learned'])} | {diverged['learned']} |",
        f"| constant initial LR | {mean_ci(finals['constant'])} | {diverged['constant']} |",
        "",
        f"learned - constant: {test.mean_difference:+.3f} (95% CI {test.ci.low:+.3f} .. {test.ci.high:+.3f}, "
        f"paired t p={test.t_pvalue:.3g}, Wilcoxon p={test.wilcoxon_pvalue:.3g})",
    ]
    report = "\n".join(lines)
    atomic_write_text(run_dir / "heldout.md", report + "\n")
    return report
