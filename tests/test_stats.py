"""rlsched.common.stats against hand-computed numbers: every comparison the project reports rests on them."""

import dataclasses
import math

import pytest
from by_hand import T975, t_interval, t_test_pvalue, wilcoxon_exact_pvalue

from rlsched.common.stats import DIFFERENCE, UNIT, MeanCI, clipped_note, mean_ci, paired_test

# Final Dice of a baseline on six instances (wide spread between instances) and of a method that gains a
# little on almost every instance: pairing removes the spread, so only a paired test sees the gain.
BASELINE = [0.31, 0.52, 0.78, 0.44, 0.90, 0.63]
GAIN = [0.05, 0.03, -0.01, 0.06, 0.02, 0.045]
METHOD = [b + g for b, g in zip(BASELINE, GAIN)]


def test_mean_ci_is_the_student_t_interval():
    values = [0.2, 0.4, 0.9, 0.5, 0.6]
    ci = mean_ci(values)
    mean, low, high = t_interval(values)
    assert ci.n == 5
    assert (ci.mean, ci.low, ci.high) == (pytest.approx(mean), pytest.approx(low), pytest.approx(high))
    assert ci.half_width == pytest.approx(T975[4] * math.sqrt(0.067) / math.sqrt(5))  # sample variance 0.067
    assert str(ci) == f"0.520 ± {ci.half_width:.3f}"


def test_mean_ci_honours_the_confidence_level():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0], confidence=0.90)
    assert ci.half_width == pytest.approx(2.131846786 * math.sqrt(2.5 / 5))  # t_{0.95, 4} from the tables
    assert ci.mean == 3.0


def test_results_are_frozen():
    """A reported interval or test cannot be edited after the fact."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        mean_ci([0.1, 0.2]).low = 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        paired_test([0.1, 0.2], [0.3, 0.5]).t_pvalue = 0.01


def test_mean_ci_of_one_value_and_of_none():
    assert mean_ci([0.25]) == MeanCI(0.25, 0.25, 0.25, 1)
    assert str(mean_ci([0.25])) == "0.250"  # no interval from a single value
    assert str(mean_ci([0.25, 0.75])) == f"0.500 ± {T975[1] * 0.25:.3f}"  # two values already give one
    empty = mean_ci([])
    assert empty.n == 0 and all(math.isnan(v) for v in (empty.mean, empty.low, empty.high))


def test_paired_test_matches_the_hand_computation():
    test = paired_test(METHOD, BASELINE)
    differences = [m - b for m, b in zip(METHOD, BASELINE)]
    mean, low, high = t_interval(differences)
    assert test.n == test.ci.n == 6
    assert test.mean_difference == pytest.approx(sum(GAIN) / 6) == pytest.approx(mean)
    assert (test.ci.low, test.ci.high) == (pytest.approx(low), pytest.approx(high))
    assert test.t_pvalue == pytest.approx(t_test_pvalue(differences), rel=1e-9)
    assert test.wilcoxon_pvalue == pytest.approx(wilcoxon_exact_pvalue(differences)) == 4 / 64
    # The numbers the published claims quote: significant when paired; an unpaired test would give p ~ 0.8.
    assert test.t_pvalue < 0.05 and 0 < test.ci.low


def test_paired_test_is_a_minus_b():
    forward, backward = paired_test(METHOD, BASELINE), paired_test(BASELINE, METHOD)
    assert forward.mean_difference > 0
    assert backward.mean_difference == pytest.approx(-forward.mean_difference)
    assert backward.ci.low == pytest.approx(-forward.ci.high)
    assert backward.ci.high == pytest.approx(-forward.ci.low)
    assert (backward.t_pvalue, backward.wilcoxon_pvalue) == (
        pytest.approx(forward.t_pvalue),
        pytest.approx(forward.wilcoxon_pvalue),
    )


def test_two_instances_are_enough_for_a_paired_test():
    differences = [0.1, 0.25]
    test = paired_test([0.5, 0.75], [0.4, 0.5])
    assert test.t_pvalue == pytest.approx(t_test_pvalue(differences), rel=1e-9)
    assert test.wilcoxon_pvalue == wilcoxon_exact_pvalue(differences) == 0.5


@pytest.mark.parametrize("a, b", [([0.5, 0.7, 0.2], [0.5, 0.7, 0.2]), ([0.9], [0.4])])
def test_no_evidence_gives_p_one(a, b):
    """Identical results, or a single instance, cannot show a difference (scipy would return NaN)."""
    test = paired_test(a, b)
    assert (test.t_pvalue, test.wilcoxon_pvalue, test.n) == (1.0, 1.0, len(a))
    assert test.mean_difference == pytest.approx(a[0] - b[0] if len(a) == 1 else 0.0)


def test_results_on_different_instances_cannot_be_paired():
    with pytest.raises(ValueError, match="same instances"):
        paired_test([0.1, 0.2, 0.3], [0.1, 0.2])


def test_an_interval_past_what_a_dice_can_be_is_shown_clipped_with_n_and_kept_raw():
    """Two Dice 0.1 and 0.9: the t interval is 0.5 ± 5.08, which no Dice can reach; shown as ± it claims
    impossible values, so the display clips it to [0, 1] and says n, while low/high stay the raw t interval."""
    wide = mean_ci([0.1, 0.9])
    half = T975[1] * math.sqrt(0.32) / math.sqrt(2)
    assert (wide.low, wide.high) == (
        pytest.approx(0.5 - half),
        pytest.approx(0.5 + half),
    )  # raw, for JSON/CSV
    assert wide.text(bounds=UNIT) == "0.500 [0.000, 1.000] (clipped, n=2)"
    assert str(wide) == f"0.500 ± {half:.3f}"  # without bounds (a quantity of no known range): as before
    narrow = mean_ci([0.5, 0.52, 0.54])
    assert narrow.text(bounds=UNIT) == str(narrow) == f"0.520 ± {narrow.half_width:.3f}"
    assert mean_ci([-0.1, 0.1]).span(DIFFERENCE) == "-1.000 .. +1.000, clipped"  # a difference of two Dice
    assert narrow.span(DIFFERENCE) == f"{narrow.low:+.3f} .. {narrow.high:+.3f}"


def test_the_clipped_note_names_the_sample_sizes_and_the_fix():
    wide, narrow = mean_ci([0.1, 0.9]), mean_ci([0.5, 0.52, 0.54])
    assert clipped_note([(narrow, UNIT)], "add instances") == ""
    note = clipped_note([(narrow, UNIT), (wide, UNIT), (mean_ci([0.2, 0.25, 0.9]), UNIT)], "add instances")
    assert "n = 2, 3 is too small a sample" in note and "add instances" in note and "\n" not in note


def test_paired_test_counts_wins_and_losses_ties_apart():
    test = paired_test([0.5, 0.7, 0.2, 0.4], [0.4, 0.7, 0.3, 0.1])
    assert (test.wins, test.losses, test.n) == (2, 1, 4)
    assert (paired_test([0.3, 0.3], [0.3, 0.3]).wins, paired_test([0.3, 0.3], [0.3, 0.3]).losses) == (0, 0)
