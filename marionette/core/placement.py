"""Placement of per-anchor sprite windows onto full-canvas planes, one plane per parity group."""

from dataclasses import dataclass
from functools import cached_property

import torch.nn.functional as F
from einops import rearrange

from ._typing import Float, Tensor, typed
from .geometry import Grid

__all__ = ["PARITY_GROUPS", "AnchorWindows", "extract_windows", "place_sprites"]

#: (row parity, column parity) of the anchors in each of the 4 planes of a layer, in the
#: original's order: (even, even), (odd, odd), (odd row, even column), (even row, odd column).
PARITY_GROUPS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (1, 0), (0, 1))


@typed
def place_sprites(
    windows: Float[Tensor, "*batch Lh Lw C S S"], grid: Grid
) -> Float[Tensor, "*batch 4 C H W"]:
    """Paste every anchor's S x S window at rows [iP - P/2, iP + 3P/2) and the same columns.

    Anchors of one parity group sit 2P = S apart, so their windows tile the canvas edge to edge
    without overlap: each group becomes one canvas-sized plane, built by tiling its windows and
    shifting the tile by (rP - P/2, cP - P/2) (negative padding crops what leaves the canvas).
    Neighbouring anchors always fall in different groups. Plane g holds group ``PARITY_GROUPS[g]``.
    """
    if windows.shape[-2:] != (grid.sprite, grid.sprite) or windows.shape[-5:-3] != (
        grid.rows,
        grid.cols,
    ):
        raise ValueError(
            f"windows must have shape [..., {grid.rows}, {grid.cols}, C, {grid.sprite}, "
            f"{grid.sprite}] for this grid, got {tuple(windows.shape)}"
        )
    p = grid.cell
    # an even number of anchor rows and columns (the added anchors are empty and land outside
    # the canvas; padding by nothing would still copy), so that the parity groups are a
    # reshape; unbind, not indexing: its backward stacks the groups' gradients instead of
    # zero-filling a gradient of all windows per group
    odd = (grid.rows % 2, grid.cols % 2)
    even = F.pad(windows, (0, 0, 0, 0, 0, 0, 0, odd[1], 0, odd[0])) if any(odd) else windows
    tiles = rearrange(even, "... (Gh ry) (Gw rx) C Sy Sx -> ry rx ... C (Gh Sy) (Gw Sx)",
                      ry=2, rx=2)  # fmt: skip
    groups = [row.unbind(0) for row in tiles.unbind(0)]
    height, width = tiles.shape[-2:]
    planes = []
    for row_parity, col_parity in PARITY_GROUPS:
        top, left = row_parity * p - p // 2, col_parity * p - p // 2
        bottom, right = grid.height - top - height, grid.width - left - width
        planes.append(F.pad(groups[row_parity][col_parity], (left, right, top, bottom)))
    return rearrange(planes, "G ... C H W -> ... G C H W")


@typed
def extract_windows(
    images: Float[Tensor, "*batch C H W"], grid: Grid
) -> Float[Tensor, "*batch Lh Lw C S S"]:
    """Cut every anchor's S x S window out of the images, zero outside the canvas.

    Window (i, j) covers rows [iP - P/2, iP + 3P/2) and the same columns: the region that
    :func:`place_sprites` writes the sprite of anchor (i, j) to.
    """
    if images.shape[-2:] != (grid.height, grid.width):
        raise ValueError(
            f"images must be {grid.height} x {grid.width} for this grid, got "
            f"{tuple(images.shape[-2:])}"
        )
    half = grid.cell // 2
    padded = F.pad(images, (half, half, half, half))
    windows = padded.unfold(-2, grid.sprite, grid.cell).unfold(-2, grid.sprite, grid.cell)
    return rearrange(windows, "... C Lh Lw Sy Sx -> ... Lh Lw C Sy Sx")


@typed
@dataclass(frozen=True, eq=False)
class AnchorWindows:
    """The frames and the background under the sprites, with the frames' window around every
    anchor cut out on first use (only the per-slot transform encoder looks at it; matched
    selection and offsets correlate the whole frames).

    Attributes:
        frames: the frames being explained.
        background: the canvas under the sprites for those frames.
        grid: the anchor grid.
    """

    frames: Float[Tensor, "B T 3 H W"]
    background: Float[Tensor, "B T 3 H W"]
    grid: Grid

    @cached_property
    def image(self) -> Float[Tensor, "B T Lh Lw 3 S S"]:
        """The frames' window around every anchor."""
        return extract_windows(self.frames, self.grid)
