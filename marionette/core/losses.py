"""Training objective: reconstruction MSE, Beta(2, 2) prior on weights and presence, L1 presence,
the selection-prediction cross-entropy."""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._typing import Float, Tensor, typed

__all__ = [
    "beta_prior_loss",
    "presence_loss",
    "psnr",
    "psnr_of_mse",
    "reconstruction_loss",
    "selection_prediction_loss",
]


@typed
def reconstruction_loss(
    reconstruction: Float[Tensor, "B T 3 H W"], frames: Float[Tensor, "B T 3 H W"]
) -> Float[Tensor, ""]:
    """Mean squared error over all pixels and channels."""
    return F.mse_loss(reconstruction, frames)


@typed
def psnr(
    reconstruction: Float[Tensor, "*batch 3 H W"], frames: Float[Tensor, "*batch 3 H W"]
) -> Float[Tensor, ""]:
    """Peak signal-to-noise ratio in dB of the batch: -10 log10(MSE), images in [0, 1].

    Example:
        >>> round(float(psnr(torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.1))), 3)
        20.0
    """
    mse = F.mse_loss(reconstruction.float(), frames.float())
    return -10.0 * torch.log10(mse.clamp(min=1e-10))


def psnr_of_mse(mse: float) -> float:
    """:func:`psnr` of an MSE accumulated elsewhere (over many batches): -10 log10(MSE) in dB,
    the MSE floored at 1e-10 as there.

    Example:
        >>> psnr_of_mse(0.01), psnr_of_mse(0.0)
        (20.0, 100.0)
    """
    return float(-10.0 * math.log10(max(mse, 1e-10)))


def _beta22(x: Tensor) -> Tensor:
    x = x.clamp(1e-5, 1 - 1e-5)
    return 6.0 * x * (1.0 - x)


@typed
def beta_prior_loss(
    weights: Float[Tensor, "*batch K"], presence: Float[Tensor, "*batch"]
) -> Float[Tensor, ""]:
    """Beta(2, 2) density f(x) = 6 x (1 - x), averaged: (mean_f(weights) + mean_f(presence)) / 2.

    f vanishes at 0 and 1 and peaks at 1/2, so minimising it pushes the K-way selection weights
    and the presence probabilities towards binary values. Inputs are clamped to [1e-5, 1 - 1e-5].

    Example:
        >>> round(float(beta_prior_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([0.5]))), 4)
        0.75
    """
    return 0.5 * (_beta22(weights).mean() + _beta22(presence).mean())


@typed
def presence_loss(
    presence: Float[Tensor, "B T NL Lh Lw"], layer_weights: Sequence[float]
) -> Float[Tensor, ""]:
    """L1 penalty mean_{b, t, l, i, j} lambda_l p_{btlij}, with one weight per layer or one for all.

    Example:
        >>> float(presence_loss(torch.ones(1, 1, 2, 1, 1), [0.5, 1.0]))
        0.75
    """
    num_layers = presence.shape[2]
    if len(layer_weights) not in (1, num_layers):
        raise ValueError(
            f"w_probs must have 1 or num_layers={num_layers} values, got {list(layer_weights)}"
        )
    weights = presence.new_tensor(list(layer_weights)).expand(num_layers)
    return (presence.abs().mean(dim=(0, 1, 3, 4)) * weights).mean()


@typed
def selection_prediction_loss(
    logits: Float[Tensor, "*batch K"],
    weights: Float[Tensor, "*batch K"],
    presence: Float[Tensor, "*batch"],
) -> Float[Tensor, ""]:
    """Presence-weighted cross-entropy of the learned selection against the selection used,

        mean_i p_i H(w_i, softmax(l_i)) = mean_i p_i ( -sum_k w_ik log softmax(l_i)_k ),

    with the weights w and presence p held fixed (detached): only the logits l learn. With
    matched selection, l = q . z / sqrt(D) are the anchor code's own logits, and this term asks
    the code to say which sprite its slot draws, which the matching otherwise decides alone.
    Empty slots (p = 0) do not count.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> round(float(selection_prediction_loss(logits, torch.tensor([[1.0, 0.0]]),
        ...     torch.ones(1))), 4)  # log 2
        0.6931
    """
    cross_entropy = -(weights.detach() * torch.log_softmax(logits, dim=-1)).sum(-1)
    return (presence.detach() * cross_entropy).mean()
