"""Convolutional encoders: border-compensated convolutions, down blocks, grid encoders, MLP heads.

The original uses NVIDIA's partial convolution with an all-ones mask. With such a mask it is a
zero-padding convolution whose response is rescaled by (kernel area) / (number of in-canvas taps)
before the bias is added: :func:`compensated_conv2d` computes exactly that, without masks.
"""

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._typing import Float, Tensor, typed

__all__ = [
    "CompensatedConv2d",
    "DownBlock",
    "FloatGroupNorm",
    "GridEncoder",
    "MLPHead",
    "compensated_conv2d",
]


@typed
def compensated_conv2d(
    x: Float[Tensor, "B C H W"],
    weight: Float[Tensor, "D C k k"],
    bias: Float[Tensor, " D"] | None,
    stride: int = 1,
    padding: int = 1,
) -> Float[Tensor, "B D Ho Wo"]:
    """Zero-padding convolution rescaled by k^2 / (number of in-canvas taps), plus bias.

    y = conv(x, w) * k^2 / n_valid + b, where n_valid counts the kernel taps that fall inside
    the canvas at each output position: 9/6 on edges and 9/4 in corners for a 3x3 kernel, and 9
    on a 1x1 input. This equals the original's partial convolution with an all-ones mask.
    The result keeps the convolution's dtype (bf16 under bf16 autocast).
    """
    k = weight.shape[-1]
    out = F.conv2d(x, weight, None, stride, padding)
    ones = x.new_ones(1, 1, x.shape[-2], x.shape[-1])
    valid = F.conv2d(ones, x.new_ones(1, 1, k, k), None, stride, padding)
    out = out * (k * k / valid).to(out.dtype)
    return out if bias is None else out + bias.to(out.dtype)[:, None, None]


class CompensatedConv2d(nn.Conv2d):
    """Module form of :func:`compensated_conv2d` (a square kernel with zero padding)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, 3, stride=stride, padding=1)

    def forward(self, x: Float[Tensor, "B C H W"]) -> Float[Tensor, "B D Ho Wo"]:
        return compensated_conv2d(x, self.weight, self.bias, self.stride[0], self.padding[0])


class FloatGroupNorm(nn.GroupNorm):
    """GroupNorm computed in float32, its result returned in the input's dtype.

    Under CUDA's autocast ``group_norm`` runs in float32; under the CPU's it runs in bf16,
    where its backward on channels-last input is about 2.5 times slower than in float32 (the
    first block's ``[8, 32, 128, 128]``: 36 against 14 ms, one thread). In float32 both
    devices compute the same thing. Without autocast, in float32, it is ``nn.GroupNorm``; a
    module cast to bf16 normalises in float32 too.
    """

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = (None if p is None else p.float() for p in (self.weight, self.bias))
        out = F.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        return out.to(x.dtype)


class DownBlock(nn.Sequential):
    """Two compensated 3x3 convolutions, the second with stride 2, each followed by
    GroupNorm(8) and LeakyReLU(0.01).

    Halves the spatial size (rounding up).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            CompensatedConv2d(in_channels, out_channels),
            FloatGroupNorm(8, out_channels),
            nn.LeakyReLU(0.01),
            CompensatedConv2d(out_channels, out_channels, stride=2),
            FloatGroupNorm(8, out_channels),
            nn.LeakyReLU(0.01),
        )


def _check_width(dim: int, name: str) -> None:
    if dim < 8 or dim % 8:
        raise ValueError(
            f"{name} must be a positive multiple of 8 (GroupNorm uses 8 groups), got {dim}"
        )


class GridEncoder(nn.Module):
    """Encode an image into ``num_heads`` layer-normalised code grids of size ``grid``.

    n = floor(log2(min(H / gh, W / gw))) down blocks, then adaptive average pooling to the
    target grid if the halvings did not land on it exactly (canvases whose cell size is not a
    power of two), then one 3x3 compensated convolution per head, and a LayerNorm over the code
    without affine parameters. Block i (0 first, at full resolution) has ``dim`` channels, or
    with ``base_width`` b a channel pyramid: min(D, b 2^i), the last one D. A block's cost is
    channels^2 times its pixels, so the pyramid's early, high-resolution blocks, which dominate,
    cost (b / D)^2 of the original's.

    Args:
        in_channels: input channels.
        dim: code width D (a multiple of 8).
        size: input (H, W).
        grid: output grid (gh, gw).
        num_heads: number of output grids (one per depth layer).
        base_width: channels of the first block (a multiple of 8, at most D); 0: D everywhere.

    Attributes:
        autocast_dtype: when set (``torch.bfloat16``), the convolutions run under autocast to
            that dtype and the codes return to the input's dtype before the LayerNorm: the
            ``bf16_encoder`` precision of training. ``None``: the caller's precision.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        size: tuple[int, int],
        grid: tuple[int, int],
        num_heads: int = 1,
        base_width: int = 0,
    ) -> None:
        super().__init__()
        _check_width(dim, "code width")
        if base_width:
            _check_width(base_width, "encoder base width")
            if base_width > dim:
                raise ValueError(f"encoder base width must be at most {dim}, got {base_width}")
        ratio = min(size[0] / grid[0], size[1] / grid[1])
        if ratio < 2:
            raise ValueError(f"encoder input {size} must be at least twice the grid {grid}")
        num_blocks = int(math.floor(math.log2(ratio)))
        self.grid = grid
        widths = [min(dim, base_width << i) if base_width else dim for i in range(num_blocks)]
        widths[-1] = dim  # the codes are D wide whatever the pyramid
        self.blocks = nn.Sequential(
            *(
                DownBlock(c_in, c_out)
                for c_in, c_out in zip([in_channels, *widths], widths, strict=False)
            )
        )
        self.heads = nn.ModuleList(CompensatedConv2d(dim, dim) for _ in range(num_heads))
        self.dim = dim
        self.autocast_dtype: torch.dtype | None = None

    @typed
    def forward(self, x: Float[Tensor, "B C H W"]) -> Float[Tensor, "B NL Lh Lw D"]:
        dtype = self.autocast_dtype
        with nullcontext() if dtype is None else torch.autocast(x.device.type, dtype):
            features = self.blocks(x)
            if tuple(features.shape[-2:]) != self.grid:
                features = F.adaptive_avg_pool2d(features, self.grid)
            codes = torch.stack([head(features) for head in self.heads], dim=1)
        if dtype is not None:
            codes = codes.to(x.dtype)
        codes = rearrange(codes, "B NL D Lh Lw -> B NL Lh Lw D")
        return F.layer_norm(codes, (self.dim,))


class MLPHead(nn.Sequential):
    """Linear(D, D) -> GroupNorm(8) -> LeakyReLU(0.01) -> Linear(D, out) -> ``final``."""

    def __init__(self, dim: int, out_features: int, final: nn.Module) -> None:
        _check_width(dim, "head width")
        super().__init__(
            nn.Linear(dim, dim),
            FloatGroupNorm(8, dim),
            nn.LeakyReLU(0.01),
            nn.Linear(dim, out_features),
            final,
        )

    def forward(self, x: Tensor) -> Tensor:
        lead, out_features = x.shape[:-1], self[3].out_features
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(*lead, out_features)
