"""Load a trained policy (SB3 ``.zip``, reference ``.pt`` or RLlib ``.rllib/``) with the config it was trained
on, and score it on the held-out instances against the constant initial-LR baseline."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .config import Config, ConfigError, load_config
from .control import observation_space
from .env import make_instances
from .harness import Predictor
from .jobs import Job, episodes, run_jobs
from .runs import atomic_write_json, atomic_write_text
from .stats import mean_ci, paired_test

# env settings that define what a policy sees and does: they must match between training and use
# (epochs_per_step: what one action spans; the epoch budget only rescales budget_used, so it is a warning)
INTERFACE_KEYS = ("action", "factors", "max_log10_change", "grid_points", "history", "lr_min", "lr_max",
                  "epochs_per_step")


@dataclass
class LoadedPolicy:
    predictor: Predictor
    config: Config  # the config the policy was trained on
    path: Path


def load_policy(path: str | Path) -> LoadedPolicy:
    """``runs/<id>/model.zip`` (SB3 PPO), ``runs/<id>/model.pt`` (reference PPO) or ``runs/<id>/model.rllib``
    (RLlib PPO, a directory) plus its ``config.toml``."""
    path = Path(path)
    if not (path.is_file() or (path.is_dir() and path.suffix == ".rllib")):
        raise FileNotFoundError(f"no policy at {path}: pass runs/<run-id>/model.zip (or model.pt, model.rllib) "
                                "written by python -m rlsched.train")
    config_path = path.parent / "config.toml"
    if not config_path.is_file():
        config_path = path.parent.parent / "config.toml"  # a checkpoint in runs/<id>/checkpoints/
    if not config_path.is_file():
        raise FileNotFoundError(f"{path}: no config.toml beside it, so its observation/action interface is "
                                "unknown; keep the model inside its run directory")
    config = load_config(config_path)
    if path.suffix == ".zip":
        from stable_baselines3 import PPO

        from .agents.normalize import NormalizedPredictor, ObsNorm, norm_path

        predictor: Predictor = PPO.load(path, device="cpu")
        if norm_path(path).is_file():  # trained on normalised observations: apply its statistics
            predictor = NormalizedPredictor(predictor, ObsNorm.load(norm_path(path)))
    elif path.suffix == ".pt":
        from .agents.ppo import ReferencePPO

        predictor = ReferencePPO.load(path)
    elif path.suffix == ".rllib":
        from .agents.rllib import RLlibPolicy

        predictor = RLlibPolicy.load(path)
    else:
        raise ValueError(f"{path}: unknown policy format; expected .zip (SB3), .pt (reference PPO) or .rllib "
                         "(RLlib PPO)")
    return LoadedPolicy(predictor, config, path)


def check_compatible(policy: LoadedPolicy, config: Config) -> None:
    """A policy only works on envs with the observation and action interface it was trained on."""
    mismatched = [k for k in INTERFACE_KEYS if getattr(policy.config.env, k) != getattr(config.env, k)]
    if mismatched:
        details = "; ".join(f"env.{k}: policy {getattr(policy.config.env, k)!r} vs env {getattr(config.env, k)!r}"
                            for k in mismatched)
        raise ConfigError(f"{policy.path} was trained with a different observation/action interface ({details}); "
                          "use the preset it was trained on or override these keys to match")
    if policy.config.env.epochs != config.env.epochs:
        warnings.warn(f"{policy.path} was trained on {policy.config.env.epochs}-epoch budgets and now runs "
                      f"{config.env.epochs}-epoch ones: it sees the same budget fractions, but over epochs it "
                      "never trained on", stacklevel=2)
    space = getattr(policy.predictor, "observation_space", None)
    if space is not None and space.shape != observation_space(config.env).shape:
        raise ConfigError(f"{policy.path}: observation shape {space.shape} does not match the env's "
                          f"{observation_space(config.env).shape}")


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
