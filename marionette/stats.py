"""What a folder of frames holds: its background, and the size, number, looks and crowding of
the sprites against it. :mod:`marionette.autoconfig` turns these statistics into settings.

Everything is measured on an evenly spread sample of the frames (consecutive pairs for the
scrolling test), deterministically:

- **Background.** The mode color (:func:`~marionette.core.estimate_background_color`), the
  per-pixel mode image (:func:`~marionette.core.estimate_background_image`) and each frame's
  own mode color (:func:`~marionette.core.estimate_frame_colors`). A pixel is foreground where
  its largest channel differs from the background by more than a threshold (10 / 255 above the
  background's own noise). The image, or the frames' own colors, are kept when they explain at
  least 1 % of the pixels more than the color does, whichever explains more (the image: a maze,
  a playfield, a HUD that never moves; the frames' colors: several sceneries, such as a game's
  levels above ground, under ground and under water). The screen *scrolls* when, in at least
  20 % of the consecutive pairs, a horizontal shift of the first frame explains the second at
  least twice as well as no shift (a vertical shift for a screen that scrolls vertically; the
  axis more pairs follow wins); its background is then a learned strip, unless the frames'
  colors are kept (one strip holds one scenery). On a scrolling screen the foreground is what
  moves against the scenery: the pixels that differ from both neighbouring frames once each is
  shifted to follow the scroll (from the columns, or rows, around the match too, so that a
  scroll by a fraction of a pixel is followed).
- **Components.** 8-connected foreground blobs, gaps of one pixel bridged. Specks (fewer than
  3 pixels) are counted apart: single pixels are noise or stars, not sprites.
- **Looks.** Components that share a size (within a pixel), a shape (their masks at 8 x 8
  within 0.15) and a mean color (closer than the foreground threshold: colors that differ as
  much as a sprite from the background are different) are one look: the number of sprites a
  dictionary needs.
- **Crowding.** How many components share a cell of a given size, and how often two
  components' boxes overlap.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .core import estimate_background_color, estimate_background_image, estimate_frame_colors
from .core._typing import Float, Tensor
from .data.frames import FrameSource

__all__ = [
    "FOREGROUND_MARGIN",
    "IMAGE_GAIN",
    "SCENERY_SHARE",
    "SCROLL_SHARE",
    "SPECK_PIXELS",
    "FrameStats",
    "NoSprites",
    "measure",
    "sample_indices",
]

#: The foreground threshold above the background's own noise (max over channels, [0, 1]).
FOREGROUND_MARGIN = 10 / 255
#: Components smaller than this many pixels are specks, not sprites.
SPECK_PIXELS = 3
#: The background image, or the frames' own colors, are kept when they explain this share of
#: the pixels more than the color.
IMAGE_GAIN = 0.01
#: Share of consecutive pairs that must scroll for the screen to count as scrolling.
SCROLL_SHARE = 0.2
#: Above this share of foreground pixels against a static background (color or image), the
#: frames' scenery changes from frame to frame (a long level, several levels) and sprites will
#: draw it: the settings say so. Sprites covered 0.6-5.3 % of the pixels on the suite's screens
#: that stay put, 17.7 % on Riverraid's river.
SCENERY_SHARE = 0.1


class NoSprites(ValueError):
    """The frames hold nothing a sprite model can learn; the message says what to set."""


@dataclass(frozen=True)
class FrameStats:
    """Statistics of a frame sample (see the module docstring).

    Attributes:
        height, width: frame size as measured (after the resize policy).
        frames: frames in the source; sampled: frames measured.
        color: the mode color, RGB in [0, 1]; image: the per-pixel mode image [3, H, W].
        threshold: the foreground threshold used.
        foreground_color, foreground_image, foreground_frame_color: share of pixels that are
            foreground against the color, against the image and against each frame's color.
        scroll_share, vertical_scroll_share: share of consecutive pairs best explained by a
            horizontal (vertical) shift (``nan`` without consecutive frames).
        background: ``"color"``, ``"image"``, ``"frame_color"``, ``"strip"`` or
            ``"strip_vertical"`` (scrolling), by the rules above.
        foreground: share of pixels that are foreground against that background (on a
            scrolling screen: what moves against the scrolled scenery); the components are
            its blobs.
        frame_index, boxes: per component, the sampled frame it lies in (0-based in the
            sample) and its box (x0, y0, x1, y1), exclusive ends, pixels.
        areas: per component, its foreground pixels.
        looks: per component, the index of its look.
        specks: components of fewer than :data:`SPECK_PIXELS` pixels (left out above).
        scenery_looks: on a scrolling screen whose background does not scroll with it
            (``frame_color``), per component of the foreground against that background (the
            scenery the sprites draw, tiles and moving objects alike), the index of its look;
            empty elsewhere (the background holds the scenery, or the components are it).
    """

    height: int
    width: int
    frames: int
    sampled: int
    color: np.ndarray
    image: np.ndarray
    threshold: float
    foreground_color: float
    foreground_image: float
    foreground_frame_color: float
    scroll_share: float
    vertical_scroll_share: float
    background: str
    foreground: float
    frame_index: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    looks: np.ndarray
    specks: int
    scenery_looks: np.ndarray

    @property
    def extents(self) -> np.ndarray:
        """Per component, the larger side of its box (pixels)."""
        return np.maximum(self.boxes[:, 2] - self.boxes[:, 0], self.boxes[:, 3] - self.boxes[:, 1])

    @property
    def num_looks(self) -> int:
        return int(self.looks.max()) + 1 if len(self.looks) else 0

    @property
    def scrolls(self) -> bool:
        """Whether the screen scrolls (along either axis), by :data:`SCROLL_SHARE`."""
        return _scroll_axis(self.scroll_share, self.vertical_scroll_share) is not None

    @property
    def scenery(self) -> float:
        """Share of the pixels that differ from the background where it does not scroll
        (color, image or the frames' own colors): scenery that changes from frame to frame is
        drawn by the sprites. 0 for a strip, which scrolls with the scenery."""
        static = {
            "color": self.foreground_color,
            "image": self.foreground_image,
            "frame_color": self.foreground_frame_color,
        }
        return static.get(self.background, 0.0)

    @property
    def per_frame(self) -> float:
        """Mean components per sampled frame."""
        return len(self.areas) / self.sampled

    def cell_crowding(self, cell: int) -> np.ndarray:
        """Per occupied cell of a ``cell``-pixel grid in each sampled frame, the number of
        component centres in it."""
        if not len(self.areas):
            return np.zeros(0, np.int64)
        centres = (self.boxes[:, :2] + self.boxes[:, 2:]) / 2
        cols = -(-self.width // cell)
        cells = (centres[:, 1] // cell).astype(np.int64) * cols + (centres[:, 0] // cell)
        keys = self.frame_index * (cols * (-(-self.height // cell))) + cells.astype(np.int64)
        return np.unique(keys, return_counts=True)[1]

    @property
    def overlap_share(self) -> float:
        """Share of components whose box overlaps another component's box in the same frame."""
        overlapping = np.zeros(len(self.areas), bool)
        for frame in np.unique(self.frame_index):
            at = np.flatnonzero(self.frame_index == frame)
            b = self.boxes[at]
            x = (b[:, None, 0] < b[None, :, 2]) & (b[None, :, 0] < b[:, None, 2])
            y = (b[:, None, 1] < b[None, :, 3]) & (b[None, :, 1] < b[:, None, 3])
            both = x & y
            np.fill_diagonal(both, False)
            overlapping[at] = both.any(1)
        return float(overlapping.mean()) if len(overlapping) else 0.0


def sample_indices(source: FrameSource, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly over the source (all when it has fewer)."""
    n = len(source)
    if n <= count:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))


def measure(source: FrameSource, count: int = 200) -> FrameStats:
    """Statistics of ``count`` frames spread over ``source`` (see the module docstring).

    Raises:
        NoSprites: the sample has no foreground, or foreground nearly everywhere (noise, or
            frames that share no background).
    """
    picks = sample_indices(source, count)
    frames = source.frames(picks)  # uint8 N 3 H W
    images = frames.float() / 255
    color = estimate_background_color(frames)
    image = estimate_background_image(frames)
    threshold = _threshold(images, image)
    frame_colors = estimate_frame_colors(frames)[..., None, None]
    masks = {
        "color": _foreground(images, color[:, None, None], threshold),
        "image": _foreground(images, image, threshold),
        "frame_color": _foreground(images, frame_colors, threshold),
    }
    shares = {kind: float(mask.float().mean()) for kind, mask in masks.items()}
    background = _static_background(shares)
    mask = masks[background]
    scenery_looks = np.zeros(0, np.int64)
    scroll = [_scroll_share(source, picks, images, vertical) for vertical in (False, True)]
    vertical = _scroll_axis(*scroll)
    if vertical is not None:
        if background == "frame_color":  # the sprites draw the scenery as well
            scenery_looks = _components(images, mask, threshold)[3]
        else:
            background = "strip_vertical" if vertical else "strip"
        mask = _moving_foreground(source, picks, images, threshold, vertical)
    where = f"{len(picks)} frames of {source.height} x {source.width} (H x W) sampled"
    if not mask.any():
        raise NoSprites(
            f"no foreground: in {where}, no pixel differs from the background by more than "
            f"{threshold * 255:.0f} / 255 in any channel. Frames of one color have nothing to "
            f"learn; for sprites that faint, give the settings by hand (--preset, or "
            f"--layer-size, --num-sprites and --background)"
        )
    share = float(mask.float().mean())
    if share > 0.5:
        raise NoSprites(
            f"foreground covers {share:.0%} of the pixels of {where} (against the "
            f"{background} background): these frames share no background that sprites move "
            f"over (noise, or unrelated pictures). Give the settings by hand (--preset, or "
            f"--layer-size, --num-sprites and --background) if they are sprite frames"
        )
    frame_index, boxes, areas, looks, specks = _components(images, mask, threshold)
    if not len(areas):
        raise NoSprites(
            f"the foreground of {where} is only specks ({specks} blobs of fewer than "
            f"{SPECK_PIXELS} pixels: noise or stars, not sprites). Give the settings by hand "
            f"(--layer-size, --num-sprites) if these are your sprites"
        )
    return FrameStats(
        height=source.height,
        width=source.width,
        frames=len(source),
        sampled=len(picks),
        color=color.numpy(),
        image=image.numpy(),
        threshold=threshold,
        foreground_color=shares["color"],
        foreground_image=shares["image"],
        foreground_frame_color=shares["frame_color"],
        scroll_share=scroll[0],
        vertical_scroll_share=scroll[1],
        background=background,
        foreground=share,
        frame_index=frame_index,
        boxes=boxes,
        areas=areas,
        looks=looks,
        specks=specks,
        scenery_looks=scenery_looks,
    )


def _static_background(shares: dict[str, float]) -> str:
    """The color, unless the image or the frames' own colors leave at least
    :data:`IMAGE_GAIN` fewer of the pixels as foreground; then whichever of these two leaves
    fewer (``shares``: the foreground share against each)."""
    kind = min(("image", "frame_color"), key=shares.__getitem__)
    return kind if shares["color"] - shares[kind] >= IMAGE_GAIN else "color"


def _foreground(images: torch.Tensor, background: torch.Tensor, threshold: float):
    return (images - background).abs().amax(dim=1) > threshold  # N H W


def _threshold(images: torch.Tensor, image: torch.Tensor) -> float:
    """:data:`FOREGROUND_MARGIN` above the background's noise: the 90th percentile of the
    pixels' distance to the per-pixel mode, among those closer than the margin itself."""
    distance = (images - image).abs().amax(dim=1).flatten()
    near = distance[distance < FOREGROUND_MARGIN]
    noise = float(torch.quantile(near[:1_000_000], 0.9)) if len(near) else 0.0
    return FOREGROUND_MARGIN + noise


def _successors(source: FrameSource, picks: np.ndarray, step: int) -> np.ndarray:
    """Per sampled frame, whether the frame ``step`` away (+1 next, -1 previous) is in its clip
    (a clip's frames are consecutive)."""
    other = picks + step
    keep = (other >= 0) & (other < len(source))
    keep[keep] &= source.clips[other[keep]] == source.clips[picks[keep]]
    return keep


def _shift_errors(a: Float[Tensor, "N 3 H W"], b: Float[Tensor, "N 3 H W"]) -> tuple[Tensor, int]:
    """Mean absolute error of b against a shifted horizontally, b[x] = a[x + shift], per pair
    and shift in [-reach, reach] (reach = W / 8), over the columns both cover; and reach."""
    width = a.shape[-1]
    reach = max(1, width // 8)
    errors = []
    for shift in range(-reach, reach + 1):
        lo, hi = max(0, -shift), min(width, width - shift)
        errors.append((b[..., lo:hi] - a[..., lo + shift : hi + shift]).abs().mean(dim=(1, 2, 3)))
    return torch.stack(errors, 1), reach  # pairs x shifts


def _scrolls(errors: Tensor, reach: int) -> Tensor:
    """Per pair, whether a shift explains it at least twice as well as no shift."""
    still, best = errors[:, reach], errors.min(1).values
    return (errors.argmin(1) != reach) & (best < 0.5 * still) & (still > 1e-3)


def _scroll_axis(horizontal: float, vertical: float) -> bool | None:
    """The axis the screen scrolls along (True: vertical), the one more consecutive pairs
    follow (ties: horizontal), when that share reaches :data:`SCROLL_SHARE`; None when the
    screen does not scroll. A ``nan`` share (no consecutive frames) counts as 0."""
    shares = np.nan_to_num([horizontal, vertical])
    if shares.max() < SCROLL_SHARE:
        return None
    return bool(shares[1] > shares[0])


def _along(images: Tensor, vertical: bool) -> Tensor:
    """``images`` [..., H, W] with the scrolling axis last: rows and columns swapped for a
    vertical scroll (its own inverse)."""
    return images.transpose(-1, -2) if vertical else images


def _read(source: FrameSource, indices: np.ndarray, vertical: bool) -> Tensor:
    """Frames ``indices`` of ``source`` in [0, 1], the scrolling axis last."""
    return _along(source.frames(indices).float() / 255, vertical)


def _scroll_share(
    source: FrameSource, picks: np.ndarray, images: Float[Tensor, "N 3 H W"], vertical: bool
) -> float:
    """Share of (sampled frame, next frame of its clip) pairs in which a horizontal shift of
    up to W / 8 (a vertical one of up to H / 8) explains the next frame at least twice as well
    as no shift (``nan`` when no sampled frame has a successor). ``images``: the sampled frames
    ``picks``, in [0, 1]."""
    keep = _successors(source, picks, 1)
    if not keep.any():
        return float("nan")
    a = _along(images[torch.from_numpy(keep)], vertical)
    return float(
        _scrolls(*_shift_errors(a, _read(source, picks[keep] + 1, vertical))).float().mean()
    )


def _moving_foreground(
    source: FrameSource,
    picks: np.ndarray,
    images: Float[Tensor, "N 3 H W"],
    threshold: float,
    vertical: bool,
) -> Tensor:
    """Foreground of a scrolling screen: the pixels of each sampled frame that differ (by more
    than ``threshold``) from both its neighbours in the clip once each is shifted to follow the
    scroll (its best horizontal shift), outside the range of the three columns around the
    match (a scroll by a fraction of a pixel, as in frames resized from the console's screen,
    blends neighbouring columns). The scrolled scenery matches them, and
    so does the place a sprite has just left (the other neighbour no longer shows it there);
    what moves against the scenery differs from both. Frames at either end of a clip, with one
    neighbour, have no foreground (one test alone keeps the sprite's trail), unless no sampled
    frame has two: then one decides. Where a shift uncovers columns, the other test alone
    decides them. A ``vertical`` scroll is followed along the rows the same way."""
    images = _along(images, vertical)
    n, _, height, width = images.shape
    near = {step: _successors(source, picks, step) for step in (-1, 1)}
    inside = near[-1] & near[1]
    uses = {step: inside for step in near} if inside.any() else near
    verdict = torch.ones(n, height, width, dtype=torch.bool)
    covered = torch.zeros(n, height, width, dtype=torch.bool)
    for step, keep in uses.items():
        if not keep.any():
            continue
        at = torch.from_numpy(keep)
        b, other = images[at], _read(source, picks[keep] + step, vertical)
        errors, reach = _shift_errors(other, b)
        differs = torch.ones_like(verdict[at])
        seen = torch.zeros_like(covered[at])
        # each column against its scrolled match and the match's two neighbours (edges
        # repeated): a scroll by a fraction of a pixel blends neighbouring columns
        around = F.pad(other, (1, 1, 0, 0), mode="replicate").unfold(-1, 3, 1)  # N 3 H W 3
        low, high = around.amin(-1), around.amax(-1)
        for i, shift in enumerate((errors.argmin(1) - reach).tolist()):
            lo, hi = max(0, -shift), min(width, width - shift)
            value = b[i, :, :, lo:hi]
            gap = torch.maximum(
                low[i, :, :, lo + shift : hi + shift] - value,
                value - high[i, :, :, lo + shift : hi + shift],
            )
            differs[i, :, lo:hi] = gap.amax(dim=0) > threshold
            seen[i, :, lo:hi] = True
        verdict[at] &= differs | ~seen
        covered[at] |= seen
    return _along(verdict & covered, vertical)


def _components(images: torch.Tensor, mask: torch.Tensor, threshold: float):
    """Per component (8-connected, 1 px gaps bridged, specks apart): its frame, box, area and
    look index; and the number of specks."""
    frame_index, boxes, areas, descriptors = [], [], [], []
    specks = 0
    eight = np.ones((3, 3), bool)
    for n, frame_mask in enumerate(mask.numpy()):
        bridged, _ = ndimage.label(ndimage.binary_dilation(frame_mask, eight), eight)
        labels = bridged * frame_mask
        for label, found in enumerate(ndimage.find_objects(labels), start=1):
            if found is None:
                continue
            alpha = labels[found] == label
            area = int(alpha.sum())
            if area < SPECK_PIXELS:
                specks += 1
                continue
            ys, xs = found
            frame_index.append(n)
            boxes.append((xs.start, ys.start, xs.stop, ys.stop))
            areas.append(area)
            crop = images[n, :, ys, xs]
            colour = (crop * torch.from_numpy(alpha)).sum((1, 2)) / area
            shape = F.interpolate(
                torch.from_numpy(alpha).float()[None, None], (8, 8), mode="area"
            ).flatten()
            descriptors.append((alpha.shape, shape.numpy(), colour.numpy()))
    looks = _looks(descriptors, threshold)
    as_array = np.asarray(boxes, np.int64).reshape(-1, 4)
    return np.asarray(frame_index, np.int64), as_array, np.asarray(areas, np.int64), looks, specks


def _looks(descriptors, tolerance: float) -> np.ndarray:
    """Greedy grouping: each component joins the first look within a pixel in size, 0.15 in
    mean shape difference and ``tolerance`` in color, else starts a new look."""
    n = len(descriptors)
    sizes, shapes, colours = np.zeros((n, 2)), np.zeros((n, 64)), np.zeros((n, 3))
    looks, count = np.zeros(n, np.int64), 0
    for i, (size, shape, colour) in enumerate(descriptors):
        near = np.abs(sizes[:count] - size).max(1) <= 1
        near &= np.abs(colours[:count] - colour).max(1) <= tolerance
        near &= np.abs(shapes[:count] - shape).mean(1) <= 0.15
        found = np.flatnonzero(near)
        if len(found):
            looks[i] = found[0]
        else:
            sizes[count], shapes[count], colours[count] = size, shape, colour
            looks[i], count = count, count + 1
    return looks
