"""An SB3 PPO ``model.zip`` loaded for acting without unpickling anything.

``PPO.load`` unpickles (cloudpickle) the ``:serialized:`` entries of the zip's ``data`` (the policy class,
the spaces, the LR and clip-range schedules, ...), so a crafted file runs code when it is loaded. Acting needs
none of them: the network is SB3's ``ActorCriticPolicy`` on the spaces the policy's config defines
(``control.observation_space`` / ``action_space``), shaped by the ``policy_kwargs`` SB3 keeps as plain JSON in
``data``, and its weights are ``policy.pth``, read with ``torch.load(weights_only=True)``. ``trust=True``
keeps SB3's full ``PPO.load`` for a file whose source is trusted (a custom policy class, say). Resuming a
run (``load_resumable``) goes through ``PPO.load`` with each pickled entry replaced by what the run rebuilds.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecEnv

from rlsched.agents.policy_meta import TRUST_HINT, PolicyError, check_dims
from rlsched.config import EnvConfig
from rlsched.control.interface import action_space, observation_space

# ActorCriticPolicy arguments SB3 stores as plain JSON values (a class or a function is pickled: trust only)
PLAIN_KWARGS = ("net_arch", "ortho_init", "log_std_init", "share_features_extractor", "full_std")
UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError, json.JSONDecodeError, KeyError)


class SB3Policy:
    """An SB3 policy network behind the ``Predictor`` protocol (most likely action unless told otherwise)."""

    def __init__(self, policy: ActorCriticPolicy) -> None:
        self.policy = policy
        self.observation_space, self.action_space = policy.observation_space, policy.action_space

    def predict(self, observation: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, Any]:
        return self.policy.predict(observation, deterministic=deterministic)


def load_sb3(path: Path, config_path: Path, env: EnvConfig, trust: bool = False) -> SB3Policy:
    """The policy of ``path`` on the interface of ``env`` (read from ``config_path``); ``trust``: SB3's full
    load, which unpickles."""
    if trust:
        try:
            return SB3Policy(PPO.load(path, device="cpu").policy)
        except UNREADABLE as err:
            raise _unreadable(path, err) from None
    data, weights = _read(path)
    obs_dim, n_actions = _dims(path, weights)
    check_dims(path, config_path, env, obs_dim, n_actions)
    try:
        policy = ActorCriticPolicy(
            observation_space(env),
            action_space(env),
            lambda _: 0.0,
            use_sde=data.get("use_sde") is True,
            **_policy_kwargs(path, data),
        )
        policy.load_state_dict(weights, strict=True)
    except (RuntimeError, TypeError, ValueError) as err:
        raise PolicyError(
            f"{path}: its weights are not those of an SB3 MlpPolicy built from its "
            f"policy_kwargs ({str(err).splitlines()[0]}); {TRUST_HINT}"
        ) from None
    policy.set_training_mode(False)
    return SB3Policy(policy)


def load_resumable(path: Path, env: VecEnv, clip_range: float, tensorboard_log: str) -> PPO:
    """A checkpoint to continue training from (``train --resume``), by SB3's ``PPO.load`` with every pickled
    entry of ``data`` replaced, so nothing is unpickled: the policy class and the spaces are the env's; the
    LR schedule, ``clip_range`` and the rollout buffer class are rebuilt (from the plain learning rate and
    the run's ``clip_range``); the last observation and the episode-info window are dropped, as SB3 resets the
    env when it loads a model onto one."""
    raw = path.read_bytes()
    data, _ = _read(path, raw)  # every .pth checked to hold only tensors before SB3 reads them
    _policy_kwargs(path, data)
    pickled = {k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v}
    rebuilt = {
        "policy_class": ActorCriticPolicy,
        "observation_space": env.observation_space,
        "action_space": env.action_space,
        "clip_range": clip_range,
        "lr_schedule": None,
        "rollout_buffer_class": None,
        "_last_obs": None,
        "_last_original_obs": None,
        "_last_episode_starts": None,
        "ep_info_buffer": None,
        "ep_success_buffer": None,
    }
    if pickled - set(rebuilt):
        raise PolicyError(
            f"{path}: its data holds pickled {', '.join(sorted(pickled - set(rebuilt)))}, "
            "which no checkpoint of rlsched holds; nothing was unpickled: resume from a run's "
            "own checkpoint, or start a new run"
        )
    try:
        return PPO.load(
            io.BytesIO(raw), env=env, device="cpu", custom_objects=rebuilt, tensorboard_log=tensorboard_log
        )
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise PolicyError(
            f"{path}: does not fit this run's env and settings ({str(err).splitlines()[0]}); "
            "resume from the run's own checkpoint, or start a new run"
        ) from None


def _read(path: Path, raw: bytes | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The zip's ``data`` as plain JSON (its pickled entries left as text) and ``policy.pth``'s tensors; the
    zip's other ``.pth`` files are checked to hold nothing but tensors and plain data as well."""
    try:
        with zipfile.ZipFile(io.BytesIO(path.read_bytes() if raw is None else raw)) as archive:
            data = json.loads(archive.read("data"))
            files = {name: archive.read(name) for name in archive.namelist() if name.endswith(".pth")}
    except UNREADABLE as err:
        raise _unreadable(path, err) from None
    if "policy.pth" not in files or not isinstance(data, dict):
        raise PolicyError(f"{path}: not an SB3 model (no policy.pth, or its data is no JSON object)")
    loaded = {name: _weights_only(path, name, content) for name, content in files.items()}
    weights = loaded["policy.pth"]
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise PolicyError(f"{path}: its policy.pth is no state dict of tensors: not an SB3 model")
    return data, weights


def _unreadable(path: Path, err: Exception) -> PolicyError:
    return PolicyError(
        f"{path}: not a readable SB3 model ({type(err).__name__}: {err}); the file is "
        "truncated or corrupt: copy it again, or retrain"
    )


def _weights_only(path: Path, name: str, content: bytes) -> Any:
    try:
        return torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise PolicyError(
            f"{path}: its {name} holds more than tensors, which the safe loader refuses "
            f"({str(err).splitlines()[0]}); {TRUST_HINT}"
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise PolicyError(
            f"{path}: its {name} is unreadable ({str(err).splitlines()[0]}); the file is "
            "truncated or corrupt: copy it again, or retrain"
        ) from None


def _dims(path: Path, weights: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(observation features, actions) of the network: the first layer's inputs, the action head's outputs."""
    head = weights.get("action_net.weight")
    if head is None or head.dim() != 2:
        raise PolicyError(
            f"{path}: its policy.pth has no action head (action_net.weight): not an SB3 PPO "
            f"MlpPolicy; {TRUST_HINT}"
        )
    first = weights.get("mlp_extractor.policy_net.0.weight", head)
    return int(first.shape[1]), int(head.shape[0])


def _policy_kwargs(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    kwargs = data.get("policy_kwargs", {})
    if not isinstance(kwargs, dict) or ":serialized:" in kwargs:
        raise PolicyError(
            f"{path}: its policy_kwargs are pickled Python objects (a custom network), which "
            f"the safe loader does not unpickle; {TRUST_HINT}"
        )
    other = sorted(set(kwargs) - set(PLAIN_KWARGS))
    if other:
        raise PolicyError(
            f"{path}: its policy_kwargs set {', '.join(other)}, which rlsched never sets; {TRUST_HINT}"
        )
    return kwargs
