"""Depth order, presence gating and back-to-front "over" compositing of RGBA planes."""

import torch
from einops import rearrange

from ._typing import Float, Int64, Tensor, checks_active, typed

__all__ = [
    "GATING_MODES",
    "composite_layers",
    "composite_over",
    "flatten_layers",
    "gate_presence",
    "plane_order",
]

GATING_MODES: tuple[str, ...] = ("premultiplied", "original")


def plane_order(
    num_layers: int,
    *,
    shuffle_groups: bool,
    shuffle_all: bool = False,
    generator: torch.Generator | None = None,
    num_groups: int = 4,
) -> Tensor:
    """Back-to-front order of the NL * G planes, as plane indices ``layer * G + group``.

    The layer index is depth (layer 0 at the back). With ``shuffle_groups`` the G parity groups
    inside every layer follow one random permutation shared by all layers (the original's
    per-call ``randperm(4)``); with ``shuffle_all`` all planes are permuted, so depth between
    layers is random too (the original's ``--shuffle_all``). Otherwise the order is fixed.

    Example:
        >>> plane_order(2, shuffle_groups=False).tolist()
        [0, 1, 2, 3, 4, 5, 6, 7]
    """
    total = num_layers * num_groups
    if shuffle_all:
        return torch.randperm(total, generator=generator)
    groups = (
        torch.randperm(num_groups, generator=generator)
        if shuffle_groups
        else torch.arange(num_groups)
    )
    return (torch.arange(num_layers)[:, None] * num_groups + groups[None, :]).reshape(-1)


@typed
def gate_presence(
    windows: Float[Tensor, "*batch 4 S S"],
    presence: Float[Tensor, "*batch"],
    mode: str = "premultiplied",
) -> Float[Tensor, "*batch 4 S S"]:
    """Scale each sprite window by its presence p in [0, 1].

    ``"premultiplied"`` (default) scales coverage only: alpha' = p alpha, color unchanged. In
    premultiplied terms both (alpha rgb) and alpha scale by p, so a half-present sprite is a true
    50 % blend of itself and what lies behind it. ``"original"`` multiplies all four channels by
    p, as the original does: the premultiplied color becomes p^2 alpha rgb over (1 - p alpha),
    which darkens partly present sprites and lets presence act as a brightness knob that the
    rounded (hard) decomposition cannot reproduce.
    """
    p = presence[..., None, None, None]
    if mode == "premultiplied":
        color, alpha = windows.split([3, 1], dim=-3)  # views whose backward is one cat
        return torch.cat([color, alpha * p], dim=-3)
    if mode == "original":
        return windows * p
    raise ValueError(f"gating must be one of {GATING_MODES}, got {mode!r}")


@typed
def composite_over(
    planes: Float[Tensor, "B T NP 4 H W"], background: Float[Tensor, "B T 3 H W"]
) -> Float[Tensor, "B T 3 H W"]:
    """Composite straight-alpha RGBA planes back to front (plane 0 first) onto a background.

    out_0 = bg;  out_{i+1} = (1 - alpha_i) out_i + alpha_i rgb_i, i.e.
    out = sum_i alpha_i rgb_i prod_{j > i} (1 - alpha_j) + prod_i (1 - alpha_i) bg.
    """
    # split and unbind: their backward assembles the gradient once (indexing each plane would
    # zero-fill a gradient of all planes per index)
    colors, alphas = planes.split([3, 1], dim=3)
    out = background
    for rgb, alpha in zip(colors.unbind(2), alphas.unbind(2), strict=True):
        out = out + alpha * (rgb - out)
    return out


@typed
def composite_layers(
    planes: Float[Tensor, "B T NL G 4 H W"],
    background: Float[Tensor, "B T 3 H W"],
    order: Int64[Tensor, " NL*G"],
) -> Float[Tensor, "B T 3 H W"]:
    """Composite per-layer parity-group planes in the back-to-front ``order``.

    ``order`` lists plane indices ``layer * G + group`` (see :func:`plane_order`).
    """
    num_planes = planes.shape[2] * planes.shape[3]
    if checks_active() and not torch.equal(order.sort().values.cpu(), torch.arange(num_planes)):
        raise ValueError(
            f"order must be a permutation of the {num_planes} planes, got {order.tolist()}"
        )
    flat = rearrange(planes, "B T NL G C H W -> B T (NL G) C H W")
    indices = order.tolist()
    if sorted(indices) != list(range(num_planes)):  # not a permutation (checks off): reference
        return composite_over(flat[:, :, order.to(planes.device)], background)
    return _OverInOrder.apply(flat, background, indices)


class _OverInOrder(torch.autograd.Function):
    """:func:`composite_over` of ``planes[:, :, order]`` for a permutation ``order``, reading
    the planes in place and writing their gradient into one tensor (autograd of the reference
    gathers the planes, and assembles their gradient by a stack, a concatenation and a
    zero-filled scatter, each a copy of all planes). With out_{i+1} = out_i + a_i (rgb_i - out_i)
    and g the gradient of out_{i+1}:
        dL/drgb_i = a_i g,  dL/da_i = sum_c g (rgb_i - out_i),  dL/dout_i = (1 - a_i) g,
    and the background's gradient is that of out_0."""

    @staticmethod
    def forward(ctx, planes: Tensor, background: Tensor, order: list[int]) -> Tensor:
        behind = []  # out_i, the image each plane is composited onto
        out = background
        for index in order:
            behind.append(out)
            plane = planes[:, :, index]
            out = torch.addcmul(out, plane[:, :, 3:], plane[:, :, :3] - out)
        ctx.save_for_backward(planes, *behind)
        ctx.order = order
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        planes, *behind = ctx.saved_tensors
        grad_planes = torch.empty_like(planes) if ctx.needs_input_grad[0] else None
        for index, out in zip(reversed(ctx.order), reversed(behind), strict=True):
            plane = planes[:, :, index]
            alpha = plane[:, :, 3:]
            if grad_planes is not None:
                into = grad_planes[:, :, index]
                torch.mul(grad, alpha, out=into[:, :, :3])
                torch.sum(grad * (plane[:, :, :3] - out), dim=2, keepdim=True, out=into[:, :, 3:])
            grad = grad - grad * alpha
        return grad_planes, grad if ctx.needs_input_grad[1] else None, None


@typed
def flatten_layers(
    planes: Float[Tensor, "B T NL G 4 H W"], order: Int64[Tensor, " NL*G"]
) -> Float[Tensor, "B T NL 4 H W"]:
    """One straight-alpha RGBA image per layer: its groups composited over transparency.

    Within a layer the groups follow their relative position in ``order``. In premultiplied form
    A' = a + (1 - a) A and C' = a rgb + (1 - a) C; the straight color is C / A where A > 0.
    """
    num_layers, num_groups = planes.shape[2], planes.shape[3]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    within = rank.reshape(num_layers, num_groups).argsort(dim=-1).to(planes.device)
    color = torch.zeros_like(planes[:, :, :, 0, :3])
    coverage = torch.zeros_like(planes[:, :, :, 0, 3:])
    layer_index = torch.arange(num_layers, device=planes.device)
    for g in range(num_groups):
        plane = planes[:, :, layer_index, within[:, g]]
        alpha = plane[:, :, :, 3:]
        color = alpha * plane[:, :, :, :3] + (1 - alpha) * color
        coverage = alpha + (1 - alpha) * coverage
    straight = color / coverage.clamp(min=1e-8)
    return torch.cat([torch.where(coverage > 0, straight, 0.0), coverage], dim=3)
