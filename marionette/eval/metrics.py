"""Object-representation metrics of the MOC protocol, re-implemented on plain arrays.

Representation: few-shot accuracy (ridge classifier), AMI / ARI of seeded k-means, purity of the
sprite id, and its redundancy (how many sprites draw one class). Detection: precision / recall /
F-score with MOC's centre-distance criterion, and 11-point AP at IoU thresholds 0.1 .. 0.9.
Temporal: whether a ground-truth instance keeps its sprite and its code across consecutive
frames. Segmentation: foreground ARI.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from jaxtyping import Integer, Real, Shaped
from sklearn.cluster import KMeans
from sklearn.linear_model import RidgeClassifier
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

from ..core import typed
from .boxes import box_iou

__all__ = [
    "SHOTS",
    "average_precision",
    "clustering_scores",
    "few_shot_accuracy",
    "foreground_ari",
    "precision_recall",
    "sprite_purity",
    "sprite_recovery",
    "sprites_per_class",
]

SHOTS = (1, 4, 16, 64)


def _few_shot_once(codes, labels, train, test, shots) -> dict[int, float]:
    results = {}
    for k in shots:
        chosen = np.concatenate([train[labels[train] == c][:k] for c in np.unique(labels[train])])
        if len(np.unique(labels[chosen])) < 2:
            results[k] = float(np.mean(labels[test] == labels[chosen[0]]))
            continue
        classifier = RidgeClassifier().fit(codes[chosen], labels[chosen])
        results[k] = float(np.mean(classifier.predict(codes[test]) == labels[test]))
    return results


@typed
def few_shot_accuracy(
    codes: Real[np.ndarray, "N D"],
    labels: Shaped[np.ndarray, " N"],
    shots: Sequence[int] = SHOTS,
    repeats: int = 10,
    seed: int = 0,
    test_fraction: float = 0.1,
) -> dict[str, dict[int, float]] | None:
    """Ridge-classifier accuracy from k labelled objects per class, k in ``shots``.

    ``ordered``: MOC's split, the first 90 % of objects (data order) form the training pool and
    the last 10 % the test set; the first k of each class train. ``mean`` / ``std``: the same
    over ``repeats`` seeded random 90 / 10 splits (random k per class). Test classes absent from
    training count as errors. None when fewer than 2 classes are present.
    """
    labels = np.asarray(labels).astype(str)
    codes = np.asarray(codes, np.float64)
    if len(np.unique(labels)) < 2 or len(labels) < 10:
        return None
    n = len(labels)
    cut = int(round(n * (1 - test_fraction)))
    order = np.arange(n)
    result = {"ordered": _few_shot_once(codes, labels, order[:cut], order[cut:], shots)}
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(repeats):
        perm = rng.permutation(n)
        runs.append(_few_shot_once(codes, labels, perm[:cut], perm[cut:], shots))
    result["mean"] = {k: float(np.mean([r[k] for r in runs])) for k in shots}
    result["std"] = {k: float(np.std([r[k] for r in runs])) for k in shots}
    return result


@typed
def clustering_scores(
    codes: Real[np.ndarray, "N D"], labels: Shaped[np.ndarray, " N"], seed: int = 0
) -> dict | None:
    """AMI and ARI of k-means (k = number of classes, k-means++, 10 starts, seeded) against the
    labels; None with fewer than 2 classes or fewer objects than classes."""
    labels = np.asarray(labels).astype(str)
    classes = len(np.unique(labels))
    if classes < 2 or len(labels) < classes:
        return None
    clusters = KMeans(classes, n_init=10, random_state=seed).fit_predict(np.asarray(codes, float))
    return {
        "ami": float(adjusted_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }


@typed
def sprite_purity(
    sprites: Integer[np.ndarray, " N"], labels: Shaped[np.ndarray, " N"]
) -> float | None:
    """Purity of the sprite id as a clustering: sum over sprites of their most common class
    count, divided by the number of objects (1: every sprite shows one class)."""
    if len(labels) == 0:
        return None
    labels = np.asarray(labels).astype(str)
    total = 0
    for sprite in np.unique(sprites):
        _, counts = np.unique(labels[sprites == sprite], return_counts=True)
        total += counts.max()
    return float(total / len(labels))


@typed
def sprites_per_class(
    sprites: Integer[np.ndarray, " N"], labels: Shaped[np.ndarray, " N"], share: float = 0.95
) -> dict | None:
    """How many dictionary sprites draw each class: per class, the fewest sprites that draw
    ``share`` of its objects (1: one sprite per look of the class, what a clean dictionary
    gives); their ``mean`` and ``max`` over classes, and ``used``: distinct sprites drawn.

    Example:
        >>> sprites_per_class(np.array([3, 3, 3, 5, 1, 1]), np.array(list("aaaabb")), 0.7)
        {'mean': 1.0, 'max': 1, 'used': 3}
    """
    if len(labels) == 0:
        return None
    labels = np.asarray(labels).astype(str)
    needed = [_covering(sprites[labels == name], share) for name in np.unique(labels)]
    return {"mean": float(np.mean(needed)), "max": max(needed), "used": len(np.unique(sprites))}


def sprite_recovery(
    true: list[np.ndarray], learned: Real[np.ndarray, "K 4 S S"], used: Shaped[np.ndarray, " K"]
) -> dict:
    """How well the used learned sprites recover known sprites: for each true sprite (RGBA
    [h, w, 4], binary alpha), the best alpha IoU with a used learned sprite (alpha > 1/2) over
    every integer placement of one on the other,

        IoU = max_{k used, d} |t(. - d) & a_k| / (|t| + |a_k| - |t(. - d) & a_k|);

    ``per_sprite`` (by the true sprites' index), their ``mean`` and ``min``, and ``matched``:
    the share >= 0.8.
    """
    import torch
    import torch.nn.functional as F

    masks = torch.from_numpy(np.asarray(learned)[np.asarray(used, bool), 3] > 0.5).float()
    best = []
    for sprite in true:
        target = torch.from_numpy(sprite[..., 3] > 127).float()
        if not len(masks):
            best.append(0.0)
            continue
        h, w = target.shape
        overlap = F.conv2d(masks[:, None], target[None, None], padding=(h - 1, w - 1))
        overlap = overlap.flatten(1).amax(1)
        union = masks.sum((1, 2)) + target.sum() - overlap
        best.append(float((overlap / union.clamp_min(1)).max()))
    values = np.array(best)
    return {
        "per_sprite": {str(k): v for k, v in enumerate(best)},
        "mean": float(values.mean()),
        "min": float(values.min()),
        "matched": float((values >= 0.8).mean()),
    }


def _covering(sprites: np.ndarray, share: float) -> int:
    """The fewest distinct values of ``sprites`` that make up ``share`` of its entries."""
    counts = np.sort(np.unique(sprites, return_counts=True)[1])[::-1]
    return int(np.argmax(np.cumsum(counts) >= share * counts.sum() - 1e-9)) + 1


def _centre_score(pred: np.ndarray, gt: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """MOC's hit score max(0, 1 - ||c_pred - c_gt|| / diag(gt)), in coordinates normalised by
    the frame's width (x) and height (y) separately, ``[N, M]``."""
    scale = np.array([size[1], size[0]] * 2, np.float64)
    p = np.asarray(pred, np.float64).reshape(-1, 4) / scale
    g = np.asarray(gt, np.float64).reshape(-1, 4) / scale
    pc = (p[:, :2] + p[:, 2:]) / 2
    gc = (g[:, :2] + g[:, 2:]) / 2
    distance = np.linalg.norm(pc[:, None] - gc[None], axis=-1)
    diagonal = np.linalg.norm(g[:, 2:] - g[:, :2], axis=-1)
    return np.clip(1 - distance / np.maximum(diagonal, 1e-12)[None], 0, None)


class _Hits(NamedTuple):
    """Per prediction over all frames (each frame's by falling confidence): its confidence,
    whether it hit a free ground-truth box, and whether its best box scored above the
    threshold but was already taken (a repeat); the number of ground-truth boxes, and per
    ground-truth box (frame by frame, in the given order) whether a prediction took it."""

    confidences: np.ndarray
    hits: np.ndarray
    repeats: np.ndarray
    total: int
    taken: np.ndarray


def _greedy_hits(frames, score_fn, threshold) -> _Hits:
    """Per frame, predictions by falling confidence take their best-scoring ground-truth box if
    the score exceeds ``threshold`` and the box is still free (no fall-back to the second best);
    a prediction whose best box scores above ``threshold`` but is taken is a repeat."""
    confidences, hits, repeats, taken, total = [], [], [], [], 0
    for pred, conf, gt in frames:
        total += len(gt)
        used = np.zeros(len(gt), bool)
        order = np.argsort(-np.asarray(conf), kind="stable")
        confidences.append(np.asarray(conf, np.float64)[order])
        hit = np.zeros(len(order), bool)
        repeat = np.zeros(len(order), bool)
        if len(gt) and len(order):
            score = score_fn(np.asarray(pred)[order], gt)
            for n, row in enumerate(score):
                best = int(row.argmax())
                if row[best] > threshold:
                    hit[n], repeat[n] = not used[best], used[best]
                    used[best] = True
        hits.append(hit)
        repeats.append(repeat)
        taken.append(used)
    if not confidences:
        return _Hits(np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), total, np.zeros(0, bool))
    confidences, hits, repeats, taken = map(np.concatenate, (confidences, hits, repeats, taken))
    return _Hits(confidences, hits, repeats, total, taken)


