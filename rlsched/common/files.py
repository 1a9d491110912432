"""Run directories and crash-safe file writes.

Every file a run keeps is written to a temporary file in the same folder and moved into place with
``os.replace``, so killing a process at any moment leaves either the old or the new file, never half of one.
Every ``*.jsonl`` file (episodes, progress, the comparison journal) is appended with ``append_jsonl`` and read
with ``read_jsonl``: one convention for NaN (kept) and for a line a kill cut off (skipped with a warning).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import signal
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

RUNS_ROOT = Path("runs")


class Interrupted(Exception):
    """SIGTERM, turned into an exception so the same clean-up as Ctrl-C runs (a checkpoint, a resume hint)."""


def unwrap_interrupt(err: BaseException) -> BaseException:
    """The interrupt behind ``err`` when a SIGTERM or Ctrl-C landed inside a library that reported it as an error
    of its own caused by it (Ray's core worker: a ``SystemError``; RLlib's metrics reduction: a ``ValueError``);
    else ``err`` itself. Either way the caller re-raises what it gets, so an interrupt gets its clean-up (a
    checkpoint, a resume hint)."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, (KeyboardInterrupt, Interrupted)):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return err


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted()


def interrupt_on_sigterm() -> None:
    """From now on SIGTERM raises ``Interrupted`` in the main thread (long jobs catch it with Ctrl-C's
    ``KeyboardInterrupt``)."""
    signal.signal(signal.SIGTERM, _raise_interrupted)


class RunDirError(ValueError):
    """No run directory can be made under the runs folder (``--runs-dir``): it is a file, or not writable."""


def new_run_dir(*parts: str, root: Path | str = RUNS_ROOT) -> Path:
    """``runs/<part1>__<part2>__...__<YYYYmmdd-HHMMSS>``; a numeric suffix keeps two runs in one second apart.
    A runs folder that cannot hold it raises ``RunDirError``, one line naming ``--runs-dir``."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise RunDirError(f"--runs-dir {root} is a file, not a folder: pass a folder for the run directories")
    stem = "__".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", p) for p in parts if p)
    base = root / f"{stem}__{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    try:
        path.mkdir(parents=True)
    except OSError as err:
        raise RunDirError(
            f"--runs-dir {root}: cannot create a run directory in it ({err.strerror or err}); "
            "pass a folder you can write to"
        ) from None
    return path


def remove_unstarted(run_dir: Path, started: Iterable[str]) -> bool:
    """Remove ``run_dir`` if it holds nothing but what a run's start wrote (the names in ``started``, a folder
    standing for all it holds), empty files and empty folders: a run that failed before its first episode
    leaves no directory behind. Anything else in it (an episode record, a checkpoint) keeps it. True if
    removed."""
    allowed = set(started)
    for path in run_dir.rglob("*"):
        empty = path.is_file() and path.stat().st_size == 0
        if not (
            path.relative_to(run_dir).parts[0] in allowed
            or empty
            or (path.is_dir() and not path.is_symlink())
        ):
            return False
    shutil.rmtree(run_dir)
    return True


@contextmanager
def removed_if_unstarted(run_dir: Path, fresh: bool, started: Iterable[str]) -> Iterator[None]:
    """On an error inside, ``remove_unstarted(run_dir, started)`` when this process just created ``run_dir``
    (``fresh``; a resumed run's directory is never touched). Ctrl-C and SIGTERM keep it: they promise a
    resume."""
    try:
        yield
    except Interrupted:
        raise
    except (Exception, SystemExit):
        if fresh:
            remove_unstarted(run_dir, started)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path | str, write: Callable[[IO], Any], mode: str = "wb") -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync it, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; a run's files should read like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda h: h.write(text), "w")


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    atomic_write(path, lambda h: h.write(data), "wb")


def atomic_write_json(path: Path | str, data: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(data), indent=2) + "\n")


def to_jsonable(value: Any) -> Any:
    """For ``.json`` files (summaries, arguments), which other tools read: JSON has no NaN/inf, so they are
    written as null and the file stays valid JSON for any reader (``*.jsonl`` records keep them:
    ``append_jsonl``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return to_jsonable(value.item())
    return value


def _link_error(path: Path) -> ValueError:
    return ValueError(
        f"{path} is a symbolic link (to {os.readlink(path)}): a run keeps its files inside its "
        "own folder, and writing through the link would change a file elsewhere; replace the link "
        "by a copy of the file (or remove it)"
    )


def refuse_links(run_dir: Path | str, *names: str) -> None:
    """Refuse the run's files (and the folders on the way to them) that a symbolic link sends out of
    ``run_dir``, before anything appends to them: appends follow links (``atomic_write``'s rename replaces
    one)."""
    for name in names:
        path = Path(run_dir)
        for part in Path(name).parts:
            path = path / part
            if path.is_symlink():
                raise _link_error(path)


def _append_lines(path: Path | str, text: str) -> None:
    """Append whole lines and fsync them. A file whose last line a kill cut off first gets that line ended,
    so ``text`` starts on a line of its own (the fragment stays behind as one unreadable line). A symbolic
    link at ``path`` is refused rather than followed (``O_NOFOLLOW``): an append never writes outside its
    folder."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _link_error(Path(path)) from None
        raise
    with os.fdopen(fd, "a") as handle:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            text = "\n" + text
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _plain(value: Any) -> Any:
    """``json.dumps``'s fallback: numpy / torch scalars and arrays as Python numbers and lists."""
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    raise TypeError(
        f"{type(value).__name__} cannot be written as JSON: pass numbers, strings, lists or dicts"
    )


def _jsonl_line(record: dict[str, Any]) -> str:
    return json.dumps(record, default=_plain, allow_nan=True) + "\n"


def append_jsonl(path: Path | str, records: Iterable[dict[str, Any]]) -> None:
    """Append one line per record, the JSONL convention of every ``*.jsonl`` a run keeps.

    Lines are Python's JSON: NaN and +-inf are written as the literals ``NaN``/``Infinity``/``-Infinity``,
    which ``read_jsonl`` (Python's ``json``) reads back as the same floats, so every float round-trips
    exactly (a NaN Dice means a diverged run; ``null`` would lose that). Strict JSON parsers (``jq``,
    JavaScript's ``JSON.parse``) reject those literals. Files written before this convention hold ``null``
    there, which reads back as ``None``."""
    _append_lines(path, "".join(_jsonl_line(record) for record in records))


def write_jsonl(path: Path | str, records: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` (atomically) with these records, in ``append_jsonl``'s convention."""
    atomic_write_text(path, "".join(_jsonl_line(record) for record in records))


_WARNED: set[str] = set()  # the unreadable lines read_jsonl has reported in this process


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """Every record of a ``*.jsonl`` file. A line that is not a whole JSON object (cut off by a kill, or
    garbled) is skipped with a warning naming the file and its line numbers, once per process however often
    the file is read (a training log is read after every update): a torn last line is expected after a kill,
    and later appends start below it. The file is never changed."""
    records, bad = [], []
    for number, line in enumerate(Path(path).read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue  # the end of the file, or a line two appenders both ended: no record in it
        try:
            record = json.loads(line)
        except ValueError:  # not JSON, or not UTF-8
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        message = (
            f"{path}: line{'s' if len(bad) > 1 else ''} {shown} "
            f"{'are' if len(bad) > 1 else 'is'} cut off or unreadable (a kill during a write?): skipped"
        )
        if message not in _WARNED:
            _WARNED.add(message)
            warnings.warn(message, stacklevel=2)
    return records
