"""Branched rollouts: each candidate's value is what that action, then the rule, really ends at; relabelling
keeps the rule's action unless a candidate beats it by the margin; cloning the labels moves the policy."""

import json

import numpy as np
import pytest
from conftest import SUGGESTED_TEACHER, train_tiny

from rlsched.agents.branched import BranchedState, branch_episode, candidate_actions, collect
from rlsched.config import with_overrides
from rlsched.control.env import UNetLREnv, make_instances
from rlsched.control.interface import feature_index
from rlsched.control.rules import ScriptedRule

DICE, BUDGET = feature_index("dice"), feature_index("budget_used")
RESIDUAL = (("env.action", '"residual"'), ("env.epochs", "3"))


@pytest.fixture(scope="module")
def residual(fast_config):
    return with_overrides(fast_config, RESIDUAL)


def test_each_branch_value_is_the_final_dice_of_that_action_then_the_rule(residual):
    rule = ScriptedRule(residual.env, 0.01, follow_suggestion=True)
    policy = lambda obs: int(rule.actions(obs)[0])  # noqa: E731
    instance = make_instances(residual, "train")[2]
    candidates = candidate_actions(residual.env, (0.0, -1.0, 0.5))
    episode = branch_episode(UNetLREnv(config=residual), policy, instance, (1,), candidates)
    (state,) = episode.branches
    assert state.step == 1 and set(state.values) == set(candidates) | {state.base_action}
    assert state.values[state.base_action] == episode.final_dice  # the main episode is the base action's run
    assert episode.epochs == 3 + sum(3 - 1 for c in candidates if c != state.base_action)
    # replay one branch by hand in a fresh env: the same final validation Dice
    env = UNetLREnv(config=residual)
    obs, _ = env.reset(options={"instance": instance})
    obs = env.step(episode.actions[0])[0]
    low = candidates[1]
    action = low
    while True:
        obs, _, terminated, _, info = env.step(action)
        if terminated:
            break
        action = policy(obs)
    assert info["final_dice"] == state.values[low]
    assert len(episode.observations) == len(episode.actions) == len(episode.rewards) == 3
    record = json.loads(json.dumps(episode.record()))  # what episodes.jsonl keeps
    assert record["phase"] == "branched" and record["epochs"] == episode.epochs
    assert [b["step"] for b in record["branches"]] == [b.step for b in episode.branches]
    assert record["branches"][0]["values"] == {str(a): v for a, v in state.values.items()}
    assert np.array_equal(np.array(record["branches"][0]["observation"], np.float32), state.observation)


def test_a_held_branch_keeps_its_offset_to_the_end_and_the_improved_episode_switches_to_it(residual):
    rule = ScriptedRule(residual.env, 0.01, follow_suggestion=True)
    policy = lambda obs: int(rule.actions(obs)[0])  # noqa: E731
    instance = make_instances(residual, "train")[2]
    low = candidate_actions(residual.env, (-1.0,))[0]
    candidates = candidate_actions(residual.env, (0.0, -1.0))
    episode = branch_episode(UNetLREnv(config=residual), policy, instance, (1,), candidates, hold=True)
    (state,) = episode.branches
    later, rewards = state.paths[low]
    env = UNetLREnv(config=residual)  # replay by hand: the rule's first action, then the offset throughout
    obs, _ = env.reset(options={"instance": instance})
    obs = env.step(episode.actions[0])[0]
    seen, gains = [], []
    while True:
        obs, reward, terminated, _, info = env.step(low)
        gains.append(reward)
        if terminated:
            break
        seen.append(obs)
    assert info["final_dice"] == state.values[low] and gains == pytest.approx(rewards)
    assert len(later) == len(seen) == 1 and np.array_equal(later[0], seen[0])
    observations, actions, played = episode.switched(margin=-1.0)  # any value beats the base by -1
    best = state.best(-1.0)
    assert actions[:1] == episode.actions[:1] and actions[1:] == [best] * 2
    assert len(observations) == len(actions) == len(played) == 3
    assert episode.switched(margin=1.0) == (episode.observations, episode.actions, episode.rewards)


