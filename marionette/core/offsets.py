"""Offset prediction: where inside its window every slot's sprite sits.

Three predictors, named in :data:`OFFSET_PREDICTORS` (the ``transform_encoder`` setting):
``conv`` (the original: a CNN over the anchor's image window and the slot's soft sprite),
``anchor`` (an MLP on the anchor code; no per-slot CNN) and ``match`` (template matching of the
sprite against the window; nothing learned). The learned ones end in one of the heads of
:data:`OFFSET_HEADS`: ``bilinear`` (tanh offsets for the spatial transformer) or ``discrete``
(softmax over the P + 1 integer offsets per axis, the original's ``--no_spatial_transformer``).
"""

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, NamedTuple

import torch
from einops import einsum, rearrange, repeat
from torch import nn

from ._typing import Float, Tensor, typed
from .encoders import GridEncoder, MLPHead
from .placement import AnchorWindows
from .selection import Selection
from .shifts import discrete_offsets, match_offsets

if TYPE_CHECKING:
    from .model import ModelConfig

__all__ = [
    "OFFSET_HEADS",
    "OFFSET_PREDICTORS",
    "AnchorOffsets",
    "BilinearOffsetHead",
    "ConvOffsets",
    "DiscreteOffsetHead",
    "MatchOffsets",
    "Offsets",
]


class Offsets(NamedTuple):
    """Where every slot's sprite sits.

    Attributes:
        offsets: local offset (x, y) in units of P (the expectation in discrete mode).
        weights: discrete mode: (x, y) distributions over the P + 1 integer offsets; else None.
        per_sprite: with matched selection and offsets, every sprite's own matched offset per
            anchor, so that a hard rendering can place the chosen sprite where it matches.
    """

    offsets: Float[Tensor, "B T NL Lh Lw 2"]
    weights: tuple[Float[Tensor, "B T NL Lh Lw Q"], Float[Tensor, "B T NL Lh Lw Q"]] | None
    per_sprite: Float[Tensor, "B T Lh Lw K 2"] | None


class BilinearOffsetHead(nn.Module):
    """MLP -> tanh / 2: an offset (x, y) in (-1/2, 1/2) per slot, for the bilinear shift."""

    def __init__(self, dim: int, cell: int) -> None:
        super().__init__()
        self.mlp = MLPHead(dim, 2, nn.Tanh())

    @typed
    def forward(self, features: Float[Tensor, "B T NL Lh Lw D"]) -> Offsets:
        return Offsets(self.mlp(features) / 2, None, None)


class DiscreteOffsetHead(nn.Module):
    """Two MLPs -> softmax over the P + 1 integer offsets of each axis (x, then y)."""

    def __init__(self, dim: int, cell: int) -> None:
        super().__init__()
        self.axes = nn.ModuleList(MLPHead(dim, cell + 1, nn.Softmax(dim=-1)) for _ in range(2))

    @typed
    def forward(self, features: Float[Tensor, "B T NL Lh Lw D"]) -> Offsets:
        weights = (self.axes[0](features), self.axes[1](features))
        return Offsets(discrete_offsets(*weights), weights, None)


#: Heads of the learned offset predictors by name.
OFFSET_HEADS: dict[str, type[nn.Module]] = {
    "bilinear": BilinearOffsetHead,
    "discrete": DiscreteOffsetHead,
}


def _head(config: "ModelConfig", dim: int) -> nn.Module:
    name = "discrete" if config.no_spatial_transformer else "bilinear"
    return OFFSET_HEADS[name](dim, config.grid.cell)


class _LearnedOffsets(nn.Module, ABC):
    """A learned predictor: per-slot features, then an offset head (:data:`OFFSET_HEADS`)."""

    head: nn.Module

    @abstractmethod
    def features(self, codes: Tensor, windows: AnchorWindows, mixed: Tensor) -> Tensor:
        """Per-slot features ``[B, T, NL, Lh, Lw, D']`` that the head turns into offsets."""

    @typed
    def forward(
        self,
        codes: Float[Tensor, "B T NL Lh Lw D"],
        windows: AnchorWindows,
        mixed: Float[Tensor, "B T NL Lh Lw 4 S S"],
        weights: Float[Tensor, "B T NL Lh Lw K"],
        selection: Selection,
    ) -> Offsets:
        return self.head(self.features(codes, windows, mixed))


