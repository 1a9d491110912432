"""Observation normalisation that travels with a trained policy.

The env's features live on different scales (a budget fraction in [0, 1], log losses near -1, log gradient
norms near 0 or 3), so the agent trains on running-mean/variance-normalised observations (SB3's
``VecNormalize``). A policy is only meaningful with the statistics it was trained on: they are saved beside the
model as ``<model>.obs_norm.json`` and every consumer (``evaluate``, ``compare``, ``RLScheduler``) applies them
through ``NormalizedPredictor``, the same formula ``VecNormalize.normalize_obs`` uses.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlsched.agents.policy_meta import PolicyError
from rlsched.common.files import atomic_write_json


@dataclass(frozen=True)
class ObsNorm:
    mean: list[float]
    var: list[float]
    count: float
    epsilon: float = 1e-8
    clip: float = 10.0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        scale = np.sqrt(np.asarray(self.var) + self.epsilon)
        normalised = (np.asarray(obs, np.float64) - np.asarray(self.mean)) / scale
        return np.clip(normalised, -self.clip, self.clip).astype(np.float32)

    @classmethod
    def from_vecnormalize(cls, vec: Any) -> "ObsNorm":
        rms = vec.obs_rms
        return cls(
            rms.mean.tolist(), rms.var.tolist(), float(rms.count), float(vec.epsilon), float(vec.clip_obs)
        )

    def apply_to(self, vec: Any) -> None:
        """Restore the running statistics of a ``VecNormalize`` (resuming a run)."""
        vec.obs_rms.mean = np.asarray(self.mean, np.float64)
        vec.obs_rms.var = np.asarray(self.var, np.float64)
        vec.obs_rms.count = self.count

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "ObsNorm":
        """The statistics of ``path``; a truncated or foreign file raises ``PolicyError`` naming it."""
        try:
            norm = cls(**json.loads(Path(path).read_text()))
            consistent = (
                len(norm.mean) == len(norm.var) > 0
                and np.all(np.isfinite(norm.mean))
                and np.all(np.asarray(norm.var) >= 0)
                and norm.count > 0
            )
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
            raise PolicyError(
                f"{path}: unreadable observation statistics ({err}); the file is truncated or "
                "corrupt: restore it from where the policy was trained"
            ) from None
        if not consistent:
            raise PolicyError(
                f"{path}: not observation statistics (mean and var must be equally long, "
                "finite, var >= 0, count > 0); restore it from where the policy was trained"
            )
        return norm


def norm_path(model_path: Path | str) -> Path:
    """``runs/<id>/model.zip`` -> ``runs/<id>/model.obs_norm.json``."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.obs_norm.json")


class NormalizedPredictor:
    """A policy with SB3's ``predict`` that first normalises observations with its training statistics."""

    def __init__(self, policy: Any, norm: ObsNorm) -> None:
        self.policy, self.norm = policy, norm
        self.observation_space = getattr(policy, "observation_space", None)
        self.action_space = getattr(policy, "action_space", None)

    def predict(self, observation: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, Any]:
        return self.policy.predict(self.norm(observation), deterministic=deterministic)