class ShowsDiceZero(UNetLREnv):
    """Reports validation Dice 0 after the slices in ``zero_after`` and 0.5 elsewhere (the rule reads LRs only)."""

    zero_after: tuple[int, ...] = ()

    def _shown(self, obs):
        obs = obs.copy()
        slices = round(float(obs[BUDGET]) * self.config.env.steps)
        obs[DICE] = 0.0 if slices in self.zero_after else 0.5
        return obs

    def reset(self, **kwargs):
        obs, info = super().reset(**kwargs)
        return self._shown(obs), info

    def step(self, action):
        obs, *rest = super().step(action)
        return (self._shown(obs), *rest)


@pytest.mark.parametrize(
    "zero_after, stall_states, branched",
    [((1, 2), 0, []), ((1, 2), 1, [2]), ((1, 2), 3, [2]), ((2,), 3, []), ((0, 1), 3, [])],
)
def test_stall_branching_starts_where_the_run_sat_below_the_stall_dice_for_two_epochs(
    residual, zero_after, stall_states, branched
):
    """At Dice 0 after slices 1 and 2 one more slice stalls the run: branched there; after slice 2 alone, or
    before any slice (nothing trained yet) and after slice 1, it is not."""
    rule = ScriptedRule(residual.env, 0.01, follow_suggestion=True)
    policy = lambda obs: int(rule.actions(obs)[0])  # noqa: E731
    instance = make_instances(residual, "train")[2]
    candidates = candidate_actions(residual.env, (0.0, -1.0))
    env = type("Shown", (ShowsDiceZero,), {"zero_after": zero_after})(config=residual)
    episode = branch_episode(env, policy, instance, (), candidates, hold=True, stall_states=stall_states)
    assert [b.step for b in episode.branches] == branched
    assert episode.epochs == 3 + len(branched)  # a held branch from the last state trains one slice


def test_relabelling_needs_a_win_by_more_than_the_margin():
    state = BranchedState(np.zeros(3), 4, base_action=12, values={12: 0.50, 8: 0.53, 14: 0.45})
    assert state.best(margin=0.01) == 8
    assert state.best(margin=0.05) == 12  # a 0.03 win is within the margin: keep the rule's action


def test_candidates_must_be_residual_offsets(fast_config, residual):
    with pytest.raises(ValueError, match="env.action = 'residual'"):
        candidate_actions(fast_config.env, (0.0, -1.0))
    with pytest.raises(ValueError, match="offsets among env.offsets"):
        candidate_actions(residual.env, (0.0, -0.3))


@pytest.mark.parametrize("hold", [(), ("--branch-hold",)], ids=["one-slice", "held"])
def test_train_relabels_from_branches_and_records_their_epochs(tmp_path, hold):
    run = train_tiny(
        tmp_path,
        [f"{k}={v}" for k, v in RESIDUAL],
        *SUGGESTED_TEACHER,
        "--branch-episodes",
        "2",
        "--branch-states",
        "1",
        "--branch-offsets",
        "-1",
        *hold,
    )
    records = [json.loads(line) for line in (run / "episodes.jsonl").read_text().splitlines()]
    branched = [r for r in records if r.get("phase") == "branched"]
    assert len(branched) == 2
    assert all(r["epochs"] in (3 + 3 - s for s in range(3)) for r in branched)  # 3 main + the branch's rest


def test_branch_flags_need_the_warm_start(tmp_path, capsys):
    from rlsched import train

    with pytest.raises(SystemExit):
        train.main(
            ["--preset", "fast", "--bc-episodes", "0", "--branch-episodes", "4", "--runs-dir", str(tmp_path)]
        )
    assert "--branch-episodes (needs the warm start" in capsys.readouterr().err


