"""Per-episode records written by the env workers, read back by the trainer process for logging.

Workers append one JSON line per finished episode to ``episodes.jsonl`` (final Dice, LR trajectory, penalties),
so SB3, the reference PPO and any other agent get the same record without touching their vector-env plumbing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rlsched.common.files import append_jsonl, read_jsonl, write_jsonl


class EpisodeRecorder(gym.Wrapper):
    """Appends a record of every finished episode to ``path`` (one line, written whole)."""

    def __init__(self, env: gym.Env, path: Path, worker: int) -> None:
        super().__init__(env)
        self.path, self.worker = Path(path), worker
        self._lrs: list[float] = []
        self._penalty = 0.0

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._lrs, self._penalty = [], 0.0
        return obs, info

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._lrs.append(float(info["lr"]))
        self._penalty += float(info.get("penalty", 0.0))
        if terminated or truncated:
            append_jsonl(
                self.path,
                [
                    {
                        "worker": self.worker,
                        "split": info["split"],
                        "instance": info["instance"],
                        "initial_lr": info["initial_lr"],
                        "initial_dice": info.get("initial_dice", math.nan),
                        "final_dice": info.get("final_dice", info["dice_mean"]),
                        "diverged": bool(info["diverged"]),
                        "epochs": info["epoch"],
                        "penalty": self._penalty,
                        "lrs": self._lrs,
                    }
                ],
            )
        return obs, reward, terminated, truncated, info


def harness_record(result: Any, phase: str) -> dict[str, Any]:
    """The ``episodes.jsonl`` record of an episode run through the harness (e.g. a teacher's target search),
    so every epoch a training run spends is in one file."""
    records = result.records
    return {
        "worker": -1,
        "phase": phase,
        "split": result.instance.split,
        "instance": result.instance.index,
        "initial_lr": result.instance.initial_lr,
        "initial_dice": result.dices[0],
        "final_dice": result.final_dice,
        "diverged": result.diverged,
        "epochs": result.epochs,
        "penalty": 0.0,
        "lrs": [float(r["lr"]) for r in records[1:]],
    }


class EpisodeLog:
    """Reads the episodes that finished since the last call and summarises them for TensorBoard."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen = len(read_jsonl(self.path)) if self.path.exists() else 0

    def count(self) -> int:
        """Episodes recorded so far (a checkpoint stores it: a resume sets later, discarded ones aside)."""
        return len(read_jsonl(self.path)) if self.path.exists() else 0

    def set_aside(self, count: int, archive: Path) -> int:
        """Keep the first ``count`` records and move the later ones (episodes of training a kill discarded) to
        the end of ``archive``; returns how many moved. They reach ``archive`` before the log is rewritten
        (atomically), so a kill in between duplicates them there rather than losing them. A line cut off by a
        kill is removed too, so the next record starts on a line of its own."""
        text = self.path.read_text() if self.path.exists() else ""
        records = read_jsonl(self.path) if text else []
        if len(records) <= count and (not text or text.endswith("\n")):
            return 0
        if records[count:]:
            append_jsonl(archive, records[count:])
        write_jsonl(self.path, records[:count])
        self._seen = min(self._seen, count)
        return max(0, len(records) - count)

    def new_means(self) -> dict[str, float]:
        if not self.path.exists():
            return {}
        records = read_jsonl(self.path)
        fresh, self._seen = records[self._seen :], len(records)
        if not fresh:
            return {}
        final_lrs = np.log10([r["lrs"][-1] for r in fresh])
        return {
            "episode/final_dice": float(np.mean([r["final_dice"] for r in fresh])),
            "episode/gain_dice": float(np.mean([r["final_dice"] - r["initial_dice"] for r in fresh])),
            "episode/diverged": float(np.mean([r["diverged"] for r in fresh])),
            "episode/penalty": float(np.mean([r["penalty"] for r in fresh])),
            "episode/log10_final_lr": float(final_lrs.mean()),
            "episode/log10_lr_range": float(np.mean([np.ptp(np.log10(r["lrs"])) for r in fresh])),
            "episode/count": float(len(records)),
        }
