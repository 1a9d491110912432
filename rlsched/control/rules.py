"""Scripted LR rules: the simplest controllers that work, the floor a learned controller must clear with the
same actions, and the teachers a policy is cloned from (``agents.teacher``). They read raw observations, so they
belong beside the observation they read."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rlsched.config import EnvConfig
from rlsched.control.interface import absolute_lrs, decode_lr, feature_index, residual_base

LOG_LR, FIRST_STEP, SUGGESTED = (feature_index(n) for n in ("log_lr", "first_step", "log_lr_suggested"))
# the scripted rules, run as Job kind "scripted" with one of these as arg (``rule_arg``): steer to a tuned target
# LR; probe one slice at the tuned LR and then steer to the suggested LR; or the same, to the suggested LR times
# 10 ** a tuned offset
SUGGESTED_RULE = "suggested"
OFFSET_RULE = "offset"
SCRIPTED_RULES = ("scripted", SUGGESTED_RULE, OFFSET_RULE)


def rule_arg(rule: str, offset: float = 0.0) -> str:
    """The Job arg (and teacher name) of scripted rule ``rule``: the offset rule carries its offset,
    ``"offset:-0.5"``."""
    return f"{rule}:{offset:g}" if rule == OFFSET_RULE else rule


def parse_rule(arg: str) -> tuple[str, float]:
    """``rule_arg``'s inverse: (rule, offset in decades); a one-line error for an arg no rule has."""
    rule, _, offset = arg.partition(":")
    try:
        parsed = float(offset) if rule == OFFSET_RULE else 0.0
    except ValueError:
        parsed = math.nan
    if rule not in SCRIPTED_RULES or bool(offset) != (rule == OFFSET_RULE) or not math.isfinite(parsed):
        raise ValueError(
            f"scripted rule {arg!r}: expected one of scripted, suggested or offset:<decades> (e.g. offset:-0.5)"
        )
    return rule, parsed


def rule_settings(arg: str) -> tuple[bool, float]:
    """What ``ScriptedRule`` (and ``ScriptedController``) take for the rule ``arg`` names: whether it follows
    the suggestion, and its offset."""
    rule, offset = parse_rule(arg)
    return rule != "scripted", offset


@dataclass(frozen=True)
class ScriptedRule:
    """Steer the LR towards ``target`` as fast as the actions allow, then hold it: the floor a learned
    controller must clear with the same actions, and a teacher to clone.

    Relative (discrete) actions: the factor that brings log LR closest to log target, ties to the smaller
    change; from below it climbs by the largest factor until the next step would overshoot, then holds.
    Absolute actions: the grid LR closest to the target, at once. Residual actions: the offset from the suggested LR
    (``env.probe_lr`` before the first slice) closest to the target. With ``follow_suggestion`` the target is the
    observation's suggested LR (``control.suggested_lr``) times ``10 ** offset`` once the first slice has measured
    it, so ``target`` is only the LR of that first, probing slice: a constant LR per instance, scaled by the
    instance itself. Why an offset: where the suggestion is systematically too bold (or timid), a tuned constant
    shift of it is the next-simplest rule, the floor a learned policy's corrections must clear.
    """

    env: EnvConfig
    target: float
    follow_suggestion: bool = False
    offset: float = 0.0  # log10 decades applied to the suggestion (follow_suggestion only)

    @classmethod
    def named(cls, env: EnvConfig, arg: str, target: float) -> ScriptedRule:
        """The rule a Job arg / teacher name (``rule_arg``) means, probing or steering at ``target``."""
        return cls(env, target, *rule_settings(arg))

    def __post_init__(self) -> None:
        if self.env.action == "continuous" or (self.env.action == "discrete" and 1.0 not in self.env.factors):
            raise ValueError(
                "the scripted rule needs env.action = 'absolute' or 'residual', or 'discrete' with a "
                f"factor of 1.0 among env.factors (got action={self.env.action!r}, "
                f"factors={self.env.factors})"
            )

    def action(self, lr: float, target: float | None = None, suggested: float | None = None) -> int:
        """The action from LR ``lr`` towards ``target`` (default: the rule's own); ``suggested``: the suggested
        LR once measured (residual actions are offsets from it)."""
        target = self.target if target is None else target
        if self.env.action == "absolute":
            return int(np.argmin(np.abs(np.log(absolute_lrs(self.env) / target))))
        if self.env.action == "residual":
            gap = math.log10(target / residual_base(self.env, suggested))
            return int(np.argmin(np.abs(np.asarray(self.env.offsets) - gap)))
        gaps = [(abs(math.log(lr * f / target)), abs(math.log(f))) for f in self.env.factors]
        return min(range(len(gaps)), key=gaps.__getitem__)

    def actions(self, raw_obs: np.ndarray) -> np.ndarray:
        """One action per row of raw (unnormalised) observations, from their LR features."""
        residual = self.env.action == "residual"
        return np.array(
            [
                self.action(
                    decode_lr(self.env, float(row[LOG_LR])),
                    self._target(row),
                    self._suggested(row) if residual else None,
                )
                for row in np.atleast_2d(raw_obs)
            ]
        )

    def _suggested(self, row: np.ndarray) -> float | None:
        """The suggested LR once the first slice measured it (before, the feature holds the current LR)."""
        return decode_lr(self.env, float(row[SUGGESTED])) if row[FIRST_STEP] < 0.5 else None

    def _target(self, row: np.ndarray) -> float:
        suggested = self._suggested(row) if self.follow_suggestion else None
        return suggested * 10**self.offset if suggested is not None else self.target
