"""Dataset-level Dice/IoU: exact values on hand-made masks, accumulation, empty classes and ignored pixels."""

import math

import pytest
import torch

from rlsched.seg.heads import BinaryHead
from rlsched.seg.metrics import SegmentationMetrics

IGNORE = 255


def u8(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.uint8)


def scores(task: str, classes: int, prediction: torch.Tensor, target: torch.Tensor) -> dict:
    metrics = SegmentationMetrics(task, classes, ignore_index=IGNORE)
    metrics.update(prediction, target)
    return metrics.compute()


def test_binary_exact_fractions() -> None:
    # TP = 2, FP = 1, FN = 3 -> Dice = 4/8, IoU = 2/6
    prediction = u8([[[1, 1, 1, 0], [0, 0, 0, 0]]])
    target = u8([[[1, 1, 0, 1], [1, 1, 0, 0]]])
    result = scores("binary", 1, prediction, target)
    assert result["dice"] == [4 / 8] and result["iou"] == [2 / 6]
    assert result["dice_mean"] == 4 / 8 and result["iou_mean"] == 2 / 6


def test_ignored_pixels_are_left_out() -> None:
    prediction = u8([[[1, 1, 1, 0], [0, 0, 0, 1]]])
    target = u8([[[1, 1, 0, 1], [1, 1, 0, IGNORE]]])  # the ignored pixel would otherwise be a false positive
    assert scores("binary", 1, prediction, target)["dice"] == [4 / 8]
    prediction[0, 1, 3] = 0  # and what is predicted there does not matter
    assert scores("binary", 1, prediction, target)["dice"] == [4 / 8]


def test_multiclass_excludes_background() -> None:
    prediction = u8([[[0, 1, 1, 2], [2, 2, 0, 0]]])
    target = u8([[[1, 1, 0, 2], [2, 0, 0, IGNORE]]])
    # class 1: TP 1, FP 1, FN 1 -> Dice 2/4, IoU 1/3; class 2: TP 2, FP 1, FN 0 -> Dice 4/5, IoU 2/3
    result = scores("multiclass", 2, prediction, target)
    assert result["dice"] == [2 / 4, 4 / 5] and result["iou"] == [1 / 3, 2 / 3]
    assert result["dice_mean"] == pytest.approx((2 / 4 + 4 / 5) / 2, abs=1e-15)


def test_multilabel_per_channel() -> None:
    prediction = u8([[[[1, 1, 0, 0]], [[0, 0, 0, 1]]]])
    target = u8([[[[1, 0, 0, IGNORE]], [[1, 0, 0, IGNORE]]]])
    # label 1: TP 1, FP 1 -> Dice 2/3; label 2: FN 1 (its FP sits on an ignored pixel) -> Dice 0
    result = scores("multilabel", 2, prediction, target)
    assert result["dice"] == [2 / 3, 0.0] and result["iou"] == [1 / 2, 0.0]


def test_accumulation_equals_whole_dataset_not_batch_mean() -> None:
    g = torch.Generator().manual_seed(0)
    prediction = torch.randint(0, 4, (9, 11, 13), generator=g).to(torch.uint8)
    target = torch.randint(0, 4, (9, 11, 13), generator=g).to(torch.uint8)
    target[torch.rand(9, 11, 13, generator=g) < 0.2] = IGNORE
    batched = SegmentationMetrics("multiclass", 3)
    for start, stop in [(0, 1), (1, 5), (5, 9)]:
        batched.update(prediction[start:stop], target[start:stop])
    assert batched.compute() == scores("multiclass", 3, prediction, target)

    # one 1-pixel batch with Dice 0 and one 100-pixel batch with Dice 1: a mean of batch scores would say 1/2
    metrics = SegmentationMetrics("binary", 1)
    metrics.update(u8([[[1]]]), u8([[[0]]]))
    metrics.update(torch.ones(1, 10, 10, dtype=torch.uint8), torch.ones(1, 10, 10, dtype=torch.uint8))
    assert metrics.compute()["dice"] == [200 / 201]


def test_empty_vs_empty_is_nan_and_left_out_of_the_mean() -> None:
    prediction = u8([[[1, 0, 0], [0, 3, 0]]])
    target = u8([[[1, 0, 0], [0, 0, 0]]])
    # class 1 perfect; class 2 absent everywhere -> NaN; class 3 predicted but absent -> 0 (real false positives)
    result = scores("multiclass", 3, prediction, target)
    assert result["dice"][0] == 1.0 and math.isnan(result["dice"][1]) and result["dice"][2] == 0.0
    assert math.isnan(result["iou"][1])
    assert result["dice_mean"] == 0.5 and result["iou_mean"] == 0.5

    nothing = scores("binary", 1, u8([[[0, 0], [0, IGNORE]]]), u8([[[0, 0], [0, IGNORE]]]))
    assert (
        math.isnan(nothing["dice"][0])
        and math.isnan(nothing["dice_mean"])
        and math.isnan(nothing["iou_mean"])
    )


def test_reset_forgets_counts() -> None:
    metrics = SegmentationMetrics("binary", 1)
    metrics.update(u8([[[1, 0]]]), u8([[[0, 1]]]))
    metrics.reset()
    metrics.update(u8([[[1, 0]]]), u8([[[1, 0]]]))
    assert metrics.compute()["dice"] == [1.0]


def test_works_on_head_predictions() -> None:
    head = BinaryHead(threshold=0.5)
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    metrics = SegmentationMetrics("binary", 1)
    metrics.update(head.predict(logits), u8([[[1, 1], [0, 0]]]))
    assert metrics.compute()["dice"] == [2 / 4]


def test_counts_are_tp_fp_fn_summed_over_updates() -> None:
    metrics = SegmentationMetrics("multiclass", 2)
    metrics.update(u8([[[0, 1, 1, 2]]]), u8([[[1, 1, 0, 2]]]))
    metrics.update(u8([[[2, 2]]]), u8([[[2, 0]]]))
    assert metrics.counts.tolist() == [[1, 2], [1, 1], [1, 0]]  # rows TP, FP, FN; one column per class


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"same shape \(N, H, W\); got \(1, 1, 2\) and \(1, 2\)"):
        SegmentationMetrics("binary", 1).update(u8([[[1, 0]]]), u8([[1, 0]]))
    with pytest.raises(ValueError, match=r"same shape \(N, K, H, W\)"):
        SegmentationMetrics("multilabel", 1).update(u8([[[1, 0]]]), u8([[[1, 0]]]))
    with pytest.raises(ValueError, match="same shape"):  # equal shapes, but not class-index maps
        SegmentationMetrics("binary", 1).update(u8([[[[1, 0]]]]), u8([[[[1, 0]]]]))
    with pytest.raises(ValueError, match="classes=3 got 2 channels"):
        SegmentationMetrics("multilabel", 3).update(
            torch.zeros(1, 2, 4, 4, dtype=torch.uint8), torch.zeros(1, 2, 4, 4, dtype=torch.uint8)
        )
    with pytest.raises(ValueError, match="ignore_index=2 collides"):
        SegmentationMetrics("multiclass", 2, ignore_index=2)
    with pytest.raises(ValueError, match="ignore_index=1 collides"):
        SegmentationMetrics("binary", 1, ignore_index=1)
    assert SegmentationMetrics("binary", 1, ignore_index=2).ignore_index == 2  # binary targets are 0/1 only
    for task, classes in [("multiclass", 0), ("binary", 2)]:
        with pytest.raises(ValueError, match=f"classes={classes}"):
            SegmentationMetrics(task, classes)
