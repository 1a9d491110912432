"""Hand-written reference PPO (clipped surrogate, GAE) for Gymnasium 1.x vector envs.

This is the agent we trust when a library agent misbehaves, so it favours being easy to audit over being
clever: one file, CleanRL-style, every PPO detail visible. It works on any ``gymnasium.vector.VectorEnv``
with a flat-able float ``Box`` observation and a ``Discrete`` or ``Box`` action space.

Gymnasium 1.x autoreset (``AutoresetMode.NEXT_STEP``, the default) shapes the rollout logic:

* the step on which an episode ends returns the *final* observation with ``terminated``/``truncated`` set;
* the next ``step()`` ignores the action for that sub-env, resets it and returns the reset observation with
  reward 0 and both flags False. That "reset transition" is not an MDP transition, so it is stored but
  marked ``valid=False`` and masked out of every loss and statistic. GAE never reaches across it because the
  step before it has ``done=1``.

Truncation (time limit) is not a real terminal state, so on a truncated step ``gamma * V(final_obs)`` is
added to the reward and the step is then treated as done; on termination nothing is bootstrapped.
Finished episodes are read from ``infos["episode"]`` / ``infos["_episode"]`` as written by
``gymnasium.wrappers.vector.RecordEpisodeStatistics`` (wrap the envs with it to get episode logs).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from rlsched.agents.space_io import space_from_dict, space_to_dict
from rlsched.common.files import atomic_write

LogFn = Callable[[dict[str, float], int], None]  # (stats, num_timesteps) after every update


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters (frozen: derive variants with ``dataclasses.replace``)."""

    n_steps: int = 128  # per env per rollout
    batch_size: int = 64  # minibatch size; must divide n_steps * n_envs
    n_epochs: int = 4
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    clip_value: float | None = None  # None = unclipped value loss (the default)
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None  # stop the update at the first minibatch whose approx-KL exceeds this
    normalize_advantage: bool = True  # per minibatch
    hidden: tuple[int, ...] = (64, 64)
    anneal_lr: bool = False  # linear decay to 0 over learn(total_timesteps)

    def __post_init__(self) -> None:
        for name in ("n_steps", "batch_size", "n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOConfig.{name} must be >= 1, got {getattr(self, name)}")


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminations: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda) advantages and lambda-returns, computed backwards in time.

    All inputs are shaped (T, n_envs). ``next_values[t]`` is V(s_{t+1}), the value of the observation
    returned by step t (``values[t + 1]`` inside a rollout, V(last obs) for t = T-1); it need not be zeroed.
    ``terminations[t]`` is 1 where the episode ended at step t: its next value is not used and the
    advantage recursion is cut there. (This agent passes terminated|truncated, having already folded the
    truncation bootstrap into the reward.) In SB3's ``RolloutBuffer`` terms:
    ``terminations[t] = episode_starts[t + 1]`` and ``terminations[T - 1] = dones``.

    Returns ``(advantages, returns)`` with ``returns = advantages + values``.
    """
    next_non_terminal = 1.0 - terminations.to(values.dtype)
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros_like(values[0])
    for t in reversed(range(values.shape[0])):
        delta = rewards[t] + gamma * next_values[t] * next_non_terminal[t] - values[t]
        last_gae = delta + gamma * gae_lambda * next_non_terminal[t] * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


@dataclass
class Rollout:
    """One rollout: tensors shaped (n_steps, n_envs, ...), or (n_samples, ...) after ``flatten``."""

    obs: torch.Tensor  # observation the action was taken in
    actions: torch.Tensor  # sampled action, unclipped (long for Discrete)
    logprobs: torch.Tensor  # log pi_old(a|s), stored at collection time
    values: torch.Tensor  # V_old(s), stored at collection time
    rewards: torch.Tensor  # env reward, + gamma * V(final_obs) on truncation
    dones: torch.Tensor  # 1.0 where the episode ended (terminated or truncated) at this step
    valid: torch.Tensor  # False on NEXT_STEP reset transitions: never trained on
    advantages: torch.Tensor
    returns: torch.Tensor

    def flatten(self) -> Rollout:
        return Rollout(**{f.name: getattr(self, f.name).flatten(0, 1) for f in dataclasses.fields(self)})

    def __getitem__(self, index: torch.Tensor) -> Rollout:
        return Rollout(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


def _layer(in_features: int, out_features: int, gain: float, generator: torch.Generator) -> nn.Linear:
    # skip_init: the default init would be overwritten anyway, and would advance the global RNG.
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features, device=generator.device)
    nn.init.orthogonal_(layer.weight, gain, generator=generator)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(
    in_features: int, hidden: tuple[int, ...], out_features: int, out_gain: float, generator: torch.Generator
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [_layer(in_features, width, math.sqrt(2), generator), nn.Tanh()]
        in_features = width
    layers.append(_layer(in_features, out_features, out_gain, generator))
    return nn.Sequential(*layers)


class Actor(nn.Module):
    """Policy: Categorical logits for Discrete; diagonal Gaussian with state-independent log_std for Box."""

    def __init__(
        self, obs_dim: int, action_space: spaces.Space, hidden: tuple[int, ...], generator: torch.Generator
    ) -> None:
        super().__init__()
        self.continuous = isinstance(action_space, spaces.Box)
        out = int(np.prod(action_space.shape)) if self.continuous else int(action_space.n)
        self.net = _mlp(obs_dim, hidden, out, 0.01, generator)  # small head gain: near-uniform start
        if self.continuous:
            self.log_std = nn.Parameter(torch.zeros(out, device=generator.device))

    def distribution(self, obs: torch.Tensor) -> Distribution:
        """Per-sample log_prob/entropy (summed over action dims for the Gaussian)."""
        out = self.net(obs)
        if self.continuous:
            return Independent(Normal(out, self.log_std.exp().expand_as(out)), 1)
        return Categorical(logits=out)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where (not multiply) so that non-finite values in masked-out rows cannot leak in as NaN.
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


class ReferencePPO:
    """Readable PPO; see the module docstring for the autoreset and bootstrap rules it follows."""

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        config: PPOConfig = PPOConfig(),
        seed: int = 0,
        device: str = "cpu",
        log_fn: LogFn | None = None,
    ) -> None:
        self._setup(
            envs, envs.single_observation_space, envs.single_action_space, config, seed, device, log_fn
        )

    def _setup(
        self,
        envs: gym.vector.VectorEnv | None,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        config: PPOConfig,
        seed: int,
        device: str,
        log_fn: LogFn | None,
    ) -> None:
        """Shared by ``__init__`` and ``load`` (which may have no envs)."""
        if not isinstance(observation_space, spaces.Box):
            raise TypeError(f"observation space must be a Box, got {observation_space!r}")
        if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
            raise TypeError(f"action space must be Discrete or Box, got {action_space!r}")
        if envs is not None:
            mode = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
            if mode != AutoresetMode.NEXT_STEP:
                raise ValueError(f"ReferencePPO needs autoreset_mode=NEXT_STEP (the default), got {mode}")
            samples = config.n_steps * envs.num_envs
            if samples % config.batch_size:
                raise ValueError(
                    f"batch_size={config.batch_size} must divide n_steps * n_envs = "
                    f"{config.n_steps} * {envs.num_envs} = {samples}; pick a divisor of "
                    f"{samples} or change n_steps"
                )
        self.envs = envs
        self.observation_space = observation_space
        self.action_space = action_space
        self.config = config
        self.seed = seed
        self.device = torch.device(device)
        self.log_fn = log_fn
        self.num_timesteps = 0
        self.last_update_ratios: list[float] = []  # mean ratio of each minibatch of the last update, in order

        # Private RNGs: agent randomness must not depend on what the env (itself training a net) draws.
        self._generator = torch.Generator(self.device).manual_seed(seed)
        self._np_rng = np.random.default_rng(seed)
        self.obs_dim = int(np.prod(observation_space.shape))
        self.actor = Actor(self.obs_dim, action_space, config.hidden, self._generator)
        self.critic = _mlp(self.obs_dim, config.hidden, 1, 1.0, self._generator)
        self.optimizer = torch.optim.Adam(self._parameters(), lr=config.learning_rate, eps=1e-5)

        # Both set by _reset_envs on the first rollout (so a loaded agent resets its new envs).
        self._next_obs: torch.Tensor | None = None
        self._next_is_reset: torch.Tensor | None = None  # per env: the next step() is a reset transition
        self._episode_returns: list[float] = []
        self._episode_lengths: list[float] = []

    def _parameters(self) -> list[nn.Parameter]:
        return [*self.actor.parameters(), *self.critic.parameters()]

    # ----------------------------------------------------------------------------------------- acting

    def _obs_tensor(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(-1, self.obs_dim)

    def _value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def _sample(self, dist: Distribution) -> torch.Tensor:
        """Sample with the agent's own generator (torch.distributions only uses the global RNG)."""
        if isinstance(dist, Categorical):
            return torch.multinomial(dist.probs, 1, generator=self._generator).squeeze(-1)
        noise = torch.randn(dist.mean.shape, generator=self._generator, device=self.device)
        return dist.mean + dist.stddev * noise

    def _env_action(self, action: torch.Tensor) -> np.ndarray:
        """Policy output -> env action; Box actions are clipped here only (storage keeps them unclipped)."""
        action_np = action.cpu().numpy()
        if isinstance(self.action_space, spaces.Discrete):
            return action_np + self.action_space.start
        action_np = action_np.reshape(-1, *self.action_space.shape)
        low, high = self.action_space.low, self.action_space.high
        return np.clip(action_np, low, high).astype(self.action_space.dtype)

    @torch.no_grad()
    def predict(self, observation: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        """Mirror of SB3's ``predict``: one observation or a batch in, env-ready action(s) out."""
        obs = np.asarray(observation, dtype=np.float32)
        shape = self.observation_space.shape
        single = obs.shape == shape
        if not single and obs.shape[1:] != shape:
            raise ValueError(f"observation shape {obs.shape} is neither {shape} nor (batch, *{shape})")
        dist = self.actor.distribution(self._obs_tensor(obs))
        action = self._env_action(dist.mode if deterministic else self._sample(dist))
        return (action[0] if single else action), None

    # ----------------------------------------------------------------------------------------- rollout

    def _reset_envs(self) -> None:
        obs, _ = self.envs.reset(seed=self.seed)
        self._next_obs = self._obs_tensor(obs)
        self._next_is_reset = torch.zeros(self.envs.num_envs, dtype=torch.bool, device=self.device)

    def _record_episodes(self, infos: dict[str, Any]) -> None:
        if "_episode" in infos:
            finished = infos["_episode"]
            self._episode_returns += infos["episode"]["r"][finished].tolist()
            self._episode_lengths += infos["episode"]["l"][finished].tolist()

    @torch.no_grad()
    def collect_rollout(self) -> Rollout:
        """Run n_steps vector steps with the current policy; returns the rollout with GAE filled in."""
        if self._next_obs is None:
            self._reset_envs()
        n_steps, n_envs, gamma = self.config.n_steps, self.envs.num_envs, self.config.gamma
        continuous = isinstance(self.action_space, spaces.Box)
        action_shape = (self.actor.log_std.shape[0],) if continuous else ()

        def buffer(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros((n_steps, n_envs, *shape), dtype=dtype, device=self.device)

        obs_buf = buffer(self.obs_dim)
        actions = buffer(*action_shape, dtype=torch.float32 if continuous else torch.long)
        logprobs, values, rewards, dones = buffer(), buffer(), buffer(), buffer()
        valid = buffer(dtype=torch.bool)

        for t in range(n_steps):
            obs = self._next_obs
            dist = self.actor.distribution(obs)
            action = self._sample(dist)
            obs_buf[t], actions[t] = obs, action
            logprobs[t], values[t] = dist.log_prob(action), self._value(obs)
            valid[t] = ~self._next_is_reset

            next_obs, reward, terminated, truncated, infos = self.envs.step(self._env_action(action))
            self.num_timesteps += n_envs
            self._next_obs = self._obs_tensor(next_obs)
            reward = torch.as_tensor(reward, dtype=torch.float32, device=self.device)
            # Time limit, not a terminal state: bootstrap from the final obs, which next_obs holds
            # under NEXT_STEP. Terminated wins if both flags are set.
            bootstrap = torch.as_tensor(truncated & ~terminated, device=self.device)
            if bootstrap.any():
                reward[bootstrap] += gamma * self._value(self._next_obs[bootstrap])
            rewards[t] = reward
            done = torch.as_tensor(terminated | truncated, device=self.device)
            dones[t] = done.float()
            self._next_is_reset = done
            self._record_episodes(infos)

        next_values = torch.cat([values[1:], self._value(self._next_obs)[None]])
        advantages, returns = compute_gae(rewards, values, next_values, dones, gamma, self.config.gae_lambda)
        return Rollout(obs_buf, actions, logprobs, values, rewards, dones, valid, advantages, returns)

    # ----------------------------------------------------------------------------------------- update

    def compute_loss(self, mb: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """PPO loss on a flat minibatch; rows with ``valid=False`` contribute nothing to loss or stats."""
        cfg, mask = self.config, mb.valid
        advantages = mb.advantages
        if cfg.normalize_advantage:
            mean = _masked_mean(advantages, mask)
            std = _masked_mean((advantages - mean) ** 2, mask).sqrt()
            advantages = (advantages - mean) / (std + 1e-8)

        dist = self.actor.distribution(mb.obs)
        log_ratio = dist.log_prob(mb.actions) - mb.logprobs  # against the STORED old log-probs
        ratio = log_ratio.exp()
        surrogate = torch.max(
            -advantages * ratio, -advantages * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
        )
        policy_loss = _masked_mean(surrogate, mask)

        # Squared error without a 1/2 factor (SB3 convention, so SB3 vf_coef values transfer).
        new_values = self._value(mb.obs)
        value_error = (new_values - mb.returns) ** 2
        if cfg.clip_value is not None:
            clipped = mb.values + (new_values - mb.values).clamp(-cfg.clip_value, cfg.clip_value)
            value_error = torch.max(value_error, (clipped - mb.returns) ** 2)
        value_loss = _masked_mean(value_error, mask)

        entropy = _masked_mean(dist.entropy(), mask)
        loss = policy_loss - cfg.ent_coef * entropy + cfg.vf_coef * value_loss
        with torch.no_grad():
            stats = {
                "policy_loss": policy_loss,
                "value_loss": value_loss,
                "entropy": entropy,
                "approx_kl": _masked_mean((ratio - 1) - log_ratio, mask),  # low-variance k3 estimator
                "clip_fraction": _masked_mean(((ratio - 1).abs() > cfg.clip_range).float(), mask),
                "ratio_mean": _masked_mean(ratio, mask),
            }
        return loss, stats

    def update(self, rollout: Rollout) -> dict[str, float]:
        """K epochs of shuffled minibatch Adam steps; returns per-update means of the minibatch stats."""
        cfg = self.config
        batch = rollout.flatten()
        n_samples = batch.rewards.shape[0]
        history: dict[str, list[float]] = defaultdict(list)
        self.last_update_ratios = []
        stop = False
        for _ in range(cfg.n_epochs):
            order = torch.as_tensor(self._np_rng.permutation(n_samples), device=self.device)
            for start in range(0, n_samples, cfg.batch_size):
                loss, stats = self.compute_loss(batch[order[start : start + cfg.batch_size]])
                for key, value in stats.items():
                    history[key].append(value.item())
                self.last_update_ratios.append(stats["ratio_mean"].item())
                if cfg.target_kl is not None and stats["approx_kl"].item() > cfg.target_kl:
                    stop = True  # the policy moved too far: skip this step and end the update
                    break
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self._parameters(), cfg.max_grad_norm)
                self.optimizer.step()
            if stop:
                break

        result = {key: float(np.mean(values)) for key, values in history.items() if key != "ratio_mean"}
        returns, values = batch.returns[batch.valid], batch.values[batch.valid]
        var_returns = returns.var()
        result["explained_variance"] = (
            float("nan") if var_returns == 0 else float(1 - (returns - values).var() / var_returns)
        )
        return result

    def learn(
        self, total_timesteps: int, callback: Callable[[ReferencePPO], bool] | None = None
    ) -> ReferencePPO:
        """Train until ``num_timesteps >= total_timesteps`` (so a loaded agent resumes where it stopped).

        ``callback(self)`` runs after each rollout+update; returning False (not None) stops training.
        """
        if self.envs is None:
            raise RuntimeError("this agent was loaded without envs (predict-only); pass envs= to load()")
        cfg = self.config
        while self.num_timesteps < total_timesteps:
            lr = cfg.learning_rate
            if cfg.anneal_lr:
                lr *= 1.0 - self.num_timesteps / total_timesteps
            for group in self.optimizer.param_groups:
                group["lr"] = lr

            self._episode_returns, self._episode_lengths = [], []
            stats = self.update(self.collect_rollout())
            stats["learning_rate"] = lr
            if self._episode_returns:
                stats["episode_return_mean"] = float(np.mean(self._episode_returns))
                stats["episode_length_mean"] = float(np.mean(self._episode_lengths))
            if self.log_fn is not None:
                self.log_fn(stats, self.num_timesteps)
            if callback is not None and callback(self) is False:
                break
        return self

    # ----------------------------------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike[str]) -> None:
        """Atomic checkpoint: a crash mid-save leaves the previous file intact."""
        state = {
            "config": dataclasses.asdict(self.config),
            "seed": self.seed,
            "num_timesteps": self.num_timesteps,
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": self._generator.get_state(),
            "numpy_rng": self._np_rng.bit_generator.state,
        }
        atomic_write(path, lambda handle: torch.save(state, handle))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        envs: gym.vector.VectorEnv | None = None,
        device: str = "cpu",
        log_fn: LogFn | None = None,
    ) -> ReferencePPO:
        """Restore a checkpoint; ``envs=None`` gives a predict-only agent. With envs, learn() resets them."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        config = PPOConfig(**{**state["config"], "hidden": tuple(state["config"]["hidden"])})
        observation_space = space_from_dict(state["observation_space"])
        action_space = space_from_dict(state["action_space"])
        if envs is not None and (
            envs.single_observation_space != observation_space or envs.single_action_space != action_space
        ):
            raise ValueError(
                f"envs spaces ({envs.single_observation_space}, {envs.single_action_space}) "
                f"differ from the checkpoint's ({observation_space}, {action_space})"
            )
        agent = cls.__new__(cls)
        agent._setup(envs, observation_space, action_space, config, state["seed"], device, log_fn)
        agent.actor.load_state_dict(state["actor"])
        agent.critic.load_state_dict(state["critic"])
        agent.optimizer.load_state_dict(state["optimizer"])
        agent.num_timesteps = state["num_timesteps"]
        agent._generator.set_state(state["torch_rng"])
        agent._np_rng.bit_generator.state = state["numpy_rng"]
        return agent
