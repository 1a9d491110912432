"""RL Baselines3 Zoo hyper-parameters for PPO on the registered env ids, sized like ``PPOSettings``.

    python -m rl_zoo3.train --algo ppo --env rlsched/UNetLR-fast-v0 --gym-packages rlsched \\
        --conf-file rlsched.agents.zoo_ppo

Zoo's default PPO collects ``n_steps=2048`` env steps, i.e. 2048 UNet epochs, before its first update. Here a
rollout is ``PPOSettings.episodes_per_rollout`` whole episodes of the id's preset, a minibatch half of it and
``n_timesteps`` the 16 rollouts ``python -m rlsched.train`` trains by default: all derived from ``PPOSettings``
and the preset each id is registered with, so the file cannot drift from either. Zoo runs one env
(``n_envs: 1``, its in-process DummyVecEnv). ``--env-kwargs`` that change ``env.epochs`` change the episode
length: pass ``--hyperparams n_steps:N batch_size:B`` to match.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from rlsched.agents.sb3 import PPOSettings
from rlsched.config import load_config

ENV_IDS = ("rlsched/UNetLR-v0", "rlsched/UNetLR-fast-v0")
ROLLOUTS = 16  # n_timesteps, in rollouts: the default of ``python -m rlsched.train`` (--total-timesteps 0)


def zoo_ppo(env_id: str, settings: PPOSettings = PPOSettings()) -> dict[str, Any]:
    """Zoo's PPO entry for ``env_id``: one env, rollouts and minibatches of whole episodes of its preset."""
    config = load_config(gym.spec(env_id).kwargs.get("preset"))
    n_steps = settings.n_steps(config)
    return {
        "policy": "MlpPolicy",
        "n_envs": 1,
        "n_timesteps": ROLLOUTS * n_steps,
        "n_steps": n_steps,
        "batch_size": settings.minibatch(config, n_envs=1),
        "n_epochs": settings.n_epochs,
        "learning_rate": settings.learning_rate,
        "gamma": settings.gamma,
        "gae_lambda": settings.gae_lambda,
        "clip_range": settings.clip_range,
        "ent_coef": settings.ent_coef,
        "vf_coef": settings.vf_coef,
        "max_grad_norm": settings.max_grad_norm,
        "policy_kwargs": {"net_arch": list(settings.hidden)},
    }


hyperparams = {env_id: zoo_ppo(env_id) for env_id in ENV_IDS}  # the name Zoo reads from a --conf-file module
