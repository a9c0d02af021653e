"""Predicted objects: the present slots of a model's hard decomposition, with global boxes.

Neighbouring anchors' windows overlap (an anchor places its sprite up to P/2 past its cell), so
two slots can draw one object: the same sprite, or two looks over each other, at nearly the
same place (the more confident one hides the other). As in object detection, such repeats are
suppressed: of two objects of a frame whose boxes overlap by more than :data:`OVERLAP` (IoU),
the less present one is dropped (:func:`suppress_overlaps`).
"""

from dataclasses import dataclass, replace

import numpy as np
import torch
from jaxtyping import Bool, Float, Int64, Integer, Real
from torch import Tensor

from ..core import (
    CODE_KINDS,
    PARITY_GROUPS,
    Grid,
    MarioNette,
    footprint_boxes,
    plane_order_for,
    psnr_of_mse,
    typed,
)
from ..data import FrameSource
from .boxes import box_iou

__all__ = ["OVERLAP", "ObjectTable", "collect_objects", "slot_segmentation", "suppress_overlaps"]

#: Two objects of a frame whose boxes overlap by more than this IoU are one object drawn twice.
OVERLAP = 0.5


@dataclass
class ObjectTable:
    """One row per predicted object (a present slot), in data order (frame, layer, row, col).

    Attributes:
        frame: index of the frame in its source; ``names``, ``clips``, ``times`` per frame.
        layer, row, col: the slot; ``sprite``: its dictionary entry.
        presence: presence probability (the detection confidence).
        boxes: global alpha-footprint box (x0, y0, x1, y1) in pixels.
        centers: global sprite centre (x, y) in pixels.
        codes: the object's code (see ``code``).
        size: frame (H, W).
        dictionary: the model's sprites as drawn, RGBA float32 [K, 4, S, S].
        psnr: PSNR in dB of the frames' reconstructions, over all their pixels: ``soft``,
            ``hard`` (the decomposition the objects come from) and ``background`` alone.
        suppressed: present, visible slots left out as repeats (:func:`suppress_overlaps`).
    """

    frame: np.ndarray
    layer: np.ndarray
    row: np.ndarray
    col: np.ndarray
    sprite: np.ndarray
    presence: np.ndarray
    boxes: np.ndarray
    centers: np.ndarray
    codes: np.ndarray
    names: list[str]
    clips: np.ndarray
    times: np.ndarray
    size: tuple[int, int]
    code: str
    dictionary: np.ndarray
    psnr: dict[str, float]
    suppressed: int = 0

    #: The attributes with one entry per object (the others are per frame or per table).
    PER_OBJECT = ("frame", "layer", "row", "col", "sprite", "presence", "boxes", "centers", "codes")

    def __len__(self) -> int:
        return len(self.frame)

    def select(self, rows: np.ndarray) -> "ObjectTable":
        """The table of the objects ``rows`` (indices or a boolean mask), in their order."""
        return replace(self, **{name: getattr(self, name)[rows] for name in self.PER_OBJECT})

    def of_frame(self, index: int) -> np.ndarray:
        """Row indices of one frame's objects (rows are sorted by frame)."""
        lo, hi = np.searchsorted(self.frame, [index, index + 1])
        return np.arange(lo, hi)


