"""RL Baselines3 Zoo trains on the registered ids with the shipped ``--conf-file rlsched.agents.zoo_ppo``."""

import subprocess
import sys

import gymnasium as gym
import pytest
from stable_baselines3 import PPO

import rlsched  # noqa: F401  (registers the env ids)
from rlsched.agents.sb3 import PPOSettings
from rlsched.agents.zoo_ppo import hyperparams
from rlsched.config import load_config


def test_every_registered_id_has_rollouts_of_whole_episodes_and_dividing_minibatches():
    assert set(hyperparams) == {env_id for env_id in gym.registry if env_id.startswith("rlsched/")}
    for env_id, params in hyperparams.items():
        steps = load_config(gym.spec(env_id).kwargs.get("preset")).env.steps
        assert params["n_steps"] == PPOSettings().episodes_per_rollout * steps  # not Zoo's 2048
        assert params["n_steps"] * params["n_envs"] % params["batch_size"] == 0


def test_zoo_trains_ppo_on_the_fast_id(tmp_path):
    pytest.importorskip("rl_zoo3", reason='RL Baselines3 Zoo is not installed: pip install -e ".[zoo]"')
    command = [
        sys.executable,
        "-m",
        "rl_zoo3.train",
        "--algo",
        "ppo",
        "--env",
        "rlsched/UNetLR-fast-v0",
        "--gym-packages",
        "rlsched",
        "--conf-file",
        "rlsched.agents.zoo_ppo",
        "--env-kwargs",
        "data:dict(image_size=16,n_train=16,n_val=8)",  # 1 batch per epoch
        "-n",
        "24",
        "--eval-freq",
        "-1",
        "--seed",
        "0",
        "--num-threads",
        "1",
        "-f",
        str(tmp_path),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (model,) = tmp_path.glob("ppo/rlsched-UNetLR-fast-v0_1/*.zip")
    ppo = PPO.load(model, device="cpu")
    assert ppo.num_timesteps == 24 and ppo.n_steps == hyperparams["rlsched/UNetLR-fast-v0"]["n_steps"] == 12
    assert "n_updates" in run.stdout  # PPO updated within the run (Zoo's default would still be collecting)
