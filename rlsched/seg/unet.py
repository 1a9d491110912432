"""A plain UNet that returns logits.

The net ends in a 1x1 convolution with no sigmoid/softmax after it: activations live only in the task head
(``rlsched.seg.heads``), so a loss can never be handed probabilities by mistake.

Any input size works, odd ones included: max-pooling floors odd sizes, so each upsampled map is zero-padded to
its skip connection's size before concatenation. Both sides must be at least ``2**depth`` pixels.

Init: 3x3 convolutions use Kaiming-normal weights (fan-in, ReLU gain), because they feed ReLUs and with
``norm="none"`` nothing else keeps the activation scale steady through the depth; every other layer keeps torch's
default init.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rlsched.config import NORMS, ModelConfig

UP_MODES = ("bilinear", "transpose")


def group_count(channels: int, max_groups: int = 8) -> int:
    """The largest group count <= ``max_groups`` that divides ``channels`` (GroupNorm needs a divisor)."""
    groups = min(max_groups, channels)
    while channels % groups:
        groups -= 1
    return groups


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation layer named by ``ModelConfig.norm``; "none" is an identity."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(
            channels, affine=True
        )  # affine, so every norm kind has a learned scale/shift
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm={kind!r}: use one of {NORMS}")


class DoubleConv(nn.Sequential):
    """(conv3x3 -> norm -> ReLU) twice. Convs carry a bias only without a norm: a norm's shift replaces it."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            conv = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, bias=norm == "none")
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            layers += [conv, make_norm(norm, out_channels), nn.ReLU(inplace=True)]
        super().__init__(*layers)


class Up(nn.Module):
    """Upsample 2x to ``out_channels``, pad to the skip's size, concatenate with the skip, double conv.

    "transpose" learns the upsampling (ConvTranspose2d, kernel 2, stride 2); "bilinear" interpolates and then
    halves the channels with a 1x1 conv, so both modes hand the same widths to the double conv.
    """

    def __init__(self, in_channels: int, out_channels: int, up: str, norm: str) -> None:
        super().__init__()
        if up == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
            )
        self.conv = DoubleConv(2 * out_channels, out_channels, norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Encoder-decoder with skips; widths ``base_width * 2**level`` for levels 0..depth; returns logits."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 3,
        base_width: int = 8,
        up: str = "bilinear",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, depth, base_width) < 1:
            raise ValueError("in_channels, out_channels, depth and base_width must all be >= 1")
        if up not in UP_MODES:
            raise ValueError(f"up={up!r}: use one of {UP_MODES}")
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}: use one of {NORMS}")
        self.depth = depth
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0], norm)
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1], norm) for i in range(depth))
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i], up, norm) for i in reversed(range(depth)))
        self.out = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, in_channels, H, W) images -> (N, out_channels, H, W) raw logits."""
        if min(x.shape[-2:]) < 2**self.depth:
            raise ValueError(
                f"input of size {tuple(x.shape[-2:])} is too small for depth={self.depth}: "
                f"both sides need at least 2**depth = {2**self.depth} pixels"
            )
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], kernel_size=2)))
        x = skips.pop()
        for block in self.up:
            x = block(x, skips.pop())
        return self.out(x)


def build_unet(cfg: ModelConfig, in_channels: int, out_channels: int) -> UNet:
    """The UNet a ``[model]`` section describes; channels come from the data (``DataConfig.out_channels``)."""
    return UNet(
        in_channels, out_channels, depth=cfg.depth, base_width=cfg.base_width, up=cfg.up, norm=cfg.norm
    )


__all__ = ["DoubleConv", "UNet", "Up", "build_unet", "group_count", "make_norm"]
