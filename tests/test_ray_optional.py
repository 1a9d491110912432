"""Without the ray extra the project works, and asking for a Ray feature names the install command."""

import sys

import pytest

from rlsched import compare, train

INSTALL = 'pip install -e ".[ray]"'


@pytest.fixture
def no_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError


def test_rllib_backend_without_ray_names_the_extra(no_ray, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--preset", "fast", "--backend", "rllib", "--runs-dir", str(tmp_path)])
    assert INSTALL in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before a run directory was made


def test_compare_ray_backend_without_ray_names_the_extra(no_ray, tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main(["--preset", "fast", "--backend", "ray", "--runs-dir", str(tmp_path)])
    assert INSTALL in capsys.readouterr().err


def test_ray_only_flags_need_their_backend(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(["--preset", "fast", "--address", "auto", "--runs-dir", str(tmp_path)])
    assert "--backend rllib" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--preset", "fast", "--pbt-population", "4", "--runs-dir", str(tmp_path)])
    assert "--backend ray" in capsys.readouterr().err
