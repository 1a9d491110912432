import math
from dataclasses import fields

import pytest

from rlsched.config import PenaltyConfig
from rlsched.control.penalties import BUILTIN, CombinedPenalty, Transition


def transition(**changes) -> Transition:
    base = dict(
        lr_before=0.01,
        lr_after=0.1,
        dice_before=0.5,
        dice_after=0.6,
        val_loss_before=0.5,
        val_loss_after=0.25,
        diverged=False,
        step=1,
        steps=10,
        seconds=1.0,
    )
    return Transition(**{**base, **changes})


def test_every_config_weight_has_a_builtin():
    assert set(BUILTIN) == {f.name for f in fields(PenaltyConfig)}


def test_weighted_terms_and_their_breakdown():
    penalty = CombinedPenalty(
        PenaltyConfig(lr_change=0.5, divergence=2.0, compute=0.1, val_loss_increase=1.0)
    )
    total, parts = penalty(transition(val_loss_after=1.0))
    assert parts["lr_change"] == pytest.approx(0.5)  # |log10(0.1/0.01)| = 1
    assert parts["divergence"] == 0.0
    assert parts["compute"] == pytest.approx(0.1)
    assert parts["val_loss_increase"] == pytest.approx(math.log(2))
    assert total == pytest.approx(sum(parts.values()))
    assert penalty(transition(diverged=True, val_loss_after=math.nan))[1]["divergence"] == 2.0


def test_zero_weights_drop_out_and_custom_callable_adds():
    penalty = CombinedPenalty(PenaltyConfig(divergence=0.0), extra=lambda t: 0.25 * t.step)
    total, parts = penalty(transition(step=2))
    assert parts == {"custom": 0.5} and total == 0.5


def test_non_callable_custom_penalty_is_rejected():
    with pytest.raises(TypeError, match="callable"):
        CombinedPenalty(PenaltyConfig(), extra=3.0)
