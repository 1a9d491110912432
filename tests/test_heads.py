"""The maths of the task heads: losses, ignore handling, predictions and target validation."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlsched.config import ConfigError, DataConfig, LossConfig
from rlsched.seg.heads import (
    DICE_EPS,
    BinaryHead,
    MulticlassHead,
    MultilabelHead,
    TargetError,
    make_head,
    soft_dice_loss,
)

IGNORE = 255


def loss_and_grad(head, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.detach().clone().requires_grad_(True)
    loss = head.loss(logits, target)
    loss.backward()
    return loss.detach(), logits.grad


def binary_batch(seed: int = 0, ignore_fraction: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(3, 1, 6, 7, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (3, 6, 7), generator=g).to(torch.uint8)
    target[torch.rand(3, 6, 7, generator=g) < ignore_fraction] = IGNORE
    return logits, target


# --- losses -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_fraction", [0.0, 0.3])
def test_binary_bce_equals_two_channel_ce_on_zero_and_z(ignore_fraction: float) -> None:
    z, target = binary_batch(ignore_fraction=ignore_fraction)
    bce, bce_grad = loss_and_grad(BinaryHead(), z, target)
    z2 = z.detach().clone().requires_grad_(True)
    ce = MulticlassHead(classes=1).loss(torch.cat([torch.zeros_like(z2), z2], dim=1), target)
    ce.backward()
    torch.testing.assert_close(bce, ce.detach())
    torch.testing.assert_close(bce_grad, z2.grad)
    # and both equal torch's own BCE over the kept pixels
    valid = target != IGNORE
    reference = F.binary_cross_entropy_with_logits(z[:, 0][valid], target[valid].double())
    torch.testing.assert_close(bce, reference)


@pytest.mark.parametrize("pos_weight", [3.0, 0.5])
def test_binary_pos_weight_matches_torch(pos_weight: float) -> None:
    z, target = binary_batch()
    valid = target != IGNORE
    reference = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, dtype=torch.float64))(
        z[:, 0][valid], target[valid].double()
    )
    torch.testing.assert_close(BinaryHead(pos_weight=pos_weight).loss(z, target), reference)


def test_multiclass_class_weights_and_ignore_by_hand() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 3, 5), generator=g).to(torch.uint8)
    target[0, 0, :] = IGNORE
    target[1, 2, 1] = IGNORE
    weights = (0.2, 1.0, 3.0, 0.5)
    head = MulticlassHead(classes=3, class_weights=weights)
    # torch docs, reduction="mean": sum_n w[y_n] * -log softmax(x_n)[y_n] / sum_n w[y_n], over non-ignored n
    log_p = torch.log_softmax(logits, dim=1)
    numerator = denominator = 0.0
    for n in range(2):
        for i in range(3):
            for j in range(5):
                y = int(target[n, i, j])
                if y != IGNORE:
                    numerator += weights[y] * -float(log_p[n, y, i, j])
                    denominator += weights[y]
    assert head.loss(logits, target).item() == pytest.approx(numerator / denominator, rel=1e-12)
    assert numerator / denominator != pytest.approx(MulticlassHead(classes=3).loss(logits, target).item())
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float64), ignore_index=IGNORE)
    torch.testing.assert_close(head.loss(logits, target), ce(logits, target.long()))


@pytest.mark.parametrize("weights", [(), (0.2, 1.0, 3.0)])
def test_multiclass_label_smoothing_matches_torch(weights: tuple[float, ...]) -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 4), generator=g).to(torch.uint8)
    target[1, :2] = IGNORE
    head = MulticlassHead(classes=2, class_weights=weights, label_smoothing=0.2)
    ce = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float64) if weights else None,
        ignore_index=IGNORE,
        label_smoothing=0.2,
    )
    torch.testing.assert_close(head.loss(logits, target), ce(logits, target.long()))


def multilabel_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    logits = 2 * torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 3, 5, 6), generator=g).to(torch.uint8)
    ignored = torch.rand(2, 1, 5, 6, generator=g) < 0.3
    return logits, torch.where(ignored, torch.tensor(IGNORE, dtype=torch.uint8), target)


def test_multilabel_is_mean_bce_over_kept_pixels() -> None:
    logits, target = multilabel_batch()
    valid = target != IGNORE
    reference = F.binary_cross_entropy_with_logits(logits[valid], target[valid].double())
    torch.testing.assert_close(MultilabelHead(classes=3).loss(logits, target), reference)


def multiclass_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 5, 6), generator=g).to(torch.uint8)
    target[torch.rand(2, 5, 6, generator=g) < 0.3] = IGNORE
    return logits, target


CASES = {
    "binary": (lambda dice: BinaryHead(pos_weight=2.0, dice_weight=dice), binary_batch),
    "multiclass": (
        lambda dice: MulticlassHead(2, class_weights=(1.0, 2.0, 0.5), dice_weight=dice),
        multiclass_batch,
    ),
    "multilabel": (lambda dice: MultilabelHead(3, dice_weight=dice), multilabel_batch),
}


@pytest.mark.parametrize("task", CASES)
@pytest.mark.parametrize("dice", [0.0, 1.0])
def test_ignored_pixels_change_neither_loss_nor_gradient(task: str, dice: float) -> None:
    make, batch = CASES[task]
    head = make(dice)
    logits, target = batch()
    ignored = target == IGNORE
    if task != "multilabel":
        ignored = ignored.unsqueeze(1)
    ignored = ignored.expand_as(logits)
    assert ignored.any()
    loss, grad = loss_and_grad(head, logits, target)
    scrambled = torch.where(ignored, 50 * torch.randn_like(logits), logits)
    loss2, grad2 = loss_and_grad(head, scrambled, target)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(grad2, grad)
    assert (grad[ignored] == 0).all()


@pytest.mark.parametrize("task", CASES)
def test_all_ignored_batch_gives_zero_loss_not_nan(task: str) -> None:
    make, batch = CASES[task]
    logits, target = batch()
    target = torch.full_like(target, IGNORE)
    loss, grad = loss_and_grad(make(1.0), logits, target)
    assert loss.item() == 0.0
    assert (grad == 0).all()


def test_soft_dice_term_by_hand() -> None:
    prob = torch.tensor([0.9, 0.2, 0.6, 0.1], dtype=torch.float64)
    truth = torch.tensor([1, 0, 1, IGNORE], dtype=torch.uint8)
    logits = torch.log(prob / (1 - prob)).view(1, 1, 1, 4)
    kept = prob[:3]
    expected_dice = 1 - (2 * (0.9 + 0.6) + DICE_EPS) / (kept.sum().item() + 2 + DICE_EPS)
    target = truth.view(1, 1, 4)
    with_dice = BinaryHead(dice_weight=0.5).loss(logits, target)
    without = BinaryHead().loss(logits, target)
    assert (with_dice - without).item() == pytest.approx(0.5 * expected_dice, rel=1e-9)


def test_soft_dice_is_one_score_for_the_whole_batch_with_monai_smoothing() -> None:
    # image 1: class absent and never predicted; image 2: half the predicted mass on the object
    prob = torch.tensor([[[[0.0, 0.0]]], [[[0.5, 1.0]]]], dtype=torch.float64)
    truth = torch.tensor([[[[0, 0]]], [[[1, 0]]]], dtype=torch.bool)
    valid = torch.ones_like(truth)
    expected = 1 - (2 * 0.5 + 1e-5) / (1.5 + 1 + 1e-5)  # not a mean of per-image scores (image 1 alone: 1)
    assert soft_dice_loss(prob, truth, valid).item() == pytest.approx(expected, rel=1e-12)
    assert soft_dice_loss(prob[:1], truth[:1], valid[:1]).item() == 0.0  # empty vs empty is a perfect match


def test_multiclass_dice_uses_foreground_softmax_only() -> None:
    logits, target = multiclass_batch()
    prob = torch.softmax(logits, dim=1)
    valid = (target != IGNORE).unsqueeze(1)
    truth = torch.stack([target == 1, target == 2], dim=1)
    expected = soft_dice_loss(prob[:, 1:], truth, valid)
    head = MulticlassHead(2, dice_weight=1.0)
    torch.testing.assert_close(head.loss(logits, target) - MulticlassHead(2).loss(logits, target), expected)
    assert 0 < expected.item() < 1


def test_loss_is_float32_under_bf16_logits() -> None:
    logits, target = binary_batch()
    assert BinaryHead(dice_weight=1.0).loss(logits.to(torch.bfloat16), target).dtype == torch.float32


# --- predictions --------------------------------------------------------------------------------------------------


def test_binary_predict_threshold_is_exact() -> None:
    t = 0.7
    boundary = math.log(t / (1 - t))
    logits = torch.tensor([boundary, math.nextafter(boundary, math.inf), -3.0, 3.0], dtype=torch.float64)
    pred = BinaryHead(threshold=t).predict(logits.view(1, 1, 1, 4))
    assert pred.dtype == torch.uint8 and pred.shape == (1, 1, 4)
    assert pred.flatten().tolist() == [0, 1, 0, 1]
    z = 4 * torch.randn(2, 1, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(
        BinaryHead(threshold=t).predict(z), (torch.sigmoid(z[:, 0]) > t).to(torch.uint8)
    )
    assert BinaryHead().predict(torch.tensor([[[[1e-9, 0.0, -1e-9]]]])).tolist() == [[[1, 0, 0]]]


def test_multiclass_predict_is_argmax() -> None:
    logits = torch.tensor([[5.0, 1.0, 0.0], [-1.0, 2.0, 9.0], [0.0, 3.0, -4.0]]).T.reshape(1, 3, 1, 3)
    pred = MulticlassHead(2).predict(logits)
    assert pred.dtype == torch.uint8 and pred.tolist() == [[[0, 2, 1]]]


def test_multilabel_predict_per_channel() -> None:
    logits = torch.tensor([[-1.0, 0.5], [2.0, -0.1], [0.3, 0.0]]).reshape(1, 3, 1, 2)
    pred = MultilabelHead(3, threshold=0.5).predict(logits)
    assert pred.dtype == torch.uint8 and pred.shape == (1, 3, 1, 2)
    assert pred.flatten().tolist() == [0, 1, 1, 0, 1, 0]


# --- target validation ----------------------------------------------------------------------------------------------


def test_binary_target_with_channel_dim_names_the_fix() -> None:
    head = BinaryHead()
    with pytest.raises(TargetError, match=r"\(N, 1, H, W\).*pass \(N, H, W\).*squeeze\(1\)"):
        head.validate_target(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(TargetError, match="squeeze"):
        head.loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_one_hot_multiclass_targets_are_named_as_such() -> None:
    with pytest.raises(TargetError, match=r"\(2, 3, 8, 8\); expected \(N, H, W\) class indices.*not one-hot"):
        MulticlassHead(2).validate_target(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(TargetError, match="add the batch dimension"):
        BinaryHead().validate_target(torch.zeros(8, 1, dtype=torch.uint8))


def test_bad_dtype_names_uint8() -> None:
    with pytest.raises(TargetError, match="float32.*torch.uint8"):
        BinaryHead().validate_target(torch.zeros(2, 8, 8))
    with pytest.raises(TargetError, match="int64.*target.to\\(torch.uint8\\)"):
        MulticlassHead(2).loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))


def test_out_of_range_values_are_reported() -> None:
    mask = torch.zeros(1, 4, 4, dtype=torch.uint8)
    mask[0, 0, 0], mask[0, 1, 1] = 1, IGNORE
    BinaryHead().validate_target(mask)
    mask[0, 2, 2] = 2
    with pytest.raises(TargetError, match=r"values \[2\].*0..1.*ignore_index=255.*mask_map"):
        BinaryHead().validate_target(mask)
    MulticlassHead(2).validate_target(mask)
    mask[0, 3, 3] = 3
    with pytest.raises(TargetError, match=r"values \[3\].*0..2"):
        MulticlassHead(2).validate_target(mask)


def test_multilabel_target_errors() -> None:
    head = MultilabelHead(3)
    with pytest.raises(TargetError, match=r"\(N, 3, H, W\).*task='multiclass'"):
        head.validate_target(torch.zeros(2, 8, 8, dtype=torch.uint8))
    with pytest.raises(TargetError, match="expected \\(N, 3, H, W\\)"):
        head.validate_target(torch.zeros(2, 2, 8, 8, dtype=torch.uint8))
    partial = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    partial[0, 0, 0, 0] = IGNORE
    with pytest.raises(TargetError, match="all 3 channels"):
        head.validate_target(partial)
    partial[0, :, 0, 0] = IGNORE
    head.validate_target(partial)


def test_logits_and_target_must_agree() -> None:
    head = MulticlassHead(2)
    target = torch.zeros(2, 8, 8, dtype=torch.uint8)
    with pytest.raises(TargetError, match=r"expects floating \(N, 3, H, W\)"):
        head.validate_target(target, torch.zeros(2, 2, 8, 8))
    with pytest.raises(TargetError, match=r"needs a target of shape \(2, 8, 9\)"):
        head.loss(torch.zeros(2, 3, 8, 9), target)
    with pytest.raises(TargetError, match="batch dimension"):
        head.validate_target(torch.zeros(8, 8, dtype=torch.uint8))
    with pytest.raises(TargetError, match=r"expects floating \(N, 1, H, W\)"):
        BinaryHead().predict(torch.zeros(2, 2, 8, 8))


# --- construction ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task,classes,kind",
    [("binary", 1, BinaryHead), ("multiclass", 3, MulticlassHead), ("multilabel", 3, MultilabelHead)],
)
def test_make_head_matches_data_config(task: str, classes: int, kind: type) -> None:
    data = DataConfig(task=task, classes=classes, ignore_index=200)
    head = make_head(data, LossConfig(dice_weight=0.5))
    assert isinstance(head, kind) and head.task == task and head.classes == classes
    assert head.out_channels == data.out_channels and head.ignore_index == 200 and head.dice_weight == 0.5


def test_settings_outside_their_range_are_rejected() -> None:
    for ignore_index in (1, 256):  # a class value, or beyond uint8
        with pytest.raises(ValueError, match=f"ignore_index={ignore_index}"):
            BinaryHead(ignore_index=ignore_index)
    assert BinaryHead(ignore_index=2).ignore_index == 2
    for threshold in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"threshold={threshold}"):
            BinaryHead(threshold=threshold)
    with pytest.raises(ValueError, match="label_smoothing=1"):
        MulticlassHead(2, label_smoothing=1.0)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        MulticlassHead(1, class_weights=(1.0, -1.0))
    with pytest.raises(ValueError, match="classes=0"):
        MultilabelHead(0)
    assert MultilabelHead(1).out_channels == 1  # a single label is a valid multilabel task


def test_a_zero_class_weight_drops_that_class_from_the_loss() -> None:
    logits, target = multiclass_batch()
    valid = target != IGNORE
    kept = valid & (target != 0)
    reference = F.cross_entropy(logits.permute(0, 2, 3, 1)[kept], target[kept].long())
    head = MulticlassHead(2, class_weights=(0.0, 1.0, 1.0))
    torch.testing.assert_close(head.loss(logits, target), reference)


def test_make_head_rejects_settings_of_another_task() -> None:
    with pytest.raises(ValueError, match="class_weights has 3 entries but classes=3 needs 4"):
        make_head(DataConfig(task="multiclass", classes=3), LossConfig(class_weights=(1.0, 2.0, 3.0)))
    with pytest.raises(ConfigError, match="pos_weight=2.0 only applies to task='binary'"):
        make_head(DataConfig(task="multiclass", classes=3), LossConfig(pos_weight=2.0))
    with pytest.raises(ConfigError, match="only apply to task='multiclass'"):
        make_head(DataConfig(task="binary"), LossConfig(class_weights=(1.0, 2.0)))
    with pytest.raises(ValueError, match="ignore_index=2 collides"):
        make_head(DataConfig(task="multiclass", classes=3, ignore_index=2), LossConfig())
    assert make_head(DataConfig(), LossConfig(pos_weight=2.0)).pos_weight == 2.0
    with pytest.raises(ConfigError, match="pos_weight=0.5 only applies"):
        make_head(DataConfig(task="multilabel", classes=2), LossConfig(pos_weight=0.5))
    with pytest.raises(ConfigError, match="label_smoothing only apply to task='multiclass'"):
        make_head(DataConfig(task="binary"), LossConfig(label_smoothing=0.5))
