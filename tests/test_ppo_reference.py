"""Behavioural checks of the reference PPO: each test fails if the PPO detail it names breaks."""

from __future__ import annotations

import dataclasses
import math
import pickle
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from rlsched.agents.ppo import PPOConfig, ReferencePPO, compute_gae


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny networks: torch's intra-op threading only adds overhead (and contention on small CI boxes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_cartpole(n_envs: int) -> gym.vector.VectorEnv:
    return RecordEpisodeStatistics(gym.make_vec("CartPole-v1", n_envs, vectorization_mode="sync"))


class CountingEnv(gym.Env):
    """Deterministic: obs = [steps taken], reward 1 per step, the episode ends after `length` steps."""

    def __init__(self, length: int, truncate: bool) -> None:
        self.observation_space = spaces.Box(0.0, 10.0, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.length, self.truncate = length, truncate

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.length
        return np.array([self.t], np.float32), 1.0, end and not self.truncate, end and self.truncate, {}


class TargetActionEnv(gym.Env):
    """Reward -(a - 0.5)^2 for a 1-D action in [-1, 1]; asserts it only ever receives in-bounds actions."""

    target = 0.5

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        assert self.action_space.contains(action), action
        self.t += 1
        return np.zeros(2, np.float32), -float((action[0] - self.target) ** 2), False, self.t >= 4, {}


def counting_envs() -> SyncVectorEnv:
    """env 0 truncates after 3 steps, env 1 terminates after 4."""
    return SyncVectorEnv([lambda: CountingEnv(3, truncate=True), lambda: CountingEnv(4, truncate=False)])


class OffsetActionEnv(CountingEnv):
    """CountingEnv with actions numbered 5, 6, 7 (Discrete with a start); asserts it only receives those."""

    def __init__(self) -> None:
        super().__init__(4, truncate=False)
        self.action_space = spaces.Discrete(3, start=5)

    def step(self, action):
        assert self.action_space.contains(action), action
        return super().step(action)


# ------------------------------------------------------------------------------------------------ config


def test_config_defaults_are_cleanrl_and_sb3_ones_and_frozen():
    """n_steps and n_epochs as CleanRL's PPO, the rest as SB3's: results stay comparable with both."""
    assert dataclasses.asdict(PPOConfig()) == {
        "n_steps": 128,
        "batch_size": 64,
        "n_epochs": 4,
        "learning_rate": 3e-4,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "clip_range": 0.2,
        "clip_value": None,
        "ent_coef": 0.0,
        "vf_coef": 0.5,
        "max_grad_norm": 0.5,
        "target_kl": None,
        "normalize_advantage": True,
        "hidden": (64, 64),
        "anneal_lr": False,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        PPOConfig().n_steps = 1
    assert PPOConfig(n_steps=1, batch_size=1, n_epochs=1).n_epochs == 1
    for name in ("n_steps", "batch_size", "n_epochs"):
        with pytest.raises(ValueError, match=f"PPOConfig.{name} must be >= 1"):
            PPOConfig(**{name: 0})


def test_networks_start_orthogonal_with_cleanrl_gains():
    """Hidden layers gain sqrt(2), critic head 1, actor head 0.01 (near-uniform first policy); zero biases."""
    agent = ReferencePPO(make_cartpole(1), PPOConfig(), seed=0)
    for net, head_gain in ((agent.actor.net, 0.01), (agent.critic, 1.0)):
        linear = [m for m in net if isinstance(m, torch.nn.Linear)]
        assert len(linear) == 3
        for layer, gain in zip(linear, [math.sqrt(2), math.sqrt(2), head_gain]):
            w = layer.weight.detach()
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w  # orthogonal: gain^2 x identity
            torch.testing.assert_close(gram, gain**2 * torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
            assert not layer.bias.detach().any()


# ------------------------------------------------------------------------------------------------ GAE


def test_gae_matches_sb3_rollout_buffer():
    from stable_baselines3.common.buffers import RolloutBuffer

    rng = np.random.default_rng(0)
    n_steps, n_envs, gamma, gae_lambda = 32, 4, 0.97, 0.9
    rewards = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    values = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    dones = rng.random((n_steps, n_envs)) < 0.15  # episode ended at step t
    dones[-1] = [True, False, True, False]
    last_values = rng.normal(size=n_envs).astype(np.float32)
    assert dones[1:-1].sum() >= 5  # terminations in the middle of the rollout

    buffer = RolloutBuffer(
        n_steps,
        spaces.Box(-1, 1, (2,)),
        spaces.Discrete(2),
        "cpu",
        gae_lambda=gae_lambda,
        gamma=gamma,
        n_envs=n_envs,
    )
    buffer.rewards[:] = rewards
    buffer.values[:] = values
    buffer.episode_starts[1:] = dones[:-1]
    buffer.compute_returns_and_advantage(torch.as_tensor(last_values), dones[-1])

    next_values = np.concatenate([values[1:], last_values[None]])
    rewards_t, values_t, next_values_t, dones_t = map(torch.as_tensor, (rewards, values, next_values, dones))
    advantages, returns = compute_gae(rewards_t, values_t, next_values_t, dones_t, gamma, gae_lambda)
    np.testing.assert_allclose(advantages.numpy(), buffer.advantages, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(returns.numpy(), buffer.returns, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ ratio


def test_first_minibatch_ratio_is_one_and_later_ones_move():
    config = PPOConfig(n_steps=64, batch_size=64, n_epochs=3, learning_rate=0.01)
    agent = ReferencePPO(make_cartpole(4), config, seed=0)
    stats = agent.update(agent.collect_rollout())

    ratios = agent.last_update_ratios
    assert len(ratios) == 3 * 4  # epochs * minibatches
    assert abs(ratios[0] - 1.0) < 1e-6  # params have not moved since collection
    assert all(abs(r - 1.0) > 1e-4 for r in ratios[1:])
    assert stats["clip_fraction"] > 0
    assert stats["approx_kl"] > 0


def test_policy_loss_uses_stored_old_logprobs():
    agent = ReferencePPO(make_cartpole(4), PPOConfig(n_steps=64, batch_size=64), seed=1)
    rollout = agent.collect_rollout()
    batch = rollout.flatten()
    _, stats = agent.compute_loss(batch)
    shifted = dataclasses.replace(batch, logprobs=batch.logprobs + 0.3)
    _, shifted_stats = agent.compute_loss(shifted)

    assert abs(stats["ratio_mean"].item() - 1.0) < 1e-6
    assert shifted_stats["ratio_mean"].item() == pytest.approx(math.exp(-0.3), abs=1e-5)
    assert abs(shifted_stats["policy_loss"].item() - stats["policy_loss"].item()) > 1e-3

    # And update() itself trains against the stored values, not freshly recomputed ones.
    agent.update(dataclasses.replace(rollout, logprobs=rollout.logprobs + 0.3))
    assert agent.last_update_ratios[0] == pytest.approx(math.exp(-0.3), abs=1e-5)


def test_value_loss_is_unclipped_by_default_and_pessimistic_when_clipped():
    config = PPOConfig(n_steps=8, batch_size=16)
    unclipped_agent = ReferencePPO(counting_envs(), config, seed=0)
    # Same seed, so the same networks: only the value-loss rule differs.
    clipped_agent = ReferencePPO(counting_envs(), dataclasses.replace(config, clip_value=0.2), seed=0)
    batch = unclipped_agent.collect_rollout().flatten()
    # Returns equal the current predictions; the stored old values sit 5 below them.
    batch = dataclasses.replace(batch, returns=batch.values, values=batch.values - 5.0)

    _, unclipped = unclipped_agent.compute_loss(batch)
    _, clipped = clipped_agent.compute_loss(batch)
    assert unclipped["value_loss"].item() == pytest.approx(0.0, abs=1e-10)
    assert clipped["value_loss"].item() == pytest.approx(4.8**2, rel=1e-5)  # max(unclipped, clipped) error
    above = dataclasses.replace(batch, values=batch.returns + 5.0)  # the clip works downwards too
    assert clipped_agent.compute_loss(above)[1]["value_loss"].item() == pytest.approx(4.8**2, rel=1e-5)


@pytest.mark.parametrize("shift", [0.1, 0.3, -0.3])
def test_loss_and_statistics_by_hand(shift: float):
    """Stored log-probs = current + shift, so every ratio is exp(-shift): below, inside and above the clip."""
    config = PPOConfig(n_steps=8, batch_size=16, clip_range=0.2, ent_coef=0.01, vf_coef=0.5)
    agent = ReferencePPO(counting_envs(), config, seed=0)
    batch = agent.collect_rollout().flatten()
    batch = dataclasses.replace(batch, logprobs=batch.logprobs + shift)
    loss, stats = agent.compute_loss(batch)

    kept = batch[batch.valid]
    advantages = (kept.advantages - kept.advantages.mean()) / (kept.advantages.std(unbiased=False) + 1e-8)
    ratio = math.exp(-shift)
    policy = torch.max(-advantages * ratio, -advantages * min(max(ratio, 0.8), 1.2)).mean()
    with torch.no_grad():
        value = ((agent.critic(kept.obs).squeeze(-1) - kept.returns) ** 2).mean()
        entropy = agent.actor.distribution(kept.obs).entropy().mean()
    expected = {
        "policy_loss": policy,
        "value_loss": value,
        "entropy": entropy,
        "ratio_mean": ratio,
        "approx_kl": (ratio - 1) + shift,
        "clip_fraction": float(abs(ratio - 1) > 0.2),
    }
    for key, want in expected.items():
        assert stats[key].item() == pytest.approx(float(want), rel=1e-5, abs=1e-7), key
    assert loss.item() == pytest.approx(float(policy - 0.01 * entropy + 0.5 * value), rel=1e-5)

    # a minibatch with a single valid row averages over that row alone
    one = torch.tensor([int(torch.nonzero(batch.valid)[0]), int(torch.nonzero(~batch.valid)[0])])
    _, single = agent.compute_loss(batch[one])
    with torch.no_grad():
        error = (agent.critic(batch.obs[one[:1]]).squeeze() - batch.returns[one[0]]) ** 2
    assert single["value_loss"].item() == pytest.approx(error.item(), rel=1e-6)


def explained_variance(returns: torch.Tensor, values: torch.Tensor) -> float:
    return float(1 - (returns - values).var() / returns.var())


def test_critic_learns_the_returns_of_a_fixed_batch():
    """The value loss trains the critic: repeated updates on one rollout explain most of its returns."""
    agent = ReferencePPO(counting_envs(), PPOConfig(n_steps=32, batch_size=16, learning_rate=1e-2), seed=0)
    rollout = agent.collect_rollout()
    batch = rollout.flatten()
    returns = batch.returns[batch.valid]

    def critic_ev() -> float:
        with torch.no_grad():
            return explained_variance(returns, agent.critic(batch.obs).squeeze(-1)[batch.valid])

    before = critic_ev()
    stats = [agent.update(rollout) for _ in range(5)]
    assert before < 0.1 and critic_ev() > 0.6
    # The logged statistic is that of the values stored at collection time, so it is the same every update.
    stored = explained_variance(returns, batch.values[batch.valid])
    assert stored == pytest.approx(before, abs=1e-6)
    assert [s["explained_variance"] for s in stats] == pytest.approx([stored] * 5, abs=1e-6)


def test_each_epoch_visits_every_sample_once_in_full_minibatches(monkeypatch):
    agent = ReferencePPO(counting_envs(), PPOConfig(n_steps=16, batch_size=8, n_epochs=2), seed=0)
    rollout = agent.collect_rollout()
    seen = []
    compute_loss = agent.compute_loss
    monkeypatch.setattr(agent, "compute_loss", lambda mb: seen.append(mb.obs.shape[0]) or compute_loss(mb))
    agent.update(rollout)
    assert seen == [8] * 8  # 2 epochs x 32 samples / 8


def test_target_kl_ends_the_whole_update_at_the_first_minibatch_past_it():
    config = PPOConfig(n_steps=16, batch_size=8, n_epochs=3, learning_rate=1e-2, target_kl=1e-12)
    agent = ReferencePPO(counting_envs(), config, seed=0)
    before = [p.detach().clone() for p in agent.actor.parameters()]
    agent.update(agent.collect_rollout())
    assert len(agent.last_update_ratios) == 2  # the first step (ratio 1, KL 0) ran; the second stopped all
    assert any(not torch.equal(p, b) for p, b in zip(agent.actor.parameters(), before))


def test_explained_variance_of_constant_returns_is_undefined():
    agent = ReferencePPO(counting_envs(), PPOConfig(n_steps=8, batch_size=16), seed=0)
    rollout = agent.collect_rollout()
    stats = agent.update(dataclasses.replace(rollout, returns=torch.ones_like(rollout.returns)))
    assert math.isnan(stats["explained_variance"])


def test_annealed_learning_rate_falls_linearly_to_zero_over_the_run():
    logs: list[float] = []
    config = PPOConfig(n_steps=10, batch_size=20, learning_rate=0.03, anneal_lr=True)
    agent = ReferencePPO(counting_envs(), config, seed=0, log_fn=lambda s, n: logs.append(s["learning_rate"]))
    agent.learn(60)
    assert logs == pytest.approx([0.03, 0.02, 0.01])  # 20 of 60 steps per update
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_callback_stops_training_only_by_returning_false():
    agent = ReferencePPO(counting_envs(), PPOConfig(n_steps=10, batch_size=20), seed=0)
    agent.learn(60, callback=lambda a: None)
    assert agent.num_timesteps == 60
    agent.learn(200, callback=lambda a: False)
    assert agent.num_timesteps == 80


# ------------------------------------------------------------------------------------------------ autoreset


def test_truncation_bootstraps_termination_does_not_and_reset_steps_are_masked():
    gamma = 0.9
    agent = ReferencePPO(counting_envs(), PPOConfig(n_steps=10, batch_size=20, gamma=gamma), seed=0)
    r = agent.collect_rollout()

    # NEXT_STEP autoreset: the step after an episode end is a reset transition (invalid, reward 0).
    expected_valid = [[1, 1, 1, 0, 1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 0, 1, 1, 1, 1, 0]]
    assert r.valid.T.int().tolist() == expected_valid
    assert r.dones.T.int().tolist() == [[0, 0, 1, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0, 1, 0]]
    assert r.obs[3, 0].item() == 3.0  # the reset transition starts from the final observation

    with torch.no_grad():
        v_final = agent.critic(torch.tensor([[3.0]])).item()
    assert abs(v_final) > 1e-3  # otherwise the bootstrap check below would be vacuous
    for t in (2, 6):  # truncation: reward + gamma * V(final obs)
        assert r.rewards[t, 0].item() == pytest.approx(1.0 + gamma * v_final, abs=1e-6)
    for t in (3, 8):  # termination: no bootstrap
        assert r.rewards[t, 1].item() == 1.0
    assert r.rewards[~r.valid].eq(0).all()
    # GAE stops at an episode end instead of reaching into the reset transition after it.
    assert r.advantages[2, 0].item() == pytest.approx((r.rewards[2, 0] - r.values[2, 0]).item(), abs=1e-6)
    assert r.advantages[3, 1].item() == pytest.approx((r.rewards[3, 1] - r.values[3, 1]).item(), abs=1e-6)

    # Reset transitions are not trained on: garbage in those rows changes neither the loss nor any stat.
    batch = r.flatten()
    invalid = ~batch.valid

    def garbage(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.where(invalid.reshape(-1, *[1] * (x.dim() - 1)), torch.full_like(x, value), x)

    corrupted = dataclasses.replace(
        batch,
        obs=garbage(batch.obs, 100.0),
        logprobs=garbage(batch.logprobs, -50.0),
        values=garbage(batch.values, 1e6),
        advantages=garbage(batch.advantages, 1e6),
        returns=garbage(batch.returns, -1e6),
    )
    loss, stats = agent.compute_loss(batch)
    corrupted_loss, corrupted_stats = agent.compute_loss(corrupted)
    assert corrupted_loss.item() == pytest.approx(loss.item(), abs=1e-6)
    for key in stats:
        assert corrupted_stats[key].item() == pytest.approx(stats[key].item(), abs=1e-6), key


def test_logs_episodes_from_record_episode_statistics():
    logs: list[tuple[dict[str, float], int]] = []
    envs = RecordEpisodeStatistics(counting_envs())
    agent = ReferencePPO(
        envs, PPOConfig(n_steps=10, batch_size=20), seed=0, log_fn=lambda s, n: logs.append((s, n))
    )
    agent.learn(20)

    assert [n for _, n in logs] == [20]
    stats = logs[0][0]
    required = {
        "approx_kl",
        "clip_fraction",
        "explained_variance",
        "policy_loss",
        "value_loss",
        "entropy",
        "learning_rate",
        "episode_return_mean",
        "episode_length_mean",
    }
    assert required <= stats.keys()
    # Two episodes of 3 steps (env 0) and two of 4 (env 1) end in the 10-step rollout; raw env rewards.
    assert stats["episode_return_mean"] == 3.5
    assert stats["episode_length_mean"] == 3.5


# ------------------------------------------------------------------------------------------------ continuous


def test_gaussian_policy_stores_unclipped_actions_and_learns_the_target(tmp_path):
    envs = SyncVectorEnv([TargetActionEnv for _ in range(4)])
    config = PPOConfig(n_steps=32, batch_size=64, n_epochs=10, learning_rate=1e-2)
    agent = ReferencePPO(envs, config, seed=0)
    log_std_before = agent.actor.log_std.item()

    rollout = agent.collect_rollout()  # the env asserts it only sees clipped, in-bounds actions
    assert rollout.actions.abs().max() > 1.0  # storage keeps the unclipped sample ...
    with torch.no_grad():  # ... and its log-prob
        logprobs = agent.actor.distribution(rollout.obs).log_prob(rollout.actions)
    torch.testing.assert_close(logprobs, rollout.logprobs)

    agent.learn(2_048)
    action, _ = agent.predict(np.zeros(2, np.float32))
    assert action.shape == (1,)
    assert action[0] == pytest.approx(TargetActionEnv.target, abs=0.1)
    assert agent.actor.log_std.item() < log_std_before - 0.5  # exploration noise shrinks once on target

    path = tmp_path / "box.pt"
    agent.save(path)
    loaded = ReferencePPO.load(path)
    assert loaded.action_space == envs.single_action_space
    batch = np.zeros((3, 2), np.float32)
    np.testing.assert_array_equal(loaded.predict(batch)[0], agent.predict(batch)[0])


def test_pendulum_runs_with_actions_clipped_to_its_own_bounds():
    """Pendulum's torque lies in [-2, 2]: sampled actions are clipped there (not to [-1, 1]); its time
    limit ends every episode at 200 steps."""
    logs: list[dict[str, float]] = []
    envs = RecordEpisodeStatistics(gym.make_vec("Pendulum-v1", 2, vectorization_mode="sync"))
    agent = ReferencePPO(
        envs, PPOConfig(n_steps=128, batch_size=64), seed=0, log_fn=lambda s, n: logs.append(s)
    )
    log_std_before = agent.actor.log_std.detach().clone()
    agent.learn(512)
    assert len(logs) == 2 and all(math.isfinite(s["value_loss"]) for s in logs)
    assert "episode_return_mean" not in logs[0]
    assert logs[1]["episode_length_mean"] == 200  # both envs hit the time limit in the 2nd rollout
    assert -16.3 * 200 <= logs[1]["episode_return_mean"] < 0  # Pendulum's reward lies in [-16.27, 0]
    assert not torch.equal(agent.actor.log_std.detach(), log_std_before)

    observations = np.zeros((512, 3), np.float32)
    sampled = agent.predict(observations, deterministic=False)[0]
    assert sampled.shape == (512, 1) and sampled.dtype == np.float32
    assert sampled.min() == -2.0 and sampled.max() == 2.0  # clipped at the env's bounds ...
    assert ((np.abs(sampled) > 1) & (np.abs(sampled) < 2)).any()  # ... and not tighter


# ------------------------------------------------------------------------------------------------ CartPole


@pytest.mark.slow
def test_solves_cartpole():
    """SB3-zoo CartPole settings; seeds 0-7 all reach 500 by ~30k steps and keep it to 50k."""
    config = PPOConfig(
        n_steps=32,
        batch_size=256,
        n_epochs=20,
        gamma=0.98,
        gae_lambda=0.8,
        learning_rate=1e-3,
        anneal_lr=True,
        ent_coef=0.0,
    )
    agent = ReferencePPO(make_cartpole(8), config, seed=0)
    start = time.perf_counter()
    agent.learn(50_000)
    train_seconds = time.perf_counter() - start

    env = gym.make("CartPole-v1")
    returns = []
    for episode in range(20):
        obs, _ = env.reset(seed=10_000 + episode)
        total, done = 0.0, False
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    print(
        f"CartPole: mean return {np.mean(returns):.1f} after {agent.num_timesteps} steps "
        f"({train_seconds:.1f}s training)"
    )
    assert np.mean(returns) >= 475


# ------------------------------------------------------------------------------------------------ persistence


def test_save_load_roundtrip_and_resume(tmp_path):
    config = PPOConfig(n_steps=16, batch_size=32, n_epochs=2)
    agent = ReferencePPO(make_cartpole(4), config, seed=3)
    agent.learn(64)
    path = tmp_path / "ckpt" / "agent.pt"
    agent.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["agent.pt"]  # no temp file left behind

    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    loaded = ReferencePPO.load(path)  # predict-only
    assert loaded.num_timesteps == agent.num_timesteps == 64
    assert loaded.config == config
    saved_adam, loaded_adam = agent.optimizer.state_dict()["state"], loaded.optimizer.state_dict()["state"]
    assert saved_adam.keys() == loaded_adam.keys() and saved_adam
    for index, moments in saved_adam.items():
        for key, value in moments.items():
            torch.testing.assert_close(loaded_adam[index][key], value, rtol=0, atol=0)
    np.testing.assert_array_equal(loaded.predict(obs)[0], agent.predict(obs)[0])
    assert loaded.predict(obs[0])[0] == agent.predict(obs[0])[0]
    # The sampling RNG is restored too.
    np.testing.assert_array_equal(
        loaded.predict(obs, deterministic=False)[0], agent.predict(obs, deterministic=False)[0]
    )
    with pytest.raises(RuntimeError, match="predict-only"):
        loaded.learn(128)

    a = ReferencePPO.load(path, envs=make_cartpole(4))
    b = ReferencePPO.load(path, envs=make_cartpole(4))
    a.learn(128)
    b.learn(128)
    assert a.num_timesteps == 128  # resumed from 64, not restarted from 0
    for pa, pb, p0 in zip(a.actor.parameters(), b.actor.parameters(), loaded.actor.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)  # resume is deterministic (optimizer, RNGs)
    assert not all(torch.equal(pa, p0) for pa, p0 in zip(a.actor.parameters(), loaded.actor.parameters()))


def test_discrete_actions_keep_the_space_start_and_predict_is_greedy_by_default():
    envs = SyncVectorEnv([OffsetActionEnv, OffsetActionEnv])  # asserts every action is 5, 6 or 7
    agent = ReferencePPO(envs, PPOConfig(n_steps=8, batch_size=16), seed=0)
    agent.learn(16)
    obs = np.arange(40, dtype=np.float32).reshape(40, 1) / 4
    with torch.no_grad():
        greedy = agent.actor.distribution(torch.as_tensor(obs)).probs.argmax(-1).numpy() + 5
    np.testing.assert_array_equal(agent.predict(obs)[0], greedy)
    assert set(agent.predict(obs, deterministic=False)[0]) <= {5, 6, 7}
    default = ReferencePPO(counting_envs(), PPOConfig(n_steps=8, batch_size=16))  # seed 0
    seeded = ReferencePPO(counting_envs(), PPOConfig(n_steps=8, batch_size=16), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(default.actor.parameters(), seeded.actor.parameters()))


def test_load_refuses_other_spaces_and_pickled_code(tmp_path):
    path = tmp_path / "agent.pt"
    ReferencePPO(counting_envs(), PPOConfig(n_steps=8, batch_size=16), seed=0).save(path)
    for envs in (SyncVectorEnv([OffsetActionEnv] * 2), make_cartpole(2)):  # other actions, other observations
        with pytest.raises(ValueError, match="differ from the checkpoint"):
            ReferencePPO.load(path, envs=envs)
    torch.save({"config": CountingEnv(3, truncate=False)}, tmp_path / "evil.pt")  # unpickling would run code
    with pytest.raises(pickle.UnpicklingError):
        ReferencePPO.load(tmp_path / "evil.pt")


def test_rejects_batch_size_that_does_not_divide_rollout():
    with pytest.raises(ValueError, match="batch_size=48 must divide n_steps \\* n_envs"):
        ReferencePPO(make_cartpole(2), PPOConfig(n_steps=32, batch_size=48))


def test_rejects_same_step_autoreset():
    envs = gym.make_vec(
        "CartPole-v1", 2, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}
    )
    with pytest.raises(ValueError, match="NEXT_STEP"):
        ReferencePPO(envs)


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    agent = ReferencePPO(make_cartpole(2), PPOConfig(n_steps=16, batch_size=32), seed=0)
    path = tmp_path / "agent.pt"
    agent.save(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        agent.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["agent.pt"]
