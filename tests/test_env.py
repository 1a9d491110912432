import dataclasses
import math
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rlsched  # noqa: F401  (registers the env ids)
from rlsched.agents.workers import env_factory
from rlsched.config import ConfigError
from rlsched.control.env import Instance, UNetLREnv, make_instances
from rlsched.control.interface import OBS_FEATURES, observation_names
from rlsched.fixed import run_schedule
from rlsched.seg.schedules import FixedSchedule
from rlsched.seg.sources import make_dataset
from rlsched.seg.trainer import Trainer

SHORT = {"env.epochs": 3}


def rollout(env, seed, actions, options=None):
    obs, info = env.reset(seed=seed, options=options)
    trajectory = [(obs, 0.0, info)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trajectory.append((obs, reward, info))
        if terminated or truncated:
            break
    return trajectory


def test_reset_info_and_wall_time():
    env = UNetLREnv("fast", **SHORT)
    assert env.seconds == 0.0  # no episode yet
    _, info = env.reset(seed=0)
    assert info["epoch"] == 0 and info["diverged"] is False
    assert 0 < info["dice_mean"] == info["dice"][0]  # the untrained net's validation Dice, not a placeholder
    after_reset = env.seconds
    env.step(2)
    assert 0 < after_reset < env.seconds  # training and validation time accumulate over the episode


def test_undefined_dice_reads_as_zero(monkeypatch):
    """Dice is NaN when the validation set has no foreground at all: the env reports 0, never NaN."""
    evaluate = Trainer.evaluate
    monkeypatch.setattr(
        Trainer, "evaluate", lambda self: dataclasses.replace(evaluate(self), dice_mean=math.nan)
    )
    env = UNetLREnv("fast", **SHORT)
    dice = observation_names(env.config.env).index("dice")
    obs, info = env.reset(seed=0)
    assert info["dice_mean"] == 0.0 and obs[dice] == 0.0
    obs, reward, _, _, info = env.step(2)
    assert math.isnan(info["dice_mean"]) and obs[dice] == 0.0 and reward == 0.0


def test_a_user_penalty_sees_the_transition_in_order():
    seen = []
    env = UNetLREnv("fast", **SHORT, penalty=lambda t: seen.append(t) or 0.0)
    _, reset = env.reset(seed=0, options={"lr": 0.01})
    _, _, _, _, info = env.step(4)  # x2
    (t,) = seen
    assert (t.lr_before, t.lr_after) == (pytest.approx(0.01), pytest.approx(0.02))
    assert (t.dice_before, t.dice_after) == (reset["dice_mean"], info["dice_mean"])
    assert (t.val_loss_before, t.val_loss_after) == (reset["val_loss"], info["val_loss"])
    assert (t.diverged, t.step, t.steps) == (False, 1, 3) and t.seconds > 0


def test_action_space_and_the_action_that_keeps_the_lr():
    continuous = UNetLREnv("fast", **SHORT, **{"env.action": "continuous"})
    assert continuous.action_space == spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    np.testing.assert_array_equal(continuous.keep_action, np.zeros(1, np.float32))
    assert continuous.keep_action.shape == (1,) and continuous.keep_action.dtype == np.float32
    assert UNetLREnv("fast", **SHORT).keep_action == 2  # factors (0.5, 0.8, 1.0, 1.25, 2.0)
    with pytest.raises(ValueError, match="no action keeps the LR"):
        UNetLREnv("fast", **SHORT, **{"env.factors": [0.5, 2.0]}).keep_action


def test_config_and_preset_are_exclusive():
    config = UNetLREnv("fast").config
    assert UNetLREnv(config=config).config is config
    for kwargs in ({"preset": "fast"}, {"env.epochs": 2}):
        with pytest.raises(ValueError, match="not both"):
            UNetLREnv(config=config, **kwargs)


def test_gymnasium_and_sb3_env_checkers_pass():
    gym_check_env(UNetLREnv("fast", **SHORT), skip_render_check=True)
    sb3_check_env(UNetLREnv("fast", **SHORT), warn=True)
    gym_check_env(UNetLREnv("fast", **SHORT, **{"env.action": "continuous"}), skip_render_check=True)


def test_make_by_id_with_preset_overrides_and_the_no_argument_fast_id():
    env = gym.make("rlsched/UNetLR-v0", preset="envs/fast.toml", env={"epochs": 2})
    assert env.unwrapped.config.env.epochs == 2
    fast = gym.make("rlsched:rlsched/UNetLR-fast-v0")  # module:id form, as tools that take only an id use it
    assert fast.unwrapped.config.name == "fast"
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        gym.make("rlsched/UNetLR-v0", preset="fast", env={"epoch": 2})


def test_building_and_running_an_env_leaves_torch_global_state_alone():
    """One env in-process beside an agent: the agent's action sampling and threads must not depend on it."""
    torch.manual_seed(11)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    env = UNetLREnv("fast", **SHORT, **{"env.torch_threads": threads + 1})
    assert torch.get_num_threads() == threads
    env.reset(seed=0)
    env.step(env.keep_action)
    assert torch.equal(torch.get_rng_state(), rng)
    state = env.trainer.state_dict()
    torch.rand(1)  # the agent draws meanwhile: restoring the trainer must not rewind it
    rng = torch.get_rng_state()
    env.trainer.load_state_dict(state)
    assert torch.equal(torch.get_rng_state(), rng)


def test_setting_torch_threads_is_the_env_factorys_job(fast_config):
    threads = torch.get_num_threads()
    config = replace(fast_config, env=replace(fast_config.env, torch_threads=threads + 1))
    try:
        env_factory(config, 0, None, in_worker=False)()
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)


