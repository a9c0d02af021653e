"""Anchor-grid geometry: canvas checks, sprite windows, global positions and footprint boxes.

The canvas (H x W pixels) is cut into an Lh x Lw grid of cells of P x P pixels. The sprite of
anchor (i, j) lives in an S x S window, S = 2P, centred on the cell's centre: the window covers
columns [jP - P/2, jP + 3P/2) and rows [iP - P/2, iP + 3P/2). A local offset s = (s_x, s_y) in
(-1/2, 1/2)^2, in units of P, moves the sprite by s * P pixels, so its global centre is

    x = (j + 1/2 + s_x) * P,    y = (i + 1/2 + s_y) * P.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._typing import Bool, Float, Tensor, typed

__all__ = [
    "Grid",
    "footprint_boxes",
    "global_centers",
    "window_origins",
]


@dataclass(frozen=True)
class Grid:
    """A validated canvas / anchor-grid geometry.

    Args:
        height: canvas height H in pixels.
        width: canvas width W in pixels.
        cell: cell size P in pixels; must be even and divide both H and W.
    """

    height: int
    width: int
    cell: int

    def __post_init__(self) -> None:
        for name, value in (("height", self.height), ("width", self.width), ("cell", self.cell)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.cell % 2:
            raise ValueError(
                f"cell size must be even (sprites are centred with a P/2 margin), got {self.cell}"
            )
        for name, side in (("height", self.height), ("width", self.width)):
            if side % self.cell:
                lower = side - side % self.cell
                raise ValueError(
                    f"canvas {name} must be divisible by the cell size {self.cell}, got {side} "
                    f"(use {lower} or {lower + self.cell}, or another cell size)"
                )

    @classmethod
    def from_layer_size(cls, height: int, width: int, layer_size: int) -> "Grid":
        """Grid with ``layer_size`` anchor rows (the original's ``--layer_size``)."""
        if not isinstance(layer_size, int) or layer_size < 1:
            raise ValueError(f"layer_size must be a positive integer, got {layer_size!r}")
        if height % layer_size:
            raise ValueError(
                f"canvas height must be divisible by layer_size, got height={height}, "
                f"layer_size={layer_size}"
            )
        cell = height // layer_size
        if cell % 2:
            sizes = [n for n in range(1, height + 1) if height % n == 0 and (height // n) % 2 == 0]
            raise ValueError(
                f"the cell size height / layer_size = {height} / {layer_size} = {cell} must be "
                f"even (sprites are centred with a P/2 margin); with height {height} (canvas_size) "
                f"choose layer_size in {sizes}, or a canvas that is a multiple of {2 * layer_size}"
            )
        return cls(height, width, cell)

    @property
    def rows(self) -> int:
        """Anchor rows Lh."""
        return self.height // self.cell

    @property
    def cols(self) -> int:
        """Anchor columns Lw."""
        return self.width // self.cell

    @property
    def sprite(self) -> int:
        """Sprite window side S = 2P."""
        return 2 * self.cell


@typed
def window_origins(grid: Grid, device: torch.device | None = None) -> Float[Tensor, "Lh Lw 2"]:
    """Top-left corner (x, y) in pixels of every anchor's sprite window: (jP - P/2, iP - P/2).

    Example:
        >>> window_origins(Grid(16, 32, 8))[1, 2].tolist()
        [12.0, 4.0]
    """
    p = grid.cell
    ys = torch.arange(grid.rows, device=device, dtype=torch.float32) * p - p / 2
    xs = torch.arange(grid.cols, device=device, dtype=torch.float32) * p - p / 2
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y], dim=-1)


@typed
def global_centers(
    offsets: Float[Tensor, "*batch Lh Lw 2"], grid: Grid
) -> Float[Tensor, "*batch Lh Lw 2"]:
    """Global sprite centres (x, y) in pixels from local offsets (x, y) in units of P.

    x = (j + 1/2 + s_x) P and y = (i + 1/2 + s_y) P.

    Example:
        >>> s = torch.zeros(2, 3, 2); s[1, 2] = torch.tensor([0.25, -0.5])
        >>> global_centers(s, Grid(16, 24, 8))[1, 2].tolist()
        [22.0, 8.0]
    """
    if offsets.shape[-3:-1] != (grid.rows, grid.cols):
        raise ValueError(
            f"offsets must have grid shape ({grid.rows}, {grid.cols}), got {tuple(offsets.shape)}"
        )
    origin = window_origins(grid, offsets.device).to(offsets.dtype) + grid.cell
    return origin + offsets * grid.cell


@typed
def _without_lone_pixels(mask: Bool[Tensor, "*batch S S"]) -> Bool[Tensor, "*batch S S"]:
    """Each ``[..., S, S]`` footprint without its pixels that have no 8-neighbour in it (a
    stray opaque pixel of a learned sprite, often of the background's color, would stretch
    the box), unless nothing else is left (a one-pixel sprite)."""
    s = mask.shape[-1]
    flat = mask.reshape(-1, 1, s, s).float()
    neighbours = F.conv2d(flat, flat.new_ones(1, 1, 3, 3), padding=1) - flat
    kept = mask & (neighbours.reshape(mask.shape) > 0)
    return torch.where(kept.flatten(-2).any(-1)[..., None, None], kept, mask)


@typed
def footprint_boxes(
    alpha: Float[Tensor, "*batch Lh Lw S S"], grid: Grid, threshold: float = 0.5
) -> tuple[Float[Tensor, "*batch Lh Lw 4"], Bool[Tensor, "*batch Lh Lw"]]:
    """Global box (x0, y0, x1, y1) in pixels of each window's alpha footprint.

    ``alpha`` is the placed (already shifted) alpha of every anchor window. The footprint is the
    set of pixels with alpha > ``threshold``, without lone pixels (none of their 8 neighbours
    in it) when it holds more, clipped to the canvas; x1, y1 are exclusive. Slots with an empty
    visible footprint get ``visible = False`` and a zero box.
    """
    if alpha.shape[-1] != grid.sprite:
        raise ValueError(f"alpha windows must be {grid.sprite} px wide, got {alpha.shape[-1]}")
    mask = _without_lone_pixels(alpha > threshold)
    s = grid.sprite
    index = torch.arange(s, device=alpha.device)
    cols = mask.any(dim=-2)  # [..., S] along x
    rows = mask.any(dim=-1)  # [..., S] along y

    def extent(hit: Tensor) -> tuple[Tensor, Tensor]:
        first = torch.where(hit, index, s).amin(dim=-1)
        last = torch.where(hit, index, -1).amax(dim=-1) + 1
        return first.to(alpha.dtype), last.to(alpha.dtype)

    x0, x1 = extent(cols)
    y0, y1 = extent(rows)
    origin = window_origins(grid, alpha.device).to(alpha.dtype)
    boxes = torch.stack(
        [x0 + origin[..., 0], y0 + origin[..., 1], x1 + origin[..., 0], y1 + origin[..., 1]], dim=-1
    )
    limits = boxes.new_tensor([grid.width, grid.height, grid.width, grid.height])
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    visible = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    return torch.where(visible[..., None], boxes, torch.zeros_like(boxes)), visible
