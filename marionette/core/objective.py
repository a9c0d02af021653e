"""The training objective: every loss term of a training step and how it is weighted."""

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from ._typing import Float, Tensor
from .consistency import encoding_consistency
from .losses import (
    beta_prior_loss,
    presence_loss,
    reconstruction_loss,
    selection_prediction_loss,
)
from .selection import selection_logits

if TYPE_CHECKING:
    from .model import MarioNette, MarioNetteOutput

__all__ = ["Objective", "ObjectiveWeights", "ramp", "training_objective"]


@dataclass(frozen=True)
class ObjectiveWeights:
    """How the loss terms are weighted (the settings of the same names; see
    :class:`marionette.config.TrainConfig`)."""

    w_beta: float = 0.002
    w_probs: tuple[float, ...] = (0.005,)
    presence_warmup: int = 0
    hard_mix: float = 0.0
    hard_warmup: int = 0
    w_select: float = 0.0
    aow: float = 0.0
    aow_warmup: int = 0
    consistency_code: str = "codes"
    consistency_radius: float = 0.0
    consistency_contrast: str = "objects"


class Objective(NamedTuple):
    """One step's loss, its terms (scalars, by the names logged in ``metrics.csv``) and the soft
    rendering they were computed from."""

    loss: Tensor
    terms: dict[str, Tensor]
    output: "MarioNetteOutput"


def ramp(step: int, warmup: int) -> float:
    """Linear warm-up factor in [0, 1]: min(1, step / warmup), 1 without warm-up.

    Example:
        >>> ramp(25, 100), ramp(300, 100), ramp(0, 0)
        (0.25, 1.0, 1.0)
    """
    return 1.0 if warmup <= 0 else min(1.0, step / warmup)


def training_objective(
    model: "MarioNette", frames: Float[Tensor, "B T 3 H W"], weights: ObjectiveWeights, step: int
) -> Objective:
    """The loss of one training step on ``frames`` in [0, 1]:

        L = MSE(soft, x) + w_beta Beta22(w, p) + [step >= presence_warmup] L1_lambda(p)
            + hard_mix ramp(hard_warmup) MSE(straight-through hard, x)
            + w_select L_select(q . z / sqrt(D), w, p) + aow ramp(aow_warmup) L_consistency,

    (L_select: :func:`selection_prediction_loss`, with the dictionary codes z held fixed), the
    last three only when their weight is positive (and T >= 2 for the consistency term).
    Terms are computed in float32 whatever the autocast precision.
    """
    w = weights
    out = model.render(model.encode(frames))
    target = frames.float()
    terms = {
        "rec_loss": reconstruction_loss(out.reconstruction.float(), target),
        "beta_loss": beta_prior_loss(out.weights.float(), out.presence.float()),
        "probs_loss": presence_loss(out.presence.float(), w.w_probs),
    }
    presence_on = 0.0 if step < w.presence_warmup else 1.0
    loss = terms["rec_loss"] + w.w_beta * terms["beta_loss"] + presence_on * terms["probs_loss"]
    if w.hard_mix > 0:
        hard = model.render(out.encoding, "straight_through")
        terms["hard_rec_loss"] = reconstruction_loss(hard.reconstruction.float(), target)
        loss = loss + w.hard_mix * ramp(step, w.hard_warmup) * terms["hard_rec_loss"]
    if w.w_select > 0:
        encoding = out.encoding
        learned = selection_logits(encoding.queries, encoding.dict_codes.detach())
        terms["select_loss"] = selection_prediction_loss(
            learned.float(), encoding.weights.float(), encoding.presence.float()
        )
        loss = loss + w.w_select * terms["select_loss"]
    if w.aow > 0 and frames.shape[1] > 1:
        consistency = encoding_consistency(
            out.encoding,
            model.grid,
            w.consistency_code,
            w.consistency_radius,
            contrast=w.consistency_contrast,
        )
        terms["consistency_loss"] = consistency.loss
        terms["matched_objects"] = consistency.matched.float()
        loss = loss + w.aow * ramp(step, w.aow_warmup) * consistency.loss
    terms["loss"] = loss
    return Objective(loss, terms, out)
