"""The fused renderer: select, shift, gate, place and composite in one Triton kernel pass.

For every frame the canvas is cut into P x P tiles offset by -P/2, so that each tile lies inside
exactly one sprite window of every plane (anchor i = m or m - 1 for tile row m, whichever has the
plane's row parity; the same for columns). One program renders one tile: for each plane, back to
front, it reads that slot's sprite id, presence and offset, samples the sprite bilinearly at
(u - s_x P, v - s_y P) in window coordinates (color with border padding, alpha with zero padding,
as :func:`marionette.core.shift_bilinear`), gates it by presence and composites it "over" the
running color. Nothing per plane is written to memory.

The backward pass walks the planes front to back with the color gradient g and the color
``behind`` each plane (saved by the forward pass, the only intermediate):

    dL/dc_i = g a_i,    dL/da_i = g . (c_i - behind_i),    g <- (1 - a_i) g,

and pushes these through the bilinear taps to the sprites (atomic adds), the offsets and the
presence (summed over the tile, one atomic add per slot and tile). What is left of g is the
background's gradient.

:func:`marionette.core.render_windows` is the reference and the fallback wherever Triton cannot
run (no CUDA device; on the CPU Triton's interpreter runs the kernels with ``TRITON_INTERPRET=1``,
which the tests use); :mod:`marionette.core.renderers` chooses between them.
"""

import os
from functools import cache
from typing import TYPE_CHECKING

import torch

from ._typing import Float, Tensor, typed
from .geometry import Grid
from .selection import check_ids

if TYPE_CHECKING:
    from .decomposition import Decomposition

__all__ = ["render_fused", "triton_unavailable_reason"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@cache
def _triton():
    """Import Triton (or None)."""
    try:
        import triton
    except ImportError:
        return None
    return triton


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the fused kernel cannot run on ``device`` (None when it can)."""
    if _triton() is None:
        return "Triton is not installed (pip install triton; it comes with CUDA builds of torch)"
    if device.type == "cuda" or (device.type == "cpu" and _interpreting()):
        return None
    return (
        f"the fused kernel runs on CUDA devices (or on the CPU under TRITON_INTERPRET=1), "
        f"got device {device}"
    )


def _kernels():
    """The Triton kernels, imported on first use (importing marionette never needs Triton)."""
    from . import _fused_kernels

    return _fused_kernels.forward_kernel, _fused_kernels.backward_kernel


def _launch_shape(grid: Grid, frames: int) -> tuple[tuple[int, int], dict]:
    block = 1 << (grid.cell - 1).bit_length()
    warps = max(1, min(4, block * block // 64))
    return (frames, (grid.rows + 1) * (grid.cols + 1)), dict(
        cell=grid.cell, block=block, num_warps=warps
    )


class _FusedRender(torch.autograd.Function):
    """Autograd wrapper of the two kernels (float32 inside, gradients in the inputs' dtypes)."""

    @staticmethod
    def forward(ctx, table, ids, presence, offsets, background, order, grid, layers, original):
        frames = background.shape[0]
        planes = order.numel()
        inputs = [x.float().contiguous() for x in (table, presence, offsets, background)]
        ids32, order32 = ids.to(torch.int32).contiguous(), order.to(torch.int32).contiguous()
        save = any(ctx.needs_input_grad[i] for i in (0, 2, 3, 4))
        out = torch.empty_like(inputs[3])
        behind_shape = (frames, planes, 3, grid.height, grid.width) if save else (1,)
        behind = torch.empty(behind_shape, device=out.device, dtype=torch.float32)
        launch, meta = _launch_shape(grid, frames)
        forward_kernel, _ = _kernels()
        forward_kernel[launch](
            inputs[0], ids32, inputs[1], inputs[2], inputs[3], order32, out, behind,
            layers, grid.rows, grid.cols, grid.height, grid.width, planes,
            original=original, save=save, **meta,
        )  # fmt: skip
        ctx.save_for_backward(inputs[0], ids32, inputs[1], inputs[2], order32, behind)
        ctx.setup = (
            grid,
            layers,
            original,
            [x.dtype for x in (table, presence, offsets, background)],
        )
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        table, ids, presence, offsets, order, behind = ctx.saved_tensors
        grid, layers, original, dtypes = ctx.setup
        grads = [torch.zeros_like(x) for x in (table, presence, offsets)]
        grad_background = torch.empty_like(grad_out, dtype=torch.float32)
        launch, meta = _launch_shape(grid, grad_out.shape[0])
        _, backward_kernel = _kernels()
        backward_kernel[launch](
            grad_out.float().contiguous(), table, ids, presence, offsets, order, behind,
            *grads, grad_background,
            layers, grid.rows, grid.cols, grid.height, grid.width, order.numel(),
            original=original, **meta,
        )  # fmt: skip
        grads = [g.to(d) for g, d in zip([*grads, grad_background], dtypes, strict=True)]
        return grads[0], None, grads[1], grads[2], grads[3], None, None, None, None


@typed
def render_fused(decomposition: "Decomposition") -> Float[Tensor, "B T 3 H W"]:
    """Frames of a decomposition with bilinear offsets, in one fused kernel pass.

    Equals :func:`marionette.core.render_windows` (values, and gradients with respect to the
    sprites, presence, offsets and background). The sprite table is the dictionary with chosen
    ids (hard rendering) or one sprite per slot (soft rendering: the mixed sprites). Computes in
    float32 and returns float32.
    """
    d = decomposition
    if d.offset_weights is not None:
        raise ValueError("the fused renderer draws bilinear offsets only, got offset_weights")
    grid = d.grid
    b, t, nl = d.presence.shape[:3]
    if d.sprite_ids is None:
        ids = torch.arange(d.presence.numel(), device=d.sprites.device)
    else:
        check_ids(d.sprite_ids, d.sprites.shape[0])
        ids = d.sprite_ids.reshape(-1)
    out = _FusedRender.apply(
        d.sprites,
        ids,
        d.presence.reshape(-1),
        d.offsets.reshape(-1, 2),
        d.background.reshape(b * t, 3, grid.height, grid.width),
        d.plane_order.to(d.background.device),
        grid,
        nl,
        d.gating == "original",
    )
    return out.reshape(b, t, 3, grid.height, grid.width)
