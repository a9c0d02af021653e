"""Naive reference implementations (explicit loops and formulas) for tests and benchmarks.

Every fast path in :mod:`marionette.core` is tested for equality with one of these. They favour
obviousness over speed and are never exported.
"""

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import Grid
from .placement import PARITY_GROUPS


def place_sprites_reference(windows: Tensor, grid: Grid) -> Tensor:
    """Per-sprite loop: paste window (i, j) at rows/cols [iP - P/2, iP + 3P/2), clipped."""
    *batch, lh, lw, c, s, _ = windows.shape
    out = windows.new_zeros(*batch, 4, c, grid.height, grid.width)
    p = grid.cell
    for g, (row_parity, col_parity) in enumerate(PARITY_GROUPS):
        for i in range(row_parity, lh, 2):
            for j in range(col_parity, lw, 2):
                top, left = i * p - p // 2, j * p - p // 2
                for dy in range(s):
                    for dx in range(s):
                        y, x = top + dy, left + dx
                        if 0 <= y < grid.height and 0 <= x < grid.width:
                            out[..., g, :, y, x] = windows[..., i, j, :, dy, dx]
    return out


def composite_reference(planes: Tensor, background: Tensor) -> Tensor:
    """Closed form sum_i a_i c_i prod_{j>i} (1 - a_j) + prod_i (1 - a_i) bg, back to front."""
    n = planes.shape[2]
    transmit_all = torch.ones_like(background[:, :, :1])
    for i in range(n):
        transmit_all = transmit_all * (1 - planes[:, :, i, 3:])
    out = transmit_all * background
    for i in range(n):
        transmit = torch.ones_like(transmit_all)
        for j in range(i + 1, n):
            transmit = transmit * (1 - planes[:, :, j, 3:])
        out = out + planes[:, :, i, 3:] * planes[:, :, i, :3] * transmit
    return out


def mix_sprites_reference(weights: Tensor, sprites: Tensor) -> Tensor:
    """The original's broadcast product [..., K, C, S, S] summed over K."""
    return (weights[..., :, None, None, None] * sprites).sum(dim=-4)


def _sample(image: Tensor, y: Tensor, x: Tensor, border: bool) -> Tensor:
    """image [C, S, S] at integer coordinates; out-of-range is the border value or zero."""
    s = image.shape[-1]
    inside = (y >= 0) & (y < s) & (x >= 0) & (x < s)
    value = image[:, y.clamp(0, s - 1), x.clamp(0, s - 1)]
    return value if border else value * inside


def shift_bilinear_reference(sprites: Tensor, offsets: Tensor) -> Tensor:
    """Explicit bilinear interpolation: out(x, y) = in(x - s_x P, y - s_y P), P = S / 2."""
    n, c, s, _ = sprites.shape
    p = s / 2
    out = torch.empty_like(sprites)
    coords = torch.arange(s, dtype=sprites.dtype)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    for k in range(n):
        sx, sy = float(offsets[k, 0]) * p, float(offsets[k, 1]) * p
        u, v = xs - sx, ys - sy
        # border padding clamps the continuous source coordinate, as grid_sample does
        u_rgb, v_rgb = u.clamp(0, s - 1), v.clamp(0, s - 1)
        for channels, (uu, vv), border in (((0, 3), (u_rgb, v_rgb), True), ((3, 4), (u, v), False)):
            x0, y0 = uu.floor().long(), vv.floor().long()
            fx, fy = (uu - x0).to(sprites.dtype), (vv - y0).to(sprites.dtype)
            image = sprites[k, channels[0] : channels[1]]
            value = (
                _sample(image, y0, x0, border) * (1 - fx) * (1 - fy)
                + _sample(image, y0, x0 + 1, border) * fx * (1 - fy)
                + _sample(image, y0 + 1, x0, border) * (1 - fx) * fy
                + _sample(image, y0 + 1, x0 + 1, border) * fx * fy
            )
            out[k, channels[0] : channels[1]] = value
    return out


def shift_discrete_reference(sprites: Tensor, weights_x: Tensor, weights_y: Tensor) -> Tensor:
    """Loop over the (P + 1)^2 integer displacements (P/2 - k_x, P/2 - k_y)."""
    s = sprites.shape[-1]
    q = weights_x.shape[-1]
    half = (q - 1) // 2
    out = torch.zeros_like(sprites)
    for ky in range(q):
        for kx in range(q):
            dy, dx = half - ky, half - kx
            moved = torch.zeros_like(sprites)
            src_y = slice(max(0, -dy), min(s, s - dy))
            dst_y = slice(max(0, dy), min(s, s + dy))
            src_x = slice(max(0, -dx), min(s, s - dx))
            dst_x = slice(max(0, dx), min(s, s + dx))
            moved[:, :, dst_y, dst_x] = sprites[:, :, src_y, src_x]
            out = out + (weights_y[:, ky] * weights_x[:, kx])[:, None, None, None] * moved
    return out


