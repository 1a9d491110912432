"""What an LR controller sees and how its action becomes an LR.

Shared by the env and by ``RLScheduler`` (a learned policy inside a plain training loop), so a policy meets
exactly the observation it was trained on. The observation space is declared here, beside the only function
that fills it, so the two cannot drift apart.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from rlsched.config import EnvConfig

OBS_FEATURES: tuple[tuple[str, float, float, str], ...] = (
    # name, low, high, meaning
    ("log_lr", -1.0, 1.0, "log10 LR scaled so lr_min -> -1 and lr_max -> +1"),
    ("budget_used", 0.0, 1.0, "fraction of the epoch budget spent"),
    ("log_train_loss", -10.0, 5.0, "ln(training loss of the last slice); at reset ln(val loss)"),
    ("log_val_loss", -10.0, 5.0, "ln(validation loss)"),
    ("d_log_train_loss", -5.0, 5.0, "change of log_train_loss over the last step"),
    ("d_log_val_loss", -5.0, 5.0, "change of log_val_loss over the last step"),
    ("dice", 0.0, 1.0, "validation Dice (mean over foreground classes)"),
    ("d_dice", -1.0, 1.0, "change of Dice over the last step"),
    ("log_grad_norm", -8.0, 8.0, "log10 mean gradient norm of the last slice (0 at reset: see first_step)"),
    ("log_update_ratio", -8.0, 2.0, "log10 ||dw|| / ||w|| of the last slice (0 at reset: see first_step)"),
    ("first_step", 0.0, 1.0, "1 before the first slice (no gradient or update measured yet), else 0"),
    (
        "log_lr_suggested",
        -1.0,
        1.0,
        "the LR the first slice's update size suggests (see suggested_lr), lowered "
        "after each undone blow-up (backed_off_lr), scaled like log_lr; the current "
        "LR before the first slice",
    ),
)
# a run "stalls" when it sits below validation Dice STALL_DICE ("all background") for more than STALL_EPOCHS
# epochs at one LR (experiment.harness); branching can start where a run has sat there that long (agents.branched)
STALL_DICE = 0.01
STALL_EPOCHS = 2
HISTORY_FEATURES = (("dice_lag", 0.0, 1.0), ("log_lr_lag", -1.0, 1.0))


@functools.lru_cache(maxsize=16)
def _bounds(history: int) -> tuple[np.ndarray, np.ndarray]:
    lows = [f[1] for f in OBS_FEATURES] + [h[1] for _ in range(history) for h in HISTORY_FEATURES]
    highs = [f[2] for f in OBS_FEATURES] + [h[2] for _ in range(history) for h in HISTORY_FEATURES]
    return np.array(lows, np.float32), np.array(highs, np.float32)


def feature_index(name: str) -> int:
    """Where feature ``name`` of ``OBS_FEATURES`` sits in an observation (rules that read raw observations)."""
    return [f[0] for f in OBS_FEATURES].index(name)


def observation_space(env: EnvConfig) -> spaces.Box:
    low, high = _bounds(env.history)
    return spaces.Box(low.copy(), high.copy(), dtype=np.float32)


def observation_names(env: EnvConfig) -> list[str]:
    names = [f[0] for f in OBS_FEATURES]
    for lag in range(1, env.history + 1):
        names += [f"{h[0]}{lag}" for h in HISTORY_FEATURES]
    return names


@dataclass
class Dynamics:
    """The raw numbers an observation is computed from."""

    lr: float
    train_loss: float
    val_loss: float
    dice: float
    grad_norm: float
    update_ratio: float


def undone(lr: float, restored: Dynamics) -> Dynamics:
    """What a controller sees after a slice at ``lr`` blew up and was undone (``env.on_divergence``): the
    restored network's validation, and NaN (reported at the bounds) for what the failed slice measured. One
    definition for the env and ``RLScheduler``, whose plain loop has no finite train loss to offer there."""
    return Dynamics(lr, math.nan, restored.val_loss, restored.dice, math.nan, math.nan)


def _log_range(env: EnvConfig) -> float:
    return math.log10(env.lr_max) - math.log10(env.lr_min)


def encode_lr(env: EnvConfig, lr: float) -> float:
    """The ``log_lr`` feature: log10 LR scaled so ``lr_min`` -> -1 and ``lr_max`` -> +1."""
    return 2 * (math.log10(lr) - math.log10(env.lr_min)) / _log_range(env) - 1


def decode_lr(env: EnvConfig, feature: float) -> float:
    """The LR a ``log_lr`` feature stands for (inverse of ``encode_lr``)."""
    return 10 ** (math.log10(env.lr_min) + (feature + 1) / 2 * _log_range(env))


def _ln(x: float) -> float:
    """ln x; 0 gives -inf (a loss that underflowed: the lower bound), no log at all (NaN, inf, < 0) gives NaN
    (a blow-up: the upper bound)."""
    if x == 0:
        return -math.inf
    return math.log(x) if (math.isfinite(x) and x > 0) else math.nan


def _log10_or_zero(x: float) -> float:
    """A zero gradient or update (nothing moved) has no log: report it as the feature's neutral 0."""
    return _ln(x) / math.log(10) if x != 0 else 0.0


