"""A trained policy as its consumers need it (the harness, ``RLScheduler``, ``evaluate``, ``compare``): the
``predict`` protocol every agent stack meets, and loading a saved policy with the config it was trained on.

Its own module so that using a policy pulls in neither the env nor the harness; the agent stacks are
imported only when a policy of theirs is loaded.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import Config, ConfigError, EnvConfig, load_config
from .control import observation_space

# env settings that define what a policy sees and does: they must match between training and use
# (epochs_per_step: what one action spans; the epoch budget only rescales budget_used, so it is a warning)
INTERFACE_KEYS = ("action", "history", "lr_min", "lr_max", "epochs_per_step", "target_update_ratio")
# what an action means, per action mode: only the chosen mode's keys are part of the interface
ACTION_KEYS = {"discrete": ("factors",), "continuous": ("max_log10_change",), "absolute": ("grid_points",),
               "residual": ("offsets", "probe_lr")}


def interface_keys(env: EnvConfig) -> tuple[str, ...]:
    """The env keys a policy trained with ``env`` needs unchanged."""
    return INTERFACE_KEYS + ACTION_KEYS[env.action]


class Predictor(Protocol):
    """SB3's ``predict``: what SB3 PPO, the reference PPO and the RLlib loader all offer."""

    def predict(self, observation: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, Any]: ...


@dataclass
class LoadedPolicy:
    """A saved policy, ready to act, with what it needs to be used correctly."""

    predictor: Predictor
    config: Config  # the config the policy was trained on
    path: Path


def resolve_agent_path(text: str | Path) -> Path:
    """An agent path as users write it: the word ``pretrained`` is the controller shipped in the package
    (``rlsched.pretrained``), anything else a path."""
    from .pretrained import AGENT_NAME, controller_path

    return controller_path() if str(text) == AGENT_NAME else Path(text)


def load_policy(path: str | Path) -> LoadedPolicy:
    """``runs/<id>/model.zip`` (SB3 PPO), ``runs/<id>/model.pt`` (reference PPO) or ``runs/<id>/model.rllib``
    (RLlib PPO, a directory) plus its ``config.toml``; or ``pretrained``, the shipped ``controller.zip`` plus
    its ``controller.toml``."""
    path = resolve_agent_path(path)
    if not (path.is_file() or (path.is_dir() and path.suffix == ".rllib")):
        raise FileNotFoundError(f"no policy at {path}: pass runs/<run-id>/model.zip (or model.pt, model.rllib) "
                                "written by python -m rlsched.train, or pretrained")
    # <model>.toml: the shipped controller; config.toml: a run directory, or its checkpoints/ folder's parent
    candidates = (path.with_suffix(".toml"), path.parent / "config.toml", path.parent.parent / "config.toml")
    config_path = next((c for c in candidates if c.is_file()), candidates[-1])
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
    trained, used = policy.config.env, config.env
    mismatched = [k for k in interface_keys(trained) if getattr(trained, k) != getattr(used, k)]
    if mismatched:
        details = "; ".join(f"env.{k}: policy {getattr(trained, k)!r} vs env {getattr(used, k)!r}"
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

