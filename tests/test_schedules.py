import math
import warnings

import pytest

from rlsched.seg.schedules import SCHEDULES, FixedSchedule, lr_grid


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_yields_positive_lrs_for_the_whole_budget(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrs = FixedSchedule(name, 0.1, 10).lrs()
    assert len(lrs) == 10 and all(lr > 0 and math.isfinite(lr) for lr in lrs)
    assert max(lrs) <= 0.1 + 1e-12


def cosine_between(start: float, end: float, fraction: float) -> float:
    """Half a cosine from ``start`` (fraction 0) to ``end`` (fraction 1)."""
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def onecycle(base: float, t: int, steps: int) -> float:
    """torch's OneCycleLR defaults: base/25 up to base over 30% of the budget, then down to base/25/1e4."""
    peak_at = 0.3 * steps - 1
    if t <= peak_at:
        return cosine_between(base / 25, base, t / peak_at)
    return cosine_between(base, base / 25 / 1e4, (t - peak_at) / (steps - 1 - peak_at))


def warmup_cosine(base: float, t: int, steps: int) -> float:
    """Linear from base/10 to base over the first 10% of the budget (at least 1 step), then cosine to 0."""
    warmup = max(1, round(0.1 * steps))
    if t < warmup:
        return base * (0.1 + 0.9 * t / warmup)
    return cosine_between(base, 0.0, (t - warmup) / (steps - warmup))


CLOSED_FORMS = {
    "constant": lambda b, t, n: b,
    "step": lambda b, t, n: b * 0.3 ** (t // math.ceil(n / 3)),  # three phases, each 0.3x the previous
    "exponential": lambda b, t, n: b * 0.05 ** (t / (n - 1)),  # 5% of the base LR at the last step
    "cosine": lambda b, t, n: cosine_between(b, 0.0, t / n),
    "warmup_cosine": warmup_cosine,
    "onecycle": onecycle,
    "poly": lambda b, t, n: b * (1 - t / n) ** 0.9,  # nnU-Net's rule
    # lrs() reports Dice 0 every step, which never improves: halve after the first step and every 3 after it
    "plateau": lambda b, t, n: b * 0.5 ** max(0, (t - 1) // 3),
}


def test_every_schedule_has_a_closed_form():
    assert sorted(CLOSED_FORMS) == sorted(SCHEDULES)


@pytest.mark.parametrize("steps", [2, 3, 7, 10, 20])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_full_lr_sequence_follows_the_closed_form(name, steps):
    expected = [CLOSED_FORMS[name](0.3, t, steps) for t in range(steps)]
    assert FixedSchedule(name, 0.3, steps).lrs() == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_one_step_budgets():
    assert FixedSchedule("warmup_cosine", 0.3, 1).lrs() == pytest.approx([0.03])  # all warmup: base/10
    assert FixedSchedule("exponential", 0.3, 1).lrs() == [0.3]


def test_stepping_a_schedule_reports_the_same_sequence_and_stops_at_the_budget():
    schedule, seen = FixedSchedule("onecycle", 0.3, 7), []
    for _ in range(9):  # two steps past the budget: OneCycleLR itself would raise
        seen.append(schedule.lr)
        schedule.step(0.5)
    assert seen[:7] == schedule.lrs() and seen[7:] == [seen[6]] * 2


def test_plateau_halves_only_when_dice_stalls():
    schedule = FixedSchedule("plateau", 0.1, 20)
    for dice in (0.1, 0.2, 0.3, 0.4):
        schedule.step(dice)
    assert schedule.lr == 0.1
    for _ in range(3):
        schedule.step(0.4)
    assert schedule.lr == pytest.approx(0.05)


def test_non_finite_dice_counts_as_no_improvement():
    """A diverged step reports no Dice (None) or NaN: plateau must see a stall, not a record."""
    schedule = FixedSchedule("plateau", 0.1, 20)
    schedule.step(0.5)
    for dice in (None, math.nan, None):
        schedule.step(dice)
    assert schedule.lr == pytest.approx(0.05)


@pytest.mark.parametrize("base_lr", [0.0, -0.1, math.inf, math.nan])
def test_base_lr_must_be_positive_and_finite(base_lr):
    with pytest.raises(ValueError, match="positive finite"):
        FixedSchedule("cosine", base_lr, 10)


def test_lr_grid_covers_the_range_at_round_log_spaced_values():
    assert lr_grid(1e-4, 1e-3) == [0.0001, 0.000316227766, 0.001]  # two per decade by default
    assert lr_grid(2e-4, 0.2) == [
        0.0001,
        0.000316227766,
        0.001,
        0.003162277660,
        0.01,
        0.031622776602,
        0.1,
        0.316227766017,
    ]
    assert lr_grid(0.01, 0.1, per_decade=1) == [0.01, 0.1]
    assert lr_grid(0.05, 0.05, per_decade=4) == [0.031622776602, 0.056234132519]


def test_unknown_schedule_lists_the_choices():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'.*cosine"):
        FixedSchedule("cosin", 0.1, 10)
