"""``python -m rlsched.coverage``: which evaluation states fall outside what training showed."""

import json

import numpy as np
import pytest
from conftest import tiny_fast

from rlsched import coverage

NAMES = ["a", "b", "c"]
RUNS = np.arange(200) // 10  # 20 runs of 10 states
TINY = tiny_fast(2)[2:]  # without --preset: coverage names its presets itself


@pytest.fixture
def train():
    return np.random.default_rng(0).normal(size=(200, 3))


def test_states_seen_in_training_are_covered(train):
    c = coverage.measure(train, RUNS, train[:50], NAMES)
    assert c.outside_any == 0 and c.novel == 0 and c.distance_ratio == 0
    assert c.states == (200, 50)


def test_a_training_state_s_neighbour_is_sought_in_other_runs():
    """Two runs of closely spaced states, far apart: a state between them is as far from training as training
    states are from the other run, so it is not novel; counted within a run, it would be."""
    train = np.array([[0.0], [0.01], [0.02], [5.0], [5.01], [5.02]])
    between = np.array([[2.5]])
    assert coverage.measure(train, np.array([0, 0, 0, 1, 1, 1]), between, ["x"]).novel == 0
    assert coverage.measure(train, np.arange(6), between, ["x"]).novel == 1


def test_a_shifted_feature_is_named_and_its_states_are_novel(train):
    shifted = train[:50] + np.array([10.0, 0.0, 0.0])
    c = coverage.measure(train, RUNS, shifted, NAMES)
    assert list(c.outside) == [1.0, 0.0, 0.0] and c.outside_any == 1 and c.novel == 1
    assert c.distance_ratio > 10
    page = coverage.report("train", {"task": c}, "suggested", 1e-3)
    assert "| a | 100% |" in page and "| b |" not in page


def test_a_feature_constant_in_training_counts_by_range_alone(train):
    train = np.column_stack([train[:, :2], np.zeros(len(train))])
    evaluated = np.column_stack([train[:20, :2], np.ones(20)])
    c = coverage.measure(train, RUNS, evaluated, NAMES)
    assert list(c.outside) == [0.0, 0.0, 1.0] and c.novel == 0


def test_the_command_runs_the_rule_on_both_presets_and_writes_its_page(tmp_path, capsys):
    args = ["--train", "fast", "--eval", "fast", "--instances", "2", "--runs-dir", str(tmp_path), *TINY]
    assert coverage.main(args) == 0
    (run,) = tmp_path.iterdir()
    saved = json.loads((run / "coverage.json").read_text())
    assert saved["rule"] == "suggested" and saved["tasks"]["fast"]["states"] == [4, 4]  # 2 runs x 2 steps
    assert (run / "coverage.md").read_text() in capsys.readouterr().out


def test_presets_that_observe_different_features_are_refused(tmp_path, capsys):
    other = tmp_path / "other.toml"
    other.write_text('name = "other"\n[env]\nhistory = 0\n')
    with pytest.raises(SystemExit):
        coverage.main(["--train", "fast", "--eval", str(other), "--runs-dir", str(tmp_path)])
    assert "observes other features" in capsys.readouterr().err