def test_observation_reports_the_training_run_feature_by_feature():
    """The env fills each feature from the right number (tests/test_control.py pins the feature order)."""
    env = UNetLREnv("fast", **SHORT, **{"env.history": 3})
    cfg = env.config.env
    assert env.observation_space.shape == (len(OBS_FEATURES) + 2 * 3,)
    names = observation_names(cfg)
    assert len(names) == env.observation_space.shape[0]

    def scaled(lr):
        low, high = math.log10(cfg.lr_min), math.log10(cfg.lr_max)
        return 2 * (math.log10(lr) - low) / (high - low) - 1

    def check(obs, expected):
        assert env.observation_space.contains(obs)
        for name, value in expected.items():
            assert obs[names.index(name)] == pytest.approx(value, abs=1e-5), name

    obs, reset = env.reset(seed=0, options={"lr": 0.01})
    lags = {
        f"{name}{k}": value
        for k in (1, 2, 3)
        for name, value in (("dice_lag", reset["dice_mean"]), ("log_lr_lag", scaled(0.01)))
    }
    check(
        obs,
        {
            "log_lr": scaled(0.01),
            "budget_used": 0.0,
            "log_train_loss": math.log(reset["val_loss"]),
            "log_val_loss": math.log(reset["val_loss"]),
            "d_log_train_loss": 0.0,
            "d_log_val_loss": 0.0,
            "dice": reset["dice_mean"],
            "d_dice": 0.0,
            "log_grad_norm": 0.0,
            "log_update_ratio": 0.0,
            "first_step": 1.0,
            **lags,
        },
    )
    obs, _, _, _, info = env.step(4)  # x2
    assert info["train_loss"] != info["val_loss"] and info["dice_mean"] != reset["dice_mean"]
    check(
        obs,
        {
            "log_lr": scaled(0.02),
            "budget_used": 1 / 3,
            "log_train_loss": math.log(info["train_loss"]),
            "log_val_loss": math.log(info["val_loss"]),
            "d_log_train_loss": math.log(info["train_loss"] / reset["val_loss"]),
            "d_log_val_loss": math.log(info["val_loss"] / reset["val_loss"]),
            "dice": info["dice_mean"],
            "d_dice": info["dice_mean"] - reset["dice_mean"],
            "log_grad_norm": math.log10(info["grad_norm"]),
            "log_update_ratio": math.log10(info["update_ratio"]),
            "first_step": 0.0,
            "dice_lag1": reset["dice_mean"],
            "log_lr_lag1": scaled(0.01),
        },
    )


