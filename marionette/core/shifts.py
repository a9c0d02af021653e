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
    rgb = F.grid_sample(
        sprites[:, :3], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    alpha = F.grid_sample(
        sprites[:, 3:], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
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


def _gain_terms(image_windows: Tensor, background_windows: Tensor, sprites: Tensor):
    """Signals and kernels whose correlations give the matching gain (see :func:`match_gains`)."""
    s = sprites.shape[-1]
    half = s // 4
    pad = (half, half, half, half)
    image = F.pad(image_windows, pad)
    behind = F.pad(background_windows, pad)
    signals = torch.cat([image, (2 * behind * image - behind * behind).sum(1, keepdim=True)], 1)
    alpha, color = sprites[..., 3:, :, :], sprites[..., :3, :, :]
    kernels = torch.cat([alpha * color, -0.5 * alpha], dim=-3)
    energy = (alpha * color * color).sum(dim=(-3, -2, -1))
    mass = alpha.sum(dim=(-3, -2, -1)).clamp(min=1.0)
    return signals, kernels, energy, mass


@typed
def match_gains(
    image_windows: Float[Tensor, "N 3 S S"],
    background_windows: Float[Tensor, "N 3 S S"],
    sprites: Float[Tensor, "K 4 S S"],
) -> Float[Tensor, "N K Q Q"]:
    """Per-pixel gain of placing each sprite at each integer displacement of each window.

    Placing a sprite (alpha a, color s) displaced by o pixels over background b changes the
    squared error of the window's image I by
        cost(o) = sum_u a(u - o) ||s(u - o)||^2 - 2 sum_u (a s)(u - o) . I(u)
                  + sum_u a(u - o) (2 b(u) . I(u) - ||b(u)||^2),
    a constant minus cross-correlations of I with a s and of 2 b.I - ||b||^2 with a. The gain is
    -cost(o) / max(sum a, 1) for o in [-P/2, P/2]^2; entry [n, k, i, j] is displacement
    (x, y) = (j - P/2, i - P/2). Correlations use FFTs of size S + P, which cannot wrap around;
    outside the canvas both windows are zero, so sprite parts placed there neither gain nor cost.
    """
    s = sprites.shape[-1]
    q = s // 2 + 1
    if image_windows.shape[0] == 0:  # no windows: FFT libraries refuse empty batches
        return sprites.new_zeros(0, sprites.shape[0], q, q)
    signals, kernels, energy, mass = _gain_terms(image_windows, background_windows, sprites)
    size = signals.shape[-2:]
    spectrum = torch.einsum(
        "mcxy,kcxy->mkxy",
        torch.fft.rfft2(signals.float()),
        torch.fft.rfft2(kernels.float(), s=size).conj(),
    )
    correlation = _leading_inverse(spectrum, size, q).to(sprites.dtype)
    return (2 * correlation - energy[None, :, None, None]) / mass[None, :, None, None]


def _leading_inverse(spectrum: Tensor, size: tuple[int, int], q: int) -> Tensor:
    """``irfft2(spectrum, s=size)[..., :q, :q]`` without the rows that are cut: the inverse
    along the rows first, then along the columns of the q rows kept only (exact; the second
    transform runs on q / size[0] of the data, about a third here)."""
    rows = torch.fft.ifft(spectrum, dim=-2)[..., :q, :]
    return torch.fft.irfft(rows, n=size[-1], dim=-1)[..., :q]


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
    image_windows: Float[Tensor, "N 3 S S"],
    sprites: Float[Tensor, "N 4 S S"],
    background_windows: Float[Tensor, "N 3 S S"],
    temperature: float = 0.05,
) -> Float[Tensor, "N 2"]:
    """Offset (x, y) in units of P that best aligns each slot's own sprite with its window.

    The gain of :func:`match_gains` for one sprite per window, turned into an offset by
    :func:`expected_displacement`.
    """
    s = sprites.shape[-1]
    q = s // 2 + 1
    if image_windows.shape[0] == 0:  # no windows: FFT libraries refuse empty batches
        return sprites.new_zeros(0, 2)
    signals, kernels, energy, mass = _gain_terms(image_windows, background_windows, sprites)
    size = signals.shape[-2:]
    spectrum = torch.fft.rfft2(signals.float()) * torch.fft.rfft2(kernels.float(), s=size).conj()
    correlation = _leading_inverse(spectrum.sum(dim=1), size, q).to(sprites.dtype)
    gains = (2 * correlation - energy[:, None, None]) / mass[:, None, None]
    return expected_displacement(gains, temperature)
