"""Sub-cell translation of sprites: the bilinear spatial transformer and discrete offset softmax."""

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from ._typing import Float, Tensor, typed

__all__ = ["discrete_offsets", "shift_bilinear", "shift_discrete"]


@typed
def shift_bilinear(
    sprites: Float[Tensor, "N 4 S S"], offsets: Float[Tensor, "N 2"]
) -> Float[Tensor, "N 4 S S"]:
    """Translate each sprite by s * P pixels with bilinear sampling (the spatial transformer).

    out(x, y) = in(x - s_x P, y - s_y P) with P = S / 2, sampled with ``align_corners=False``.
    Colour uses border padding, alpha zero padding, as the original. Offsets are (x, y) in units
    of P; a whole number of pixels gives an exact integer translation.

    Example:
        >>> a = torch.zeros(1, 4, 4, 4); a[0, 3, 1, 1] = 1.0
        >>> shift_bilinear(a, torch.tensor([[0.5, 0.0]]))[0, 3].nonzero().tolist()
        [[1, 2]]
    """
    n, _, s, _ = sprites.shape
    one, zero = torch.ones_like(offsets[:, 0]), torch.zeros_like(offsets[:, 0])
    row_x = torch.stack([one, zero, -offsets[:, 0]], dim=-1)
    row_y = torch.stack([zero, one, -offsets[:, 1]], dim=-1)
    theta = torch.stack([row_x, row_y], dim=1)
    grid = F.affine_grid(theta, [n, 1, s, s], align_corners=False)
    rgb = F.grid_sample(sprites[:, :3], grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    alpha = F.grid_sample(sprites[:, 3:], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
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
    rows = padded.unfold(2, s, 1)  # N 4 Q W' S: every vertical window
    vertical = einsum(rows, weights_y, "N C Q W R, N Q -> N C R W")
    cols = vertical.unfold(3, s, 1)  # N 4 S Q S
    return einsum(cols, weights_x, "N C R Q X, N Q -> N C R X")


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
    return rearrange(
        [weights_x @ displacement, weights_y @ displacement], "xy ... -> ... xy"
    )