def test_same_seed_and_actions_give_the_same_trajectory():
    actions = [4, 0, 2]
    a = rollout(UNetLREnv("fast", **SHORT), 7, actions)
    b = rollout(UNetLREnv("fast", **SHORT), 7, actions)
    for (obs_a, r_a, info_a), (obs_b, r_b, info_b) in zip(a, b):
        np.testing.assert_array_equal(obs_a, obs_b)
        assert r_a == r_b and info_a["dice_mean"] == info_b["dice_mean"]
    c = rollout(UNetLREnv("fast", **SHORT), 8, actions)
    assert c[0][2]["instance"] != a[0][2]["instance"] or c[-1][1] != a[-1][1]


def test_action_multiplies_lr_and_stays_within_bounds():
    env = UNetLREnv("fast", **SHORT, **{"env.lr_max": 0.2, "env.initial_lr_max": 0.2})
    env.reset(seed=0, options={"lr": 0.15})
    _, _, _, _, info = env.step(4)  # x2 -> clipped to lr_max
    assert info["lr"] == pytest.approx(0.2)
    _, _, _, _, info = env.step(0)  # x0.5
    assert info["lr"] == pytest.approx(0.1)


def test_continuous_action_is_log_scale():
    env = UNetLREnv("fast", **SHORT, **{"env.action": "continuous"})
    env.reset(seed=0, options={"lr": 0.01})
    _, _, _, _, info = env.step(np.array([1.0], np.float32))
    assert info["lr"] == pytest.approx(0.01 * 10**env.config.env.max_log10_change)


@pytest.mark.parametrize(
    "mode, bad, good",
    [
        ("discrete", [-1, 5, 7, 2.0, True, np.array([7]), "2"], [np.int64(2), np.array(2), np.array([2])]),
        (
            "continuous",
            [1.5, np.array([-1.01]), np.array([np.nan]), np.zeros(2, np.float32), "x"],
            [np.array([0.5], np.float32), np.array([-1.0]), 0.25],
        ),
    ],
)
def test_an_action_outside_the_action_space_is_refused(mode, bad, good):
    """Indexing the factors took -1 as the last one and failed on 7 with an IndexError; a continuous action
    past [-1, 1] was clipped without a word. Refused like ``Discrete.contains`` / ``Box.contains``."""
    env = UNetLREnv("fast", **SHORT, **{"env.action": mode})
    env.reset(seed=0)
    for action in bad:
        with pytest.raises(ValueError, match=r"outside the action space .*: pass "):
            env.step(action)
    for action in good:  # what SB3, the vector envs and the predictors pass: numpy scalars, 0-d or 1-element
        env.step(action)


def test_return_without_penalties_telescopes_to_final_minus_initial_dice():
    env = UNetLREnv("fast", **SHORT, **{"penalty.divergence": 0.0})
    trajectory = rollout(env, 0, [2, 3, 2], options={"lr": 0.05})
    final = trajectory[-1][2]
    assert final["final_dice"] != final["initial_dice"]  # something happened, so the identity is not 0 == 0
    total = sum(r for _, r, _ in trajectory)
    assert total == pytest.approx((final["final_dice"] - final["initial_dice"]) * env.config.env.reward_scale)


def test_divergence_terminates_with_penalty_and_never_raises():
    env = UNetLREnv("fast", **{"env.lr_max": 1e4, "penalty.divergence": 2.0})
    env.reset(seed=0, options={"lr": 1e4})
    obs, reward, terminated, truncated, info = env.step(env.keep_action)
    assert info["diverged"] and terminated and not truncated
    assert info["penalty/divergence"] == 2.0 and reward <= -2.0 and info["final_dice"] == 0.0
    assert np.all(np.isfinite(obs)) and env.observation_space.contains(obs)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(env.keep_action)


