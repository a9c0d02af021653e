"""Box geometry on (x0, y0, x1, y1) pixel boxes: area, intersection, IoU, and MOC's overlap."""

import numpy as np
from jaxtyping import Real

from ..core import typed

__all__ = ["box_area", "box_intersection", "box_iou", "box_overlap"]


@typed
def box_area(boxes: Real[np.ndarray, "N 4"]) -> np.ndarray:
    """Area ``[N]`` of (x0, y0, x1, y1) boxes in pixels."""
    boxes = np.asarray(boxes, np.float64)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


@typed
def box_intersection(a: Real[np.ndarray, "N 4"], b: Real[np.ndarray, "M 4"]) -> np.ndarray:
    """Intersection area ``[N, M]`` of (x0, y0, x1, y1) boxes."""
    a = np.asarray(a, np.float64)[:, None]
    b = np.asarray(b, np.float64)[None]
    width = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    height = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    return np.clip(width, 0, None) * np.clip(height, 0, None)


@typed
def box_overlap(pred: Real[np.ndarray, "N 4"], gt: Real[np.ndarray, "M 4"]) -> np.ndarray:
    """Intersection over the ground-truth box's area, ``[N, M]``, for (x0, y0, x1, y1) boxes.

    Not the union: a predicted box larger than its object is not penalised (MOC's criterion).
    """
    return box_intersection(pred, gt) / np.maximum(box_area(gt), 1e-9)[None]


@typed
def box_iou(a: Real[np.ndarray, "N 4"], b: Real[np.ndarray, "M 4"]) -> np.ndarray:
    """Intersection over union ``[N, M]`` of (x0, y0, x1, y1) boxes."""
    inter = box_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None] - inter
    return inter / np.maximum(union, 1e-12)