def suggested_lr(env: EnvConfig, first: Dynamics) -> float:
    """The LR that would have moved the weights by ``env.target_update_ratio`` of their norm over the first slice,
    extrapolated linearly from the update it made at its LR: ``lr * target / update_ratio``.

    Why: the relative weight change of a slice measures how hard an LR pushes *this* model with *this*
    optimizer (SGD's steps scale with the gradient, Adam's do not; small batches take more steps per epoch), so
    it turns one slice at any sane LR into an instance-specific LR scale, where a tuned constant carries one
    scale for every run. Measured once, on the first slice: later updates shrink as training converges.
    A slice that moved nothing (or blew up) suggests nothing: the current LR is kept.
    """
    if not (math.isfinite(first.update_ratio) and first.update_ratio > 0):
        return clip_lr(env, first.lr)
    return clip_lr(env, first.lr * env.target_update_ratio / first.update_ratio)


def backed_off_lr(env: EnvConfig, suggested: float, blown_up_at: float) -> float:
    """The suggested LR after a slice at ``blown_up_at`` blew up and was undone: ``env.backoff_decades`` below
    the lower of the two, so following the suggestion never retries an LR that is known to blow up."""
    return clip_lr(env, min(suggested, blown_up_at) * 10**-env.backoff_decades)


def build_observation(
    env: EnvConfig,
    step: int,
    now: Dynamics,
    before: Dynamics,
    history: list[tuple[float, float]],
    suggested: float | None = None,
) -> np.ndarray:
    """Features of ``OBS_FEATURES`` (+ history lags); non-finite values go to the bound they ran towards."""
    low, high = _bounds(env.history)

    features = {  # by name: the order is OBS_FEATURES' alone, so the two cannot disagree
        "log_lr": encode_lr(env, now.lr),
        "budget_used": step / env.steps,
        "log_train_loss": _ln(now.train_loss),
        "log_val_loss": _ln(now.val_loss),
        "d_log_train_loss": _ln(now.train_loss) - _ln(before.train_loss),
        "d_log_val_loss": _ln(now.val_loss) - _ln(before.val_loss),
        "dice": now.dice,
        "d_dice": now.dice - before.dice,
        "log_grad_norm": _log10_or_zero(now.grad_norm) if step else 0.0,
        "log_update_ratio": _log10_or_zero(now.update_ratio) if step else 0.0,
        "first_step": 0.0 if step else 1.0,
        "log_lr_suggested": encode_lr(env, suggested if suggested is not None else now.lr),
    }
    values = [features[name] for name, *_ in OBS_FEATURES]
    padded = history[-env.history :] if env.history else []
    padded = [history[0] if history else (now.dice, now.lr)] * (env.history - len(padded)) + padded
    for dice, lr in reversed(padded):
        values += [dice, encode_lr(env, lr)]
    obs = np.array(values, dtype=np.float64)
    obs = np.where(np.isnan(obs), high, obs)  # NaN losses come from blow-ups: report them as maximal
    return np.clip(obs, low, high).astype(np.float32)


