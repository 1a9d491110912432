"""UNet shape handling, logits output and configuration."""

import pytest
import torch
from torch import nn

from rlsched.config import NORMS, ModelConfig
from rlsched.seg.unet import UNet, build_unet, group_count


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("up", ["bilinear", "transpose"])
@pytest.mark.parametrize("norm", NORMS)
def test_output_matches_odd_input_size(up: str, norm: str) -> None:
    torch.manual_seed(0)
    model = UNet(3, 4, depth=3, base_width=4, up=up, norm=norm)
    out = model(torch.randn(2, 3, 37, 45))
    assert out.shape == (2, 4, 37, 45)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("size", [(16, 16), (17, 31), (33, 18)])
def test_output_size_for_any_depth(depth: int, size: tuple[int, int]) -> None:
    model = UNet(1, 2, depth=depth, base_width=2, norm="group").eval()
    assert model(torch.randn(1, 1, *size)).shape == (1, 2, *size)


def test_too_small_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="2\\*\\*depth = 8"):
        UNet(1, 1, depth=3, base_width=2)(torch.randn(1, 1, 7, 32))


def test_outputs_are_unbounded_logits() -> None:
    torch.manual_seed(0)
    model = UNet(1, 2, depth=2, base_width=4, norm="none").eval()
    x = torch.randn(1, 1, 20, 20)
    with torch.no_grad():
        model.out.weight.mul_(50)
        out = model(x)
        assert out.min() < -1 and out.max() > 2  # no sigmoid/softmax/clamp squeezes the range
        # the final 1x1 conv is the last op: its bias shifts the output exactly, which no activation after it allows
        model.out.bias.add_(torch.tensor([3.0, -7.0]))
        shifted = model(x)
    torch.testing.assert_close(shifted - out, torch.tensor([3.0, -7.0]).view(1, 2, 1, 1).expand_as(out))


def test_param_count_grows_with_base_width_and_depth() -> None:
    counts = [n_params(UNet(1, 1, depth=3, base_width=w)) for w in (2, 4, 8)]
    assert counts[0] < counts[1] < counts[2]
    assert n_params(UNet(1, 1, depth=2, base_width=4)) < n_params(UNet(1, 1, depth=3, base_width=4))


def test_widths_double_per_level() -> None:
    model = UNet(1, 1, depth=3, base_width=5)
    assert [block[0].out_channels for block in [model.stem, *model.down]] == [5, 10, 20, 40]


def test_conv_bias_only_without_norm() -> None:
    def conv3x3_biases(model: nn.Module) -> set[bool]:
        return {
            m.bias is not None
            for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
        }

    assert conv3x3_biases(UNet(1, 1, norm="batch")) == {False}
    assert conv3x3_biases(UNet(1, 1, norm="none")) == {True}


def test_group_norm_groups_divide_channels() -> None:
    assert [group_count(c) for c in (1, 3, 6, 12, 16, 24, 40)] == [1, 3, 6, 6, 8, 8, 8]
    model = UNet(1, 1, depth=3, base_width=3, norm="group")
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 for m in norms)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="up='nearest'"):
        UNet(1, 1, up="nearest")
    with pytest.raises(ValueError, match="norm='layer'"):
        UNet(1, 1, norm="layer")


def test_build_unet_follows_config() -> None:
    cfg = ModelConfig(depth=2, base_width=4, up="transpose", norm="instance")
    model = build_unet(cfg, in_channels=3, out_channels=5)
    assert model.depth == 2 and len(model.down) == 2
    assert isinstance(model.up[0].up, nn.ConvTranspose2d)
    assert any(isinstance(m, nn.InstanceNorm2d) for m in model.modules())
    assert model(torch.randn(2, 3, 21, 19)).shape == (2, 5, 21, 19)
