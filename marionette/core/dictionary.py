"""The sprite dictionary: K learned latent codes decoded by an MLP into RGBA sprites."""

import torch
import torch.nn.functional as F
from torch import nn

from ._typing import Float, Tensor, typed

__all__ = ["SpriteDictionary", "decode_sprites"]


@typed
def decode_sprites(
    latents: Float[Tensor, "K D"], decoder: nn.Module, channels: int, size: int
) -> tuple[Float[Tensor, "K C S S"], Float[Tensor, "K D"]]:
    """Layer-normalise the latents (no affine) and decode them to sprites in (0, 1).

    Returns the sprites and the normalised codes z_k that selection scores against.
    """
    codes = F.layer_norm(latents, (latents.shape[-1],))
    sprites = decoder(codes).reshape(latents.shape[0], channels, size, size)
    return sprites, codes


class SpriteDictionary(nn.Module):
    """K latent codes ~ N(0, 1), decoded by Linear(D, 8D) -> GroupNorm(8) -> ReLU ->
    Linear(8D, C S S) -> sigmoid, as the original.

    Args:
        num_sprites: dictionary size K.
        size: sprite side S.
        dim: latent width D (a multiple of 8).
        channels: sprite channels (4 = RGBA).
    """

    def __init__(self, num_sprites: int, size: int, dim: int, channels: int = 4) -> None:
        super().__init__()
        if num_sprites < 1:
            raise ValueError(f"num_classes (dictionary size) must be >= 1, got {num_sprites}")
        self.size, self.channels = size, channels
        self.latents = nn.Parameter(torch.randn(num_sprites, dim))
        self.decoder = nn.Sequential(
            nn.Linear(dim, 8 * dim), nn.GroupNorm(8, 8 * dim), nn.ReLU(),
            nn.Linear(8 * dim, channels * size * size), nn.Sigmoid(),
        )

    @typed
    def forward(self) -> tuple[Float[Tensor, "K C S S"], Float[Tensor, "K D"]]:
        return decode_sprites(self.latents, self.decoder, self.channels, self.size)
