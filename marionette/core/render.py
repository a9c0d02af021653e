"""Rendering: from per-slot sprites, presence and offsets to frames; editable decompositions."""

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property

from einops import rearrange

from ._typing import Bool, Float, Int64, Tensor, check_range, typed
from .compositing import composite_layers, gate_presence
from .fused import render_fused, resolve_renderer
from .geometry import Grid, footprint_boxes, global_centers
from .placement import place_sprites
from .selection import gather_sprites
from .shifts import shift_bilinear, shift_discrete

__all__ = [
    "Decomposition",
    "Rendering",
    "render",
    "render_decomposition",
    "render_slots",
    "render_windows",
]


@typed
@dataclass(frozen=True, eq=False)
class Rendering:
    """What rendering produces: the frames, and the pieces that explain them.

    Attributes:
        reconstruction: composited frames in [0, 1].
        pieces: returns (planes, alpha); called once, on first access of either (the fused
            kernel writes no planes, so they are rendered by the reference path only if asked).
    """

    reconstruction: Float[Tensor, "B T 3 H W"]
    pieces: Callable[[], tuple[Tensor, Tensor]] = field(repr=False)

    @cached_property
    def _pieces(self) -> tuple[Tensor, Tensor]:
        return self.pieces()

    @property
    def planes(self) -> Float[Tensor, "B T NL G 4 H W"]:
        """Placed, presence-gated RGBA planes, one per (layer, parity group)."""
        return self._pieces[0]

    @property
    def alpha(self) -> Float[Tensor, "B T NL Lh Lw S S"]:
        """Every slot's placed (shifted, not presence-gated) alpha, in window coordinates."""
        return self._pieces[1]


@typed
def render_windows(
    windows: Float[Tensor, "B T NL Lh Lw 4 S S"],
    presence: Float[Tensor, "B T NL Lh Lw"],
    background: Float[Tensor, "B T 3 H W"],
    order: Int64[Tensor, " N"],
    grid: Grid,
    *,
    offsets: Float[Tensor, "B T NL Lh Lw 2"] | None = None,
    offset_weights: tuple[Float[Tensor, "B T NL Lh Lw Q"], Float[Tensor, "B T NL Lh Lw Q"]]
    | None = None,
    gating: str = "premultiplied",
) -> Rendering:
    """Shift every slot's sprite window, gate it by presence, place it and composite all planes.

    Exactly one of ``offsets`` (bilinear spatial transformer, (x, y) in units of P) and
    ``offset_weights`` (distributions over the P + 1 integer offsets per axis, (x, y)) is given.
    """
    _check_offsets(offsets, offset_weights)
    b, t, nl, lh, lw = presence.shape
    flat = rearrange(windows, "B T NL Lh Lw C Sy Sx -> (B T NL Lh Lw) C Sy Sx")
    if offsets is not None:
        shifted = shift_bilinear(flat, rearrange(offsets, "B T NL Lh Lw xy -> (B T NL Lh Lw) xy"))
    else:
        wx, wy = (rearrange(w, "B T NL Lh Lw Q -> (B T NL Lh Lw) Q") for w in offset_weights)
        shifted = shift_discrete(flat, wx, wy)
    shifted = rearrange(
        shifted, "(BT NL Lh Lw) C Sy Sx -> BT NL Lh Lw C Sy Sx", NL=nl, Lh=lh, Lw=lw
    )
    gated = gate_presence(shifted, rearrange(presence, "B T NL Lh Lw -> (B T) NL Lh Lw"), gating)
    planes = rearrange(place_sprites(gated, grid), "(B T) NL G C H W -> B T NL G C H W", B=b)
    reconstruction = composite_layers(planes, background, order)
    alpha = rearrange(shifted[:, :, :, :, 3], "(B T) NL Lh Lw Sy Sx -> B T NL Lh Lw Sy Sx", B=b)
    return Rendering(reconstruction, lambda: (planes, alpha))


def _check_offsets(offsets: Tensor | None, offset_weights: tuple | None) -> None:
    if (offsets is None) == (offset_weights is None):
        raise ValueError("give exactly one of offsets and offset_weights")