class ConvOffsets(_LearnedOffsets):
    """The original's transform encoder: a CNN over [image window, soft sprite] (7 channels,
    S x S) of every slot gives a code, and a head turns it into an offset."""

    def __init__(self, config: "ModelConfig") -> None:
        super().__init__()
        dim, sprite = config.xform_dim or config.dim_z, config.grid.sprite
        self.encoder = GridEncoder(7, dim, (sprite, sprite), (1, 1))
        self.head = _head(config, dim)

    def features(self, codes: Tensor, windows: AnchorWindows, mixed: Tensor) -> Tensor:
        b, t, nl, lh, lw = codes.shape[:5]
        image = repeat(windows.image, "B T Lh Lw C Sy Sx -> B T NL Lh Lw C Sy Sx", NL=nl)
        stacked = rearrange(
            torch.cat([image, mixed], dim=-3), "B T NL Lh Lw C Sy Sx -> (B T NL Lh Lw) C Sy Sx"
        )
        return rearrange(
            self.encoder(stacked),
            "(B T NL Lh Lw) 1 1 1 D -> B T NL Lh Lw D",
            B=b, T=t, NL=nl, Lh=lh, Lw=lw,
        )  # fmt: skip


class AnchorOffsets(_LearnedOffsets):
    """A head on the anchor code itself: no per-slot CNN, many times cheaper than ``conv``."""

    def __init__(self, config: "ModelConfig") -> None:
        super().__init__()
        self.head = _head(config, config.dim_z)

    def features(self, codes: Tensor, windows: AnchorWindows, mixed: Tensor) -> Tensor:
        return codes


class MatchOffsets(nn.Module):
    """Template matching, nothing learned: with matched selection each sprite's softmax-weighted
    best displacement at the anchor (the selection's ``match.offsets``, see
    :func:`marionette.core.soft_match`), mixed by the selection weights; else the displacement
    that best aligns the slot's own soft sprite with the frame
    (:func:`marionette.core.match_offsets`)."""

    def __init__(self, config: "ModelConfig") -> None:
        super().__init__()
        self.temperature = config.match_temperature

    @typed
    def forward(
        self,
        codes: Float[Tensor, "B T NL Lh Lw D"],
        windows: AnchorWindows,
        mixed: Float[Tensor, "B T NL Lh Lw 4 S S"],
        weights: Float[Tensor, "B T NL Lh Lw K"],
        selection: Selection,
    ) -> Offsets:
        if selection.match is not None:
            per_sprite = selection.match.offsets
            offsets = einsum(
                weights, per_sprite, "B T NL Lh Lw K, B T NL Lh Lw K xy -> B T NL Lh Lw xy"
            )
            return Offsets(offsets, None, per_sprite)
        t = codes.shape[1]
        frames = "B T C H W -> (B T) C H W"
        offsets = match_offsets(
            rearrange(windows.frames, frames),
            rearrange(windows.background, frames),
            rearrange(mixed, "B T NL Lh Lw C Sy Sx -> (B T) Lh Lw NL C Sy Sx"),
            self.temperature,
        )
        return Offsets(rearrange(offsets, "(B T) Lh Lw NL xy -> B T NL Lh Lw xy", T=t), None, None)


#: Offset predictors by name (the ``transform_encoder`` setting); each is built from the
#: :class:`ModelConfig` and called as ``predictor(codes, windows, mixed, weights, selection)``.
OFFSET_PREDICTORS: dict[str, type[nn.Module]] = {
    "conv": ConvOffsets,
    "anchor": AnchorOffsets,
    "match": MatchOffsets,
}
