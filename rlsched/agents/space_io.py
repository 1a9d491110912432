"""Gymnasium spaces as plain data, so that the reference PPO's checkpoints load with ``weights_only=True`` (no
pickled objects) and across gymnasium versions."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    """A ``Box`` or ``Discrete`` (the spaces the reference PPO supports) as lists, numbers and strings."""
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "low": space.low.tolist(),
            "high": space.high.tolist(),
            "dtype": str(space.dtype),
        }
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise TypeError(f"unsupported space {space!r}")


def space_from_dict(d: dict[str, Any]) -> spaces.Space:
    """The space ``space_to_dict`` described."""
    if d["type"] == "Box":
        dtype = np.dtype(d["dtype"])
        return spaces.Box(np.array(d["low"], dtype=dtype), np.array(d["high"], dtype=dtype), dtype=dtype)
    return spaces.Discrete(d["n"], start=d["start"])
