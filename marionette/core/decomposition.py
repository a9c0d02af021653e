"""The slot description every renderer draws: which sprite, where, how present, in which depth."""

from dataclasses import dataclass, replace

from einops import rearrange

from ._typing import Bool, Float, Int64, Tensor, typed
from .compositing import GATING_MODES
from .geometry import Grid, footprint_boxes, global_centers
from .selection import gather_sprites
from .shifts import shift_bilinear, shift_discrete

__all__ = ["Decomposition", "shift_slots", "slot_sprites"]


@typed
@dataclass(frozen=True)
class Decomposition:
    """An explicit, editable description of frames: the sprite, offset and presence of every slot.

    Every slot is one anchor (i, j) of one depth layer; its sprite window is centred on the cell's
    centre and moved by ``offsets * P`` pixels. Edit a decomposition (swap sprites, change ids,
    move offsets, zero a layer's presence) and :func:`marionette.render` it.

    Attributes:
        sprites: a sprite table, RGBA in [0, 1]: the dictionary, or with ``sprite_ids=None`` one
            sprite per slot in slot order (the soft mixtures a training forward renders).
        sprite_ids: the table row of every slot (None: row = slot index).
        presence: per-slot presence in [0, 1] (0 or 1 in a hard decomposition).
        offsets: local offset (x, y) per slot in units of the cell size P, in (-1/2, 1/2).
        background: the canvas under all sprites.
        plane_order: back-to-front order of the NL * 4 planes (``layer * 4 + parity group``).
        cell: the cell size P in pixels.
        gating: how presence scales a sprite (see :func:`marionette.core.gate_presence`).
        offset_weights: (x, y) distributions over the P + 1 integer offsets of the discrete
            shift; None for the bilinear shift. ``offsets`` is then their expectation.
    """

    sprites: Float[Tensor, "K 4 S S"]
    sprite_ids: Int64[Tensor, "B T NL Lh Lw"] | None
    presence: Float[Tensor, "B T NL Lh Lw"]
    offsets: Float[Tensor, "B T NL Lh Lw 2"]
    background: Float[Tensor, "B T 3 H W"]
    plane_order: Int64[Tensor, " NL*4"]
    cell: int
    gating: str = "premultiplied"
    offset_weights: (
        tuple[Float[Tensor, "B T NL Lh Lw Q"], Float[Tensor, "B T NL Lh Lw Q"]] | None
    ) = None

    def __post_init__(self) -> None:
        if self.gating not in GATING_MODES:
            raise ValueError(f"gating must be one of {GATING_MODES}, got {self.gating!r}")
        grid = self.grid  # raises on a canvas the cell does not divide
        if self.sprites.shape[-1] != grid.sprite:
            raise ValueError(
                f"sprites must be {grid.sprite} px (2 x cell {self.cell}), got "
                f"{self.sprites.shape[-1]}"
            )
        if self.presence.shape[-2:] != (grid.rows, grid.cols):
            raise ValueError(
                f"slots must form the {grid.rows} x {grid.cols} grid of a {grid.height} x "
                f"{grid.width} canvas with {self.cell} px cells, got "
                f"{tuple(self.presence.shape[-2:])}"
            )
        if self.sprite_ids is None and self.sprites.shape[0] != self.presence.numel():
            raise ValueError(
                f"without sprite_ids the table needs one sprite per slot "
                f"({self.presence.numel()}), got {self.sprites.shape[0]}"
            )

    @property
    def grid(self) -> Grid:
        """Canvas and anchor-grid geometry."""
        return Grid(self.background.shape[-2], self.background.shape[-1], self.cell)

    def replace(self, **changes) -> "Decomposition":
        """A copy with some fields replaced (the dataclass is frozen)."""
        return replace(self, **changes)

    def centers(self) -> Float[Tensor, "B T NL Lh Lw 2"]:
        """Global sprite centres (x, y) in pixels."""
        return global_centers(self.offsets, self.grid)

    def boxes(
        self, threshold: float = 0.5
    ) -> tuple[Float[Tensor, "B T NL Lh Lw 4"], Bool[Tensor, "B T NL Lh Lw"]]:
        """Global alpha-footprint boxes (x0, y0, x1, y1) in pixels and whether each is visible."""
        return footprint_boxes(shift_slots(self)[..., 3, :, :], self.grid, threshold)


@typed
def slot_sprites(decomposition: Decomposition) -> Float[Tensor, "B T NL Lh Lw 4 S S"]:
    """The sprite of every slot, before shifting: ``sprites[sprite_ids]``, or the table itself
    when it holds one sprite per slot."""
    d = decomposition
    if d.sprite_ids is None:
        return d.sprites.reshape(*d.presence.shape, *d.sprites.shape[1:])
    return gather_sprites(d.sprite_ids, d.sprites)


@typed
def shift_slots(decomposition: Decomposition) -> Float[Tensor, "B T NL Lh Lw 4 S S"]:
    """Every slot's sprite moved by its offset inside its window: bilinear
    (:func:`marionette.core.shift_bilinear`), or with ``offset_weights`` the discrete shift
    (:func:`marionette.core.shift_discrete`). Not yet gated by presence."""
    d = decomposition
    slots = "B T NL Lh Lw ... -> (B T NL Lh Lw) ..."
    flat = rearrange(slot_sprites(d), slots)
    if d.offset_weights is None:
        shifted = shift_bilinear(flat, rearrange(d.offsets, slots))
    else:
        shifted = shift_discrete(flat, *(rearrange(w, slots) for w in d.offset_weights))
    b, t, nl, lh, lw = d.presence.shape
    return rearrange(
        shifted, "(B T NL Lh Lw) C Sy Sx -> B T NL Lh Lw C Sy Sx", B=b, T=t, NL=nl, Lh=lh, Lw=lw
    )
