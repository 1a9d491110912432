"""The scripted LR rule (a baseline and a teacher) and the behaviour-cloning warm start from it."""

import math

import numpy as np
import pytest

from rlsched.agents.sb3 import PPOSettings, build_ppo, make_vec
from rlsched.agents.teacher import behaviour_clone
from rlsched.config import load_config
from rlsched.control.env import UNetLREnv
from rlsched.control.interface import absolute_lrs, encode_lr, feature_index, observation_names
from rlsched.control.rules import ScriptedRule
from rlsched.experiment.harness import ScriptedController, run_episode
from rlsched.experiment.tuning import probe_grid, search_grid, search_target

TINY = {
    "data.image_size": 16,
    "data.n_train": 16,
    "data.n_val": 8,
    "env.epochs": 4,
    "env.factors": [0.25, 0.5, 1.0, 2.0, 4.0],
}


def test_rule_steers_towards_its_target_without_overshooting():
    env = load_config("fast", TINY).env  # factors 0.25, 0.5, 1, 2, 4
    rule = ScriptedRule(env, target=0.05)
    assert rule.action(0.001) == 4  # x4 -> 0.004: still far below
    assert rule.action(0.02) == 3  # x2 -> 0.04 is closer to 0.05 than x4 -> 0.08
    assert rule.action(0.05) == 2 and rule.action(0.06) == 2  # at (or near) the target: hold
    assert rule.action(0.3) == 0 and rule.action(0.12) == 1  # from above: x0.25 -> 0.075, x0.5 -> 0.06
    raw = np.zeros((2, 5), np.float32)
    raw[:, 0] = [
        encode_lr(env, 0.001),
        encode_lr(env, 0.3),
    ]  # the rule reads the LR back from the log_lr feature
    assert rule.actions(raw).tolist() == [4, 0]
    with pytest.raises(ValueError, match="factor of 1.0"):
        ScriptedRule(load_config("fast", {"env.action": "continuous"}).env, 0.05)


def test_with_absolute_actions_the_rule_jumps_to_the_grid_lr_nearest_its_target():
    env = load_config(
        "fast", {"env.action": "absolute", "env.grid_points": 21}
    ).env  # quarter decades, 1e-5..1
    rule = ScriptedRule(env, target=0.05)
    grid = absolute_lrs(env)
    assert grid[rule.action(1e-4)] == pytest.approx(10**-1.25) == pytest.approx(grid[rule.action(0.9)])


def test_the_suggestion_rule_probes_at_its_target_then_follows_the_suggested_lr():
    env = load_config("fast", {"env.action": "absolute", "env.grid_points": 21}).env
    rule = ScriptedRule(env, target=0.01, follow_suggestion=True)
    raw = np.zeros((2, len(observation_names(env))), np.float32)
    raw[:, feature_index("log_lr")] = encode_lr(env, 0.01)
    raw[:, feature_index("log_lr_suggested")] = encode_lr(env, 1e-3)
    # before the first slice nothing is suggested yet: probe at 0.01
    raw[0, feature_index("first_step")] = 1.0
    grid = absolute_lrs(env)
    assert grid[rule.actions(raw)].tolist() == pytest.approx([1e-2, 1e-3])


def test_the_suggestion_controller_trains_at_the_lr_the_first_slice_suggests():
    config = load_config("fast", {**TINY, "env.action": "absolute", "env.grid_points": 21})
    env = UNetLREnv(config=config)
    episode = run_episode(env, ScriptedController(0.01, follow_suggestion=True), env.instances["heldout"][0])
    lrs = [r["lr"] for r in episode.records[1:]]
    first = episode.records[1]
    suggested = first["lr"] * config.env.target_update_ratio / first["update_ratio"]
    nearest = absolute_lrs(config.env)[np.argmin(np.abs(np.log(absolute_lrs(config.env) / suggested)))]
    assert lrs[0] == pytest.approx(1e-2) and lrs[1:] == pytest.approx([nearest] * (len(lrs) - 1))


