"""Evaluate a model's objects against ground truth; write ``metrics.json`` and a CSV row."""

import csv
import dataclasses
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_write, write_json
from ..core import MarioNette
from ..data import Dataset, GroundTruth
from ..data.synthetic import true_sprites
from .boxes import box_overlap
from .labels import HUD_FILTERS, NO_LABEL, VIEWS, view_labels
from .metrics import (
    SHOTS,
    average_precision,
    clustering_scores,
    few_shot_accuracy,
    foreground_ari,
    precision_recall,
    sprite_purity,
    sprite_recovery,
    sprites_per_class,
)
from .objects import OVERLAP, ObjectTable, collect_objects

__all__ = [
    "METRICS",
    "Metric",
    "View",
    "check_groundtruth",
    "evaluate",
    "first_frames",
    "flatten_metrics",
    "summary",
    "summary_keys",
    "temporal_consistency",
    "write_metrics",
]


def first_frames(data: Dataset, count: int) -> Dataset:
    """The dataset restricted to its first ``count`` frames (all if ``count`` is 0)."""
    if not count or count >= len(data.frames):
        return data
    head = data.frames.head(count)
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

    An instance is explained in a frame by the predicted object that covers its box most
    (intersection / box area >= 0.5). For every instance explained at t and t + 1: ``sprite``,
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


@dataclass(frozen=True)
class View:
    """The objects one view of the MOC protocol evaluates, with their labels.

    Attributes:
        name: ``all``, ``moving`` or ``relevant`` (see :func:`marionette.eval.view_labels`).
        labels: the class of every predicted object (``no_label`` where it covers none).
        keep: which objects the view evaluates.
        frames: per frame, (predicted boxes, confidences, ground-truth boxes) of the view.
        seed: k-means and random-split seed.
        classes: per frame, the class of each of its ground-truth boxes.
    """

    name: str
    labels: np.ndarray
    keep: np.ndarray
    frames: list
    seed: int
    classes: list


@dataclass(frozen=True)
class Metric:
    """One entry of :data:`METRICS`.

    Attributes:
        name: what it measures.
        compute: ``compute(objects, view)`` for per-view metrics, ``compute(objects,
            groundtruth, segments, data)`` for the others (``data``: the evaluated dataset):
            a dict of results to merge into the view's (or the top-level) metrics, or None
            when it cannot be computed.
        per_view: computed for every view (into ``metrics[view]``), else once.
        summary: the results (flattened names inside their section) that tables show: the
            sweep's summary, the trainer's evaluation scalars and the ``eval`` printout.
        views: for per-view metrics, the views whose ``summary`` is shown.
    """

    name: str
    compute: Callable[..., dict | None]
    per_view: bool
    summary: tuple[str, ...] = ()
    views: tuple[str, ...] = ()


def _few_shot(objects: ObjectTable, view: View) -> dict | None:
    result = few_shot_accuracy(objects.codes[view.keep], view.labels[view.keep], seed=view.seed)
    return None if result is None else {"few_shot": result}


def _clustering(objects: ObjectTable, view: View) -> dict | None:
    return clustering_scores(objects.codes[view.keep], view.labels[view.keep], seed=view.seed)


def _purity(objects: ObjectTable, view: View) -> dict | None:
    purity = sprite_purity(objects.sprite[view.keep], view.labels[view.keep])
    return None if purity is None else {"sprite_purity": purity}


def _redundancy(objects: ObjectTable, view: View) -> dict | None:
    labelled = view.keep & (view.labels != NO_LABEL)
    result = sprites_per_class(objects.sprite[labelled], view.labels[labelled])
    return None if result is None else {"sprites_per_class": result}


def _unlabelled(objects: ObjectTable, view: View) -> dict:
    unlabelled = float(np.mean(view.labels == NO_LABEL)) if len(view.labels) else 0.0
    return {"no_label_fraction": unlabelled}


def _reconstruction(objects, groundtruth, segments, data) -> dict:
    return {"psnr": objects.psnr}


def _temporal(objects, groundtruth, segments, data) -> dict | None:
    result = temporal_consistency(objects, groundtruth)
    return None if result is None else {"temporal": result}


def _foreground(objects, groundtruth, segments, data) -> dict | None:
    return None if segments is None else {"foreground_ari": foreground_ari(segments, data.masks)}


def _recovery(objects, groundtruth, segments, data) -> dict | None:
    true = true_sprites(data.info.get("settings", data.info))
    if true is None:
        return None
    used = np.bincount(objects.sprite, minlength=len(objects.dictionary)) > 0
    return {"sprite_recovery": sprite_recovery(true, objects.dictionary, used)}


_SHOT_KEYS = tuple(f"few_shot/{split}/{k}" for split in ("ordered", "mean") for k in SHOTS)

