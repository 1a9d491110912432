"""Task heads: the one place where raw logits meet activations, losses and hard predictions.

The UNet returns raw logits and nothing else. A head owns everything that depends on the task kind:

- ``loss(logits, target)``: BCE-with-logits (binary, multilabel) or cross-entropy (multiclass), plus an optional
  soft-Dice term;
- ``predict(logits)``: hard uint8 masks laid out like the targets, ready for ``SegmentationMetrics``;
- ``validate_target(target, logits=None)``: a full check of a mask batch.

Sigmoid and softmax are applied only inside these methods and are never exposed, and both public methods take
logits. So the classic wrong pairings (probabilities fed to a logits loss, softmax followed by cross-entropy,
thresholding logits at 0.5) cannot be made through this API.

Conventions:

- Targets are uint8 masks. Binary and multiclass: (N, H, W) class indices (0..K). Multilabel: (N, K, H, W) in
  {0, 1}. ``ignore_index`` marks "don't care" pixels (in every channel for multilabel). Ignored pixels add nothing
  to the loss or its gradient.
- Losses are computed in float32 (or wider): under bf16 autocast the logits arrive in bf16, whose 8-bit mantissa is
  too coarse for log-sum-exp and for Dice sums over a whole batch.
- A batch whose pixels are all ignored has loss exactly 0, still attached to the graph with a zero gradient (the
  value of ``0 * logits.sum()``), instead of torch's 0/0 = NaN. This comes from a mean whose zero denominator is
  replaced by 1, which needs no host sync, unlike an ``if`` on the pixel count.
- ``loss`` and ``predict`` check shapes and dtype on every call (metadata only, free). ``validate_target`` also
  reads the values, which is a device sync, so call it where that is cheap (once per dataset, or in tests).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from rlsched.config import ConfigError, DataConfig, LossConfig

DICE_EPS = 1e-5  # MONAI DiceLoss's default smooth_nr = smooth_dr: empty-vs-empty scores a perfect 1


class TargetError(ValueError):
    """A target mask (or its pairing with the logits) is malformed; the message says what and how to fix it."""


def soft_dice_loss(prob: Tensor, truth: Tensor, valid: Tensor) -> Tensor:
    """1 - mean over channels of soft Dice ``(2 sum(p y) + eps) / (sum(p) + sum(y) + eps)`` on valid pixels.

    ``prob`` and ``truth`` are (N, C, H, W), holding foreground channels only; ``valid`` broadcasts to them. Sums run
    over the whole batch (one Dice per class, MONAI's ``batch=True``), so a class missing from one image does not
    give that image a meaningless score.
    """
    prob, truth = prob * valid, truth * valid
    dims = (0, 2, 3)
    overlap = (prob * truth).sum(dims)
    total = prob.sum(dims) + truth.sum(dims)
    return 1 - ((2 * overlap + DICE_EPS) / (total + DICE_EPS)).mean()


def _safe_divide(total: Tensor, count: Tensor) -> Tensor:
    """``total / count``, giving 0 instead of 0/0 = NaN when nothing was counted (an all-ignored batch)."""
    return total / torch.where(count > 0, count, torch.ones_like(count))


def _at_least_float32(logits: Tensor) -> Tensor:
    """Upcast bf16/fp16 logits (AMP) to float32; float32 and float64 pass unchanged."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _check_index_map(target: Tensor, task: str) -> None:
    """Binary and multiclass targets are (N, H, W) maps of class indices."""
    shape = tuple(target.shape)
    if target.ndim == 3:
        return
    if target.ndim == 4 and shape[1] == 1:
        raise TargetError(
            f"{task} target has shape {shape} = (N, 1, H, W); pass (N, H, W) class-index maps: "
            "target.squeeze(1)"
        )
    if target.ndim == 2:
        raise TargetError(
            f"{task} target has shape {shape} = (H, W); add the batch dimension: target.unsqueeze(0)"
        )
    raise TargetError(
        f"{task} target has shape {shape}; expected (N, H, W) class indices (one value per pixel, "
        "not one-hot channels)"
    )


class Head(ABC):
    """What every task head shares: shape/dtype checks, the float32 upcast and the optional Dice term."""

    task: str
    out_channels: int
    max_value: int  # largest valid (non-ignored) target value

    def __init__(self, classes: int, dice_weight: float, ignore_index: int) -> None:
        if dice_weight < 0:
            raise ValueError(f"dice_weight={dice_weight}: must be >= 0 (0 disables the Dice term)")
        if not self.max_value < ignore_index <= 255:
            raise ValueError(
                f"ignore_index={ignore_index} collides with the target values 0..{self.max_value} "
                f"(or does not fit in uint8); use a value in {self.max_value + 1}..255, e.g. 255"
            )
        self.classes = classes
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Scalar training loss of raw ``logits`` (N, out_channels, H, W) against a uint8 ``target`` mask."""
        self._check_layout(target, logits)
        z = _at_least_float32(logits)
        loss = self._data_loss(z, target)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * self._dice_loss(z, target)
        return loss

    def validate_target(self, target: Tensor, logits: Tensor | None = None) -> None:
        """Raise ``TargetError`` unless ``target`` is a well-formed mask batch (matching ``logits`` when given)."""
        self._check_layout(target, logits)
        bad = (target > self.max_value) & (target != self.ignore_index)
        if bad.any():
            values = torch.unique(target[bad]).tolist()
            raise TargetError(
                f"{self.task} target holds values {values[:8]}; allowed are 0..{self.max_value} and "
                f"ignore_index={self.ignore_index}. Remap the raw mask values to classes (for folder "
                'data, [data] mask_map, e.g. {"255" = 1}) or mark them as ignore_index'
            )

    def _check_layout(self, target: Tensor, logits: Tensor | None) -> None:
        if not isinstance(target, Tensor):
            raise TargetError(f"target is a {type(target).__name__}; pass a torch.uint8 tensor")
        if target.dtype != torch.uint8:
            raise TargetError(
                f"{self.task} target has dtype {target.dtype}; masks are torch.uint8 class maps "
                "(not probabilities or one-hot floats). If the values are already integers in "
                "0..255, convert with target.to(torch.uint8)"
            )
        self._check_target_shape(target)
        if logits is not None:
            self._check_logits(logits)
            expected = self._target_shape(logits)
            if tuple(target.shape) != expected:
                raise TargetError(
                    f"target shape {tuple(target.shape)} does not match logits shape "
                    f"{tuple(logits.shape)}: a {self.task} head needs a target of shape {expected}"
                )

    def _check_logits(self, logits: Tensor) -> None:
        if not (logits.is_floating_point() and logits.ndim == 4 and logits.shape[1] == self.out_channels):
            raise TargetError(
                f"logits have shape {tuple(logits.shape)} and dtype {logits.dtype}; a {self.task} head "
                f"expects floating (N, {self.out_channels}, H, W) raw model outputs"
            )

    @abstractmethod
    def _check_target_shape(self, target: Tensor) -> None: ...

    @abstractmethod
    def _target_shape(self, logits: Tensor) -> tuple[int, ...]: ...

    @abstractmethod
    def _data_loss(self, z: Tensor, target: Tensor) -> Tensor: ...

    @abstractmethod
    def _dice_loss(self, z: Tensor, target: Tensor) -> Tensor: ...

    @abstractmethod
    def predict(self, logits: Tensor) -> Tensor:
        """Hard uint8 prediction laid out like the targets."""


class _SigmoidHead(Head):
    """Binary and multilabel share their maths: one independent sigmoid per channel, targets in {0, 1}."""

    max_value = 1

    def __init__(
        self, classes: int, pos_weight: float, dice_weight: float, threshold: float, ignore_index: int
    ) -> None:
        super().__init__(classes, dice_weight, ignore_index)
        if pos_weight < 0:
            raise ValueError(f"pos_weight={pos_weight}: must be >= 0 (0 disables it)")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold={threshold}: a probability threshold must lie in (0, 1)")
        self.pos_weight = pos_weight
        self.threshold = threshold
        # sigmoid(z) > t  <=>  z > log(t / (1 - t)); comparing logits avoids sigmoid's rounding near t and its
        # saturation to exactly 1.0 for large z.
        self.logit_threshold = math.log(threshold / (1 - threshold))

    @abstractmethod
    def _channels(self, target: Tensor) -> Tensor:
        """The target as (N, C, H, W), aligned with the logits."""

    def _data_loss(self, z: Tensor, target: Tensor) -> Tensor:
        t = self._channels(target)
        valid = t != self.ignore_index
        pos_weight = z.new_tensor(self.pos_weight) if self.pos_weight > 0 else None
        loss = F.binary_cross_entropy_with_logits(
            z, (t == 1).to(z.dtype), pos_weight=pos_weight, reduction="none"
        )
        return _safe_divide(torch.where(valid, loss, 0.0).sum(), valid.sum())

    def _dice_loss(self, z: Tensor, target: Tensor) -> Tensor:
        t = self._channels(target)
        return soft_dice_loss(torch.sigmoid(z), t == 1, t != self.ignore_index)

    def _hard(self, logits: Tensor) -> Tensor:
        self._check_logits(logits)
        return (_at_least_float32(logits) > self.logit_threshold).to(torch.uint8)


class BinaryHead(_SigmoidHead):
    """One logit channel; BCE-with-logits over non-ignored pixels; predicts sigmoid(logit) > threshold."""

    task = "binary"
    out_channels = 1

    def __init__(
        self,
        pos_weight: float = 0.0,
        dice_weight: float = 0.0,
        threshold: float = 0.5,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(1, pos_weight, dice_weight, threshold, ignore_index)

    def _check_target_shape(self, target: Tensor) -> None:
        _check_index_map(target, self.task)

    def _target_shape(self, logits: Tensor) -> tuple[int, ...]:
        n, _, h, w = logits.shape
        return (n, h, w)

    def _channels(self, target: Tensor) -> Tensor:
        return target.unsqueeze(1)

    def predict(self, logits: Tensor) -> Tensor:
        """(N, 1, H, W) logits -> (N, H, W) uint8 mask in {0, 1}."""
        return self._hard(logits)[:, 0]


class MultilabelHead(_SigmoidHead):
    """K logit channels, one independent label each; per-channel BCE over non-ignored pixels."""

    task = "multilabel"

    def __init__(
        self, classes: int, dice_weight: float = 0.0, threshold: float = 0.5, ignore_index: int = 255
    ) -> None:
        if classes < 1:
            raise ValueError(f"classes={classes}: a multilabel head needs at least 1 label")
        self.out_channels = classes
        super().__init__(classes, 0.0, dice_weight, threshold, ignore_index)

    def validate_target(self, target: Tensor, logits: Tensor | None = None) -> None:
        super().validate_target(target, logits)
        ignored = target == self.ignore_index
        if (ignored.any(1) != ignored.all(1)).any():
            raise TargetError(
                f"multilabel target ignores some pixels in only some channels; an ignored pixel "
                f"must be ignore_index={self.ignore_index} in all {self.classes} channels"
            )

    def _check_target_shape(self, target: Tensor) -> None:
        shape = tuple(target.shape)
        if target.ndim == 3:
            raise TargetError(
                f"multilabel target has shape {shape}; expected (N, {self.classes}, H, W), one 0/1 map "
                "per label (an (N, H, W) class-index map belongs to task='multiclass')"
            )
        if target.ndim != 4 or shape[1] != self.classes:
            raise TargetError(
                f"multilabel target has shape {shape}; expected (N, {self.classes}, H, W) "
                f"for classes={self.classes}"
            )

    def _target_shape(self, logits: Tensor) -> tuple[int, ...]:
        return tuple(logits.shape)

    def _channels(self, target: Tensor) -> Tensor:
        return target

    def predict(self, logits: Tensor) -> Tensor:
        """(N, K, H, W) logits -> (N, K, H, W) uint8 masks in {0, 1}."""
        return self._hard(logits)


class MulticlassHead(Head):
    """K+1 logit channels (class 0 = background); softmax cross-entropy; predicts the argmax class."""

    task = "multiclass"

    def __init__(
        self,
        classes: int,
        class_weights: tuple[float, ...] = (),
        label_smoothing: float = 0.0,
        dice_weight: float = 0.0,
        ignore_index: int = 255,
    ) -> None:
        if classes < 1:
            raise ValueError(f"classes={classes}: a multiclass head needs at least 1 foreground class")
        self.out_channels = classes + 1
        self.max_value = classes
        super().__init__(classes, dice_weight, ignore_index)
        if class_weights and len(class_weights) != classes + 1:
            raise ValueError(
                f"class_weights has {len(class_weights)} entries but classes={classes} needs "
                f"{classes + 1}: background (class 0) first, then classes 1..{classes}"
            )
        if any(w < 0 for w in class_weights):
            raise ValueError(f"class_weights={tuple(class_weights)}: weights must be >= 0")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing={label_smoothing}: must lie in [0, 1)")
        self.class_weights = tuple(float(w) for w in class_weights)
        self.label_smoothing = label_smoothing

    def _check_target_shape(self, target: Tensor) -> None:
        _check_index_map(target, self.task)

    def _target_shape(self, logits: Tensor) -> tuple[int, ...]:
        n, _, h, w = logits.shape
        return (n, h, w)

    def _data_loss(self, z: Tensor, target: Tensor) -> Tensor:
        # torch's "mean" is sum_n l_n / sum_n w[y_n] over non-ignored pixels (label smoothing included); taking the
        # sum and dividing ourselves gives the same value but 0 rather than NaN when every pixel is ignored.
        labels = target.long()
        valid = target != self.ignore_index
        weight = z.new_tensor(self.class_weights) if self.class_weights else None
        total = F.cross_entropy(
            z,
            labels,
            weight=weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        if weight is None:
            return _safe_divide(total, valid.sum())
        pixel_weight = torch.where(valid, weight[torch.where(valid, labels, 0)], 0.0)
        return _safe_divide(total, pixel_weight.sum())

    def _dice_loss(self, z: Tensor, target: Tensor) -> Tensor:
        foreground = torch.arange(1, self.classes + 1, device=target.device).view(1, -1, 1, 1)
        truth = target.unsqueeze(1) == foreground  # ignore_index > K never matches a class
        return soft_dice_loss(
            torch.softmax(z, dim=1)[:, 1:], truth, (target != self.ignore_index).unsqueeze(1)
        )

    def predict(self, logits: Tensor) -> Tensor:
        """(N, K+1, H, W) logits -> (N, H, W) uint8 class indices."""
        self._check_logits(logits)
        return logits.argmax(dim=1).to(torch.uint8)


def make_head(data: DataConfig, loss: LossConfig) -> Head:
    """The head for ``data.task`` with the ``[loss]`` settings; settings another task would use are rejected,
    because silently ignoring them would run a different experiment from the one the preset describes."""
    if data.task != "binary" and loss.pos_weight > 0:
        raise ConfigError(
            f"[loss] pos_weight={loss.pos_weight} only applies to task='binary', not {data.task!r}; "
            "set it to 0 (for multiclass, class_weights holds one weight per class, background first)"
        )
    if data.task != "multiclass" and (loss.class_weights or loss.label_smoothing > 0):
        raise ConfigError(
            f"[loss] class_weights and label_smoothing only apply to task='multiclass', not "
            f"{data.task!r}; remove them (for binary, pos_weight up-weights the foreground)"
        )
    if data.task == "binary":
        return BinaryHead(loss.pos_weight, loss.dice_weight, loss.threshold, data.ignore_index)
    if data.task == "multiclass":
        return MulticlassHead(
            data.classes, loss.class_weights, loss.label_smoothing, loss.dice_weight, data.ignore_index
        )
    return MultilabelHead(data.classes, loss.dice_weight, loss.threshold, data.ignore_index)


__all__ = [
    "BinaryHead",
    "Head",
    "MulticlassHead",
    "MultilabelHead",
    "TargetError",
    "make_head",
    "soft_dice_loss",
]