def test_with_residual_actions_the_suggestion_rule_is_the_offset_zero_after_its_probe():
    """Residual actions offset the suggested LR: the rule probes at its target (an offset from env.probe_lr,
    whatever the initial LR), then does nothing, and the env trains at exactly the suggested LR."""
    config = load_config("fast", {**TINY, "env.action": "residual"})
    env = UNetLREnv(config=config)
    episode = run_episode(
        env, ScriptedController(0.01, follow_suggestion=True), env.instances["heldout"][0], initial_lr=0.2
    )
    lrs = [r["lr"] for r in episode.records[1:]]
    first = episode.records[1]
    suggested = first["lr"] * config.env.target_update_ratio / first["update_ratio"]
    assert lrs[0] == pytest.approx(1e-2)  # +1 decade from probe_lr 1e-3
    assert lrs[1:] == pytest.approx([min(suggested, config.env.lr_max)] * (len(lrs) - 1), rel=1e-5)
    rule = ScriptedRule(config.env, target=0.01, follow_suggestion=True)
    zero = list(config.env.offsets).index(0.0)
    raw = np.zeros((1, len(observation_names(config.env))), np.float32)
    raw[0, feature_index("log_lr")] = encode_lr(config.env, 0.01)
    raw[0, feature_index("log_lr_suggested")] = encode_lr(config.env, 0.003)
    assert rule.actions(raw).tolist() == [zero]
    fixed_target = ScriptedRule(
        config.env, target=0.03
    )  # the plain rule: the offset from the suggestion to 0.03
    assert config.env.offsets[int(fixed_target.actions(raw)[0])] == pytest.approx(1.0)


def test_scripted_controller_climbs_to_the_target_then_holds():
    env = UNetLREnv(config=load_config("fast", TINY))
    instance = env.instances["heldout"][0]
    episode = run_episode(env, ScriptedController(0.05), instance, initial_lr=0.002)
    lrs = [r["lr"] for r in episode.records]
    assert lrs == pytest.approx([0.002, 0.008, 0.032, 0.064, 0.064])


def test_behaviour_cloning_makes_the_policy_follow_the_rule(tmp_path):
    config = load_config("fast", TINY)
    vec = make_vec(config, 1, None, normalize_obs=True)
    model = build_ppo(config, PPOSettings(episodes_per_rollout=1), vec, seed=0, tensorboard_dir=tmp_path)
    rule = ScriptedRule(config.env, target=0.02)
    stats = behaviour_clone(model, rule, episodes_per_env=3)
    assert stats["bc/accuracy"] >= 0.9 and model.num_timesteps == 3 * config.env.steps
    assert vec.obs_rms.count > 1  # VecNormalize saw the teacher's observations
    # on a held-out instance, the cloned policy starts like the rule (states like the teacher's first steps)
    env = UNetLREnv(config=config)
    obs, _ = env.reset(options={"instance": env.instances["heldout"][0], "lr": 1e-3})
    action, _ = model.predict(vec.normalize_obs(obs), deterministic=True)
    assert int(action) == rule.action(1e-3) == 4
    assert math.isfinite(stats["bc/value_loss"])


def test_the_teacher_target_is_grid_searched_on_train_instances():
    """The warm start's target LR comes from the comparison's base-LR search (one grid point per decade)."""
    config = load_config("fast", {**TINY, "env.epochs": 2})
    name, target, episodes = search_target(config, instances=1, workers=1)
    grid = search_grid(config, 1)
    assert name == "scripted" and target in grid and len(episodes) == len(grid)
    assert all(e.instance.split == "train" and e.method.startswith("scripted@") for e in episodes)


