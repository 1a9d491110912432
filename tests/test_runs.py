import json
import math
import os
import stat
import time
import warnings

import numpy as np
import pytest

from rlsched.common.files import (
    append_jsonl,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    new_run_dir,
    read_jsonl,
    refuse_links,
    write_jsonl,
)
from rlsched.common.journal import Journal


def test_run_dirs_are_unique_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20250101-120000")  # three runs in the same second
    root = tmp_path / "runs" / "new"  # created on demand
    made = [new_run_dir("fast", "fixed cosine/v2", "", "s0", root=root) for _ in range(3)]
    stem = "fast__fixed-cosine-v2__s0__20250101-120000"
    assert [p.name for p in made] == [stem, f"{stem}-2", f"{stem}-3"] and all(p.is_dir() for p in made)


def test_atomic_json_writes_valid_json_with_nan_as_null(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": math.nan, "b": [1.0, math.inf]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None]}
    assert path.read_text() == '{\n  "a": null,\n  "b": [\n    1.0,\n    null\n  ]\n}\n'  # readable by eye
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind


def test_a_write_that_fails_midway_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "state.json"
    atomic_write_text(path, '{"epoch": 1}')

    def crash_midway(handle):
        handle.write(b'{"epoch": 2, "wei')
        handle.flush()
        raise KeyboardInterrupt  # a kill arrives halfway through the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash_midway)
    assert path.read_text() == '{"epoch": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # the half-written temporary is gone


def test_the_new_file_appears_only_by_rename(tmp_path, monkeypatch):
    """Until os.replace moves it into place, the target keeps its old content (so a kill leaves it whole)."""
    path = tmp_path / "sub" / "dir" / "model.bin"
    atomic_write_bytes(path, b"old")  # creates the missing folders
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((path.read_bytes(), open(src, "rb").read(), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_bytes(path, b"new")
    assert seen == [(b"old", b"new", os.fspath(path))]
    assert path.read_bytes() == b"new"


def test_appends_refuse_a_symbolic_link_rather_than_write_where_it_points(tmp_path):
    run_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    elsewhere.mkdir()
    (run_dir / "episodes.jsonl").symlink_to(elsewhere / "file.jsonl")  # dangling: an append would create it
    with pytest.raises(ValueError, match="episodes.jsonl is a symbolic link .* replace the link"):
        append_jsonl(run_dir / "episodes.jsonl", [{"epoch": 1}])
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(ValueError, match="episodes.jsonl is a symbolic link"):
        refuse_links(run_dir, "metrics.jsonl", "episodes.jsonl")
    (run_dir / "checkpoints").symlink_to(
        elsewhere, target_is_directory=True
    )  # a folder on the way counts too
    with pytest.raises(ValueError, match="checkpoints is a symbolic link"):
        refuse_links(run_dir, "checkpoints/last.json")
    refuse_links(run_dir, "metrics.jsonl", "tb/events")  # absent files are fine: they will be created inside


def test_a_torn_last_line_is_skipped_with_a_warning_and_the_next_append_starts_below_it(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, [{"epoch": 1}, {"epoch": 2}])
    with open(path, "a") as handle:
        handle.write('{"epoch": 3, "di')  # a kill during a write
    with pytest.warns(UserWarning, match=r"m.jsonl: line 3 is cut off or unreadable .*: skipped"):
        assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    append_jsonl(path, [{"epoch": 4}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same line again: reported once, not on every read
        assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}, {"epoch": 4}]
    path.write_text(
        '{"epoch": 1}\n[2]\nnot json\n\n{"epoch": 5}'
    )  # a record that is not an object counts too
    with pytest.warns(UserWarning, match="lines 2, 3 are cut off"):
        assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 5}]


def same(a, b) -> bool:
    """Equal, NaN equal to NaN, and of the same type (a float stays a float, not None or a string)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


RECORD = {
    "dice": math.nan,
    "best": math.inf,
    "worst": -math.inf,
    "lr": np.float32(0.1),
    "loss": np.float64(math.nan),
    "epochs": np.int64(3),
    "diverged": np.bool_(True),
    "nested": {"dice": [0.1, math.nan, np.float64(1 / 3)], "per_class": np.array([0.25, np.nan])},
}
PLAIN = {  # RECORD as Python numbers: what every reader gets back
    "dice": math.nan,
    "best": math.inf,
    "worst": -math.inf,
    "lr": float(np.float32(0.1)),
    "loss": math.nan,
    "epochs": 3,
    "diverged": True,
    "nested": {"dice": [0.1, math.nan, 1 / 3], "per_class": [0.25, math.nan]},
}


def test_episode_records_and_the_journal_round_trip_the_same_record_exactly(tmp_path):
    """NaN and inf come back as floats, not null: a NaN Dice means a diverged run."""
    append_jsonl(tmp_path / "episodes.jsonl", [RECORD])
    (episode,) = read_jsonl(tmp_path / "episodes.jsonl")
    Journal(tmp_path / "jobs.jsonl").add("job", {"result": RECORD})
    entry = Journal(tmp_path / "jobs.jsonl").get("job")
    assert same(episode, PLAIN) and same(entry, {"key": "job", "result": PLAIN})
    line = (tmp_path / "episodes.jsonl").read_text()
    assert (tmp_path / "jobs.jsonl").read_text() == '{"key": "job", "result": ' + line[:-1] + "}\n"
    write_jsonl(tmp_path / "rewritten.jsonl", [episode])  # a resume's rewrite of episodes.jsonl
    assert (tmp_path / "rewritten.jsonl").read_text() == (tmp_path / "episodes.jsonl").read_text()


def test_files_written_with_null_for_nan_still_load(tmp_path):
    (tmp_path / "episodes.jsonl").write_text('{"initial_dice": null, "final_dice": 0.5}\n')
    assert read_jsonl(tmp_path / "episodes.jsonl") == [{"initial_dice": None, "final_dice": 0.5}]


def test_a_torn_line_warns_the_same_in_episode_records_and_the_journal(tmp_path):
    episodes, jobs = tmp_path / "episodes.jsonl", tmp_path / "jobs.jsonl"
    append_jsonl(episodes, [RECORD])
    Journal(jobs).add("a", RECORD)
    for path in (episodes, jobs):
        path.write_text(path.read_text() + '{"dice": Na')  # a kill during the second write
    with pytest.warns(UserWarning, match="episodes.jsonl: line 2 is cut off or unreadable"):
        read_jsonl(episodes)
    with pytest.warns(UserWarning, match="jobs.jsonl: line 2 is cut off or unreadable"):
        journal = Journal(jobs)
    append_jsonl(episodes, [RECORD])
    journal.add("b", RECORD)
    for path in (episodes, jobs):  # the next append starts on a clean line, below the torn one
        lines = path.read_text().splitlines()
        assert len(lines) == 3 and lines[1] == '{"dice": Na'


def test_appending_an_object_json_cannot_hold_names_it(tmp_path):
    with pytest.raises(TypeError, match="object cannot be written as JSON: pass numbers"):
        append_jsonl(tmp_path / "m.jsonl", [{"x": object()}])


def test_atomic_writes_get_the_usual_file_mode_not_mkstemps_0600(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask


def test_an_interrupt_reported_by_a_c_extension_is_unwrapped():
    """Ray's core worker reports a SIGTERM that landed in it as a SystemError caused by the interrupt."""
    from rlsched.common.files import Interrupted, unwrap_interrupt

    for interrupt in (Interrupted(), KeyboardInterrupt()):
        try:
            raise SystemError(
                "<cyfunction CoreWorker.wait> returned a result with an exception set"
            ) from interrupt
        except SystemError as err:
            assert unwrap_interrupt(err) is interrupt
    try:  # RLlib's metrics reduction wraps it one level further down, in a ValueError
        try:
            raise SystemError("in the C extension") from Interrupted()
        except SystemError as inner:
            raise ValueError("Error reducing stats") from inner
    except ValueError as err:
        assert isinstance(unwrap_interrupt(err), Interrupted)
    other = SystemError("a real bug")
    assert unwrap_interrupt(other) is other
    try:
        raise SystemError("wrapped") from ValueError("not an interrupt")
    except SystemError as err:
        assert unwrap_interrupt(err) is err
