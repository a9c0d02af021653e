"""Evaluate a model's objects against ground truth; write ``metrics.json`` and a CSV row."""

import csv
import dataclasses
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_write, write_json
from ..core import MarioNette
from ..data import Dataset, GroundTruth, InMemoryFrames
from .labels import NO_LABEL, VIEWS, box_overlap, view_labels
from .metrics import (
    average_precision,
    clustering_scores,
    few_shot_accuracy,
    foreground_ari,
    precision_recall,
    sprite_purity,
)
from .objects import ObjectTable, collect_objects

__all__ = [
    "check_groundtruth",
    "evaluate",
    "flatten_metrics",
    "temporal_consistency",
    "write_metrics",
]


def first_frames(data: Dataset, count: int) -> Dataset:
    """The dataset restricted to its first ``count`` frames (all if ``count`` is 0)."""
    if not count or count >= len(data.frames):
        return data
    frames = data.frames
    head = InMemoryFrames(
        frames.frames(range(count)),
        frames.clips[:count],
        frames.times[:count],
        frames.names[:count],
    )
    gt = data.groundtruth
    if gt is not None:
        gt = gt.select(np.isin(gt.frame, np.array(head.names, dtype=object)))
    masks = data.masks[:count] if data.masks is not None else None
    return Dataset(head, gt, masks, data.info)


def check_groundtruth(objects: ObjectTable, groundtruth: GroundTruth) -> GroundTruth:
    """Match the ground truth to the evaluated frames: refuse tables that name none of them,
    warn about (and drop) rows of unknown frames, clip boxes that leave the frame."""
    names = set(objects.names)
    known = np.array([name in names for name in groundtruth.frame], bool)
    if len(groundtruth) and not known.any():
        raise ValueError(
            f"the ground truth names none of the {len(names)} evaluated frames (e.g. "
            f"{groundtruth.frame[0]!r} vs {objects.names[0]!r}); evaluate the folder it belongs to"
        )
    if not known.all():
        warnings.warn(
            f"{(~known).sum()} ground-truth rows name frames that are not evaluated "
            f"(e.g. {groundtruth.frame[~known][0]!r}); ignoring them",
            stacklevel=2,
        )
        groundtruth = groundtruth.select(known)
    height, width = objects.size
    limits = np.array([width, height, width, height], np.float64)
    outside = (groundtruth.boxes < 0).any(1) | (groundtruth.boxes > limits).any(1)
    if outside.any():
        warnings.warn(
            f"{outside.sum()} ground-truth boxes leave the {height} x {width} frame (e.g. "
            f"{groundtruth.boxes[outside][0].tolist()} in {groundtruth.frame[outside][0]!r}); "
            f"clipping them",
            stacklevel=2,
        )
        groundtruth = dataclasses.replace(groundtruth, boxes=np.clip(groundtruth.boxes, 0, limits))
    return groundtruth


def _explaining_object(objects: ObjectTable, groundtruth: GroundTruth, index: dict) -> dict:
    """(clip, instance, t) -> the predicted object covering that ground-truth box most
    (intersection / box area >= 0.5)."""
    explained = {}
    for name, frame in index.items():
        rows = objects.of_frame(frame)
        gt_rows = groundtruth.rows_of(name)
        gt_rows = gt_rows[(groundtruth.instance[gt_rows] >= 0) & groundtruth.moving[gt_rows]]
        if len(rows) == 0 or len(gt_rows) == 0:
            continue
        overlap = box_overlap(objects.boxes[rows], groundtruth.boxes[gt_rows])  # [N, M]
        best = overlap.argmax(0)
        for m, row in enumerate(gt_rows):
            if overlap[best[m], m] >= 0.5:
                key = (groundtruth.clip[row], groundtruth.instance[row], groundtruth.t[row])
                explained[key] = rows[best[m]]
    return explained


def temporal_consistency(objects: ObjectTable, groundtruth: GroundTruth) -> dict | None:
    """How stable the explanation of each ground-truth instance is over consecutive frames.

    For every instance explained at t and t + 1 (see :func:`_explaining_object`): ``sprite``,
    the fraction explained by the same sprite id; ``code_nn``, the fraction whose object at t
    has, among all objects of frame t + 1, its nearest code (cosine) in the object that explains
    the same instance; ``code_cos``, the mean cosine similarity of its codes at t and t + 1.
    None if no instance is explained twice in a row.
    """
    index = {name: i for i, name in enumerate(objects.names)}
    explained = _explaining_object(objects, groundtruth, index)
    unit = objects.codes / np.maximum(np.linalg.norm(objects.codes, axis=1, keepdims=True), 1e-12)
    same_sprite, nearest, similarity = [], [], []
    for (clip, instance, t), row in explained.items():
        following = explained.get((clip, instance, t + 1))
        if following is None:
            continue
        same_sprite.append(objects.sprite[row] == objects.sprite[following])
        similarity.append(float(unit[row] @ unit[following]))
        candidates = objects.of_frame(objects.frame[following])
        best = candidates[np.argmax(unit[candidates] @ unit[row])]
        nearest.append(best == following)
    if not same_sprite:
        return None
    return {
        "sprite": float(np.mean(same_sprite)),
        "code_nn": float(np.mean(nearest)),
        "code_cos": float(np.mean(similarity)),
        "pairs": len(same_sprite),
    }