def action_space(env: EnvConfig) -> spaces.Space:
    if env.action == "continuous":
        return spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    choices = {"absolute": env.grid_points, "residual": len(env.offsets)}.get(env.action, len(env.factors))
    return spaces.Discrete(choices)


def absolute_lrs(env: EnvConfig) -> np.ndarray:
    """Absolute actions: ``grid_points`` LRs log-spaced over ``[lr_min, lr_max]``."""
    return np.logspace(math.log10(env.lr_min), math.log10(env.lr_max), env.grid_points)


def next_lr(env: EnvConfig, lr: float, action: object, suggested: float | None = None) -> float:
    """The LR an action picks from the current one, clipped to ``[lr_min, lr_max]``.

    discrete: ``lr * factors[action]``; continuous: ``lr * 10 ** (a * max_log10_change)`` with ``a`` clipped
    to [-1, 1]; absolute: the ``action``-th LR of ``absolute_lrs``, whatever the current one; residual:
    ``residual_base(env, suggested) * 10 ** offsets[action]``.
    """
    if env.action == "continuous":
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        return clip_lr(env, lr * 10 ** (a * env.max_log10_change))
    index = int(np.asarray(action).reshape(-1)[0])
    if env.action == "absolute":
        return clip_lr(env, float(absolute_lrs(env)[index]))
    if env.action == "residual":
        return clip_lr(env, residual_base(env, suggested) * 10 ** env.offsets[index])
    return clip_lr(env, lr * env.factors[index])


def residual_base(env: EnvConfig, suggested: float | None) -> float:
    """What a residual action's offset applies to: the suggested LR once the first slice measured it,
    ``env.probe_lr`` before. Why: the offset 0 then *is* the suggested-LR rule (probing at ``probe_lr``), so a
    policy starts from a sane schedule and learns only corrections, each a quarter decade from a sane LR rather
    than a grid LR it must hit per instance."""
    return suggested if suggested is not None else env.probe_lr


def clip_lr(env: EnvConfig, lr: float) -> float:
    return float(min(max(lr, env.lr_min), env.lr_max))


class ControlState:
    """The dynamics of the current and previous step plus the history window of one episode."""

    def __init__(self, env: EnvConfig, start: Dynamics) -> None:
        self.env = env
        self.step = 0
        self.now = self.before = start
        self.history: list[tuple[float, float]] = []
        self.suggested: float | None = None  # set by the first slice (``suggested_lr``)
        self.healthy_loss = start.val_loss  # the last training loss a slice ended with unharmed
        self.healthy_val_loss = start.val_loss  # and the last validation loss

    def advance(self, now: Dynamics, rolled_back: bool = False) -> None:
        """One slice done; ``rolled_back``: it blew up at ``now.lr`` and was undone (``env.on_divergence``)."""
        self.history.append((self.now.dice, self.now.lr))
        self.before, self.now = self.now, now
        self.step += 1
        if rolled_back:
            self.suggested = backed_off_lr(self.env, residual_base(self.env, self.suggested), now.lr)
            return
        if math.isfinite(now.train_loss):
            self.healthy_loss = now.train_loss
        if math.isfinite(now.val_loss):
            self.healthy_val_loss = now.val_loss
        if self.step == 1:
            self.suggested = suggested_lr(self.env, now)

    def loss_limits(self) -> tuple[float, float]:
        """The training and validation losses above which the next slice counts as blown up (``env.loss_spike``
        and ``env.val_spike`` x the last healthy slice's; before the first, the untrained network's validation
        loss); inf where the factor is 0, rollbacks are off, or the healthy loss is not > 0 (a perfect or an
        undefined fit gives no scale to call a spike against: ``factor x 0`` would undo every later slice)."""

        def limit(factor: float, healthy: float) -> float:
            on = factor and healthy > 0 and self.env.on_divergence == "rollback"
            return factor * healthy if on else math.inf

        return limit(self.env.loss_spike, self.healthy_loss), limit(self.env.val_spike, self.healthy_val_loss)

    def observation(self) -> np.ndarray:
        return build_observation(self.env, self.step, self.now, self.before, self.history, self.suggested)