@typed
def slot_segmentation(
    planes: Float[Tensor, "B NL G 4 H W"],
    order: Int64[Tensor, " N"],
    grid: Grid,
    threshold: float = 0.5,
) -> Int64[Tensor, "B H W"]:
    """Which slot is visible at each pixel: ``[B, NL, G, 4, H, W]`` planes -> ``[B, H, W]`` ids.

    The id is ``layer * Lh * Lw + i * Lw + j`` (-1 where no plane's alpha exceeds
    ``threshold``). Planes are visited back to front in ``order``; inside a parity
    group (r, c) the window of anchor (i, j) covers rows [iP - P/2, iP + 3P/2), so a pixel's
    anchor is i = r + 2 floor((y - rP + P/2) / 2P), and likewise for j.
    """
    batch, nl, groups = planes.shape[:3]
    p = grid.cell
    ys = torch.arange(grid.height, device=planes.device)[:, None]
    xs = torch.arange(grid.width, device=planes.device)[None, :]
    segments = torch.full((batch, grid.height, grid.width), -1, device=planes.device)
    for index in order.tolist():
        layer, group = divmod(index, groups)
        r, c = PARITY_GROUPS[group]
        i = r + 2 * torch.div(ys - r * p + p // 2, 2 * p, rounding_mode="floor")
        j = c + 2 * torch.div(xs - c * p + p // 2, 2 * p, rounding_mode="floor")
        ids = layer * grid.rows * grid.cols + i * grid.cols + j
        visible = planes[:, layer, group, 3] > threshold
        segments = torch.where(visible, ids.expand_as(segments), segments)
    return segments


@typed
def suppress_overlaps(
    boxes: Real[np.ndarray, "N 4"],
    presence: Real[np.ndarray, " N"],
    frame: Integer[np.ndarray, " N"],
    overlap: float = OVERLAP,
) -> Bool[np.ndarray, " N"]:
    """Greedy non-maximum suppression per frame: the objects by falling presence (ties: the
    earlier row first), each kept unless its box's IoU with a kept box of its frame exceeds
    ``overlap``. ``boxes`` are (x0, y0, x1, y1) in pixels. Returns the kept mask."""
    keep = np.zeros(len(frame), bool)
    order = np.lexsort((-np.asarray(presence, np.float64), frame))
    starts = np.flatnonzero(np.diff(frame[order])) + 1
    for rows in np.split(order, starts):
        clash = box_iou(boxes[rows], boxes[rows]) > overlap
        kept = np.zeros(len(rows), bool)
        for i in range(len(rows)):
            kept[i] = not (clash[i, :i] & kept[:i]).any()
        keep[rows] = kept
    return keep


#: The reconstructions whose PSNR :func:`collect_objects` measures.
RECONSTRUCTIONS = ("soft", "hard", "background")


@torch.no_grad()
def collect_objects(
    model: MarioNette,
    frames: FrameSource,
    code: str = "codes",
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    threshold: float = 0.5,
    segment: bool = False,
    overlap: float | None = OVERLAP,
) -> tuple[ObjectTable, np.ndarray | None]:
    """Run the model on every frame and keep the slots with presence > ``threshold`` whose
    sprite is visible (some alpha > 0.5), less the repeats that :func:`suppress_overlaps`
    finds at ``overlap`` (None keeps every slot); measure the reconstructions' PSNR on the way.

    Boxes are the footprint of the slot's alpha (> 0.5) at its global position, in pixels.
    With ``segment`` also returns the visible-slot id per pixel ``[N, H, W]`` (-1: background).
    """
    if code not in CODE_KINDS:
        raise ValueError(f"code must be one of {CODE_KINDS}, got {code!r}")
    if len(frames) == 0:
        raise ValueError("there are no frames to evaluate")
    model = model.to(device).eval()
    grid = model.grid
    order = plane_order_for(model.config, training=False)
    parts: dict[str, list] = {k: [] for k in ("frame", "slot", "pres", "box", "ctr", "code", "sid")}
    segments = []
    squared_error, pixels = dict.fromkeys(RECONSTRUCTIONS, 0.0), 0
    for start in range(0, len(frames), batch_size):
        indices = range(start, min(start + batch_size, len(frames)))
        batch = frames.frames(indices).to(device).float().div(255)[:, None]
        out = model(batch, "hard", order)
        drawn = {
            "soft": model.render(out.encoding, "soft", order).reconstruction,
            "hard": out.reconstruction,
            "background": out.background,
        }
        for name, image in drawn.items():  # numpy's sum: the same whatever torch's threads
            error = (image.double() - batch.double()).square().cpu().numpy()
            squared_error[name] += float(error.sum())
        pixels += batch.numel()
        presence = out.encoding.presence[:, 0]  # soft: the detection confidence
        boxes, visible = footprint_boxes(out.alpha[:, 0], grid)
        centers = out.centers[:, 0]
        vectors = getattr(out.encoding, code)[:, 0]
        present = (presence > threshold) & visible  # a transparent sprite is no object
        where = present.nonzero()
        parts["frame"].append((where[:, 0] + start).cpu())
        parts["slot"].append(where[:, 1:].cpu())
        parts["pres"].append(presence[present].cpu())
        parts["box"].append(boxes[present].cpu())
        parts["ctr"].append(centers[present].cpu())
        parts["code"].append(vectors[present].float().cpu())
        parts["sid"].append(out.sprite_ids[:, 0][present].cpu())
        if segment:
            segments.append(slot_segmentation(out.planes[:, 0], order, grid).cpu())
    cat = {k: torch.cat(v).numpy() for k, v in parts.items()}
    table = ObjectTable(
        frame=cat["frame"],
        layer=cat["slot"][:, 0],
        row=cat["slot"][:, 1],
        col=cat["slot"][:, 2],
        sprite=cat["sid"],
        presence=cat["pres"],
        boxes=cat["box"].astype(np.float64),
        centers=cat["ctr"].astype(np.float64),
        codes=cat["code"],
        names=list(frames.names),
        clips=np.asarray(frames.clips),
        times=np.asarray(frames.times),
        size=(grid.height, grid.width),
        code=code,
        dictionary=model.dictionary()[0].detach().float().cpu().numpy(),
        psnr={name: psnr_of_mse(error / pixels) for name, error in squared_error.items()},
    )
    if overlap is not None:
        kept = suppress_overlaps(table.boxes, table.presence, table.frame, overlap)
        table = replace(table.select(kept), suppressed=int((~kept).sum()))
    return table, (torch.cat(segments).numpy() if segment else None)
