"""The three ways of rendering an encoding: soft (training), hard (the decomposition) and
straight-through (hard values, soft gradients)."""

from einops import einsum

from ._typing import Float, Int64, Tensor, typed
from .decomposition import Decomposition
from .encoding import Encoding
from .selection import hard_presence, hard_weights, mix_sprites, straight_through
from .shifts import discrete_offsets

__all__ = ["RENDER_MODES", "decompose_encoding"]

#: ``soft``: every slot draws the selection-weighted mixture of the sprites at its presence;
#: ``hard``: the arg-max sprite, presence rounded to 0 / 1, one-hot discrete offsets;
#: ``straight_through``: the hard values with the gradients of the soft ones.
RENDER_MODES: tuple[str, ...] = ("soft", "hard", "straight_through")


@typed
def decompose_encoding(
    encoding: Encoding,
    mode: str,
    plane_order: Int64[Tensor, " _"],
    cell: int,
    gating: str = "premultiplied",
    round_presence: bool = False,
) -> tuple[Float[Tensor, "B T NL Lh Lw K"], Decomposition]:
    """The selection weights a rendering ``mode`` uses, and the decomposition it draws.

    Hard: w = onehot(argmax w), p = round(p), each slot draws sprite argmax w, and with matched
    offsets the chosen sprite's own offset. Straight-through: the same forward values as
    h + (s - sg(s)) for every hard h of a soft s, so gradients are those of the soft rendering;
    sprites are mixed with the one-hot weights. Soft: the encoding as it is
    (``round_presence``: presence straight-through rounded, the original's
    ``--straight_through_probs``).
    """
    e = encoding
    offset_weights = e.offset_weights
    if mode == "soft":
        presence = e.presence
        if round_presence:
            presence = straight_through(hard_presence(presence), presence)
        weights, sprites, ids = e.weights, e.windows.flatten(0, -4), None
    elif mode == "hard":
        weights, presence = hard_weights(e.weights), hard_presence(e.presence)
        sprites, ids = e.sprites, e.weights.argmax(dim=-1)
        if offset_weights is not None:
            offset_weights = tuple(hard_weights(w) for w in offset_weights)
    elif mode == "straight_through":
        weights = straight_through(hard_weights(e.weights), e.weights)
        presence = straight_through(hard_presence(e.presence), e.presence)
        sprites, ids = mix_sprites(weights, e.sprites).flatten(0, -4), None
        if offset_weights is not None:
            offset_weights = tuple(straight_through(hard_weights(w), w) for w in offset_weights)
    else:
        raise ValueError(f"mode must be one of {RENDER_MODES}, got {mode!r}")
    if offset_weights is not None:
        offsets = discrete_offsets(*offset_weights)
    elif mode != "soft" and e.sprite_offsets is not None:  # the chosen sprite's own offset
        offsets = einsum(
            weights, e.sprite_offsets, "B T NL Lh Lw K, B T NL Lh Lw K xy -> B T NL Lh Lw xy"
        )
    else:
        offsets = e.offsets
    decomposition = Decomposition(
        sprites, ids, presence, offsets, e.background, plane_order, cell, gating, offset_weights
    )
    return weights, decomposition
