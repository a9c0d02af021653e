"""The fused renderer: select, shift, gate, place and composite in one Triton kernel pass.

For every frame the canvas is cut into P x P tiles offset by -P/2, so that each tile lies inside
exactly one sprite window of every plane (anchor i = m or m - 1 for tile row m, whichever has the
plane's row parity; the same for columns). One program renders one tile: for each plane, back to
front, it reads that slot's sprite id, presence and offset, samples the sprite bilinearly at
(u - s_x P, v - s_y P) in window coordinates (colour with border padding, alpha with zero padding,
as :func:`marionette.core.shift_bilinear`), gates it by presence and composites it "over" the
running colour. Nothing per plane is written to memory.

The backward pass walks the planes front to back with the colour gradient g and the colour
``behind`` each plane (saved by the forward pass, the only intermediate):

    dL/dc_i = g a_i,    dL/da_i = g . (c_i - behind_i),    g <- (1 - a_i) g,

and pushes these through the bilinear taps to the sprites (atomic adds), the offsets and the
presence (summed over the tile, one atomic add per slot and tile). What is left of g is the
background's gradient.

:func:`marionette.core.render_windows` is the reference and the fallback wherever Triton cannot
run (no CUDA device; on the CPU Triton's interpreter runs the kernels with ``TRITON_INTERPRET=1``,
which the tests use).
"""

import os
import warnings
from functools import cache

import torch

from ._typing import Float, Int64, Tensor, typed
from .compositing import GATING_MODES
from .geometry import Grid
from .selection import check_ids

__all__ = [
    "RENDERERS",
    "render_fused",
    "resolve_renderer",
    "self_check",
    "triton_unavailable_reason",
]

#: ``"auto"``: the fused kernel where it can run (CUDA and Triton), else PyTorch;
#: ``"torch"``: always the PyTorch reference; ``"triton"``: always the fused kernel.
RENDERERS: tuple[str, ...] = ("auto", "torch", "triton")


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


def resolve_renderer(renderer: str, device: torch.device) -> str:
    """``"torch"`` or ``"triton"``: which renderer ``renderer`` means on ``device``.

    ``"auto"`` takes the fused kernel on CUDA devices where it passes :func:`self_check` (once
    per device and process); where it does not, it warns and takes the PyTorch path.
    """
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
    if renderer == "torch":
        return "torch"
    reason = triton_unavailable_reason(device)
    if renderer == "triton":
        if reason is not None:
            raise RuntimeError(f"renderer='triton' cannot run: {reason}; use renderer='auto'")
        return "triton"
    if reason is not None or device.type != "cuda":
        return "torch"
    failure = self_check(device)
    if failure is not None:
        warnings.warn(
            f"the fused renderer failed its self-check on {device} ({failure}); rendering "
            f"with PyTorch instead (same results, slower). Please report this.",
            stacklevel=2,
        )
        return "torch"
    return "triton"


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


@cache
def self_check(device: torch.device) -> str | None:
    """Render a small random scene with the fused kernel on ``device`` and with the PyTorch
    path, frames and gradients; None when they agree (to 1e-3), else what went wrong."""
    from .compositing import plane_order

    grid = Grid(16, 24, 8)
    g = torch.Generator().manual_seed(0)
    shape = (1, 1, 2, grid.rows, grid.cols)
    inputs = [
        torch.rand(3, 4, grid.sprite, grid.sprite, generator=g),
        torch.rand(shape, generator=g),
        torch.rand(*shape, 2, generator=g) - 0.5,
        torch.rand(1, 1, 3, grid.height, grid.width, generator=g),
    ]
    ids = torch.randint(0, 3, shape, generator=g).to(device)
    order = plane_order(2, shuffle_groups=True, generator=g).to(device)
    weight = torch.rand(1, 1, 3, grid.height, grid.width, generator=g).to(device)
    try:
        with (  # float32 with gradients, whatever the caller's context
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device.type, enabled=False),
        ):
            results = [
                _render_and_grad(fused, device, inputs, ids, order, grid, weight)
                for fused in (True, False)
            ]
    except Exception as error:  # any failure to build or run the kernel means: do not use it
        return f"{type(error).__name__}: {error}"
    names = ("frames", "sprite gradient", "presence gradient", "offset gradient",
             "background gradient")  # fmt: skip
    for name, fused, reference in zip(names, *results, strict=True):
        difference = float((fused - reference).abs().max())
        if not difference <= 1e-3:
            return f"{name} differs from the PyTorch path by {difference:.3g}"
    return None


def _render_and_grad(fused, device, inputs, ids, order, grid, weight) -> list[Tensor]:
    """Frames and the gradients of (weight * frames).sum() from one renderer (self-check)."""
    from .render import render_windows

    leaves = [x.to(device).requires_grad_() for x in inputs]
    table, presence, offsets, background = leaves
    if fused:
        frames = render_fused(table, ids, presence, offsets, background, order, grid)
    else:
        frames = render_windows(
            table[ids], presence, background, order, grid, offsets=offsets
        ).reconstruction
    (frames * weight).sum().backward()
    return [frames.detach(), *(x.grad for x in leaves)]


@typed
def render_fused(
    table: Float[Tensor, "M 4 S S"],
    sprite_ids: Int64[Tensor, "B T NL Lh Lw"] | None,
    presence: Float[Tensor, "B T NL Lh Lw"],
    offsets: Float[Tensor, "B T NL Lh Lw 2"],
    background: Float[Tensor, "B T 3 H W"],
    order: Int64[Tensor, " N"],
    grid: Grid,
    gating: str = "premultiplied",
) -> Float[Tensor, "B T 3 H W"]:
    """Frames from the sprite ``table[sprite_ids]`` of every slot, in one fused kernel pass.

    Equals :func:`marionette.core.render_windows` of ``table[sprite_ids]`` with bilinear
    ``offsets`` (values, and gradients with respect to ``table``, ``presence``, ``offsets`` and
    ``background``). ``table`` is the dictionary with the chosen ids (hard rendering) or, with
    ``sprite_ids=None``, one sprite per slot in slot order (soft rendering: the mixed sprites).
    Computes in float32 and returns float32.
    """
    if gating not in GATING_MODES:
        raise ValueError(f"gating must be one of {GATING_MODES}, got {gating!r}")
    if table.shape[-1] != grid.sprite:
        raise ValueError(
            f"sprites must be {grid.sprite} px (2 x cell {grid.cell}), got {table.shape[-1]}"
        )
    b, t, nl, lh, lw = presence.shape
    if (lh, lw) != (grid.rows, grid.cols):
        raise ValueError(f"slots must form a {grid.rows} x {grid.cols} grid, got {lh} x {lw}")
    if sprite_ids is None:
        if table.shape[0] != presence.numel():
            raise ValueError(
                f"without sprite_ids the table needs one sprite per slot ({presence.numel()}), "
                f"got {table.shape[0]}"
            )
        sprite_ids = torch.arange(presence.numel(), device=table.device)
    else:
        check_ids(sprite_ids, table.shape[0])
    out = _FusedRender.apply(
        table,
        sprite_ids.reshape(-1),
        presence.reshape(-1),
        offsets.reshape(-1, 2),
        background.reshape(b * t, 3, grid.height, grid.width),
        order.to(background.device),
        grid,
        nl,
        gating == "original",
    )
    return out.reshape(b, t, 3, grid.height, grid.width)
