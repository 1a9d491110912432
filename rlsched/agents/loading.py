"""A trained policy as its consumers need it (the harness, ``RLScheduler``, ``evaluate``, ``compare``): the
``predict`` protocol every agent stack meets, and loading a saved policy with the config it was trained on.

Its own module so that using a policy pulls in neither the env nor the harness; the agent stacks are
imported only when a policy of theirs is loaded.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rlsched.agents.policy_meta import (
    ACTION_KEYS,
    TRUST_HINT,
    PolicyError,
    action_size,
    check_dims,
    check_features,
    meta_path,
    read_meta,
)
from rlsched.config import Config, ConfigError, EnvConfig, load_config
from rlsched.control.interface import observation_space

# env settings that define what a policy sees and does: they must match between training and use
# (epochs_per_step: what one action spans; the epoch budget only rescales budget_used, so it is a warning)
INTERFACE_KEYS = ("action", "history", "lr_min", "lr_max", "epochs_per_step", "target_update_ratio")


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
    trusted: bool = False  # loaded with trust=True: workers that load it again must be allowed to unpickle


def resolve_agent_path(text: str | Path) -> Path:
    """An agent path as users write it: the word ``pretrained`` is the controller shipped in the package
    (``rlsched.pretrained``), anything else a path."""
    from rlsched.pretrained import AGENT_NAME, controller_path

    return controller_path() if str(text) == AGENT_NAME else Path(text)


def load_policy(path: str | Path, trust: bool = False) -> LoadedPolicy:
    """``runs/<id>/model.zip`` (SB3 PPO), ``runs/<id>/model.pt`` (reference PPO) or ``runs/<id>/model.rllib``
    (RLlib PPO, a directory) plus its ``config.toml``; or ``pretrained``, the shipped ``controller.zip`` plus
    its ``controller.toml``.

    Nothing in the files runs: SB3 weights and reference-PPO checkpoints load as tensors and plain data.
    ``trust=True`` allows what unpickles Python objects, which can run any code: SB3's full ``PPO.load`` and
    RLlib checkpoints (RLlib has no other way). Every part of the interface is checked against the config
    (observation features, their count, the action count, the normalisation statistics): a mismatch raises
    ``PolicyError`` naming the file."""
    path = resolve_agent_path(path)
    if not (path.is_file() or (path.is_dir() and path.suffix == ".rllib")):
        raise FileNotFoundError(
            f"no policy at {path}: pass runs/<run-id>/model.zip (or model.pt, model.rllib) "
            "written by python -m rlsched.train, or pretrained"
        )
    # <model>.toml: the shipped controller; config.toml: a run directory, or its checkpoints/ folder's parent
    candidates = (path.with_suffix(".toml"), path.parent / "config.toml", path.parent.parent / "config.toml")
    config_path = next((c for c in candidates if c.is_file()), candidates[-1])
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{path}: no config.toml beside it, so its observation/action interface is "
            "unknown; keep the model inside its run directory"
        )
    config = load_config(config_path)
    meta = read_meta(path)
    if meta is not None:
        check_features(path, meta, config.env)
    if path.suffix == ".zip":
        from rlsched.agents.sb3_safe import load_sb3

        predictor: Predictor = _normalised(path, load_sb3(path, config_path, config.env, trust), meta)
    elif path.suffix == ".pt":
        from rlsched.agents.ppo import ReferencePPO

        try:
            predictor = ReferencePPO.load(path)
        except pickle.UnpicklingError as err:
            raise PolicyError(
                f"{path}: holds more than tensors and plain data, which the safe loader "
                f"refuses ({str(err).splitlines()[0]}); not a reference-PPO checkpoint of "
                "rlsched"
            ) from None
        except (RuntimeError, EOFError, ValueError, KeyError) as err:
            raise PolicyError(
                f"{path}: not a readable reference-PPO checkpoint ({type(err).__name__}: "
                f"{str(err).splitlines()[0]}); the file is truncated or corrupt: "
                "retrain"
            ) from None
    elif path.suffix == ".rllib":
        if not trust:
            raise PolicyError(
                f"{path}: an RLlib checkpoint, which RLlib restores by unpickling Python "
                f"objects (no safe way exists); {TRUST_HINT}"
            )
        from rlsched.agents.rllib import RLlibPolicy

        predictor = RLlibPolicy.load(path)
    else:
        raise ValueError(
            f"{path}: unknown policy format; expected .zip (SB3), .pt (reference PPO) or .rllib (RLlib PPO)"
        )
    space = predictor.observation_space  # type: ignore[attr-defined]
    check_dims(path, config_path, config.env, int(np.prod(space.shape)), action_size(predictor.action_space))  # type: ignore[attr-defined]
    return LoadedPolicy(predictor, config, path, trusted=trust)


def _normalised(path: Path, policy: Any, meta: dict[str, Any] | None) -> Any:
    """The SB3 policy behind the observation statistics it trained with: the file must be there exactly when
    the run trained on normalised observations (its metadata, else its ``args.json``, else the shipped
    controller's provenance says so; a run that says nothing: applied when present)."""
    from rlsched.agents.normalize import NormalizedPredictor, ObsNorm, norm_path

    normalised, source = _trained_normalised(path, meta)
    norm_file = norm_path(path)
    if normalised and not norm_file.is_file():
        raise PolicyError(
            f"{norm_file} is missing, and {path} trained on normalised observations "
            f"({source}): without its statistics it would act on features at the wrong scale; "
            "restore the file from where the policy was trained"
        )
    if normalised is False and norm_file.is_file():
        raise PolicyError(
            f"{norm_file}: observation statistics beside {path}, which trained on raw "
            f"observations ({source}), so they belong to another run; remove the file"
        )
    if not norm_file.is_file():
        return policy
    norm = ObsNorm.load(norm_file)
    if len(norm.mean) != policy.observation_space.shape[0]:
        raise PolicyError(
            f"{norm_file}: statistics of {len(norm.mean)} features, but the policy takes "
            f"{policy.observation_space.shape[0]}; they belong to another run: restore this "
            "one's"
        )
    return NormalizedPredictor(policy, norm)


def _trained_normalised(path: Path, meta: dict[str, Any] | None) -> tuple[bool | None, str]:
    if meta is not None:
        return meta["normalize_obs"], f"{meta_path(path).name} normalize_obs={meta['normalize_obs']}"
    from rlsched.pretrained import read_provenance

    shipped = read_provenance(path)
    if shipped is not None and isinstance(shipped.get("observations_normalised"), bool):
        return shipped["observations_normalised"], "controller.json observations_normalised"
    for args_file in (path.parent / "args.json", path.parent.parent / "args.json"):
        if args_file.is_file():
            try:
                args = json.loads(args_file.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise PolicyError(
                    f"{args_file}: unreadable ({err}); it says how {path} was trained: "
                    "restore it from where the run was trained"
                ) from None
            if isinstance(args, dict) and isinstance(args.get("normalize_obs"), bool):
                return args["normalize_obs"], f"{args_file} normalize_obs={args['normalize_obs']}"
    return None, "unknown"


def check_compatible(policy: LoadedPolicy, config: Config) -> None:
    """A policy only works on envs with the observation and action interface it was trained on."""
    trained, used = policy.config.env, config.env
    mismatched = [k for k in interface_keys(trained) if getattr(trained, k) != getattr(used, k)]
    if mismatched:
        details = "; ".join(
            f"env.{k}: policy {getattr(trained, k)!r} vs env {getattr(used, k)!r}" for k in mismatched
        )
        raise ConfigError(
            f"{policy.path} was trained with a different observation/action interface ({details}); "
            "use the preset it was trained on or override these keys to match"
        )
    if policy.config.env.epochs != config.env.epochs:
        warnings.warn(
            f"{policy.path} was trained on {policy.config.env.epochs}-epoch budgets and now runs "
            f"{config.env.epochs}-epoch ones: it sees the same budget fractions, but over epochs it "
            "never trained on",
            stacklevel=2,
        )
    space = getattr(policy.predictor, "observation_space", None)
    if space is not None and space.shape != observation_space(config.env).shape:
        raise ConfigError(
            f"{policy.path}: observation shape {space.shape} does not match the env's "
            f"{observation_space(config.env).shape}"
        )
