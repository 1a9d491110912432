"""What a saved policy was trained to see and do, checked against the config it is used with.

``<model>.policy.json`` beside a model (``model.policy.json``, ``checkpoints/last.policy.json``, the shipped
``controller.policy.json``) names the observation features in the order the policy sees them (history lags
included) and whether it trained on normalised observations. It is written with the model, so a policy
trained by another rlsched version, whose features differ or are reordered, is refused by name instead of
acting on numbers that mean something else. The checks on the dimensions read them from the weights
themselves (``check_dims``): a config whose action set or history length changed is refused even without the
file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from rlsched.common.files import atomic_write_json
from rlsched.config import EnvConfig
from rlsched.control.interface import (
    HISTORY_FEATURES,
    OBS_FEATURES,
    action_space,
    observation_names,
    observation_space,
)

FORMAT = 1
# what an action means, per action mode: only the chosen mode's keys are part of the interface
ACTION_KEYS = {
    "discrete": ("factors",),
    "continuous": ("max_log10_change",),
    "absolute": ("grid_points",),
    "residual": ("offsets", "probe_lr"),
}
TRUST_HINT = (
    "load it only if you trust where it came from: trust=True (load_policy, RLScheduler.load) or "
    "--trust-model (compare, evaluate) unpickles it in full, which can run any code"
)


class PolicyError(ValueError):
    """A saved policy cannot be used as it is; the message names the file, the mismatch and the fix."""


def meta_path(model_path: Path | str) -> Path:
    """``runs/<id>/model.zip`` -> ``runs/<id>/model.policy.json``."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.policy.json")


def policy_meta(env: EnvConfig, normalize_obs: bool) -> dict[str, Any]:
    return {"format": FORMAT, "observation_features": observation_names(env), "normalize_obs": normalize_obs}


def write_meta(model_path: Path | str, env: EnvConfig, normalize_obs: bool) -> None:
    atomic_write_json(meta_path(model_path), policy_meta(env, normalize_obs))


def read_meta(model_path: Path | str) -> dict[str, Any] | None:
    """The metadata beside ``model_path``; None for a policy saved before it existed."""
    path = meta_path(model_path)
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PolicyError(
            f"{path}: unreadable policy metadata ({err}); the file is truncated or corrupt: "
            "restore it from where the policy was trained"
        ) from None
    features = meta.get("observation_features") if isinstance(meta, dict) else None
    if (
        not isinstance(features, list)
        or not all(isinstance(f, str) for f in features)
        or not isinstance(meta.get("normalize_obs"), bool)
    ):
        raise PolicyError(
            f"{path}: not policy metadata (it needs observation_features, a list of names, and "
            "normalize_obs, true or false); restore it from where the policy was trained"
        )
    return meta


def feature_difference(saved: list[str], current: list[str]) -> str:
    """How the features a policy trained on differ from the current ones ("" when equal)."""
    missing = [n for n in current if n not in saved]
    extra = [n for n in saved if n not in current]
    parts = [f"missing: {', '.join(missing)}"] if missing else []
    parts += [f"extra: {', '.join(extra)}"] if extra else []
    if not parts and saved != current:
        i = next(i for i, (a, b) in enumerate(zip(saved, current)) if a != b)
        parts.append(f"reordered: feature {i} is {saved[i]} in the policy, {current[i]} now")
    return "; ".join(parts)


def check_features(model_path: Path, meta: dict[str, Any], env: EnvConfig) -> None:
    difference = feature_difference(meta["observation_features"], observation_names(env))
    if difference:
        raise PolicyError(
            f"{meta_path(model_path)}: the policy was trained on other observation features "
            f"than this rlsched builds ({difference}); it would act on numbers that mean "
            "something else: retrain it, or use it with the rlsched version that trained it"
        )


def action_size(space: spaces.Space) -> int:
    return int(space.n) if isinstance(space, spaces.Discrete) else int(np.prod(space.shape))


def check_dims(model_path: Path, config_path: Path, env: EnvConfig, obs_dim: int, n_actions: int) -> None:
    """The policy's input and output sizes against what ``env`` (from ``config_path``) gives and expects."""
    want_obs, want_actions = observation_space(env).shape[0], action_size(action_space(env))
    problems = []
    if obs_dim != want_obs:
        lags = f"{len(OBS_FEATURES)} + {len(HISTORY_FEATURES)} per lag of env.history={env.history}"
        problems.append(f"it takes {obs_dim} observation features, the config gives {want_obs} ({lags})")
    if n_actions != want_actions:
        keys = ", ".join(f"env.{k}={getattr(env, k)!r}" for k in ACTION_KEYS[env.action])
        problems.append(
            f"it has {n_actions} actions, the config's env.action={env.action!r} has "
            f"{want_actions} ({keys}), so its action indices would mean other LRs"
        )
    if problems:
        raise PolicyError(
            f"{model_path} does not fit {config_path}: {'; '.join(problems)}; use the "
            "config.toml it was trained with, or retrain"
        )
