"""An append-only journal of finished jobs: one JSON line per job, keyed by the job's full description, so a long
batch of episodes is on disk the moment each one finishes and a resumed run re-runs only what is missing.

Lines are Python's JSON with NaN and Infinity allowed (a diverged run's records hold NaN), which round-trips every
float exactly: a resumed comparison computes the same numbers as an uninterrupted one. A line cut off by a kill
(or otherwise unreadable) is dropped with a warning when the journal is opened, and its job runs again.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from rlsched.common.files import append_text, atomic_write_text, refuse_links

CONTEXT = "__context__"  # the key of the entry that ties a journal to its settings


def _plain(value: Any) -> Any:
    """numpy / torch scalars as Python numbers (``json.dumps`` default)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def journal_key(description: dict[str, Any]) -> str:
    """A job's full description as one string (keys sorted): equal descriptions, equal keys, across runs."""
    return json.dumps(description, sort_keys=True)


class Journal:
    """Finished jobs by key; ``path=None`` keeps them in memory only (nothing to resume). A symbolic link at
    ``path`` is refused (``ValueError``): appending would write wherever it points."""

    def __init__(self, path: Path | str | None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        self.dropped = 0  # unreadable lines found (and removed) when opening
        if self.path is not None:
            refuse_links(self.path.parent, self.path.name)
            if self.path.exists():
                self._load(self.path)

    def _load(self, path: Path) -> None:
        kept = []
        for number, line in enumerate(path.read_text().splitlines(keepends=True), start=1):
            try:
                entry = json.loads(line)
                key = entry["key"]
            except (json.JSONDecodeError, KeyError, TypeError):
                entry = key = None
            if key is None or not line.endswith("\n"):
                self.dropped += 1
                warnings.warn(
                    f"{path}: line {number} is cut off or unreadable (a kill during a write?): "
                    "dropped, its job runs again",
                    stacklevel=3,
                )
                continue
            kept.append(line)
            self.entries[key] = entry
        if self.dropped:  # later appends must start on a clean line
            atomic_write_text(path, "".join(kept))

    def require_context(self, context: str) -> None:
        """Tie the journal to what produced it (e.g. the config's TOML): a journal of other settings is refused
        rather than mixed in."""
        saved = self.entries.get(CONTEXT)
        if saved is None:
            self.add(CONTEXT, {"context": context})
        elif saved["context"] != context:
            raise ValueError(
                f"{self.path} was written with other settings: move it away (or pick another "
                "journal) to start over, or restore the settings it was written with"
            )

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict[str, Any]:
        return self.entries[key]

    def add(self, key: str, entry: dict[str, Any]) -> None:
        """Record a finished job: one whole line, flushed and fsynced before this returns."""
        entry = {"key": key, **entry}
        self.entries[key] = entry
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append_text(self.path, json.dumps(entry, default=_plain) + "\n")
