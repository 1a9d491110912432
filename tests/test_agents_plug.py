"""Off-the-shelf agents drive the env with no adapter code; vector envs run it in worker processes."""

import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

import rlsched  # noqa: F401  (registers the env ids)
from rlsched.agents.workers import start_method

TINY = {"data": {"image_size": 16, "n_train": 16, "n_val": 8}, "env": {"epochs": 4}}


def tiny_env(**env_overrides):
    torch.set_num_threads(1)  # in a vector env's worker: the worker's job, the env leaves threads alone
    return gym.make(
        "rlsched/UNetLR-v0", preset="fast", data=TINY["data"], env={**TINY["env"], **env_overrides}
    )


def weights(model: BaseAlgorithm) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.policy.parameters()])


def assert_learned_over_whole_episodes(model: BaseAlgorithm, before: torch.Tensor, steps: int) -> None:
    """The agent took exactly ``steps`` steps, updated its policy, and its Monitor saw episodes end at the
    4-epoch budget (earlier only when a run diverged); only a last, unfinished episode may be missing."""
    assert model.num_timesteps == steps
    assert not torch.equal(weights(model), before)
    lengths = [episode["l"] for episode in model.ep_info_buffer]
    assert max(lengths) == 4 and min(lengths) >= 1
    assert steps - 4 * model.n_envs < sum(lengths) <= steps


@pytest.mark.parametrize("algo", [PPO, A2C])
def test_discrete_sb3_agents_train_on_the_env(algo):
    env = tiny_env()
    kwargs = {"n_steps": 40, "batch_size": 40} if algo is PPO else {"n_steps": 8}
    model = algo("MlpPolicy", env, seed=0, **kwargs)
    before = weights(model)
    model.learn(200)
    assert_learned_over_whole_episodes(model, before, 200)
    action, _ = model.predict(env.observation_space.sample(), deterministic=True)
    assert env.action_space.contains(int(action))


def test_sac_trains_on_the_continuous_variant():
    env = tiny_env(action="continuous")
    model = SAC("MlpPolicy", env, seed=0, learning_starts=50, batch_size=32, buffer_size=1000)
    before = weights(model)
    model.learn(200)
    assert_learned_over_whole_episodes(model, before, 200)
    assert model.replay_buffer.size() == 200 and np.abs(model.replay_buffer.actions[:200]).max() <= 1


def test_random_agent_runs_episodes_to_their_end():
    env = tiny_env()
    env.action_space.seed(0)
    episodes = 0
    obs, _ = env.reset(seed=0)
    for _ in range(12):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and np.isfinite(reward)
        if terminated or truncated:
            episodes += 1
            assert "final_dice" in info
            obs, _ = env.reset()
    assert episodes == 3


def test_gymnasium_async_vector_env_with_workers():
    envs = gym.vector.AsyncVectorEnv([tiny_env, tiny_env], context=start_method())
    envs = gym.wrappers.vector.RecordEpisodeStatistics(envs)
    obs, _ = envs.reset(seed=[0, 1])
    assert obs.shape == (2,) + envs.single_observation_space.shape
    finished = 0
    for _ in range(5):  # 4-step episodes: the 5th call autoresets (NEXT_STEP mode)
        obs, rewards, terminated, truncated, infos = envs.step(np.array([2, 3]))
        if "_episode" in infos:
            finished += int(infos["_episode"].sum())
    assert finished == 2
    envs.close()


def test_sb3_subproc_vec_env_with_workers():
    vec = make_vec_env(
        tiny_env, n_envs=2, seed=0, vec_env_cls=SubprocVecEnv, vec_env_kwargs={"start_method": start_method()}
    )
    workers = {process.pid for process in vec.processes if process.is_alive()}
    assert len(workers) == 2 and os.getpid() not in workers
    model = PPO("MlpPolicy", vec, n_steps=8, batch_size=16, seed=0)
    before = weights(model)
    model.learn(16)
    assert_learned_over_whole_episodes(model, before, 16)
    vec.close()
