"""Object consistency over time: the same object in consecutive frames should keep its code.

MOC's idea (Delfosse et al.: an object's code at t + 1 is found where the object went), fixed
where the public MarioNette fork was wrong, and in two places where MOC's own loss fails on a
model whose codes also decide presence:

- positions are **global** pixel centres (x, y), not each slot's local offset; the match comes
  from every layer within a radius in pixels, not from the same layer's 3 x 3 cells (with
  replicate padding that counted border cells several times); one batched computation with no
  host synchronisation (the fork's Python loop with ``.item()`` made each step about 40x slower);
- the objective is contrastive (InfoNCE against the other objects of frame t + 1) instead of MOC's
  linear "-w cos(match) + sum cos(candidates)": that one is lowest when all codes are equal (an
  isolated object's term is -(w - 1) cos), so it rewards codes that no longer tell an object from
  an empty slot, and the presence head, which reads the same codes, loses the objects;
- the sum is a mean over all slots (non-objects count 0), not over matched objects: divided by
  the matched count, the whole weight fell on the first few objects to appear, pulling their
  codes 3 to 70 times harder than the reconstruction did (measured on the tiny world), which
  kept them from ever becoming present.

What an object is contrasted with is a choice (:data:`CONTRASTS`): every other object of the
next frame (``objects``), or every slot of the next frame but the objects that draw the same
sprite as the match (``looks``). Against every object, two identical objects (a row of Space
Invaders aliens) can only be told apart by where they are, so the term teaches the codes
position instead of identity (docs/results.md: the code's linear R^2 for the class falls from
0.09 to 0.04 and AMI from 0.19 to 0.03); against other looks and empty slots, objects that look
alike may share a code, and a code collapse still costs log of the number of slots.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int64
from torch import Tensor

from ._typing import typed
from .encoding import Encoding
from .geometry import Grid, global_centers

__all__ = [
    "CODE_KINDS",
    "CONTRASTS",
    "ConsistencyResult",
    "consistency_loss",
    "encoding_consistency",
]

#: Which per-slot vector is an object's code: ``codes`` the layer-normalised anchor code before
#: projection (what MOC's z_what and the fork used; the default), ``queries`` the projected code
#: scored against the dictionary, ``weights`` the selection weights over the K sprites.
CODE_KINDS = ("codes", "queries", "weights")

#: What a matched object's code is contrasted with (the ``consistency_contrast`` setting):
#: ``objects`` every object of the next frame, ``looks`` every slot of the next frame except the
#: objects that draw the match's sprite (see :func:`consistency_loss`).
CONTRASTS = ("objects", "looks")


class ConsistencyResult(NamedTuple):
    """The loss (scalar) and the number of matched objects (a tensor, so that reading it is the
    caller's choice of when to synchronise with the device)."""

    loss: Tensor
    matched: Tensor


@typed
def consistency_loss(
    codes: Float[Tensor, "B T N D"],
    presence: Float[Tensor, "B T N"],
    centers: Float[Tensor, "B T N 2"],
    radius: float,
    temperature: float = 0.1,
    threshold: float = 0.5,
    agreement: bool = True,
    looks: Int64[Tensor, "B T N"] | None = None,
) -> ConsistencyResult:
    """Contrastive object consistency between frames t and t + 1, over all N slots of a frame.

    Slot i at time t is an object if p_i > threshold, and so is slot j at t + 1. The match of i
    is m* = argmin_j ||x_i - x_j|| over the objects j of t + 1 within ``radius`` pixels (x the
    global centre, any layer). With ``agreement`` (MOC's rule), i counts only if m* is also the
    most similar of those candidates, so an ambiguous association is never reinforced. With
    cosine similarities c_ij of the codes and tau = ``temperature``, a matched object contributes

        l_i = -log( exp(c_im* / tau) / sum_{j object at t + 1} exp(c_ij / tau) ),

    which is small once its code is closer to its match than to every other object of the next
    frame, and then stops pulling (a code collapse is never a minimum: it costs log of the number
    of objects). With ``looks`` (the sprite each slot draws) the sum runs instead over the match
    and every slot j of t + 1 that is not an object drawing the match's sprite: empty slots
    and objects of other looks, never the objects that look like the match.

    The loss is sum_i l_i / (B (T - 1) N), a mean over slots like the presence penalty, so an
    object's weight does not depend on how many others were matched. Presence and
    positions only select; gradients reach the codes.

    Args:
        codes: per-slot codes; N = NL * Lh * Lw slots of a frame, in any fixed order.
        presence: per-slot presence probabilities.
        centers: global (x, y) centres in pixels.
        radius: match distance in pixels (about one cell: an object moves less than that).
        temperature: softness of the contrast, in units of cosine similarity.
        looks: per-slot sprite ids for the ``looks`` contrast; None contrasts with every object.

    Returns:
        The loss and the number of matched objects.

    Example:
        >>> codes = torch.eye(2).expand(1, 2, 2, 2)  # two objects that keep their codes
        >>> centers = torch.tensor([[0.0, 0.0], [10.0, 0.0]]).expand(1, 2, 2, 2)
        >>> result = consistency_loss(codes, torch.ones(1, 2, 2), centers, radius=4.0)
        >>> int(result.matched), round(float(result.loss), 4)
        (2, 0.0)
        >>> swapped = torch.stack([torch.eye(2), torch.eye(2).flip(0)])[None]  # codes swap at t + 1
        >>> swapped = consistency_loss(swapped, torch.ones(1, 2, 2), centers, 4.0, agreement=False)
        >>> round(float(swapped.loss), 2)
        10.0
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if codes.shape[1] < 2:
        zero = codes.sum() * 0.0
        return ConsistencyResult(zero, zero.detach())
    unit = F.normalize(codes, dim=-1)
    cos = unit[:, :-1] @ unit[:, 1:].transpose(-1, -2)  # [B, T-1, N, N]: slot i at t, j at t + 1
    source = presence[:, :-1] > threshold
    target = presence[:, 1:, None, :] > threshold
    distance = torch.cdist(centers[:, :-1], centers[:, 1:])  # [B, T-1, N, N]
    candidate = target & (distance <= radius)
    match = torch.where(candidate, distance, torch.inf).argmin(-1, keepdim=True)
    matched = source & candidate.any(-1)
    if agreement:
        best = torch.where(candidate, cos, -torch.inf).argmax(-1, keepdim=True)
        matched = matched & (best == match)[..., 0]
    if looks is None:
        counted = target
    else:  # all of t + 1 but the match's look-alikes: the match itself counts
        look = looks[:, 1:, None, :]
        alike = target & (look == look.expand_as(cos).gather(-1, match))
        counted = ~alike | F.one_hot(match[..., 0], cos.shape[-1]).bool()
    # Slots out of the sum get the lowest finite logit, not -inf, so that rows without any
    # object stay finite in the backward pass (they are masked out below).
    logits = (cos / temperature).masked_fill(~counted, torch.finfo(cos.dtype).min)
    per_object = torch.logsumexp(logits, -1) - logits.gather(-1, match)[..., 0]
    total = torch.where(matched, per_object, 0.0).sum()
    return ConsistencyResult(total / source.numel(), matched.sum())


def encoding_consistency(
    encoding: Encoding,
    grid: Grid,
    code: str = "codes",
    radius: float = 0.0,
    temperature: float = 0.1,
    contrast: str = "objects",
) -> ConsistencyResult:
    """:func:`consistency_loss` of a model's encoding of stacks of T frames.

    ``code`` picks the vector (see :data:`CODE_KINDS`); ``radius`` is in pixels, 0 meaning one
    cell size P; ``contrast`` one of :data:`CONTRASTS` (the looks are the arg-max sprites). Slot
    centres are global: anchor-cell centre plus local offset times P.
    """
    if code not in CODE_KINDS:
        raise ValueError(f"code must be one of {CODE_KINDS}, got {code!r}")
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    slots = "B T NL Lh Lw ... -> B T (NL Lh Lw) ..."
    centers = global_centers(encoding.offsets, grid)
    return consistency_loss(  # in float32 also under bf16 autocast: distances need the bits
        rearrange(getattr(encoding, code).float(), slots),
        rearrange(encoding.presence.float(), slots),
        rearrange(centers.float(), slots),
        radius=radius if radius > 0 else float(grid.cell),
        temperature=temperature,
        looks=rearrange(encoding.weights.argmax(-1), slots) if contrast == "looks" else None,
    )
