import json
import math
import os
import stat
import time

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
)


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


def test_jsonl_reader_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, [{"epoch": 1}, {"epoch": 2}])
    with open(path, "a") as handle:
        handle.write('{"epoch": 3, "di')
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]


def test_atomic_writes_get_the_usual_file_mode_not_mkstemps_0600(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask
