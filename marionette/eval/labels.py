"""Ground-truth labels for predicted objects, and MOC's three views (all, moving, relevant)."""

from collections.abc import Callable

import numpy as np
from jaxtyping import Real, Shaped

from ..core import typed
from ..data import GroundTruth
from .boxes import box_overlap
from .objects import ObjectTable

__all__ = [
    "HUD_FILTERS",
    "NO_LABEL",
    "VIEWS",
    "assign_labels",
    "view_labels",
]

NO_LABEL = "no_label"
VIEWS = ("all", "moving", "relevant")


@typed
def assign_labels(
    pred_boxes: Real[np.ndarray, "N 4"],
    gt_boxes: Real[np.ndarray, "M 4"],
    gt_labels: Shaped[np.ndarray, " M"],
    threshold: float = 0.5,
) -> np.ndarray:
    """Each prediction takes the label of the ground-truth box it covers most (intersection /
    ground-truth area, ties to the first row) if that is at least ``threshold``, else
    ``no_label`` (also when the frame has no ground truth, where MOC raised)."""
    labels = np.full(len(pred_boxes), NO_LABEL, dtype=object)
    if len(gt_boxes) == 0 or len(pred_boxes) == 0:
        return labels
    overlap = box_overlap(pred_boxes, gt_boxes)
    best = overlap.argmax(1)
    hit = overlap[np.arange(len(best)), best] >= threshold
    labels[hit] = np.asarray(gt_labels, dtype=object)[best[hit]]
    return labels


def _space_invaders(pred: np.ndarray, gt: np.ndarray, height: int) -> np.ndarray:
    # Drop predictions in the score line, unless more than one ground-truth box lies there.
    if (gt[:, 3] < 16 / 128 * height).sum() > 1:
        return np.ones(len(pred), bool)
    return pred[:, 3] > 16 / 128 * height


#: MOC's per-game HUD filters on predicted boxes (thresholds in 128-pixel units of the height,
#: scaled to the frame): ``filter(pred_boxes, gt_boxes, height) -> keep``.
HUD_FILTERS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "SpaceInvaders": _space_invaders,
    "Pong": lambda p, g, h: p[:, 3] > 21 / 128 * h,
    "Boxing": lambda p, g, h: (p[:, 1] > 19 / 128 * h) & (p[:, 3] < 110 / 128 * h),
    "MsPacman": lambda p, g, h: p[:, 3] < 104 / 128 * h,
    "Carnival": lambda p, g, h: p[:, 1] > 15 / 128 * h,
    "AirRaid": lambda p, g, h: p[:, 1] > 8 / 128 * h,
    "Riverraid": lambda p, g, h: p[:, 1] < 98 / 128 * h,
}


def view_labels(
    objects: ObjectTable, groundtruth: GroundTruth, view: str, game: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the predicted objects in one view, and which objects the view keeps.

    ``all``: matched against every ground-truth box, ``no_label`` kept as a class. ``moving``:
    against the moving (non-HUD) boxes only. ``relevant``: like ``moving``, but only objects
    that pass the game's HUD filter (none without one) and got a label; no ``no_label`` class.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    labels = np.full(len(objects), NO_LABEL, dtype=object)
    keep = np.ones(len(objects), bool)
    height = objects.size[0]
    hud_filter = HUD_FILTERS.get(game or "")
    for index, name in enumerate(objects.names):
        rows = objects.of_frame(index)
        if len(rows) == 0:
            continue
        gt_rows = groundtruth.rows_of(name)
        if view != "all":
            gt_rows = gt_rows[groundtruth.moving[gt_rows]]
        gt_boxes = groundtruth.boxes[gt_rows]
        labels[rows] = assign_labels(objects.boxes[rows], gt_boxes, groundtruth.label[gt_rows])
        if view == "relevant" and hud_filter is not None:
            keep[rows] = hud_filter(objects.boxes[rows], gt_boxes.reshape(-1, 4), height)
    if view == "relevant":
        keep &= labels != NO_LABEL
    return labels, keep
