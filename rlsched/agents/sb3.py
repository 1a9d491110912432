"""Stable-Baselines3 PPO on ``UNetLREnv``: vector env, callbacks (atomic checkpoints, episode logging), resume.

One env step is a whole training epoch, so SB3's defaults (``n_steps=2048``) would mean hours per rollout:
``PPOSettings`` sizes rollouts in *episodes* and checks that minibatches divide them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecNormalize

from rlsched.agents.episodes import EpisodeLog
from rlsched.agents.normalize import ObsNorm, norm_path
from rlsched.agents.policy_meta import write_meta
from rlsched.agents.workers import env_factory, start_method
from rlsched.common.checkpoint import save_checkpoint
from rlsched.common.files import atomic_write
from rlsched.config import Config, EnvConfig


@dataclass(frozen=True)
class PPOSettings:
    """PPO hyper-parameters sized for expensive steps (shared by the SB3 and the reference agent)."""

    episodes_per_rollout: int = 2  # per env; n_steps = this * env steps
    batch_size: int = 0  # 0 = half a rollout
    n_epochs: int = 10
    learning_rate: float = 3e-4
    # A fixed, short horizon whose return telescopes to final - initial Dice: no discounting, and GAE close to
    # Monte Carlo, so an LR rise that first dips the Dice is credited with the gain it leads to.
    gamma: float = 1.0
    gae_lambda: float = 0.98
    clip_range: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: tuple[int, ...] = (64, 64)
    normalize_obs: bool = True  # SB3 path: VecNormalize; the statistics are saved beside the model

    def n_steps(self, config: Config) -> int:
        return self.episodes_per_rollout * config.env.steps

    def minibatch(self, config: Config, n_envs: int) -> int:
        rollout = self.n_steps(config) * n_envs
        size = self.batch_size or max(1, rollout // 2)
        if rollout % size:
            raise ValueError(
                f"batch_size={size} does not divide the rollout of {rollout} steps "
                f"({self.episodes_per_rollout} episodes x {config.env.steps} steps x {n_envs} envs); "
                f"pick a divisor of {rollout}"
            )
        return size


def make_vec(
    config: Config,
    n_envs: int,
    episodes_path: Path | None,
    normalize_obs: bool = False,
    norm: ObsNorm | None = None,
) -> VecEnv:
    """``SubprocVecEnv`` (forkserver/spawn so CUDA works in workers) for n_envs > 1, else in-process; wrapped in
    an observation-only ``VecNormalize`` (restored from ``norm`` when resuming) if asked."""
    if n_envs == 1:
        env: VecEnv = DummyVecEnv([env_factory(config, 0, episodes_path, in_worker=False)])
    else:
        env = SubprocVecEnv(
            [env_factory(config, i, episodes_path, in_worker=True, n_workers=n_envs) for i in range(n_envs)],
            start_method=start_method(),
        )
    if not normalize_obs:
        return env
    env = VecNormalize(env, norm_obs=True, norm_reward=False, clip_obs=10.0)
    if norm is not None:
        norm.apply_to(env)
    return env


class RunCallback(BaseCallback):
    """After every PPO update: atomic checkpoint (SB3's CheckpointCallback is not atomic) and episode metrics.

    SB3 calls ``_on_rollout_start`` right after the previous update, so the checkpoint holds a policy that has
    learned from every step it counts.
    """

    def __init__(self, run_dir: Path, episodes: EpisodeLog) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.episodes = episodes

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.num_timesteps > 0:
            self.checkpoint()

    def _on_rollout_end(self) -> None:
        for key, value in self.episodes.new_means().items():
            self.logger.record(key, value)

    def checkpoint(self) -> None:
        """The model and its observation statistics as one checkpoint (``rlsched.common.checkpoint``), with the env
        steps and episode records it accounts for."""

        def write(prefix: Path) -> dict[str, Path]:
            model = prefix.with_suffix(".zip")
            save_atomic(self.model, model)
            normalised = isinstance(self.model.get_env(), VecNormalize)
            return {"model": model, "obs_norm": norm_path(model)} if normalised else {"model": model}

        save_checkpoint(self.run_dir / "checkpoints", write, self.num_timesteps, self.episodes.count())


def save_atomic(model: PPO, path: Path, env: EnvConfig | None = None) -> None:
    """The observation statistics the model needs (if it trained on normalised observations), with ``env``
    the interface it was trained on (``<model>.policy.json``: its observation features, in order), then the
    model, so a model on disk always has them beside it."""
    vec = model.get_env()
    normalised = isinstance(vec, VecNormalize)
    if normalised:
        ObsNorm.from_vecnormalize(vec).save(norm_path(path))
    if env is not None:
        write_meta(path, env, normalised)
    atomic_write(path, model.save)


def build_ppo(config: Config, settings: PPOSettings, env: VecEnv, seed: int, tensorboard_dir: Path) -> PPO:
    return PPO(
        "MlpPolicy",
        env,
        n_steps=settings.n_steps(config),
        batch_size=settings.minibatch(config, env.num_envs),
        n_epochs=settings.n_epochs,
        learning_rate=settings.learning_rate,
        gamma=settings.gamma,
        gae_lambda=settings.gae_lambda,
        clip_range=settings.clip_range,
        ent_coef=settings.ent_coef,
        vf_coef=settings.vf_coef,
        max_grad_norm=settings.max_grad_norm,
        policy_kwargs={"net_arch": list(settings.hidden)},
        tensorboard_log=str(tensorboard_dir),
        seed=seed,
        device="cpu",  # a small MLP: the GPU (if any) belongs to the UNet workers
        verbose=0,
    )
