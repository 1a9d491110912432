"""``python -m rlsched.fixed``: bad input is one error line and leaves no run directory."""

import pytest
from conftest import tiny_fast

from rlsched import fixed

TINY = tiny_fast(2)


def error_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fixed.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()  # other lines are progress notes (the dataset's summary)
    errors = [line for line in lines if "error:" in line]
    assert (
        exit_info.value.code == 2 and len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err
    )
    return errors[0]


def test_a_runs_dir_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    assert f"--runs-dir {runs} is a file" in error_line(TINY + ["--runs-dir", str(runs)], capsys)


@pytest.mark.parametrize("flag, value", [("--lr", "-1"), ("--lr", "0"), ("--seed", "-1")])
def test_a_flag_out_of_its_range_is_refused_before_the_run_directory(tmp_path, capsys, flag, value):
    """These ended in a traceback (FixedSchedule's ValueError, numpy's seeding)."""
    assert f"argument {flag}: got {value}" in error_line(
        TINY + ["--runs-dir", str(tmp_path), flag, value], capsys
    )
    assert not list(tmp_path.iterdir())


def test_a_run_that_fails_before_its_first_step_leaves_no_run_directory(tmp_path, monkeypatch):
    def fail(config, schedule, data, seed):
        raise RuntimeError("failed before the first step")
        yield

    monkeypatch.setattr(fixed, "run_schedule", fail)
    with pytest.raises(RuntimeError, match="before the first step"):
        fixed.main(TINY + ["--runs-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())