def test_a_rolled_back_blow_up_costs_its_epoch_not_the_episode():
    env = UNetLREnv(
        "fast",
        **{
            "env.lr_max": 1e4,
            "env.epochs": 3,
            "env.action": "residual",
            "env.offsets": [0.0, 6.0],
            "env.on_divergence": "rollback",
        },
    )
    _, start = env.reset(seed=0)
    first = env.step(0)
    measured = env._control.suggested
    obs, reward, terminated, truncated, info = env.step(1)  # 1e6 x the suggestion: blows up
    assert info["rolled_back"] and not info["diverged"] and not terminated and not truncated
    assert info["dice_mean"] == first[4]["dice_mean"] and info["val_loss"] == pytest.approx(
        first[4]["val_loss"]
    )
    assert reward == -info["penalty/divergence"] < 0 and env.observation_space.contains(obs)
    names = [f[0] for f in OBS_FEATURES]
    assert obs[names.index("log_train_loss")] == 5.0 and obs[names.index("log_update_ratio")] == 2.0
    suggested = env._control.suggested
    assert suggested == pytest.approx(measured * 10**-0.5)  # half a decade below the suggestion that blew up
    obs, reward, terminated, _, info = env.step(0)  # the suggestion: trains again
    assert terminated and not info["rolled_back"] and info["lr"] == pytest.approx(suggested)
    assert math.isfinite(info["val_loss"]) and 0.0 <= env.evaluate_test() <= 1.0


@pytest.mark.parametrize("limits", [(0.0, math.inf), (math.inf, 0.0)], ids=["train", "val"])
def test_the_env_undoes_a_loss_spike_it_is_given_the_limits_of(monkeypatch, limits):
    from rlsched.control.interface import ControlState

    monkeypatch.setattr(
        ControlState, "loss_limits", lambda self: limits
    )  # every finite loss of one kind spikes
    env = UNetLREnv("fast", **{"env.epochs": 2, "env.on_divergence": "rollback"})
    env.reset(seed=0)
    *_, info = env.step(env.keep_action)
    assert info["rolled_back"] and math.isfinite(info["train_loss"]) and not info["diverged"]


def test_budget_end_is_terminal_not_truncated():
    """The observation carries the budget spent, so its end is a true terminal state: never bootstrapped."""
    env = UNetLREnv("fast", **SHORT)
    env.reset(seed=0, options={"lr": 0.01})
    steps = [env.step(2) for _ in range(3)]
    assert [(terminated, truncated) for _, _, terminated, truncated, _ in steps] == [(False, False)] * 2 + [
        (True, False)
    ]
    assert [info["epoch"] for *_, info in steps] == [1, 2, 3]
    assert "final_dice" in steps[-1][4] and "final_dice" not in steps[-2][4]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(2)


def test_instance_sets_are_fixed_by_the_preset():
    """Every published comparison names its held-out instances by preset and index: they must not drift."""
    config = UNetLREnv("fast").config
    cfg = config.env
    train, heldout = make_instances(config, "train"), make_instances(config, "heldout")
    assert (len(train), len(heldout)) == (cfg.train_instances, cfg.heldout_instances) == (16, 4)
    assert heldout[:2] == [
        Instance("heldout", 0, 995326737, 880480477, pytest.approx(0.013209942215439344)),
        Instance("heldout", 1, 613677793, 272165816, pytest.approx(0.2283595743595669)),
    ]
    assert train[0] == Instance("train", 0, 1403976921, 1307735269, pytest.approx(0.07528712460793205))
    assert all(cfg.initial_lr_min <= i.initial_lr <= cfg.initial_lr_max for i in train + heldout)
    assert [i.index for i in train] == list(range(16))
    with pytest.raises(dataclasses.FrozenInstanceError):
        train[0].initial_lr = 1.0


