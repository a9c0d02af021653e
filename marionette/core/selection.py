"""Sprite selection: scaled dot-product scores, soft and hard weights, and sprite mixing."""

import math

import torch
from einops import einsum

from ._typing import Float, Int64, Tensor, typed

__all__ = [
    "gather_sprites",
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
    return einsum(weights, sprites, "... K, K C S1 S2 -> ... C S1 S2")


@typed
def gather_sprites(
    sprite_ids: Int64[Tensor, "*batch"], sprites: Float[Tensor, "K C S S"]
) -> Float[Tensor, "*batch C S S"]:
    """Sprite of every slot by index, sprites[sprite_ids]: the hard-mode mix without a matmul."""
    check_ids(sprite_ids, sprites.shape[0])
    return sprites[sprite_ids]


def check_ids(sprite_ids: Tensor, k: int) -> None:
    """Raise unless every id indexes one of ``k`` sprites."""
    if sprite_ids.numel() and (int(sprite_ids.min()) < 0 or int(sprite_ids.max()) >= k):
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
