"""RLlib PPO on ``UNetLREnv`` with env runners spread over Ray (one machine or a cluster), and the loader that
turns its saved RLModule into an SB3-style ``predict`` for the harness.

The run directory matches the SB3 path: ``config.toml``/``args.json``, ``episodes.jsonl`` (written by the env
runners), ``progress.jsonl`` (one line of RLlib metrics per PPO iteration), ``tb/``, ``checkpoints/last/`` (the
whole Algorithm, replaced after every iteration; ``--resume`` continues from it) with
``checkpoints/last.json``, and ``model.rllib/`` (the trained RLModule), which ``rlsched.evaluate``,
``rlsched.compare --agent`` and ``RLScheduler`` load.
Ray is imported lazily: this module imports without it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from tqdm import tqdm

from rlsched.agents.sb3 import PPOSettings
from rlsched.common.files import append_jsonl, atomic_write_json, unwrap_interrupt
from rlsched.config import Config

ENV_NAME = "rlsched/UNetLR-rllib"  # the env registered with Ray: UNetLREnv on the run's config
MODEL_SUFFIX = ".rllib"  # model.rllib/: an RLModule checkpoint directory


class RLlibPolicy:
    """A trained RLlib RLModule behind SB3's ``predict(obs, deterministic) -> (action, None)``."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.observation_space: spaces.Box = module.observation_space
        self.action_space: spaces.Space = module.action_space

    @classmethod
    def load(cls, path: Path) -> "RLlibPolicy":
        from rlsched.common.ray_backend import require_ray

        require_ray(f"loading the RLlib policy {path}")
        from ray.rllib.core.rl_module.rl_module import RLModule

        return cls(RLModule.from_checkpoint(str(Path(path).resolve())))

    def predict(self, observation: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        from ray.rllib.core import Columns

        obs = np.asarray(observation, dtype=np.float32)
        single = obs.shape == self.observation_space.shape
        with torch.no_grad():
            out = self.module.forward_inference({Columns.OBS: torch.from_numpy(obs[None] if single else obs)})
            dist = self.module.get_inference_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
            actions = (dist.to_deterministic() if deterministic else dist).sample().numpy()
        if isinstance(self.action_space, spaces.Box):
            actions = np.clip(actions, self.action_space.low, self.action_space.high)
        return (actions[0] if single else actions), None


def register(config: Config, episodes_path: Path) -> None:
    """Register ``ENV_NAME`` with Ray: the run's config, one torch thread per runner, episodes recorded."""
    from ray.tune.registry import register_env

    def make(context: Any) -> Any:
        from rlsched.agents.episodes import EpisodeRecorder
        from rlsched.control.env import UNetLREnv

        torch.set_num_threads(1)  # the runner's job: the env leaves torch's threads alone
        return EpisodeRecorder(UNetLREnv(config=config), episodes_path, int(context.worker_index))

    register_env(ENV_NAME, make)


def build_algo(config: Config, settings: PPOSettings, args: argparse.Namespace) -> Any:
    """PPO sized like the SB3 path: each env runner collects ``episodes_per_rollout`` whole episodes per
    update."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    runners = max(1, args.num_env_runners)
    ppo = (
        PPOConfig()
        .environment(ENV_NAME)
        .env_runners(
            num_env_runners=args.num_env_runners,
            num_envs_per_env_runner=1,
            num_cpus_per_env_runner=1,
            num_gpus_per_env_runner=args.num_gpus_per_env_runner,
            rollout_fragment_length=settings.n_steps(config),
            batch_mode="complete_episodes",
        )
        .training(
            train_batch_size_per_learner=settings.n_steps(config) * runners,
            minibatch_size=settings.minibatch(config, runners),
            num_epochs=settings.n_epochs,
            lr=settings.learning_rate,
            gamma=settings.gamma,
            lambda_=settings.gae_lambda,
            clip_param=settings.clip_range,
            entropy_coeff=settings.ent_coef,
            vf_loss_coeff=settings.vf_coef,
            grad_clip=settings.max_grad_norm,
            use_kl_loss=False,
            vf_clip_param=math.inf,
        )  # as SB3 (clip_range_vf=None): returns reach reward_scale
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(settings.hidden)))
        .learners(num_learners=0)  # a small MLP: it learns in the driver; the runners own the UNets
        .debugging(seed=args.seed)
    )
    return ppo.build_algo()


def _scalars(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of RLlib's nested result dict, with ``/``-joined keys."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_scalars(value, f"{name}/"))
        elif (
            isinstance(value, (int, float, np.number))
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            flat[name] = float(value)
    return flat


def _save(algo: Any, run_dir: Path, timesteps: int) -> Path:
    """Replace ``checkpoints/last/`` by a fresh save (written aside first, so a kill keeps one whole copy)."""
    folder = run_dir / "checkpoints"
    fresh, last, old = folder / "last.tmp", folder / "last", folder / "last.old"
    shutil.rmtree(fresh, ignore_errors=True)
    algo.save_to_path(str(fresh.resolve()))
    if last.exists():
        last.rename(old)
    fresh.rename(last)
    shutil.rmtree(old, ignore_errors=True)
    atomic_write_json(folder / "last.json", {"num_timesteps": timesteps})
    return last


def _saved(run_dir: Path) -> Path:
    """The checkpoint to resume from: ``last``, or ``last.old`` when a kill fell between ``_save``'s two renames
    (``last.json`` is only rewritten after them, so it still counts ``last.old``'s steps)."""
    last, old = run_dir / "checkpoints" / "last", run_dir / "checkpoints" / "last.old"
    return old if not last.is_dir() and old.is_dir() else last


def train_rllib(run_dir: Path, args: argparse.Namespace, config: Config, settings: PPOSettings) -> Path:
    """Train until ``args.total_timesteps`` env steps (continuing from ``checkpoints/last`` with ``--resume``);
    returns ``model.rllib``."""
    from torch.utils.tensorboard import SummaryWriter

    from rlsched.agents.episodes import EpisodeLog
    from rlsched.common.ray_backend import connect

    connect(args.address, "--backend rllib")
    from ray.rllib.core import (
        COMPONENT_LEARNER,
        COMPONENT_LEARNER_GROUP,
        COMPONENT_RL_MODULE,
        DEFAULT_MODULE_ID,
    )

    register(config, (run_dir / "episodes.jsonl").resolve())
    algo = build_algo(config, settings, args)
    episodes = EpisodeLog(run_dir / "episodes.jsonl")
    writer = SummaryWriter(str(run_dir / "tb" / "rllib"))
    last, steps = _saved(run_dir), 0
    if args.resume and last.is_dir():
        algo.restore_from_path(str(last.resolve()))
        steps = int(json.loads((run_dir / "checkpoints" / "last.json").read_text())["num_timesteps"])
    print(
        f"training RLlib PPO for {args.total_timesteps - steps} env steps ({steps} done) with "
        f"{args.num_env_runners} env runner(s)"
    )
    try:
        with tqdm(total=args.total_timesteps, initial=steps, desc="RLlib PPO", unit="step") as bar:
            while steps < args.total_timesteps:
                try:
                    result = algo.train()
                except Exception as err:  # an interrupt that landed inside Ray comes back wrapped
                    interrupt = unwrap_interrupt(err)
                    if interrupt is err:
                        raise
                    raise interrupt from None
                metrics = _scalars(result)
                steps = int(metrics["env_runners/num_env_steps_sampled_lifetime"])
                last = _save(algo, run_dir, steps)
                metrics.update(episodes.new_means())
                append_jsonl(run_dir / "progress.jsonl", [{"num_timesteps": steps, **metrics}])
                for key, value in metrics.items():
                    writer.add_scalar(key, value, steps)
                writer.flush()
                bar.update(steps - bar.n)
    finally:
        writer.close()
        algo.stop()
    model = run_dir / f"model{MODEL_SUFFIX}"
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(
        last / COMPONENT_LEARNER_GROUP / COMPONENT_LEARNER / COMPONENT_RL_MODULE / DEFAULT_MODULE_ID, model
    )
    return model
