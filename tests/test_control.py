"""The observation every controller sees: each feature pinned to its index and value from known inputs.

The env and ``RLScheduler`` both build observations with ``rlsched.control.interface``, so a swapped or rescaled feature
would change what every trained policy sees while both stay consistent with each other. ``FEATURES`` is the
contract: adding a feature means adding its row (and a value for the inputs below) where it belongs.
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from gymnasium import spaces

from rlsched.config import EnvConfig
from rlsched.control.interface import (
    ControlState,
    Dynamics,
    action_space,
    backed_off_lr,
    build_observation,
    clip_lr,
    decode_lr,
    encode_lr,
    feature_index,
    next_lr,
    observation_names,
    observation_space,
    suggested_lr,
    undone,
)
from rlsched.scheduler import RLScheduler

ENV = EnvConfig(epochs=12, lr_min=1e-4, lr_max=1.0, history=2)
STEP = 3
NOW = Dynamics(lr=1e-3, train_loss=0.5, val_loss=0.8, dice=0.7, grad_norm=100.0, update_ratio=1e-3)
BEFORE = Dynamics(lr=2e-3, train_loss=0.6, val_loss=0.7, dice=0.6, grad_norm=10.0, update_ratio=1e-2)
HISTORY = [(0.5, 1.0), (0.6, 1e-4)]  # (dice, lr) of earlier steps, oldest first
SUGGESTED = 3e-2  # the LR the first slice suggested


def scaled(lr: float) -> float:
    """log10 LR mapped linearly so ENV.lr_min -> -1 and ENV.lr_max -> +1 (four decades here)."""
    return (math.log10(lr) + 4) / 2 - 1


# (name, low, high, value for NOW, BEFORE, STEP, HISTORY), in observation order; the values are all distinct,
# so swapping any two features fails.
FEATURES = [
    ("log_lr", -1.0, 1.0, -0.5),
    ("budget_used", 0.0, 1.0, STEP / 12),
    ("log_train_loss", -10.0, 5.0, math.log(0.5)),
    ("log_val_loss", -10.0, 5.0, math.log(0.8)),
    ("d_log_train_loss", -5.0, 5.0, math.log(0.5 / 0.6)),
    ("d_log_val_loss", -5.0, 5.0, math.log(0.8 / 0.7)),
    ("dice", 0.0, 1.0, 0.7),
    ("d_dice", -1.0, 1.0, 0.1),
    ("log_grad_norm", -8.0, 8.0, 2.0),
    ("log_update_ratio", -8.0, 2.0, -3.0),
    ("first_step", 0.0, 1.0, 0.0),
    ("log_lr_suggested", -1.0, 1.0, scaled(SUGGESTED)),
    ("dice_lag1", 0.0, 1.0, 0.6),  # the newest history entry comes first
    ("log_lr_lag1", -1.0, 1.0, -1.0),
    ("dice_lag2", 0.0, 1.0, 0.5),
    ("log_lr_lag2", -1.0, 1.0, 1.0),
]
INDEX = {name: i for i, (name, *_) in enumerate(FEATURES)}


def test_the_feature_table_has_distinct_values():
    values = [row[3] for row in FEATURES]
    assert len({round(v, 6) for v in values}) == len(values)


def test_names_and_bounds_follow_the_feature_table():
    assert observation_names(ENV) == [row[0] for row in FEATURES]
    space = observation_space(ENV)
    assert space.dtype == np.float32 and space.shape == (len(FEATURES),)
    np.testing.assert_array_equal(space.low, [row[1] for row in FEATURES])
    np.testing.assert_array_equal(space.high, [row[2] for row in FEATURES])


def test_each_feature_sits_at_its_index_with_its_value():
    obs = build_observation(ENV, STEP, NOW, BEFORE, HISTORY, SUGGESTED)
    assert obs.dtype == np.float32 and obs.shape == (len(FEATURES),)
    for i, (name, _, _, value) in enumerate(FEATURES):
        assert obs[i] == pytest.approx(value, abs=1e-6), name


def test_the_observation_order_is_the_feature_table_alone(monkeypatch):
    """The builder fills features by name: reordering ``OBS_FEATURES`` reorders the values with the names (a
    second, positional list would keep the old order under the new names)."""
    import rlsched.control.interface as control

    reordered = tuple(reversed(control.OBS_FEATURES))
    monkeypatch.setattr(control, "OBS_FEATURES", reordered)
    control._bounds.cache_clear()
    try:
        obs = build_observation(ENV, STEP, NOW, BEFORE, HISTORY, SUGGESTED)
    finally:
        control._bounds.cache_clear()
    expected = {name: value for name, _, _, value in FEATURES}
    for i, (name, *_rest) in enumerate(reordered):
        assert obs[i] == pytest.approx(expected[name], abs=1e-6), name


def test_short_history_is_padded_with_its_oldest_entry():
    env = EnvConfig(epochs=12, lr_min=1e-4, lr_max=1.0, history=3)
    lags = build_observation(env, STEP, NOW, BEFORE, [(0.4, 1e-2), (0.45, 1e-3)])[-6:]
    np.testing.assert_allclose(lags, [0.45, scaled(1e-3), 0.4, scaled(1e-2), 0.4, scaled(1e-2)], atol=1e-6)
    at_reset = build_observation(env, 0, NOW, NOW, [])[-6:]  # nothing happened yet: lags repeat the present
    np.testing.assert_allclose(at_reset, [0.7, scaled(1e-3)] * 3, atol=1e-6)
    assert build_observation(EnvConfig(history=0), STEP, NOW, BEFORE, HISTORY).shape == (len(FEATURES) - 4,)


def test_non_finite_values_go_to_the_bound_they_ran_towards_and_the_rest_is_clipped():
    blown_up = Dynamics(
        lr=10.0, train_loss=math.nan, val_loss=math.inf, dice=0.0, grad_norm=1e12, update_ratio=1e-12
    )
    obs = build_observation(ENV, STEP, blown_up, BEFORE, HISTORY)
    for name, value in {
        "log_lr": 1.0,
        "log_train_loss": 5.0,
        "log_val_loss": 5.0,
        "d_log_train_loss": 5.0,
        "d_log_val_loss": 5.0,
        "d_dice": -0.6,
        "log_grad_norm": 8.0,
        "log_update_ratio": -8.0,
    }.items():
        assert obs[INDEX[name]] == pytest.approx(value), name
    tiny = Dynamics(lr=1e-6, train_loss=1e-3, val_loss=1e-5, dice=1.0, grad_norm=1e-12, update_ratio=1e3)
    obs = build_observation(ENV, STEP, tiny, BEFORE, HISTORY)
    for name, value in {
        "log_lr": -1.0,
        "log_train_loss": math.log(1e-3),
        "log_val_loss": -10.0,
        "d_log_train_loss": -5.0,
        "d_log_val_loss": -5.0,
        "log_grad_norm": -8.0,
        "log_update_ratio": 2.0,
    }.items():
        assert obs[INDEX[name]] == pytest.approx(value, abs=1e-5), name


def test_zero_or_negative_numbers_never_crash_the_observation():
    """A loss can underflow to exactly 0: the observation must still be built (math.log(0) would raise)."""
    odd = Dynamics(lr=1e-3, train_loss=0.0, val_loss=-1.0, dice=0.0, grad_norm=0.0, update_ratio=0.0)
    obs = build_observation(ENV, STEP, odd, BEFORE, HISTORY)
    assert np.all(np.isfinite(obs)) and observation_space(ENV).contains(obs)
    assert obs[INDEX["log_grad_norm"]] == 0.0 and obs[INDEX["log_update_ratio"]] == 0.0  # nothing moved
    # ln 0 = -inf runs towards the lower bound; a negative loss has no log at all and reads as a blow-up
    assert obs[INDEX["log_train_loss"]] == -10.0 and obs[INDEX["d_log_train_loss"]] == -5.0
    assert obs[INDEX["log_val_loss"]] == 5.0


def test_unmeasured_gradient_and_update_read_zero_behind_the_first_step_flag():
    """At reset nothing was trained: both read 0 whatever is passed, and first_step says they are not real."""
    start = Dynamics(lr=1e-3, train_loss=0.8, val_loss=0.8, dice=0.2, grad_norm=5.0, update_ratio=0.1)
    obs = build_observation(ENV, 0, start, start, [])
    assert obs[INDEX["log_grad_norm"]] == 0.0 and obs[INDEX["log_update_ratio"]] == 0.0
    assert obs[INDEX["first_step"]] == 1.0
    assert obs[INDEX["budget_used"]] == 0.0 and obs[INDEX["d_log_val_loss"]] == 0.0
    later = build_observation(ENV, 1, start, start, [])
    assert later[INDEX["first_step"]] == 0.0 and later[INDEX["log_update_ratio"]] == pytest.approx(-1.0)


def test_control_state_remembers_the_previous_step_and_the_history():
    start = Dynamics(lr=1.0, train_loss=0.9, val_loss=0.9, dice=0.5, grad_norm=0.0, update_ratio=0.0)
    middle = Dynamics(lr=1e-4, train_loss=0.6, val_loss=0.7, dice=0.6, grad_norm=10.0, update_ratio=1e-2)
    state = ControlState(ENV, start)
    for dynamics in (middle, BEFORE, NOW):
        state.advance(dynamics)
    assert state.step == STEP and state.now == NOW and state.before == BEFORE
    assert state.history == [(0.5, 1.0), (0.6, 1e-4), (0.6, 2e-3)]
    lags = state.observation()[INDEX["dice_lag1"] :]
    np.testing.assert_allclose(lags, [0.6, scaled(2e-3), 0.6, -1.0], atol=1e-6)


def test_an_undone_blow_up_backs_the_suggestion_off_below_what_blew_up():
    env = replace(ENV, action="residual", backoff_decades=0.5)
    start = Dynamics(lr=1e-3, train_loss=0.9, val_loss=0.9, dice=0.2, grad_norm=0.0, update_ratio=0.0)
    state = ControlState(env, start)
    state.advance(undone(0.3, start), rolled_back=True)  # the first slice blew up: probe_lr is the base
    assert state.suggested == pytest.approx(min(env.probe_lr, 0.3) * 10**-0.5)
    state.suggested = 0.1
    state.advance(undone(0.05, state.now), rolled_back=True)  # below the suggestion: back off from there
    assert state.suggested == pytest.approx(0.05 * 10**-0.5)
    assert state.now.val_loss == 0.9 and state.now.dice == 0.2 and math.isnan(state.now.train_loss)
    assert backed_off_lr(env, 1e-5, 1.0) == env.lr_min  # clipped like any LR


def test_the_loss_spike_limits_follow_the_last_healthy_slice():
    env = replace(ENV, on_divergence="rollback", loss_spike=2.0, val_spike=3.0)
    start = Dynamics(lr=1e-3, train_loss=0.9, val_loss=0.9, dice=0.2, grad_norm=0.0, update_ratio=0.0)
    state = ControlState(env, start)
    assert state.loss_limits() == pytest.approx(
        (1.8, 2.7)
    )  # before the first slice: the untrained net's val loss
    state.advance(Dynamics(1e-3, 0.5, 0.6, 0.3, 1.0, 0.01))
    assert state.loss_limits() == pytest.approx(
        (1.0, 1.8)
    )  # training and validation loss, each its own factor
    state.advance(undone(0.1, state.now), rolled_back=True)  # an undone slice leaves the references alone
    assert state.loss_limits() == pytest.approx((1.0, 1.8))
    assert ControlState(replace(env, loss_spike=0.0, val_spike=0.0), start).loss_limits() == (
        math.inf,
        math.inf,
    )
    assert ControlState(replace(env, on_divergence="end"), start).loss_limits() == (math.inf, math.inf)


def test_rl_scheduler_passes_each_number_to_its_feature():
    """RLScheduler fills the same features from its arguments: the policy sees what the env would show it."""
    seen = []

    class Recorder:
        def predict(self, observation: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
            seen.append(observation)
            return np.array(0), None  # x0.5

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=2e-3)
    scheduler = RLScheduler(Recorder(), optimizer, ENV)
    assert scheduler.start(val_loss=0.7, dice=0.6) == pytest.approx(1e-3)
    scheduler.step(train_loss=0.5, val_loss=0.8, dice=0.7, grad_norm=100.0, update_ratio=1e-3)
    expected = {
        "log_lr": -0.5,
        "budget_used": 1 / 12,
        "log_train_loss": math.log(0.5),
        "log_val_loss": math.log(0.8),
        "d_log_train_loss": math.log(0.5 / 0.7),
        "d_log_val_loss": math.log(0.8 / 0.7),
        "dice": 0.7,
        "d_dice": 0.1,
        "log_grad_norm": 2.0,
        "log_update_ratio": -3.0,
        "dice_lag1": 0.6,
        "log_lr_lag1": scaled(2e-3),
    }
    for name, value in expected.items():
        assert seen[-1][INDEX[name]] == pytest.approx(value, abs=1e-6), name
    assert seen[0][INDEX["log_train_loss"]] == pytest.approx(math.log(0.7))  # at start: ln(val loss)


def test_discrete_actions_pick_a_factor_continuous_ones_a_log_scale_change_absolute_ones_a_grid_lr():
    assert [next_lr(ENV, 0.01, a) for a in range(5)] == pytest.approx([0.01 * f for f in ENV.factors])
    assert next_lr(ENV, 0.01, np.array([3])) == pytest.approx(
        0.01 * ENV.factors[3]
    )  # as vector agents pass it
    continuous = EnvConfig(action="continuous", max_log10_change=0.5)
    assert next_lr(continuous, 0.01, np.array([0.5], np.float32)) == pytest.approx(0.01 * 10**0.25)
    assert next_lr(continuous, 0.01, np.array([-0.5], np.float32)) == pytest.approx(0.01 * 10**-0.25)
    assert next_lr(continuous, 0.01, 3.0) == pytest.approx(0.01 * 10**0.5)  # actions clipped to [-1, 1]
    assert next_lr(continuous, 0.01, -3.0) == pytest.approx(0.01 * 10**-0.5)
    absolute = EnvConfig(action="absolute", grid_points=5, lr_min=1e-4, lr_max=1.0)
    assert [next_lr(absolute, 0.5, a) for a in range(5)] == pytest.approx([1e-4, 1e-3, 1e-2, 0.1, 1.0])
    assert next_lr(ENV, 0.8, 4) == 1.0  # x2 clipped to lr_max


def test_residual_actions_offset_the_suggested_lr_and_the_probe_lr_before_it_is_measured():
    residual = EnvConfig(
        action="residual", offsets=(-1.0, -0.25, 0.0, 0.5), probe_lr=1e-3, lr_min=1e-5, lr_max=1.0
    )
    expected_probes = [1e-4, 1e-3 * 10**-0.25, 1e-3, 1e-3 * 10**0.5]
    assert [next_lr(residual, 0.01, a) for a in range(4)] == pytest.approx(expected_probes)  # whatever the LR
    assert [next_lr(residual, 0.3, a) for a in range(4)] == pytest.approx(expected_probes)
    assert [next_lr(residual, 0.01, a, suggested=0.2) for a in range(4)] == pytest.approx(
        [0.02, 0.2 * 10**-0.25, 0.2, 0.2 * 10**0.5]
    )  # the offset 0 is the suggestion
    assert next_lr(residual, 0.01, 3, suggested=0.5) == 1.0  # clipped to lr_max
    assert action_space(residual) == spaces.Discrete(4)
    assert 0.0 in EnvConfig().offsets and len(EnvConfig().offsets) == 19  # quarter decades, -3 .. +1.5


def test_log_lr_feature_decodes_back_to_the_lr():
    """The scripted rule reads the LR back from an observation: decode_lr must invert encode_lr exactly."""
    assert decode_lr(ENV, -1.0) == pytest.approx(1e-4) and decode_lr(ENV, 1.0) == pytest.approx(1.0)
    assert decode_lr(ENV, 0.0) == pytest.approx(1e-2) and decode_lr(ENV, -0.5) == pytest.approx(1e-3)
    for lr in (2e-4, 0.003, 0.07, 0.5):
        assert encode_lr(ENV, lr) == pytest.approx(scaled(lr))
        assert decode_lr(ENV, encode_lr(ENV, lr)) == pytest.approx(lr)


def test_action_space_follows_the_action_mode():
    assert action_space(ENV) == spaces.Discrete(len(ENV.factors))
    assert action_space(EnvConfig(action="absolute", grid_points=7)) == spaces.Discrete(7)
    assert action_space(EnvConfig(action="residual", offsets=(-0.5, 0.0, 0.5))) == spaces.Discrete(3)
    box = action_space(EnvConfig(action="continuous"))
    assert isinstance(box, spaces.Box) and box.shape == (1,) and box.dtype == np.float32
    assert box.low.tolist() == [-1.0] and box.high.tolist() == [1.0]


def test_clip_lr_keeps_the_lr_within_its_bounds():
    assert [clip_lr(ENV, lr) for lr in (1e-6, 0.01, 5.0)] == [1e-4, 0.01, 1.0]


def test_the_first_slice_suggests_the_lr_that_would_have_moved_the_weights_by_the_target_ratio():
    """lr * target / measured ratio, measured once: later (smaller) updates must not drag the suggestion up."""
    env = EnvConfig(epochs=12, lr_min=1e-5, lr_max=1.0, target_update_ratio=0.1)
    start = Dynamics(lr=1e-3, train_loss=1.0, val_loss=1.0, dice=0.2, grad_norm=0.0, update_ratio=0.0)
    state = ControlState(env, start)
    at = feature_index("log_lr_suggested")
    assert state.observation()[at] == pytest.approx(encode_lr(env, 1e-3))  # nothing measured: the current LR
    state.advance(Dynamics(1e-3, 0.9, 0.9, 0.3, 1.0, update_ratio=0.02))
    assert state.suggested == pytest.approx(5e-3)
    assert state.observation()[at] == pytest.approx(encode_lr(env, 5e-3), abs=1e-6)
    state.advance(Dynamics(5e-3, 0.5, 0.5, 0.6, 1.0, update_ratio=0.001))
    assert state.suggested == pytest.approx(5e-3)
    assert suggested_lr(env, Dynamics(0.5, 1, 1, 0, 1, update_ratio=1e-4)) == 1.0  # clipped to lr_max
    for moved_nothing_or_blew_up in (0.0, math.nan, math.inf):
        assert suggested_lr(env, Dynamics(2e-3, 1, 1, 0, 1, moved_nothing_or_blew_up)) == 2e-3
