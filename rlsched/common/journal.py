"""An append-only journal of finished jobs: one JSON line per job, keyed by the job's full description, so a long
batch of episodes is on disk the moment each one finishes and a resumed run re-runs only what is missing.

The lines follow the project's JSONL convention (``append_jsonl``/``read_jsonl`` in ``rlsched.common.files``):
NaN and inf are kept, so every float round-trips exactly and a resumed comparison computes the same numbers
as an uninterrupted one; a line cut off by a kill (or otherwise unreadable) is skipped with a warning, its job runs
again, and the next entry starts on a line of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlsched.common.files import append_jsonl, read_jsonl, refuse_links


def journal_key(description: dict[str, Any]) -> str:
    """A job's full description as one string (keys sorted): equal descriptions, equal keys, across runs."""
    return json.dumps(description, sort_keys=True)


class Journal:
    """Finished jobs by key; ``path=None`` keeps them in memory only (nothing to resume). A symbolic link at
    ``path`` is refused (``ValueError``): appending would write wherever it points."""

    def __init__(self, path: Path | str | None) -> None:
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path is not None:
            refuse_links(self.path.parent, self.path.name)
            if self.path.exists():
                for entry in read_jsonl(self.path):
                    if not isinstance(entry.get("key"), str):
                        raise ValueError(
                            f"{self.path} holds a line without a job key: it is not a journal of finished "
                            "jobs; move it away (or pick another journal) to start over"
                        )
                    self.entries[entry["key"]] = entry

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
        append_jsonl(self.path, [entry])