def test_the_probe_grid_stops_where_a_residual_first_slice_can_reach():
    """probe_lr 1e-3 with offsets up to +1.5: the decades 0.1 and 1 would both train the probe at 10**-1.5."""
    config = load_config("fast", {**TINY, "env.action": "residual"})
    assert search_grid(config, 1)[-2:] == [0.1, 1.0]
    assert probe_grid(config) == pytest.approx([1e-4, 1e-3, 1e-2, 10**-1.5])
    assert probe_grid(load_config("fast", TINY)) == search_grid(load_config("fast", TINY), 1)  # discrete


def test_the_offset_rule_shifts_the_suggestion_by_its_offset_after_the_probe():
    env = load_config("fast", {**TINY, "env.action": "residual"}).env
    rule = ScriptedRule.named(env, "offset:-0.5", target=0.01)
    raw = np.zeros((2, len(observation_names(env))), np.float32)
    raw[:, feature_index("log_lr")] = encode_lr(env, 0.01)
    raw[:, feature_index("log_lr_suggested")] = encode_lr(env, 0.003)
    raw[0, feature_index("first_step")] = 1.0  # the probe: nothing suggested yet
    offsets = np.asarray(env.offsets)[rule.actions(raw)]
    assert offsets.tolist() == pytest.approx(
        [1.0, -0.5]
    )  # probe at 0.01 = probe_lr x 10, then suggestion / 10**0.5
    assert ScriptedRule.named(env, "suggested", 0.01) == ScriptedRule(env, 0.01, follow_suggestion=True)
    for bad in ("offset", "suggested:1", "offset:x", "offset:nan", "cosine"):
        with pytest.raises(ValueError, match="offset:<decades>"):
            ScriptedRule.named(env, bad, 0.01)


def test_the_offset_rule_probes_at_the_suggested_rules_target_then_searches_its_offsets():
    """Only the non-zero offsets cost episodes: the suggested rule's runs at its target are the offset 0's."""
    config = load_config("fast", {**TINY, "env.epochs": 2, "env.action": "residual"})
    name, target, episodes = search_target(config, 1, 1, "offset", (-1.0, 0.0, 0.5))
    grid = probe_grid(config)
    assert target in grid and len(episodes) == len(grid) + 2
    assert name in ("offset:-1", "offset:0", "offset:0.5")
    assert sorted(e.method for e in episodes[len(grid) :]) == [
        f"offset:-1@{target:g}",
        f"offset:0.5@{target:g}",
    ]
    # a given target and one offset: no search at all
    assert search_target(config, 1, 1, "offset", (-0.5,), target=0.01) == ("offset:-0.5", 0.01, [])


def test_exploring_warm_start_steps_off_the_rule_yet_labels_with_it(tmp_path, monkeypatch):
    """With ``explore=1`` every step takes a random action, while the cloned labels stay the rule's."""
    config = load_config("fast", TINY)
    vec = make_vec(config, 1, None, normalize_obs=True)
    model = build_ppo(config, PPOSettings(episodes_per_rollout=1), vec, seed=0, tensorboard_dir=tmp_path)
    taken, rules, fitted = [], [], []

    class RecordedRule(ScriptedRule):
        def actions(self, raw_obs):
            rules.append(int(super().actions(raw_obs)[0]))
            return super().actions(raw_obs)

    rule = RecordedRule(config.env, target=0.02)
    step, evaluate = vec.step, model.policy.evaluate_actions
    monkeypatch.setattr(vec, "step", lambda a: (taken.append(int(a[0])), step(a))[1])
    monkeypatch.setattr(
        model.policy, "evaluate_actions", lambda x, a: (fitted.append(a.tolist()), evaluate(x, a))[1]
    )
    behaviour_clone(model, rule, episodes_per_env=2, epochs=1, explore=1.0, seed=3)
    assert len(taken) == len(rules) == 2 * config.env.steps
    assert taken != rules and len(set(taken)) > 1  # random actions were taken ...
    assert fitted == [rules]  # ... and the policy was fitted to the rule's