def partial_conv_reference(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int
) -> Tensor:
    """NVIDIA partial convolution with an all-ones mask, computed with an explicit mask."""
    k = weight.shape[-1]
    mask = torch.ones(1, 1, *x.shape[-2:], dtype=x.dtype)
    taps = F.conv2d(mask, torch.ones(1, 1, k, k, dtype=x.dtype), None, stride, padding)
    raw = F.conv2d(x * mask, weight, None, stride, padding)
    ratio = (k * k) / taps.clamp(min=1)
    out = raw * ratio * (taps > 0)
    if bias is not None:
        out = (out + bias[:, None, None]) * (taps > 0)
    return out


def estimate_background_reference(frames: Tensor) -> Tensor:
    """Exact mode of the RGB triples (frames in uint8)."""
    pixels = frames.permute(0, 2, 3, 1).reshape(-1, 3)
    values, counts = torch.unique(pixels, dim=0, return_counts=True)
    return values[counts.argmax()].float() / 255.0


def beta22_density(x: float) -> float:
    """Beta(2, 2) density Gamma(4) / (Gamma(2) Gamma(2)) x (1 - x)."""
    return math.gamma(4) / (math.gamma(2) ** 2) * x * (1 - x)


def match_gains_reference(frames: Tensor, background: Tensor, sprites: Tensor):
    """Pixel by pixel: the squared-error change of placing each (binary-alpha) sprite at anchor
    (i, j) displaced by o, top-left corner (iP - P/2 + o_y, jP - P/2 + o_x), over the background,
    a (||s - b||^2 - 2 (s - b).(I - b)), summed over the sprite's pixels (image and background
    are zero outside the canvas), negated and divided by the sprite's mass. Entry
    [n, i, j, k, a, b] is the displacement (x, y) = (b - P/2, a - P/2)."""
    n_count, _, h, w = frames.shape
    k_count, s = sprites.shape[0], sprites.shape[-1]
    p = s // 2
    out = torch.zeros(n_count, h // p, w // p, k_count, p + 1, p + 1, dtype=sprites.dtype)
    for n, i, j, k in itertools.product(
        range(n_count), range(h // p), range(w // p), range(k_count)
    ):
        alpha, color = sprites[k, 3], sprites[k, :3]
        mass = max(float(alpha.sum()), 1.0)
        for a, b in itertools.product(range(p + 1), repeat=2):
            top, left = i * p - p // 2 + a - p // 2, j * p - p // 2 + b - p // 2
            total = 0.0
            for vy, vx in itertools.product(range(s), repeat=2):
                alpha_v, c = alpha[vy, vx], color[:, vy, vx]
                term = alpha_v * (c * c).sum()
                y, x = top + vy, left + vx
                if 0 <= y < h and 0 <= x < w:
                    pixel, bg = frames[n, :, y, x], background[n, :, y, x]
                    term = term + alpha_v * (
                        -2 * (c * pixel).sum() + 2 * (bg * pixel).sum() - (bg * bg).sum()
                    )
                total = total + term
            out[n, i, j, k, a, b] = -total / mass
    return out


def expected_displacement_reference(gains: Tensor, temperature: float) -> Tensor:
    """Loop over the displacements: the best one o* (of tied maxima the nearest to the centre,
    the first in row-major order), then sum_o softmax(g / tau)_o * (o_x, o_y) / P, P = Q - 1,
    over the displacements o within one pixel of o* on each axis."""
    q = gains.shape[-1]
    c = (q - 1) / 2
    flat = gains.reshape(-1, q, q)
    out = torch.zeros(flat.shape[0], 2, dtype=gains.dtype)
    for n in range(flat.shape[0]):
        best = (0, 0)
        for i, j in itertools.product(range(q), repeat=2):
            g, top = float(flat[n, i, j]), float(flat[n][best])
            nearer = (i - c) ** 2 + (j - c) ** 2 < (best[0] - c) ** 2 + (best[1] - c) ** 2
            if g > top or (g == top and nearer):
                best = (i, j)
        near = [
            (i, j)
            for i, j in itertools.product(range(q), repeat=2)
            if abs(i - best[0]) <= 1 and abs(j - best[1]) <= 1
        ]
        total = sum(math.exp((float(flat[n, i, j]) - float(flat[n][best])) / temperature)
                    for i, j in near)  # fmt: skip
        for i, j in near:
            weight = math.exp((float(flat[n, i, j]) - float(flat[n][best])) / temperature) / total
            offset = torch.tensor([j - c, i - c], dtype=gains.dtype)
            out[n] += weight * offset / (q - 1)
    return out.reshape(*gains.shape[:-2], 2)