#: Every metric :func:`evaluate` reports, in report order. Add one here and it appears in
#: ``metrics.json``, the sweep table, the trainer's scalars and the ``eval`` printout.
METRICS: tuple[Metric, ...] = (
    Metric(
        "reconstruction PSNR: soft, hard, background alone",
        _reconstruction,
        False,
        ("psnr/soft", "psnr/hard", "psnr/background"),
    ),
    Metric("few-shot accuracy (ridge)", _few_shot, True, _SHOT_KEYS, ("relevant",)),
    Metric("k-means AMI / ARI", _clustering, True, ("ami", "ari"), ("relevant",)),
    Metric("sprite purity", _purity, True, ("sprite_purity",), ("relevant",)),
    Metric(
        "sprites per class (95 % of its objects)",
        _redundancy,
        True,
        ("sprites_per_class/mean", "sprites_per_class/used"),
        ("relevant",),
    ),
    Metric(
        "detection (centre criterion)",
        lambda objects, view: precision_recall(view.frames, objects.size, view.classes),
        True,
        ("f_score", "repeated"),
        ("all", "relevant"),
    ),
    Metric(
        "AP at IoU 0.1 .. 0.9",
        lambda objects, view: {"ap": average_precision(view.frames)},
        True,
        ("ap/mean",),
        ("relevant",),
    ),
    Metric("unlabelled objects", _unlabelled, True),
    Metric(
        "temporal consistency",
        _temporal,
        False,
        ("temporal/sprite", "temporal/code_nn", "temporal/code_cos"),
    ),
    Metric("foreground ARI", _foreground, False, ("foreground_ari",)),
    Metric(
        "recovery of known sprites (alpha IoU)",
        _recovery,
        False,
        ("sprite_recovery/min", "sprite_recovery/matched"),
    ),
)


def summary_keys() -> list[str]:
    """The flattened names of the results tables show, from :data:`METRICS`."""
    keys = ["objects_per_frame"]
    for metric in METRICS:
        sections = [f"{view}/" for view in metric.views] or [""]
        keys += [section + key for section in sections for key in metric.summary]
    return keys


def summary(metrics: dict) -> dict[str, float]:
    """The :func:`summary_keys` results of an :func:`evaluate` result that were computed."""
    flat = flatten_metrics(metrics)
    return {k: float(flat[k]) for k in summary_keys() if isinstance(flat.get(k), int | float)}


def _view(objects: ObjectTable, groundtruth: GroundTruth, name: str, game, seed) -> View:
    labels, keep = view_labels(objects, groundtruth, name, game)
    frames, classes = [], []
    for index, frame in enumerate(objects.names):
        rows = objects.of_frame(index)
        rows = rows[keep[rows]] if name == "relevant" else rows
        gt_rows = groundtruth.rows_of(frame)
        if name != "all":
            gt_rows = gt_rows[groundtruth.moving[gt_rows]]
        frames.append((objects.boxes[rows], objects.presence[rows], groundtruth.boxes[gt_rows]))
        classes.append(groundtruth.label[gt_rows])
    return View(name, labels, keep, frames, seed, classes)


def _view_metrics(objects: ObjectTable, view: View) -> dict:
    kept = view.labels[view.keep]
    result = {"objects": int(view.keep.sum()), "classes": len(np.unique(kept))}
    if result["classes"] < 2:
        warnings.warn(
            f"view {view.name!r} has {result['classes']} class(es) among {result['objects']} "
            f"objects; few-shot accuracy and clustering need at least 2 and are left out",
            stacklevel=3,
        )
    for metric in METRICS:
        if metric.per_view:
            result.update(metric.compute(objects, view) or {})
    return result


def evaluate(
    model: MarioNette,
    data: Dataset,
    code: str = "codes",
    game: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    overlap: float | None = OVERLAP,
) -> dict:
    """All metrics of :data:`METRICS` of a model on a dataset with ground truth.

    ``game`` picks the HUD filter of the ``relevant`` view (default: the dataset's recorded
    game). The objects are the present slots less their repeats at ``overlap``
    (:func:`~marionette.eval.collect_objects`; None keeps every slot, and ``suppressed``
    counts the slots left out). Metrics that cannot be computed (too few classes, no
    consecutive frames, no masks) are left out with a warning, the others are still computed.
    """
    if data.groundtruth is None:
        raise ValueError(
            data.info.get("no_groundtruth")
            or "the data has no groundtruth.csv: evaluation needs ground truth (generate data "
            "with `marionette data synthetic|atari|mario`, or write the table, see the README)"
        )
    game = game or data.info.get("settings", {}).get("game")
    if game is not None and game not in HUD_FILTERS:
        warnings.warn(
            f"game {game!r} has no HUD filter (known: {', '.join(HUD_FILTERS)}); the relevant "
            f"view keeps every labelled moving object",
            stacklevel=2,
        )
    objects, segments = collect_objects(
        model, data.frames, code, batch_size, device, segment=data.masks is not None,
        overlap=overlap,
    )  # fmt: skip
    groundtruth = check_groundtruth(objects, data.groundtruth)
    metrics: dict = {
        "frames": len(objects.names),
        "objects": len(objects),
        "objects_per_frame": len(objects) / max(len(objects.names), 1),
        "suppressed": objects.suppressed,
        "overlap": overlap,
        "code": code,
        "game": game,
    }
    if len(objects) == 0:
        warnings.warn(
            "the model detects no object (no slot has presence > 0.5): only detection recall "
            "(0) is reported; the model may have collapsed to the background",
            stacklevel=2,
        )
    for name in VIEWS:
        metrics[name] = _view_metrics(objects, _view(objects, groundtruth, name, game, seed))
    for metric in METRICS:
        if not metric.per_view:
            metrics.update(metric.compute(objects, groundtruth, segments, data) or {})
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
