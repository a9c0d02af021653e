"""Sub-cell translation of sprites: the bilinear spatial transformer and discrete offset softmax."""

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from ._typing import Float, Tensor, typed

__all__ = [
    "discrete_offsets",
    "expected_displacement",
    "match_gains",
    "match_offsets",
    "shift_bilinear",
    "shift_discrete",
]


@typed
def shift_bilinear(
    sprites: Float[Tensor, "N 4 S S"], offsets: Float[Tensor, "N 2"]
) -> Float[Tensor, "N 4 S S"]:
    """Translate each sprite by s * P pixels with bilinear sampling (the spatial transformer).

    out(x, y) = in(x - s_x P, y - s_y P) with P = S / 2, sampled with ``align_corners=False``.
    Color uses border padding, alpha zero padding, as the original. Offsets are (x, y) in units
    of P; a whole number of pixels gives an exact integer translation.

    Example:
        >>> a = torch.zeros(1, 4, 4, 4); a[0, 3, 1, 1] = 1.0
        >>> shift_bilinear(a, torch.tensor([[0.5, 0.0]]))[0, 3].nonzero().tolist()
        [[1, 2]]
    """
    n, _, s, _ = sprites.shape
    if n == 0:  # affine_grid refuses an empty batch
        return sprites.clone()
    one, zero = torch.ones_like(offsets[:, 0]), torch.zeros_like(offsets[:, 0])
    row_x = torch.stack([one, zero, -offsets[:, 0]], dim=-1)
    row_y = torch.stack([zero, one, -offsets[:, 1]], dim=-1)
    theta = torch.stack([row_x, row_y], dim=1)
    grid = F.affine_grid(theta, [n, 1, s, s], align_corners=False)
    color, alpha = sprites.split([3, 1], dim=1)
    rgb = F.grid_sample(color, grid, mode="bilinear", padding_mode="border", align_corners=False)
    alpha = F.grid_sample(alpha, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.cat([rgb, alpha], dim=1)


@typed
def shift_discrete(
    sprites: Float[Tensor, "N 4 S S"],
    weights_x: Float[Tensor, "N Q"],
    weights_y: Float[Tensor, "N Q"],
) -> Float[Tensor, "N 4 S S"]:
    """Translate each sprite by a distribution over the Q = P + 1 integer offsets per axis.

    Offset index k moves the content by (P/2 - k) pixels: k = 0 moves it right/down by P/2,
    k = P/2 leaves it in place, k = P moves it left/up by P/2. Outside the sprite is zero.
    out = sum_{k, l} wy_k wx_l pad(sprite)[k : k + S, l : l + S].
    """
    s = sprites.shape[-1]
    q = weights_x.shape[-1]
    if q != s // 2 + 1:
        raise ValueError(f"offset weights must have P + 1 = {s // 2 + 1} entries, got {q}")
    pad = (q - 1) // 2
    padded = F.pad(sprites, (pad, pad, pad, pad))
    rows = padded.unfold(2, s, 1)  # every vertical window: N C Qy Sp Sy
    vertical = einsum(rows, weights_y, "N C Qy Sp Sy, N Qy -> N C Sy Sp")
    cols = vertical.unfold(3, s, 1)  # every horizontal window: N C Sy Qx Sx
    return einsum(cols, weights_x, "N C Sy Qx Sx, N Qx -> N C Sy Sx")


@typed
def discrete_offsets(
    weights_x: Float[Tensor, "*batch Q"], weights_y: Float[Tensor, "*batch Q"]
) -> Float[Tensor, "*batch 2"]:
    """Expected offset (x, y) in units of P of discrete offset distributions: sum_k w_k (P/2 - k)/P.

    Example:
        >>> w = torch.zeros(1, 5); w[0, 0] = 1.0
        >>> discrete_offsets(w, w).tolist()
        [[0.5, 0.5]]
    """
    q = weights_x.shape[-1]
    p = q - 1
    displacement = (p / 2 - torch.arange(q, device=weights_x.device, dtype=weights_x.dtype)) / p
    return rearrange([weights_x @ displacement, weights_y @ displacement], "xy ... -> ... xy")


def _gain_signals(frames: Tensor, background: Tensor, cell: int) -> Tensor:
    """The frames and 2 b.I - ||b||^2, zero-padded by the cell size P on every side (the reach of
    a sprite displaced by -P/2 from an edge anchor): the signals of :func:`match_gains`."""
    signals = torch.cat(
        [frames, (2 * background * frames - background * background).sum(-3, keepdim=True)], -3
    )
    return F.pad(signals, (cell, cell, cell, cell))


def _gain_kernels(sprites: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Kernels (a s, -a/2), energy sum a ||s||^2 and mass max(sum a, 1) of each sprite."""
    color, alpha = sprites.split([3, 1], dim=-3)
    kernels = torch.cat([alpha * color, -0.5 * alpha], dim=-3)
    energy = (alpha * color * color).sum(dim=(-3, -2, -1))
    mass = alpha.sum(dim=(-3, -2, -1)).clamp(min=1.0)
    return kernels, energy, mass


def _transformable(x: Tensor) -> Tensor:
    """x in a precision the FFTs take: float32 or float64 as it is, half precisions in float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """sum_c a[..., c, :, :] b[..., c, :, :] of broadcastable spectra, one channel at a time
    (on the CPU about twice as fast as the complex batched matrix product ``einsum`` makes of
    it, whose matrices are only C = 4 deep)."""
    pairs = zip(a.unbind(-3), b.unbind(-3), strict=True)
    first_a, first_b = next(pairs)
    total = first_a * first_b
    for channel_a, channel_b in pairs:
        total = total + channel_a * channel_b
    return total


def _check_canvas(frames: Tensor, sprites: Tensor) -> int:
    """The cell size P = S / 2, after checking that it divides the canvas."""
    cell = sprites.shape[-1] // 2
    if frames.shape[-2] % cell or frames.shape[-1] % cell:
        raise ValueError(
            f"the canvas must be divisible by the cell size S / 2 = {cell}, got "
            f"{tuple(frames.shape[-2:])}"
        )
    return cell


@typed
def match_gains(
    frames: Float[Tensor, "N 3 H W"],
    background: Float[Tensor, "N 3 H W"],
    sprites: Float[Tensor, "K 4 S S"],
) -> Float[Tensor, "N Lh Lw K Q Q"]:
    """Per-pixel gain of placing each sprite at each integer displacement of each anchor.

    Placing a sprite (alpha a, color s) at top-left corner u0 over background b changes the
    squared error of the frame I by
        cost(u0) = sum_u a(u - u0) ||s(u - u0)||^2 - 2 sum_u (a s)(u - u0) . I(u)
                   + sum_u a(u - u0) (2 b(u) . I(u) - ||b(u)||^2),
    a constant minus cross-correlations of I with a s and of 2 b.I - ||b||^2 with a; the gain
    is -cost / max(sum a, 1). Anchor (i, j) places the sprite at u0 = (iP - P/2, jP - P/2)
    displaced by o in [-P/2, P/2]^2 (P = S / 2); entry [n, i, j, k, a, b] is displacement
    (x, y) = (b - P/2, a - P/2). The sprite is scored against the frame it lands on, the
    neighbouring cells included; outside the canvas frame and background are zero, so sprite
    parts placed there cost their energy and gain nothing. Each frame is correlated with each
    sprite once, by FFTs of the canvas padded by P (size H + S, which cannot wrap around), and
    the anchors read their (P + 1)^2 displacements from the one correlation map.
    """
    cell = _check_canvas(frames, sprites)
    (n, _, h, w), k, q = frames.shape, sprites.shape[0], cell + 1
    if n == 0:  # no frames: FFT libraries refuse empty batches
        return sprites.new_zeros(0, h // cell, w // cell, k, q, q)
    signals = _gain_signals(frames, background, cell)
    kernels, energy, mass = _gain_kernels(sprites)
    size = signals.shape[-2:]
    spectrum = _channel_dot(
        rearrange(torch.fft.rfft2(_transformable(signals)), "N C Fy Fx -> N 1 C Fy Fx"),
        torch.fft.rfft2(_transformable(kernels), s=size).conj(),
    )
    correlation = _leading_inverse(spectrum, size, (h + 1, w + 1)).to(sprites.dtype)
    gains = (2 * correlation - energy[:, None, None]) / mass[:, None, None]
    per_anchor = gains.unfold(-2, q, cell).unfold(-2, q, cell)
    return rearrange(per_anchor, "N K Lh Lw Qy Qx -> N Lh Lw K Qy Qx")


def _leading_inverse(spectrum: Tensor, size: tuple[int, int], kept: tuple[int, int]) -> Tensor:
    """``irfft2(spectrum, s=size)[..., :rows, :cols]`` without the rows that are cut: the inverse
    along the rows first, then along the columns of the rows kept only (exact)."""
    rows, cols = kept
    leading = torch.fft.ifft(spectrum, dim=-2)[..., :rows, :]
    return torch.fft.irfft(leading, n=size[-1], dim=-1)[..., :cols]


@typed
def expected_displacement(
    gains: Float[Tensor, "*batch Q Q"], temperature: float
) -> Float[Tensor, "*batch 2"]:
    """Softmax(gain / temperature)-weighted mean displacement (x, y) in units of P = Q - 1."""
    q = gains.shape[-1]
    shape = gains.shape[:-2]
    weights = torch.softmax((gains / temperature).reshape(*shape, q * q), dim=-1)
    weights = weights.reshape(*shape, q, q)
    displacement = torch.arange(q, device=gains.device, dtype=gains.dtype) - (q - 1) / 2
    offset_x = (weights.sum(dim=-2) * displacement).sum(dim=-1)
    offset_y = (weights.sum(dim=-1) * displacement).sum(dim=-1)
    return torch.stack([offset_x, offset_y], dim=-1) / (q - 1)


@typed
def match_offsets(
    frames: Float[Tensor, "N 3 H W"],
    background: Float[Tensor, "N 3 H W"],
    sprites: Float[Tensor, "N Lh Lw M 4 S S"],
    temperature: float = 0.05,
) -> Float[Tensor, "N Lh Lw M 2"]:
    """Offset (x, y) in units of P that best aligns each slot's own sprite with the frame.

    The gain of :func:`match_gains` of the M slots of every anchor, each with its own sprite
    (correlated with the anchor's (S + P)-pixel reach of the frame), turned into an offset by
    :func:`expected_displacement`.
    """
    cell = _check_canvas(frames, sprites)
    q, reach = cell + 1, 3 * cell
    anchors = (frames.shape[-2] // cell, frames.shape[-1] // cell)
    if sprites.shape[1:3] != anchors:
        raise ValueError(
            f"sprites must have one row per anchor, [N, {anchors[0]}, {anchors[1]}, M, 4, S, S] "
            f"for {tuple(frames.shape[-2:])} frames, got {tuple(sprites.shape)}"
        )
    if frames.shape[0] == 0:  # no frames: FFT libraries refuse empty batches
        return sprites.new_zeros(*sprites.shape[:4], 2)
    signals = _gain_signals(frames, background, cell)
    windows = signals.unfold(-2, reach, cell).unfold(-2, reach, cell)
    kernels, energy, mass = _gain_kernels(sprites)
    size = (reach, reach)
    spectrum = _channel_dot(
        rearrange(torch.fft.rfft2(_transformable(windows)), "N C Lh Lw Fy Fx -> N Lh Lw 1 C Fy Fx"),
        torch.fft.rfft2(_transformable(kernels), s=size).conj(),
    )
    correlation = _leading_inverse(spectrum, size, (q, q)).to(sprites.dtype)
    gains = (2 * correlation - energy[..., None, None]) / mass[..., None, None]
    return expected_displacement(gains, temperature)