def _view_metrics(objects, groundtruth, view, game, seed) -> dict:
    labels, keep = view_labels(objects, groundtruth, view, game)
    codes, kept_labels = objects.codes[keep], labels[keep]
    result = {"objects": int(keep.sum()), "classes": len(np.unique(kept_labels))}
    if result["classes"] < 2:
        warnings.warn(
            f"view {view!r} has {result['classes']} class(es) among {result['objects']} objects; "
            f"few-shot accuracy and clustering need at least 2 and are left out",
            stacklevel=3,
        )
    few_shot = few_shot_accuracy(codes, kept_labels, seed=seed)
    if few_shot is not None:
        result["few_shot"] = few_shot
    clusters = clustering_scores(codes, kept_labels, seed=seed)
    if clusters is not None:
        result.update(clusters)
    purity = sprite_purity(objects.sprite[keep], kept_labels)
    if purity is not None:
        result["sprite_purity"] = purity
    frames = []
    for index, name in enumerate(objects.names):
        rows = objects.of_frame(index)
        rows = rows[keep[rows]] if view == "relevant" else rows
        gt_rows = groundtruth.rows_of(name)
        if view != "all":
            gt_rows = gt_rows[groundtruth.moving[gt_rows]]
        frames.append((objects.boxes[rows], objects.presence[rows], groundtruth.boxes[gt_rows]))
    result.update(precision_recall(frames, objects.size))
    result["ap"] = average_precision(frames)
    result["no_label_fraction"] = float(np.mean(labels == NO_LABEL)) if len(labels) else 0.0
    return result


def evaluate(
    model: MarioNette,
    data: Dataset,
    code: str = "codes",
    game: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> dict:
    """All metrics of a model on a dataset with ground truth (see :mod:`marionette.eval`).

    ``game`` picks the HUD filter of the ``relevant`` view (default: the dataset's recorded
    game). Metrics that cannot be computed (too few classes, no consecutive frames, no masks)
    are left out with a warning, the others are still computed.
    """
    if data.groundtruth is None:
        raise ValueError(
            "the data has no groundtruth.csv: evaluation needs ground truth (generate data with "
            "`marionette data synthetic|atari|mario`, or write the table, see the README)"
        )
    game = game or data.info.get("settings", {}).get("game")
    objects, segments = collect_objects(
        model, data.frames, code, batch_size, device, segment=data.masks is not None
    )
    groundtruth = check_groundtruth(objects, data.groundtruth)
    metrics: dict = {
        "frames": len(objects.names),
        "objects": len(objects),
        "objects_per_frame": len(objects) / max(len(objects.names), 1),
        "code": code,
        "game": game,
    }
    if len(objects) == 0:
        warnings.warn(
            "the model detects no object (no slot has presence > 0.5): only detection recall "
            "(0) is reported; the model may have collapsed to the background",
            stacklevel=2,
        )
    for view in VIEWS:
        metrics[view] = _view_metrics(objects, groundtruth, view, game, seed)
    temporal = temporal_consistency(objects, groundtruth)
    if temporal is not None:
        metrics["temporal"] = temporal
    if segments is not None:
        metrics["foreground_ari"] = foreground_ari(segments, data.masks)
    return metrics


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float | str]:
    """``{"all": {"ap": {"0.5": x}}}`` -> ``{"all/ap/0.5": x}``."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, f"{name}/"))
        elif value is not None:
            flat[name] = value
    return flat


def write_metrics(out: str | os.PathLike, metrics: dict, step: int | None = None) -> Path:
    """Write ``metrics.json`` into ``out`` and append a row to ``out/metrics_eval.csv`` (the
    table is rewritten atomically with the union of the columns)."""
    out = Path(out)
    write_json(out / "metrics.json", {"step": step, **metrics})
    table = out / "metrics_eval.csv"
    rows = []
    if table.exists():
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
    row = {"step": step, **flatten_metrics(metrics)}
    rows.append(
        {
            k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v)
            for k, v in row.items()
        }
    )
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_write(table, "w") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out / "metrics.json"
