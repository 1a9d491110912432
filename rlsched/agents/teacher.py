"""A behaviour-cloning warm start of the SB3 policy from a scripted LR rule (``harness.ScriptedRule``).

The rules are the simplest controllers that work: steer the LR towards a target as fast as the actions allow,
then hold it (the target: a tuned LR, or the LR the first slice's update size suggests). PPO from a uniform
policy needs many episodes to find it (reaching the good
LR region from the bottom of the range takes several large steps in a row, each first rewarded negatively by the
Dice dip); cloning it first costs a few episodes and leaves PPO to refine it.
"""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rlsched.control.rules import ScriptedRule


def behaviour_clone(
    model: PPO,
    rule: ScriptedRule,
    episodes_per_env: int,
    epochs: int = 200,
    explore: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """Run the rule for whole episodes on ``model``'s vector env, then fit the policy to its actions
    (cross-entropy) and the value head to the returns that followed (so PPO's first advantages are sane).

    ``explore``: each step takes a uniformly random action with this probability, yet is labelled with the
    rule's action (DAgger's idea). Why: the rule's own episodes rarely blow up, so a clone of them has never seen
    the state after an undone slice and answers it arbitrarily off its training family; with exploration it
    learns what the rule does there too. Observations go through the env's ``VecNormalize`` as in PPO, which
    also warms up its statistics. Returns the final imitation accuracy and value loss.
    """
    venv: VecEnv = model.get_env()
    obs = venv.reset()
    steps = episodes_per_env * rule.env.steps
    rng = np.random.default_rng(seed)
    observations, actions, rewards, dones = [], [], [], []
    for _ in range(steps):
        raw = venv.get_original_obs() if isinstance(venv, VecNormalize) else obs
        action = rule.actions(raw)
        observations.append(obs.copy())
        actions.append(action)
        explored = rng.random(len(action)) < explore
        taken = np.where(explored, rng.integers(venv.action_space.n, size=len(action)), action)
        obs, reward, done, _ = venv.step(taken)
        rewards.append(reward)
        dones.append(done)
    # every env has just finished an episode and auto-reset: PPO's first rollout starts from these observations
    model._last_obs, model._last_episode_starts = obs, np.ones(venv.num_envs, dtype=bool)
    returns = np.zeros_like(np.asarray(rewards, dtype=np.float64))
    running = np.zeros(venv.num_envs)
    for t in reversed(range(steps)):  # undiscounted return-to-go, cut at episode ends
        running = rewards[t] + running * (1.0 - dones[t])
        returns[t] = running

    stats = fit_policy(
        model.policy,
        np.concatenate(observations),
        np.concatenate(actions),
        returns.reshape(-1),
        epochs,
    )
    model.num_timesteps += steps * venv.num_envs
    return stats


def fit_policy(
    policy: ActorCriticPolicy,
    observations: np.ndarray,
    actions: np.ndarray,
    returns: np.ndarray,
    epochs: int = 200,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """Fit ``policy`` to act as ``actions`` (cross-entropy) and its value head to ``returns``, full batch: the
    cloning step of both the warm start and the branched improvement (``agents.branched``). ``observations`` are
    what the policy sees (normalised, if the env normalises); ``weights`` (default: all 1) weigh each sample's
    imitation term. Returns the imitation accuracy and value loss."""
    x = torch.as_tensor(observations, dtype=torch.float32)
    a = torch.as_tensor(actions)
    g = torch.as_tensor(returns, dtype=torch.float32)
    w = torch.ones(len(a)) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    w = w / w.mean()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    policy.set_training_mode(True)
    for _ in range(epochs):
        values, log_prob, _ = policy.evaluate_actions(x, a)
        value_loss = torch.nn.functional.mse_loss(values.flatten(), g)
        loss = -(w * log_prob).mean() + 0.5 * value_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.set_training_mode(False)
    with torch.no_grad():
        predicted = policy.get_distribution(x).distribution.probs.argmax(-1)
    return {
        "bc/accuracy": float((predicted == a).float().mean()),
        "bc/value_loss": float(value_loss.detach()),
    }
