"""A training checkpoint as one atomic unit: its parts first, then a manifest that names them.

The parts (the model, its observation statistics) get a fresh name each time (``ckpt-<n>.zip``,
``ckpt-<n>.obs_norm.json``); then ``last.json`` is replaced in one rename: it names every part with its size and
sha256, and holds the env steps done and the episode records the checkpoint accounts for. Only then are the
previous checkpoint's parts removed. A kill at any moment therefore leaves a manifest whose parts are all on disk
(the previous checkpoint's, when the new one was cut off), and ``load_checkpoint`` accepts a checkpoint only when
every part matches its manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlsched.common.files import atomic_write_json

MANIFEST = "last.json"
_PART = re.compile(r"ckpt-(\d+)\.")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: ``parts`` maps a role (``model``, ``obs_norm``) to its verified file."""

    num_timesteps: int
    episodes: int  # records of episodes.jsonl the checkpoint has trained on (later ones were discarded)
    parts: dict[str, Path]


def _describe(path: Path) -> dict[str, int | str]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"name": path.name, "size": path.stat().st_size, "sha256": digest}


def _parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("ckpt-*") if _PART.match(p.name))


def save_checkpoint(
    folder: Path, write: Callable[[Path], dict[str, Path]], num_timesteps: int, episodes: int
) -> None:
    """``write(prefix)`` writes the parts as ``prefix.<suffix>`` files and returns them by role; the manifest
    naming them is written after them, and the parts no manifest names any more are removed last."""
    folder.mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(_PART.match(p.name).group(1)) for p in _parts(folder)), default=0)
    parts = write(folder / f"ckpt-{number:06d}")
    atomic_write_json(
        folder / MANIFEST,
        {
            "num_timesteps": num_timesteps,
            "episodes": episodes,
            "parts": {role: _describe(path) for role, path in parts.items()},
        },
    )
    named = {path.name for path in parts.values()}
    for stale in _parts(folder):
        if stale.name not in named:
            stale.unlink()
    for temporary in folder.glob(".*.tmp"):  # left by a kill during an atomic write
        temporary.unlink()


def load_checkpoint(folder: Path) -> tuple[Checkpoint | None, str]:
    """The complete checkpoint in ``folder``, else ``None`` and why there is none to resume from ("" when the
    folder holds no checkpoint at all)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        written = sorted(p.name for p in folder.glob("[!.]*"))
        return None, (
            f"{folder} holds {', '.join(written)} but no {MANIFEST}: the first checkpoint's save was "
            "cut off before it completed (or an older rlsched wrote it)"
            if written
            else ""
        )
    try:
        saved = json.loads(manifest.read_text())
        entries = saved["parts"]
        checkpoint = Checkpoint(
            int(saved["num_timesteps"]),
            int(saved["episodes"]),
            {role: folder / entry["name"] for role, entry in entries.items()},
        )
        if not all(_PART.match(path.name) and path.parent == folder for path in checkpoint.parts.values()):
            raise ValueError("a part outside the checkpoint folder")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return (
            None,
            f"{manifest} does not list a checkpoint's parts (written by an older rlsched, or damaged)",
        )
    for role, entry in entries.items():
        path = checkpoint.parts[role]
        if not path.is_file() or path.is_symlink():
            return None, f"{manifest} names {entry['name']}, which is missing (or a symbolic link)"
        if _describe(path) != entry:
            return None, f"{path} does not match {manifest} (its size or sha256 differs): damaged or replaced"
    return checkpoint, ""