def test_heldout_instances_are_disjoint_and_selectable():
    env = UNetLREnv("fast", **SHORT)
    train = make_instances(env.config, "train")
    heldout = make_instances(env.config, "heldout")
    assert not {i.data_seed for i in train} & {i.data_seed for i in heldout}
    _, info = env.reset(options={"split": "heldout", "instance": 2})
    assert (
        info["split"] == "heldout" and info["instance"] == 2 and info["initial_lr"] == heldout[2].initial_lr
    )
    for options, message in [
        ({"split": "test"}, "unknown split"),
        ({"instance": 99}, "out of range"),
        ({"split": "heldout", "instance": len(heldout)}, "out of range"),
        ({"instanse": 1}, "unknown reset option"),
    ]:
        with pytest.raises(ValueError, match=message):
            env.reset(options=options)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_schedule_through_env_equals_schedule_on_trainer(schedule):
    env = UNetLREnv("fast")
    instance = env.instances["heldout"][0]
    steps = env.config.env.steps
    direct = list(
        run_schedule(
            env.config,
            FixedSchedule(schedule, 0.05, steps),
            make_dataset(env.config.data, instance.data_seed),
            instance.init_seed,
        )
    )

    through_env = []
    plan = FixedSchedule(schedule, 0.05, steps)
    env.reset(options={"instance": instance, "lr": plan.lr})
    for _ in range(steps):
        env.set_lr(plan.lr)
        _, _, terminated, _, info = env.step(env.keep_action)
        through_env.append(info)
        plan.step(info["dice_mean"])
        if terminated:
            break
    assert len(direct) == len(through_env) == steps
    for d, e in zip(direct, through_env):
        for key in ("lr", "train_loss", "val_loss", "dice_mean", "grad_norm", "update_ratio"):
            assert d[key] == e[key], key


def test_first_step_flag_marks_the_unmeasured_features_at_reset():
    env = UNetLREnv("fast", **SHORT)
    names = observation_names(env.config.env)
    flag, grad, update = (
        names.index("first_step"),
        names.index("log_grad_norm"),
        names.index("log_update_ratio"),
    )
    obs, _ = env.reset(seed=0)
    assert obs[flag] == 1.0 and obs[grad] == 0.0 and obs[update] == 0.0
    obs, _, _, _, info = env.step(env.keep_action)
    assert obs[flag] == 0.0
    assert obs[grad] == pytest.approx(np.log10(info["grad_norm"]), abs=1e-5)
    assert obs[update] == pytest.approx(np.log10(info["update_ratio"]), abs=1e-5)


def test_absolute_actions_set_a_grid_lr_and_fixed_schedules_still_drive_the_env():
    env = UNetLREnv(
        "fast",
        **SHORT,
        **{"env.action": "absolute", "env.grid_points": 5, "env.lr_min": 1e-4, "env.lr_max": 1.0},
    )
    assert env.action_space == gym.spaces.Discrete(5)
    gym_check_env(env, skip_render_check=True)
    env.reset(seed=0)
    assert env.step(3)[4]["lr"] == pytest.approx(0.1)
    assert env.step(0)[4]["lr"] == pytest.approx(1e-4)
    env.set_lr(0.0123)  # how the harness runs a fixed schedule: the action is then ignored
    assert env.step(env.keep_action)[4]["lr"] == pytest.approx(0.0123)


def test_restoring_a_snapshot_replays_the_episode_exactly_from_there():
    """Branched rollouts try several actions from one state: a restored episode must continue bit for bit,
    also after the env ran another instance in between, and must differ when a different action is taken."""
    env = UNetLREnv("fast", **{"env.epochs": 4})
    keep = env.keep_action
    env.reset(seed=0, options={"instance": 1})
    env.step(keep)
    snapshot = env.snapshot()

    def finish(first):
        rewards = [env.step(first)[1]]
        while True:
            obs, reward, terminated, _, info = env.step(keep)
            rewards.append(reward)
            if terminated:
                return rewards, obs, env.evaluate_test()

    straight = finish(keep)
    env.reset(options={"instance": 0})  # another instance's trainer in between
    env.step(keep)
    obs = env.restore(snapshot)
    assert obs.shape == env.observation_space.shape
    replayed = finish(keep)
    assert replayed[0] == straight[0] and replayed[2] == straight[2]
    np.testing.assert_array_equal(replayed[1], straight[1])
    env.restore(snapshot)
    other = finish(env.action_space.n - 1 if isinstance(env.action_space, spaces.Discrete) else keep)
    assert other[0][0] != straight[0][0]
    with pytest.raises(RuntimeError, match="running episode"):
        env.snapshot()