def precision_recall(frames, size: tuple[int, int], classes=None) -> dict:
    """Precision, recall and F-score with the centre-distance criterion (hit if the centre lies
    within half the ground-truth diagonal, in normalised coordinates), over all detections;
    and ``repeated``, the share of detections that find an object another, more confident
    detection already took (the same object drawn twice, or in parts): 1 - precision - repeated
    is the share that finds no object.

    ``frames``: iterable of (pred_boxes [N, 4], confidences [N], gt_boxes [M, 4]) in pixels.
    ``classes``: optionally, per frame, the class of each ground-truth box [M]; then
    ``recall_by_class`` gives each class's recall (which objects are never found).
    """
    frames = list(frames)
    found = _greedy_hits(frames, lambda p, g: _centre_score(p, g, size), 0.5)
    count = len(found.hits)
    precision = float(found.hits.mean()) if count else 0.0
    recall = float(found.hits.sum() / found.total) if found.total else 0.0
    f_score = 2 * precision * recall / (precision + recall + 1e-8)
    repeated = float(found.repeats.mean()) if count else 0.0
    result = {"precision": precision, "recall": recall, "f_score": f_score, "repeated": repeated}
    if classes is not None:
        result["recall_by_class"] = _recall_by_class(found.taken, frames, classes)
    return result


