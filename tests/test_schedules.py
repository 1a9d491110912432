import math
import warnings

import pytest

from rlsched.schedules import SCHEDULES, FixedSchedule


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_every_schedule_yields_positive_lrs_for_the_whole_budget(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrs = FixedSchedule(name, 0.1, 10).lrs()
    assert len(lrs) == 10 and all(lr > 0 and math.isfinite(lr) for lr in lrs)
    assert max(lrs) <= 0.1 + 1e-12


def test_shapes_of_the_schedules():
    assert FixedSchedule("constant", 0.1, 6).lrs() == [0.1] * 6
    cosine = FixedSchedule("cosine", 0.1, 10).lrs()
    assert cosine[0] == 0.1 and all(a > b for a, b in zip(cosine, cosine[1:]))
    poly = FixedSchedule("poly", 0.1, 10).lrs()
    assert poly[3] == pytest.approx(0.1 * (1 - 3 / 10) ** 0.9)  # nnU-Net's rule
    onecycle = FixedSchedule("onecycle", 0.1, 10).lrs()
    assert onecycle[0] < 0.01 and max(onecycle) == pytest.approx(0.1)
    step = FixedSchedule("step", 0.1, 9).lrs()
    assert step == pytest.approx([0.1] * 3 + [0.03] * 3 + [0.009] * 3)


def test_plateau_halves_only_when_dice_stalls():
    schedule = FixedSchedule("plateau", 0.1, 20)
    for dice in (0.1, 0.2, 0.3, 0.4):
        schedule.step(dice)
    assert schedule.lr == 0.1
    for _ in range(3):
        schedule.step(0.4)
    assert schedule.lr == pytest.approx(0.05)


def test_unknown_schedule_lists_the_choices():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'.*cosine"):
        FixedSchedule("cosin", 0.1, 10)