def test_improve_clones_the_improved_label_over_the_base_labels_of_that_step(residual):
    """One episode relabelled at step 1: that label outweighs an unbranched episode's base label at the same
    state, and the policy then picks it there."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rlsched.agents.branched import BranchedEpisode, improve

    model = PPO("MlpPolicy", DummyVecEnv([lambda: UNetLREnv(config=residual)]), seed=0, device="cpu")
    rng = np.random.default_rng(0)
    observations = [rng.normal(size=model.observation_space.shape).astype(np.float32) for _ in range(3)]
    instance = make_instances(residual, "train")[0]

    def episode(branches):
        return BranchedEpisode(
            instance, observations, [12, 12, 12], [0.0] * 3, [0.01] * 3, 0.0, 0.5, branches, 3
        )

    better = BranchedState(observations[1], 1, 12, {12: 0.5, 4: 0.7})
    stats = improve(model, [episode([better]), episode([])], margin=0.01)
    actions = model.policy.predict(np.stack(observations), deterministic=True)[0]
    assert list(actions) == [12, 4, 12] and stats["branched/changed"] == 1


def test_improve_with_held_branches_clones_the_switched_episode(residual):
    """Held offset 4 won at step 1: the policy learns the rule's action before it and offset 4 from there on,
    in the states the switch visited (not the base episode's later states)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rlsched.agents.branched import BranchedEpisode, improve

    model = PPO("MlpPolicy", DummyVecEnv([lambda: UNetLREnv(config=residual)]), seed=0, device="cpu")
    rng = np.random.default_rng(1)
    observations = [rng.normal(size=model.observation_space.shape).astype(np.float32) for _ in range(4)]
    instance = make_instances(residual, "train")[0]
    better = BranchedState(observations[1], 1, 12, {12: 0.5, 4: 0.7}, {4: ([observations[3]], [0.1, 0.2])})
    episode = BranchedEpisode(
        instance, observations[:3], [12, 12, 12], [0.0] * 3, [0.01] * 3, 0.0, 0.5, [better], 5
    )
    improve(model, [episode], margin=0.01, hold=True)
    actions = model.policy.predict(np.stack(observations), deterministic=True)[0]
    assert actions[0] == 12 and actions[1] == 4 and actions[3] == 4


def test_improvement_learns_from_episodes_in_plan_order_whatever_order_workers_finish(
    residual, tmp_path, monkeypatch
):
    """Workers finish in an order the machine's load decides; cloning minibatches follow the episode order, so
    the same seed must hand ``improve`` the same list either way."""
    import rlsched.agents.branched as branched

    planned = [f"episode {k}" for k in range(5)]
    seen = []

    class Done:
        def __init__(self, name):
            self.name, self.epochs, self.branches = name, 3, []

        def record(self):
            return {"name": self.name}

    def finish_in(order):
        def collect(config, rule, picked, *args):
            return ((k, Done(planned[k])) for k in order)

        return collect

    monkeypatch.setattr(
        branched,
        "improve",
        lambda model, episodes, *a, **kw: (
            seen.append([e.name for e in episodes])
            or {"branched/changed": 0.0, "branched/states": 0.0, "bc/accuracy": 1.0}
        ),
    )
    rule = ScriptedRule(residual.env, 0.01, follow_suggestion=True)
    for order in ([0, 1, 2, 3, 4], [3, 0, 4, 2, 1]):
        monkeypatch.setattr(branched, "collect", finish_in(order))
        branched.improve_from_branches(
            None, residual, rule, tmp_path / "episodes.jsonl", 5, 1, (-1.0,), 0.01, 2, 0, hold=True
        )
    assert seen == [planned, planned]


def test_pooled_values_keep_an_advantage_states_share_and_drop_single_rollout_noise(residual):
    """Action 4's advantage grows with feature 0 (0.1 per unit, noise sd 0.02); action 7 is pure noise (sd 0.2).
    Each state's own argmax follows the noise in many states; the pooled model labels action 4 where its true
    advantage clears the margin and keeps the base action elsewhere."""
    from rlsched.agents.branched import BranchedEpisode, pooled

    rng = np.random.default_rng(0)
    instance = make_instances(residual, "train")[0]
    episodes, signs = [], []
    for _ in range(40):
        branches = []
        for step in range(3):
            obs = rng.normal(size=6).astype(np.float32)
            gain4 = 0.1 * obs[0] + rng.normal(0, 0.02)
            branches.append(
                BranchedState(obs, step, 12, {12: 0.5, 4: 0.5 + gain4, 7: 0.5 + rng.normal(0, 0.2)})
            )
            signs.append(0.1 * obs[0] > 0.01)
        episodes.append(BranchedEpisode(instance, [], [], [], [], 0.0, 0.5, branches, 9))
    raw = [b.best(0.01) for e in episodes for b in e.branches]
    smooth = [b.best(0.01) for e in pooled(episodes) for b in e.branches]
    assert sum(a == 7 for a in raw) > 30  # the noise wins a quarter of the states and more
    assert sum(a == 7 for a in smooth) < 5
    assert np.mean([(a == 4) == s for a, s in zip(smooth, signs)]) > 0.9
    assert all(b.values[b.base_action] == 0.0 for e in pooled(episodes) for b in e.branches)


@pytest.mark.parametrize("at, steps", [("suggestion", [[1], [1]]), ("random", None), ("stalls", [[], []])])
def test_collect_branches_where_asked(residual, at, steps):
    """``suggestion``: the one state after the first slice; ``random``: --branch-states distinct steps;
    ``stalls``: none in runs that never sit below the stall Dice for two slices (checked on their Dice)."""
    rule = ScriptedRule(residual.env, 0.01, follow_suggestion=True)
    instances = make_instances(residual, "train")[:2]
    candidates = candidate_actions(residual.env, (0.0, -1.0))
    episodes = [e for _, e in sorted(collect(residual, rule, instances, 2, candidates, 1, 0, True, at))]
    branched = [[b.step for b in e.branches] for e in episodes]
    if at == "random":
        assert all(len(set(s)) == 2 and set(s) <= {0, 1, 2} for s in branched)
    else:
        assert branched == steps
    if at == "stalls":
        low = [[o[DICE] < 0.01 for o in e.observations[1:]] for e in episodes]
        assert not any(a and b for run in low for a, b in zip(run, run[1:]))


def test_collect_refuses_an_unknown_branching_place(residual):
    rule = ScriptedRule(residual.env, 0.01, follow_suggestion=True)
    with pytest.raises(ValueError, match="expected one of random, stalls, suggestion"):
        next(collect(residual, rule, [], 1, (0,), 1, 0, at="x"))


def test_advantages_summarise_each_offset_against_the_rule_in_offset_order(residual):
    from rlsched.agents.branched import BranchedEpisode, advantages

    env = residual.env
    base, low, high = candidate_actions(env, (0.0, -1.0, 0.5))
    instance = make_instances(residual, "train")[0]
    values = [(0.5, 0.3, 0.6), (0.4, 0.4, 0.2), (0.0, 0.1, 0.0)]  # base, low, high per state
    branches = [
        BranchedState(np.zeros(3, np.float32), t, base, {base: b, low: lo, high: hi})
        for t, (b, lo, hi) in enumerate(values)
    ]
    text = advantages([BranchedEpisode(instance, [], [], [], [], 0.0, 0.5, branches, 9)], env, 0.01)
    low_part, high_part = text.split(": ", 1)[1].split("; ")
    assert low_part.startswith("-1 -0.033 (") and low_part.endswith("better 33% / worse 33%")  # -0.2, 0, +0.1
    assert high_part.startswith("+0.5 -0.033 (") and high_part.endswith(
        "better 33% / worse 33%"
    )  # +.1, -.2, 0
    assert advantages([], env, 0.01).endswith("no branched states")
