"""Sprite selection: which dictionary sprite each slot draws, soft, hard or straight-through.

Three selection schemes, named in :data:`SELECTIONS`: ``learned`` (the original: the scaled dot
product of a slot's projected code with the dictionary codes), ``match`` (those logits plus,
per sprite, how much placing it at its best displacement would reduce the window's error) and
``pursuit`` (the same, matched layer by layer against what the layers behind already draw).
"""

import math
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import torch
from einops import einsum, rearrange

from ._typing import Bool, Float, Int64, Tensor, checks_active, typed
from .placement import AnchorWindows, extract_windows
from .shifts import SoftMatch, match_gain_map, soft_match

__all__ = [
    "SELECTIONS",
    "Selection",
    "gather_sprites",
    "learned_selection",
    "match_selection",
    "neighbour_repeats",
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
        vacated: slots whose best placement repeats the object a stronger neighbouring anchor
            of the same layer draws (:func:`neighbour_repeats`); the model leaves them empty
            in that layer. None where the scheme does not decide it.
    """

    logits: Float[Tensor, "B T NL Lh Lw K"]
    match: SoftMatch | None
    layered: bool = False
    vacated: Bool[Tensor, "B T NL Lh Lw"] | None = None


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
    gains (max_{k,o} gain > 0) and the slot is not vacated. A second object in an anchor's
    window, which every layer of ``match`` sees behind the first one's larger gain, is what the
    next layer's gains point to; where the layers behind explain everything, the next layer's
    gains are <= 0.

    The anchors of one layer are matched at once, and neighbouring windows overlap: an object
    on the seam of two cells is the best placement of both anchors, and both would draw it
    (over compositing repeats it without error, so the loss cannot tell them apart). The
    weaker of two such placements is vacated (:func:`neighbour_repeats`): its slot stays empty
    in this layer, and the next layer's matching, against the canvas with the stronger one
    drawn, finds whatever else its window holds. The canvases and the vacated slots are a
    fixed target: no gradient flows through the choice of what the layers behind draw. Costs
    one matching per layer.
    """
    from .decomposition import shift_slots  # here: decompositions and renderers import this
    from .renderers import render

    t, nl = queries.shape[1], queries.shape[2]
    frames = rearrange(windows.frames, "B T C H W -> (B T) C H W")
    canvas = rearrange(windows.background, "B T C H W -> (B T) C H W")
    matches, vacated = [], []
    for layer in range(nl):
        matches.append(_match(frames, canvas, sprites, temperature))
        placed, gain = _best_placements(matches[-1], sprites, canvas)
        with torch.no_grad():
            alpha = shift_slots(placed)[:, 0, 0, :, :, 3]  # N Lh Lw S S
            unexplained = (frames - canvas).abs().amax(dim=1, keepdim=True) > UNEXPLAINED
            unexplained = extract_windows(unexplained.to(canvas.dtype), windows.grid)[..., 0, :, :]
            footprints = (alpha > 0.5) & (unexplained > 0.5)
            footprints &= (gain > 0)[..., None, None]
        vacated.append(neighbour_repeats(footprints, gain, windows.grid.cell))
        if layer + 1 < nl:
            drawn = ((gain > 0) & ~vacated[-1]).to(canvas.dtype)[:, None, None]
            canvas = render(replace(placed, presence=drawn), "torch")[:, 0].to(canvas.dtype)
    match = SoftMatch(
        *(rearrange(torch.stack(x, dim=1), "(B T) NL ... -> B T NL ...", T=t)
          for x in zip(*matches, strict=True))
    )  # fmt: skip
    logits = selection_logits(queries, dict_codes) + match.best / temperature
    vacated = rearrange(torch.stack(vacated, dim=1), "(B T) NL ... -> B T NL ...", T=t)
    return Selection(logits, match, layered=True, vacated=vacated)


@torch.no_grad()
def _best_placements(
    match: SoftMatch, sprites: Float[Tensor, "K 4 S S"], canvas: Float[Tensor, "N 3 H W"]
) -> tuple["Decomposition", Float[Tensor, "N Lh Lw"]]:
    """One layer of a hard decomposition over ``canvas``, every anchor's best-matching sprite
    at its matched displacement, all present; and the best gain of every anchor."""
    from .decomposition import Decomposition  # here: decompositions import this module

    best, ids = match.best.max(dim=-1)  # N Lh Lw
    offsets = match.offsets.gather(-2, ids[..., None, None].expand(*ids.shape, 1, 2))[..., 0, :]
    placed = Decomposition(
        sprites.detach(), ids[:, None, None], torch.ones_like(best)[:, None, None].to(canvas),
        offsets[:, None, None], canvas[:, None], torch.arange(4, device=canvas.device),
        sprites.shape[-1] // 2,
    )  # fmt: skip
    return placed, best


#: A pixel is left to explain where a channel of the frame differs from the canvas by more
#: than this (the foreground of :func:`marionette.core.foreground_patches`).
UNEXPLAINED = 0.1

#: The 8 neighbours (dy, dx) of an anchor.
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _padded(x: Tensor, fill: float | bool) -> Tensor:
    """``x`` [N, Lh, Lw, ...] with a border of one anchor of ``fill`` around the grid."""
    padded = x.new_full((x.shape[0], x.shape[1] + 2, x.shape[2] + 2, *x.shape[3:]), fill)
    padded[:, 1:-1, 1:-1] = x
    return padded


def _neighbour(x: Tensor, dy: int, dx: int, fill: float | bool) -> Tensor:
    """``x`` [N, Lh, Lw, ...] read at anchor (i + dy, j + dx); ``fill`` outside the grid."""
    lh, lw = x.shape[1:3]
    return _padded(x, fill)[:, 1 + dy : 1 + dy + lh, 1 + dx : 1 + dx + lw]


def _neighbours(x: Tensor, fill: float | bool) -> Tensor:
    """``x`` [N, Lh, Lw] read at the 8 neighbours of every anchor, in the order of
    ``_NEIGHBOURS``: ``[N, Lh, Lw, 8]``; ``fill`` outside the grid."""
    around = _padded(x, fill).unfold(1, 3, 1).unfold(2, 3, 1).flatten(-2)  # N Lh Lw 9
    return around[..., [0, 1, 2, 3, 5, 6, 7, 8]]  # row-major, without the anchor itself


def _shared_pixels(footprints: Tensor, dy: int, dx: int, cell: int) -> Tensor:
    """|F_a & F_b| for every anchor a and its neighbour b = a + (dy, dx), whose window lies
    (dy P, dx P) pixels further: ``[N, Lh, Lw]``."""
    s = footprints.shape[-1]
    other = _neighbour(footprints, dy, dx, False)
    ys, xs = (
        slice(max(0, dy * cell), min(s, s + dy * cell)),
        slice(max(0, dx * cell), min(s, s + dx * cell)),
    )
    theirs = (
        slice(ys.start - dy * cell, ys.stop - dy * cell),
        slice(xs.start - dx * cell, xs.stop - dx * cell),
    )
    return (footprints[..., ys, xs] & other[..., theirs[0], theirs[1]]).sum(dim=(-2, -1))


def _grown(masks: Tensor, grow: int) -> Tensor:
    """``masks`` [..., S, S] dilated by a (2 ``grow`` + 1)-square, inside the S x S frame:
    a pixel is set where one within ``grow`` rows and ``grow`` columns of it is."""
    for dim in (-2, -1):
        for _ in range(grow):
            size = masks.shape[dim] - 1
            grown = masks.clone()
            grown.narrow(dim, 1, size).logical_or_(masks.narrow(dim, 0, size))
            grown.narrow(dim, 0, size).logical_or_(masks.narrow(dim, 1, size))
            masks = grown
    return masks


@typed
@torch.no_grad()
def neighbour_repeats(
    footprints: Bool[Tensor, "N Lh Lw S S"],
    score: Float[Tensor, "N Lh Lw"],
    cell: int,
    overlap: float = 0.5,
    grow: int = 1,
) -> Bool[Tensor, "N Lh Lw"]:
    """Which placements of one layer repeat a stronger neighbour's: greedy non-maximum
    suppression among the 8 neighbours of every anchor.

    ``footprints`` are the pixels each anchor's placement would explain, in its S x S window
    (window (i, j) starts at pixel (iP - P/2, jP - P/2), P = ``cell``); an empty footprint
    draws nothing. Each is grown by ``grow`` pixels (a (2 grow + 1)-square dilation inside its
    window), G = grow(F). By falling ``score`` (ties: the earlier anchor in row-major order),
    each placement is kept unless it shares more than ``overlap`` of the smaller grown
    footprint with the kept placement of a neighbour,

        |G_a & G_b| > overlap min(|G_a|, |G_b|).

    The smaller footprint, not the union: a sprite that holds an object and pixels of the
    background's colour around it (free over a uniform background) repeats the object however
    large it is. Grown, because two anchors that each reach only part of a small object on
    their seam draw the parts side by side, sharing no pixel: grown, two footprints of equal
    height side by side share 2 grow / (w + 2 grow) of the narrower one's grown area (w its
    width), so with ``grow`` = 1 parts one pixel wide clash and touching objects two pixels
    wide or more do not. Resolved in parallel rounds: a placement is suppressed once a
    stronger clashing neighbour is kept, and kept once every stronger clashing neighbour is
    suppressed; the strongest undecided placement is decided in every round, so this ends,
    with the sequential result. Returns the suppressed placements.

    Example:
        >>> footprints = torch.zeros(1, 1, 3, 4, 4, dtype=torch.bool)
        >>> footprints[0, 0, 0, 1:3, 2:4] = True  # the right half of anchor 0's window ...
        >>> footprints[0, 0, 1, 1:3, 0:2] = True  # ... is the left half of anchor 1's
        >>> footprints[0, 0, 2, 1:3, 2:4] = True  # another object
        >>> score = torch.tensor([[[0.5, 0.7, 0.1]]])
        >>> neighbour_repeats(footprints, score, cell=2).tolist()
        [[[True, False, False]]]
    """
    if grow < 0:
        raise ValueError(f"grow must be >= 0 (pixels), got {grow}")
    n, lh, lw = score.shape
    footprints = _grown(footprints, grow)
    index = torch.arange(lh * lw, device=score.device).reshape(1, lh, lw).expand(n, -1, -1)
    area = footprints.sum(dim=(-2, -1))
    drawn = area > 0
    shared = torch.stack([_shared_pixels(footprints, dy, dx, cell) for dy, dx in _NEIGHBOURS], -1)
    other_score, other_index = _neighbours(score, 0.0), _neighbours(index, -1)
    stronger = (other_score > score[..., None]) | (
        (other_score == score[..., None]) & (other_index < index[..., None])
    )
    clash = shared > overlap * torch.minimum(area[..., None], _neighbours(area, 0))
    # per anchor and neighbour: both drawn, the neighbour stronger, most of a footprint shared
    threat = drawn[..., None] & _neighbours(drawn, False) & stronger & clash
    kept, suppressed, undecided = torch.zeros_like(drawn), torch.zeros_like(drawn), drawn.clone()
    while bool(undecided.any()):
        by_kept = (threat & _neighbours(kept, False)).any(dim=-1)
        waiting = (threat & _neighbours(undecided, False)).any(dim=-1)
        suppressed |= undecided & by_kept
        kept |= undecided & ~by_kept & ~waiting
        undecided &= ~(suppressed | kept)
    return suppressed


#: Selection schemes by name (the ``selection`` setting): ``fn(queries, dict_codes, sprites,
#: windows, temperature) -> Selection``.
SELECTIONS: dict[str, Callable[..., Selection]] = {
    "learned": learned_selection,
    "match": match_selection,
    "pursuit": pursuit_selection,
}
