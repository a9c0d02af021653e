"""Presence: whether each slot draws its sprite, from the anchor code's logit and, with matching,
from how much the best sprite would explain the anchor.

Two schemes, named in :data:`PRESENCES`: ``learned`` (the original: the sigmoid of the presence
head's logit) and ``match`` (that logit plus, on the back layer, the best matching gain of the
anchor). Learned presence alone collapses on faint, sparse sprites: nearly every slot is empty,
so the first steps push the shared head's logits down everywhere before it can tell the few
object slots apart, and a sigmoid near 0 passes no gradient back (docs/learning.md).
"""

from collections.abc import Callable

import torch

from ._typing import Float, Tensor, typed
from .selection import Selection

__all__ = ["PRESENCES", "learned_presence", "matched_presence"]


@typed
def learned_presence(
    logits: Float[Tensor, "B T NL Lh Lw"], selection: Selection, temperature: float
) -> Float[Tensor, "B T NL Lh Lw"]:
    """The original's presence, sigma(z), from the anchor code alone.

    Example:
        >>> selection = Selection(torch.zeros(1, 1, 1, 1, 1, 3), None)
        >>> learned_presence(torch.zeros(1, 1, 1, 1, 1), selection, 0.05).item()
        0.5
    """
    return torch.sigmoid(logits)


@typed
def matched_presence(
    logits: Float[Tensor, "B T NL Lh Lw"], selection: Selection, temperature: float
) -> Float[Tensor, "B T NL Lh Lw"]:
    """Presence that starts from the matching evidence:

        p_l = sigma(z_l + [l = 0 or layered] g*_l / tau),   g*_l = max_{k, o} g_{l,k}(o),

    with g_{l,k}(o) the per-pixel squared-error gain of placing sprite k at displacement o of
    the anchor (:func:`marionette.core.match_gains`; the matched selection's ``match.best``) and
    tau = ``temperature``. g* > 0 where some sprite explains the anchor better than the
    background does, and g* <= 0 over background alone (a sprite there only adds its mismatch), so
    the back layer's slots start present on objects and absent elsewhere; the learned logit z
    corrects that. With one matching for every layer (``match``) the other layers get z alone
    and stay free for overlapping objects (the same evidence on every layer drew each object
    twice on the demo world); with a matching per layer against what the layers behind draw
    (``pursuit``, ``selection.layered``) each layer gets its own evidence, which is > 0 only
    where something is left to draw.

    Example:
        >>> from marionette.core import SoftMatch
        >>> best = torch.tensor([0.1, -0.1]).reshape(1, 1, 1, 2, 1).expand(1, 1, 2, 2, 1)
        >>> match = SoftMatch(best, torch.zeros(1, 1, 2, 2, 1, 2))
        >>> selection = Selection(torch.zeros(1, 1, 2, 1, 2, 1), match)
        >>> matched_presence(torch.zeros(1, 1, 2, 1, 2), selection, 0.05)[0, 0].tolist()
        [[[0.8807970285415649, 0.11920291930437088]], [[0.5, 0.5]]]
    """
    if selection.match is None:
        raise ValueError(
            "presence 'match' needs the matching of selection 'match' or 'pursuit', got a "
            "selection without matching (set --selection match, or --presence learned)"
        )
    best = selection.match.best.amax(dim=-1)  # B T NL Lh Lw
    if selection.layered:
        return torch.sigmoid(logits + best / temperature)
    back = logits[:, :, :1] + best[:, :, :1] / temperature
    return torch.sigmoid(torch.cat([back, logits[:, :, 1:]], dim=2))


#: Presence schemes by name (the ``presence`` setting): ``fn(logits, selection, temperature) ->
#: presence probabilities``.
PRESENCES: dict[str, Callable[..., Tensor]] = {
    "learned": learned_presence,
    "match": matched_presence,
}
