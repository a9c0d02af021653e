"""Sprite selection: which dictionary sprite each slot draws, soft, hard or straight-through.

Three selection schemes, named in :data:`SELECTIONS`: ``learned`` (the original: the scaled dot
product of a slot's projected code with the dictionary codes), ``match`` (those logits plus,
per sprite, how much placing it at its best displacement would reduce the window's error) and
``pursuit`` (the same, matched layer by layer against what the layers behind already draw).
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from einops import einsum, rearrange

from ._typing import Float, Int64, Tensor, checks_active, typed
from .placement import AnchorWindows
from .shifts import SoftMatch, match_gain_map, soft_match

__all__ = [
    "SELECTIONS",
    "Selection",
    "gather_sprites",
    "learned_selection",
    "match_selection",
    "pursuit_selection",
    "hard_presence",
    "hard_weights",
    "mix_sprites",
    "selection_logits",
    "straight_through",
]


@typed
def selection_logits(
    queries: Float[Tensor, "*batch D"], dict_codes: Float[Tensor, "K D"]
) -> Float[Tensor, "*batch K"]:
    """Scaled dot product of projected anchor codes q with dictionary codes z: q . z_k / sqrt(D).

    Example:
        >>> selection_logits(torch.ones(2, 4), torch.eye(4)).tolist()[0]
        [0.5, 0.5, 0.5, 0.5]
    """
    return einsum(queries, dict_codes, "... D, K D -> ... K") / math.sqrt(queries.shape[-1])


@typed
def mix_sprites(
    weights: Float[Tensor, "*batch K"], sprites: Float[Tensor, "K C S S"]
) -> Float[Tensor, "*batch C S S"]:
    """Soft sprite of every slot, sum_k w_k sprite_k, as one contraction over K.

    The broadcast product [..., K, C, S, S] is never formed (the original's costs 2.5 GB).

    Example:
        >>> mix_sprites(torch.tensor([[0.25, 0.75]]), torch.stack([torch.zeros(4, 2, 2),
        ...     torch.ones(4, 2, 2)])).unique().tolist()
        [0.75]
    """
    return einsum(weights, sprites, "... K, K C Sy Sx -> ... C Sy Sx")


@typed
def gather_sprites(
    sprite_ids: Int64[Tensor, "*batch"], sprites: Float[Tensor, "K C S S"]
) -> Float[Tensor, "*batch C S S"]:
    """Sprite of every slot by index, sprites[sprite_ids]: the hard-mode mix without a matmul."""
    check_ids(sprite_ids, sprites.shape[0])
    return sprites[sprite_ids]


def check_ids(sprite_ids: Tensor, k: int) -> None:
    """Raise unless every id indexes one of ``k`` sprites (only while checks are active: it
    reads the ids on the host)."""
    if not checks_active() or sprite_ids.numel() == 0:
        return
    if int(sprite_ids.min()) < 0 or int(sprite_ids.max()) >= k:
        raise ValueError(
            f"sprite ids must lie in [0, {k - 1}], got min={int(sprite_ids.min())}, "
            f"max={int(sprite_ids.max())}"
        )


@typed
def hard_weights(weights: Float[Tensor, "*batch K"]) -> Float[Tensor, "*batch K"]:
    """One-hot of the arg-max over K.

    Example:
        >>> hard_weights(torch.tensor([[0.2, 0.5, 0.3]])).tolist()
        [[0.0, 1.0, 0.0]]
    """
    index = weights.argmax(dim=-1, keepdim=True)
    return torch.zeros_like(weights).scatter_(-1, index, 1.0)


@typed
def hard_presence(presence: Float[Tensor, "*batch"]) -> Float[Tensor, "*batch"]:
    """Presence rounded to {0, 1} (0.5 rounds to 0, as ``torch.round`` does)."""
    return torch.round(presence)


@typed
def straight_through(
    hard: Float[Tensor, "*batch"], soft: Float[Tensor, "*batch"]
) -> Float[Tensor, "*batch"]:
    """Forward value of ``hard`` with the gradient of ``soft`` (straight-through estimator)."""
    return hard + (soft - soft.detach())


class Selection(NamedTuple):
    """What a selection scheme says about every slot.

    Attributes:
        logits: scores over the K dictionary sprites (softmax gives the selection weights).
        match: with matching, what it says about every sprite at every slot: best gain and
            expected displacement (see :func:`marionette.core.soft_match`); else None.
        layered: whether each layer was matched on its own, against what the layers behind it
            draw (``pursuit``); otherwise every layer holds the same matching of the frame
            against the background.
    """

    logits: Float[Tensor, "B T NL Lh Lw K"]
    match: SoftMatch | None
    layered: bool = False


@typed
def learned_selection(
    queries: Float[Tensor, "B T NL Lh Lw D"],
    dict_codes: Float[Tensor, "K D"],
    sprites: Float[Tensor, "K 4 S S"],
    windows: AnchorWindows,
    temperature: float,
) -> Selection:
    """The original's selection: logits q . z_k / sqrt(D) (see :func:`selection_logits`)."""
    return Selection(selection_logits(queries, dict_codes), None)


def _match(
    frames: Float[Tensor, "N 3 H W"],
    canvas: Float[Tensor, "N 3 H W"],
    sprites: Float[Tensor, "K 4 S S"],
    temperature: float,
) -> SoftMatch:
    """:func:`soft_match` of the gains of every sprite over ``canvas``; fields ``[N, Lh, Lw, K,
    ...]``."""
    return soft_match(match_gain_map(frames, canvas, sprites), sprites.shape[-1] // 2, temperature)


@typed
def match_selection(
    queries: Float[Tensor, "B T NL Lh Lw D"],
    dict_codes: Float[Tensor, "K D"],
    sprites: Float[Tensor, "K 4 S S"],
    windows: AnchorWindows,
    temperature: float,
) -> Selection:
    """Learned logits plus the best matching gain of each sprite over its displacements:

        logit_k = q . z_k / sqrt(D) + max_o gain_k(o) / tau,

    with the gains of :func:`marionette.core.match_gains` of the anchor (the same for every
    layer), tau = ``temperature`` (:func:`marionette.core.soft_match`). A slot thus picks
    the sprite that explains its window best before the learned part has learned anything.

    The maximum, not the soft maximum log sum_o exp(gain_k(o) / tau): that adds up to
    log (P + 1)^2 for the number of displacements at which a sprite gains about its best, so a
    piece of a bar or a wall, which gains as much one pixel further along, outscored a small
    object that gains more at one place (Carnival's gun beside its ammo bar; docs/learning.md).
    """
    b, t, nl = queries.shape[:3]
    frames = "B T C H W -> (B T) C H W"
    match = _match(
        rearrange(windows.frames, frames), rearrange(windows.background, frames), sprites,
        temperature,
    )  # fmt: skip
    match = SoftMatch(
        *(rearrange(x, "(B T) ... -> B T 1 ...", T=t).expand(b, t, nl, *x.shape[1:]) for x in match)
    )
    return Selection(selection_logits(queries, dict_codes) + match.best / temperature, match)


@typed
def pursuit_selection(
    queries: Float[Tensor, "B T NL Lh Lw D"],
    dict_codes: Float[Tensor, "K D"],
    sprites: Float[Tensor, "K 4 S S"],
    windows: AnchorWindows,
    temperature: float,
) -> Selection:
    """Matched selection layer by layer, back to front (a matching pursuit over depth):

        logit_{l,k} = q_l . z_k / sqrt(D) + max_o gain_{l,k}(o) / tau,

    where layer 0's gains are those of :func:`match_selection` (the frame against the
    background) and layer l's are measured against the canvas C_l: the background with layers
    0..l-1 drawn, each anchor's best-matching sprite at its matched displacement wherever that
    gains (max_{k,o} gain > 0). A second object in an anchor's window, which every layer of
    ``match`` sees behind the first one's larger gain, is what the next layer's gains point to;
    where the layers behind explain everything, the next layer's gains are <= 0. The canvases
    are a fixed target: no gradient flows through the choice of what the layers behind draw.
    Costs one matching per layer.
    """
    t, nl = queries.shape[1], queries.shape[2]
    frames = rearrange(windows.frames, "B T C H W -> (B T) C H W")
    canvas = rearrange(windows.background, "B T C H W -> (B T) C H W")
    matches = []
    for layer in range(nl):
        matches.append(_match(frames, canvas, sprites, temperature))
        if layer + 1 < nl:
            canvas = _draw_best(matches[-1], sprites, canvas)
    match = SoftMatch(
        *(rearrange(torch.stack(x, dim=1), "(B T) NL ... -> B T NL ...", T=t)
          for x in zip(*matches, strict=True))
    )  # fmt: skip
    logits = selection_logits(queries, dict_codes) + match.best / temperature
    return Selection(logits, match, layered=True)


@torch.no_grad()
def _draw_best(
    match: SoftMatch, sprites: Float[Tensor, "K 4 S S"], canvas: Float[Tensor, "N 3 H W"]
) -> Float[Tensor, "N 3 H W"]:
    """``canvas`` with every anchor's best-matching sprite drawn at its matched displacement
    where it gains (best > 0), as one layer of a hard decomposition."""
    from .decomposition import Decomposition  # here: decompositions and renderers import this
    from .renderers import render

    best, ids = match.best.max(dim=-1)  # N Lh Lw
    offsets = match.offsets.gather(-2, ids[..., None, None].expand(*ids.shape, 1, 2))[..., 0, :]
    layer = Decomposition(
        sprites.detach(), ids[:, None, None], (best > 0).to(canvas.dtype)[:, None, None],
        offsets[:, None, None], canvas[:, None], torch.arange(4, device=canvas.device),
        sprites.shape[-1] // 2,
    )  # fmt: skip
    return render(layer, "torch")[:, 0].to(canvas.dtype)


#: Selection schemes by name (the ``selection`` setting): ``fn(queries, dict_codes, sprites,
#: windows, temperature) -> Selection``.
SELECTIONS: dict[str, Callable[..., Selection]] = {
    "learned": learned_selection,
    "match": match_selection,
    "pursuit": pursuit_selection,
}