def _recall_by_class(taken: np.ndarray, frames: list, classes) -> dict[str, float]:
    """The share of each class's ground-truth boxes that a detection took."""
    classes = list(classes)
    counts = [len(c) for c in classes]
    boxes = [len(gt) for _, _, gt in frames]
    if counts != boxes:
        raise ValueError(
            f"classes must hold one label per ground-truth box of every frame: got label counts "
            f"{counts[:8]} for box counts {boxes[:8]} ({len(classes)} against {len(frames)} frames)"
        )
    labels = np.concatenate([np.asarray(c, dtype=object) for c in classes]) if classes else []
    return {str(c): float(taken[labels == c].mean()) for c in sorted(set(labels), key=str)}


def average_precision(frames, thresholds: Sequence[float] = tuple(np.arange(1, 10) / 10)) -> dict:
    """11-point interpolated AP at each IoU threshold (a hit needs IoU > threshold), predictions
    pooled over frames and ranked by confidence; plus their mean."""
    frames = list(frames)
    result = {}
    for threshold in thresholds:
        confidence, hits, _, total, _ = _greedy_hits(frames, box_iou, threshold)
        order = np.argsort(-confidence, kind="stable")
        cumulative = np.cumsum(hits[order])
        precision = cumulative / np.arange(1, len(order) + 1)
        recall = cumulative / total if total else np.zeros(len(order))
        points = [
            precision[recall >= r].max() if (recall >= r).any() else 0.0
            for r in np.linspace(0, 1, 11)
        ]
        result[f"{threshold:.1f}"] = float(np.mean(points))
    result["mean"] = float(np.mean([result[f"{t:.1f}"] for t in thresholds]))
    return result


@typed
def foreground_ari(
    predicted: Integer[np.ndarray, "B H W"], truth: Integer[np.ndarray, "B H W"]
) -> float | None:
    """Mean over images of the ARI between predicted and true segment ids on the true
    foreground pixels (``truth >= 0``); images with no foreground are skipped."""
    scores = []
    for pred, gt in zip(predicted, truth, strict=True):
        foreground = gt >= 0
        if foreground.any():
            scores.append(adjusted_rand_score(gt[foreground], pred[foreground]))
    return float(np.mean(scores)) if scores else None
