import json
import math
import os
import stat

from rlsched.runs import append_jsonl, atomic_write_json, atomic_write_text, new_run_dir, read_jsonl


def test_run_dirs_are_unique_and_named(tmp_path):
    a = new_run_dir("fast", "fixed-cosine", "s0", root=tmp_path)
    b = new_run_dir("fast", "fixed-cosine", "s0", root=tmp_path)
    assert a != b and a.name.startswith("fast__fixed-cosine__s0__") and a.is_dir()


def test_atomic_json_writes_valid_json_with_nan_as_null(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": math.nan, "b": [1.0, math.inf]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind


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