@typed
def render_slots(
    table: Float[Tensor, "M 4 S S"],
    sprite_ids: Int64[Tensor, "B T NL Lh Lw"] | None,
    presence: Float[Tensor, "B T NL Lh Lw"],
    background: Float[Tensor, "B T 3 H W"],
    order: Int64[Tensor, " N"],
    grid: Grid,
    *,
    offsets: Float[Tensor, "B T NL Lh Lw 2"] | None = None,
    offset_weights: tuple[Float[Tensor, "B T NL Lh Lw Q"], Float[Tensor, "B T NL Lh Lw Q"]]
    | None = None,
    gating: str = "premultiplied",
    renderer: str = "auto",
) -> Rendering:
    """Render slots whose sprites are ``table[sprite_ids]`` (``sprite_ids=None``: the table holds
    one sprite per slot, in slot order), with the fused kernel or the PyTorch path.

    ``renderer`` (see :data:`marionette.core.fused.RENDERERS`) picks the fused Triton kernel
    (:func:`marionette.core.fused.render_fused`; bilinear ``offsets`` only) or
    :func:`render_windows`. Both give the same frames; the fused rendering computes its planes
    and alphas with the PyTorch path only when they are read.
    """

    def windows() -> Tensor:
        if sprite_ids is None:
            return table.reshape(*presence.shape, *table.shape[1:])
        return gather_sprites(sprite_ids, table)

    def reference() -> Rendering:
        return render_windows(
            windows(),
            presence,
            background,
            order,
            grid,
            offsets=offsets,
            offset_weights=offset_weights,
            gating=gating,
        )

    _check_offsets(offsets, offset_weights)
    if resolve_renderer(renderer, table.device) == "torch":
        return reference()
    if offset_weights is not None:
        if renderer == "triton":
            raise ValueError(
                "the fused renderer draws bilinear offsets only; discrete offset weights "
                "(no_spatial_transformer) need renderer='torch' or 'auto'"
            )
        return reference()
    frames = render_fused(table, sprite_ids, presence, offsets, background, order, grid, gating)

    def pieces() -> tuple[Tensor, Tensor]:
        rendering = reference()
        return rendering.planes, rendering.alpha

    return Rendering(frames, pieces)


@typed
@dataclass(frozen=True)
class Decomposition:
    """An explicit, editable description of frames: which sprite sits where, in which layer.

    Edit it (swap sprites, change ids, move offsets, zero a layer's presence) and call
    :func:`render`. Every slot is one anchor (i, j) of one depth layer; its sprite window is centred
    on the cell's centre and moved by ``offsets * P`` pixels.

    Attributes:
        sprites: the dictionary, RGBA in [0, 1].
        sprite_ids: dictionary index per slot.
        presence: per-slot presence in [0, 1] (0 or 1 after a hard decomposition).
        offsets: local offset (x, y) per slot in units of the cell size P, in (-1/2, 1/2).
        background: the canvas under all sprites.
        plane_order: back-to-front order of the NL * 4 planes (``layer * 4 + parity group``).
        cell: the cell size P in pixels.
        gating: how presence scales a sprite (see :func:`gate_presence`).
    """

    sprites: Float[Tensor, "K 4 S S"]
    sprite_ids: Int64[Tensor, "B T NL Lh Lw"]
    presence: Float[Tensor, "B T NL Lh Lw"]
    offsets: Float[Tensor, "B T NL Lh Lw 2"]
    background: Float[Tensor, "B T 3 H W"]
    plane_order: Int64[Tensor, " N"]
    cell: int
    gating: str = "premultiplied"

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
        return footprint_boxes(render_decomposition(self, "torch").alpha, self.grid, threshold)


@typed
def render_decomposition(decomposition: Decomposition, renderer: str = "auto") -> Rendering:
    """Render a decomposition, keeping the planes and placed alphas (see :func:`render`)."""
    d = decomposition
    check_range(d.presence, "presence", 0.0, 1.0)
    if d.grid.sprite != d.sprites.shape[-1]:
        raise ValueError(
            f"sprites must be {d.grid.sprite} px (2 x cell {d.cell}), got {d.sprites.shape[-1]}"
        )
    return render_slots(
        d.sprites,
        d.sprite_ids,
        d.presence,
        d.background,
        d.plane_order,
        d.grid,
        offsets=d.offsets,
        gating=d.gating,
        renderer=renderer,
    )


@typed
def render(decomposition: Decomposition, renderer: str = "auto") -> Float[Tensor, "B T 3 H W"]:
    """Frames described by a decomposition: the sprite of every slot, shifted by its offset, gated
    by its presence, placed in its window, composited back to front over the background.

    Rendering the decomposition that :meth:`MarioNette.decompose` returns reproduces the model's
    hard reconstruction. ``renderer``: see :func:`render_slots`.
    """
    return render_decomposition(decomposition, renderer).reconstruction
