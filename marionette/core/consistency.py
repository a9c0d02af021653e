"""Object consistency over time: the same object in consecutive frames should keep its code.

The contrastive form of MOC (Delfosse et al.), fixed where the public MarioNette fork was wrong:
positions are **global** pixel centres (x, y) rather than each slot's local offset; candidates
come from every layer within a radius in pixels rather than the same layer's 3 x 3 cells (with
replicate padding that counted border cells several times); the sum is normalised by the number
of matched objects; and it is one batched computation with no host synchronisation (the fork's
Python loop with ``.item()`` made each step about 40x slower).
"""

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from ._typing import typed
from .geometry import Grid, global_centers

if TYPE_CHECKING:
    from .model import Encoding

__all__ = ["CODE_KINDS", "ConsistencyResult", "consistency_loss", "encoding_consistency"]

#: Which per-slot vector is an object's code: ``codes`` the layer-normalised anchor code before
#: projection (what MOC's z_what and the fork used; the default), ``queries`` the projected code
#: scored against the dictionary, ``weights`` the selection weights over the K sprites.
CODE_KINDS = ("codes", "queries", "weights")


class ConsistencyResult(NamedTuple):
    """The normalised loss (scalar) and the number of matched objects (a tensor, so that reading
    it is the caller's choice of when to synchronise with the device)."""

    loss: Tensor
    matched: Tensor


@typed
def consistency_loss(
    codes: Float[Tensor, "B T N D"],
    presence: Float[Tensor, "B T N"],
    centers: Float[Tensor, "B T N 2"],
    radius: float,
    match_weight: float = 5.0,
    threshold: float = 0.5,
    agreement: bool = True,
) -> ConsistencyResult:
    """MOC's object-consistency loss between frames t and t + 1, over all N slots of a frame.

    Slot i at time t is an object if p_i > threshold. Its candidates at t + 1 are the present
    slots j (any layer) with ||x_i - x_j|| <= radius, x the global centre in pixels. With cosine
    similarities c_ij of the codes, n* = argmax_j c_ij and m* = argmin_j ||x_i - x_j||, the
    object is *matched* if it has a candidate and (with ``agreement``) n* = m*; it contributes

        l_i = -w c_in* + sum_{j in C_i} c_ij,

    pulling its code towards its best match and away from the other candidates (w =
    ``match_weight``; a single candidate gives -(w - 1) c). The loss is sum_i l_i over matched
    objects divided by their number (0 when none match). Presence and positions only select;
    gradients reach the codes.

    Args:
        codes: per-slot codes; N = NL * Lh * Lw slots of a frame, in any fixed order.
        presence: per-slot presence probabilities.
        centers: global (x, y) centres in pixels.
        radius: candidate distance in pixels (about one cell: an object moves less than that).

    Returns:
        The loss and the number of matched objects.
    """
    if codes.shape[1] < 2:
        zero = codes.sum() * 0.0
        return ConsistencyResult(zero, zero.detach())
    unit = F.normalize(codes, dim=-1)
    cos = torch.einsum("btid,btjd->btij", unit[:, :-1], unit[:, 1:])  # [B, T-1, N, N]
    source = presence[:, :-1] > threshold
    target = presence[:, 1:] > threshold
    distance = torch.cdist(centers[:, :-1], centers[:, 1:])  # [B, T-1, N, N]
    candidate = target[..., None, :] & (distance <= radius)
    count = candidate.sum(-1)
    best = torch.where(candidate, cos, -torch.inf).argmax(-1)
    matched = source & (count > 0)
    if agreement:
        nearest = torch.where(candidate, distance, torch.inf).argmin(-1)
        matched = matched & (best == nearest)
    best_cos = cos.gather(-1, best[..., None])[..., 0]
    spread = torch.where(candidate, cos, 0.0).sum(-1)
    per_object = -match_weight * best_cos + spread
    total = torch.where(matched, per_object, 0.0).sum()
    number = matched.sum()
    return ConsistencyResult(total / number.clamp(min=1), number)


def encoding_consistency(
    encoding: "Encoding",
    batch: int,
    grid: Grid,
    code: str = "codes",
    radius: float = 0.0,
    match_weight: float = 5.0,
) -> ConsistencyResult:
    """:func:`consistency_loss` of a model's encoding of ``batch`` stacks of T frames.

    ``code`` picks the vector (see :data:`CODE_KINDS`); ``radius`` is in pixels, 0 meaning one
    cell size P. Slot centres are global: anchor-cell centre plus local offset times P.
    """
    if code not in CODE_KINDS:
        raise ValueError(f"code must be one of {CODE_KINDS}, got {code!r}")
    vectors = getattr(encoding, code)
    centers = global_centers(encoding.offsets, grid)
    slots = "(B T) NL Lh Lw ... -> B T (NL Lh Lw) ..."
    return consistency_loss(  # in float32 also under bf16 autocast: distances need the bits
        rearrange(vectors.float(), slots, B=batch),
        rearrange(encoding.presence.float(), slots, B=batch),
        rearrange(centers.float(), slots, B=batch),
        radius=radius if radius > 0 else float(grid.cell),
        match_weight=match_weight,
    )
