"""What the encoders infer about every slot of every frame, before anything is rendered."""

from dataclasses import dataclass

from ._typing import Float, Tensor, typed

__all__ = ["Encoding"]


@typed
@dataclass(frozen=True)
class Encoding:
    """Per-slot quantities inferred from frames.

    Attributes:
        codes: layer-normalised anchor codes (the object representation, MOC's z_what).
        queries: projected, layer-normalised codes scored against the dictionary.
        presence: presence probability per slot.
        weights: softmax selection weights over the K sprites.
        windows: the soft (weighted) sprite of every slot.
        offsets: local offset (x, y) in units of P (the expected offset in discrete mode).
        offset_weights: (x, y) distributions over the P + 1 integer offsets (discrete mode).
        sprite_offsets: with matched selection and offsets, every sprite's own matched offset
            per slot (the same in every layer unless the selection is ``layered``); ``offsets``
            is their selection-weighted mean.
        sprites, dict_codes: the decoded dictionary and its codes.
        background: canvas under the sprites.
    """

    codes: Float[Tensor, "B T NL Lh Lw D"]
    queries: Float[Tensor, "B T NL Lh Lw D"]
    presence: Float[Tensor, "B T NL Lh Lw"]
    weights: Float[Tensor, "B T NL Lh Lw K"]
    windows: Float[Tensor, "B T NL Lh Lw 4 S S"]
    offsets: Float[Tensor, "B T NL Lh Lw 2"]
    offset_weights: tuple[Float[Tensor, "B T NL Lh Lw Q"], Float[Tensor, "B T NL Lh Lw Q"]] | None
    sprite_offsets: Float[Tensor, "B T NL Lh Lw K 2"] | None
    sprites: Float[Tensor, "K 4 S S"]
    dict_codes: Float[Tensor, "K D"]
    background: Float[Tensor, "B T 3 H W"]
