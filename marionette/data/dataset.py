"""Datasets on disk: a frame folder plus index, ground truth, masks and the generator's settings.

Layout written by every generator (atomically: the folder appears only once complete)::

    DIR/0.png, 1.png, ...     frames, RGB
    DIR/index.csv             frame, clip, t
    DIR/groundtruth.csv       frame, clip, t, class, x0, y0, x1, y1, moving, instance
    DIR/masks.npz             (synthetic data) int16 instance id per pixel, -1 background
    DIR/dataset.json          generator, settings, seeds, package versions, class names

:func:`load_dataset` and :func:`open_frames` also read MOC's layout as it lies
(:mod:`marionette.data.moc`).
"""

import contextlib
import csv
import importlib.metadata
import json
import os
import platform
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_directory, atomic_write, write_json
from .frames import INDEX_FILE, FrameFolder, FrameSource
from .groundtruth import GROUNDTRUTH_FILE, GroundTruth
from .moc import MocSplit, find_moc, read_moc_boxes

__all__ = [
    "DATASET_FILE",
    "MASKS_FILE",
    "Dataset",
    "DatasetWriter",
    "load_dataset",
    "open_frames",
    "pad_masks",
    "package_versions",
    "write_dataset",
]

DATASET_FILE = "dataset.json"
MASKS_FILE = "masks.npz"


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (plus Python), for provenance records."""
    versions = {"python": platform.python_version()}
    for name in ("marionette", "numpy", "pillow", *names):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, compress_level=1)


class DatasetWriter:
    """Stream frames into a dataset folder that appears at ``out`` only once complete.

    Use as a context manager: :meth:`add` each frame, write any extra files under
    ``folder`` (the temporary directory), then :meth:`finish`. Leaving the block by an
    exception, or without :meth:`finish`, removes everything written.
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False) -> None:
        self.out = Path(out)
        self._overwrite = overwrite
        self._stack = contextlib.ExitStack()
        self._index: list[tuple[str, int, int]] = []
        self._finished = False
        self.folder: Path

    def __enter__(self) -> "DatasetWriter":
        self.folder = self._stack.enter_context(atomic_directory(self.out, self._overwrite))
        return self

    def __exit__(self, kind, error, trace) -> bool:
        if kind is None and not self._finished:
            error = RuntimeError(f"{self.out}: DatasetWriter closed without finish()")
            self._stack.__exit__(type(error), error, None)
            raise error
        return self._stack.__exit__(kind, error, trace)

    def add(self, name: str, frame: np.ndarray, clip: int, t: int) -> None:
        """Save one RGB uint8 ``[H, W, 3]`` frame as ``name`` with its clip and time index."""
        _save_png(np.ascontiguousarray(frame), self.folder / name)
        self._index.append((name, int(clip), int(t)))

    def finish(
        self,
        settings: dict,
        groundtruth: GroundTruth | None = None,
        masks: np.ndarray | None = None,
    ) -> None:
        """Write the index, ground truth, masks and ``dataset.json`` (the last file written)."""
        with atomic_write(self.folder / INDEX_FILE, "w") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["frame", "clip", "t"])
            writer.writerows(self._index)
        if groundtruth is not None and len(groundtruth):  # none: a dataset without ground truth
            groundtruth.write_csv(self.folder / GROUNDTRUTH_FILE)
        if masks is not None:
            names = np.array([name for name, _, _ in self._index])
            with atomic_write(self.folder / MASKS_FILE) as handle:
                np.savez_compressed(handle, masks=masks.astype(np.int16), names=names)
        write_json(self.folder / DATASET_FILE, {"frames": len(self._index), **settings})
        self._finished = True


def write_dataset(
    out: str | os.PathLike,
    frames: Iterable[np.ndarray],
    names: list[str],
    clips: np.ndarray,
    times: np.ndarray,
    settings: dict,
    groundtruth: GroundTruth | None = None,
    masks: np.ndarray | None = None,
    overwrite: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Path:
    """Write a dataset folder atomically (see the module for the layout).

    Args:
        out: target folder; must not exist or be empty unless ``overwrite``.
        frames: RGB uint8 [H, W, 3] arrays, in order (may be a generator).
        names, clips, times: per-frame file name, clip id and time index.
        settings: recorded in ``dataset.json`` (generator, seeds, versions, class names, ...).
        groundtruth: object table; ``masks``: per-frame instance masks.
        overwrite: replace an existing folder (only once the new one is complete).
        progress: wraps the frame iterator (e.g. ``tqdm``).
    """
    rows = zip(names, frames, np.asarray(clips).tolist(), np.asarray(times).tolist(), strict=True)
    with DatasetWriter(out, overwrite) as writer:
        for name, frame, clip, t in progress(rows) if progress else rows:
            writer.add(name, frame, clip, t)
        writer.finish(settings, groundtruth, masks)
    return Path(out)


@dataclass
class Dataset:
    """A loaded dataset folder: frames plus whatever ground truth it carries."""

    frames: FrameSource
    groundtruth: GroundTruth | None
    masks: np.ndarray | None
    info: dict


def open_frames(
    folder: str | os.PathLike,
    size: tuple[int, int] | None = None,
    resize: str = "keep",
    split: str | None = None,
    default: str = "train",
) -> FrameFolder:
    """The frames of a folder in our layout or MOC's (``split`` picks a MOC game folder's
    split, else ``default``; see :func:`marionette.data.moc.find_moc`), as RGB."""
    moc = find_moc(folder, split, default)
    return moc.open_frames(size, resize) if moc else FrameFolder(folder, size, resize)


def pad_masks(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Instance masks [N, H, W] cropped or padded with -1 (background) to ``size`` (the ``pad``
    resize policy's counterpart)."""
    height, width = size
    cropped = masks[:, :height, :width]
    pad = ((0, 0), (0, height - cropped.shape[1]), (0, width - cropped.shape[2]))
    return np.pad(cropped, pad, constant_values=-1)


def load_dataset(
    folder: str | os.PathLike,
    size: tuple[int, int] | None = None,
    resize: str = "keep",
    split: str | None = None,
) -> Dataset:
    """Load a dataset folder: frames, and ``groundtruth.csv``, ``masks.npz`` and
    ``dataset.json`` when present (masks are read without pickle); or a split of a MOC dataset
    (``split`` picks it from a game folder, by default ``test``; see
    :func:`marionette.data.moc.find_moc`).

    Boxes (and masks) follow the frames' resize policy: the ground truth is in pixels of the
    frames as returned.
    """
    moc = find_moc(folder, split, default="test")
    if moc is not None:
        return _load_moc(moc, size, resize)
    folder = Path(folder)
    frames = FrameFolder(folder, size, resize)
    shape = (frames.height, frames.width)
    gt_path = folder / GROUNDTRUTH_FILE
    groundtruth = GroundTruth.read_csv(gt_path) if gt_path.exists() else None
    masks = None
    if (folder / MASKS_FILE).exists():
        with np.load(folder / MASKS_FILE, allow_pickle=False) as archive:
            stored = [str(n) for n in archive["names"]]
            if stored != frames.names:
                raise ValueError(f"{folder / MASKS_FILE} does not match the folder's frames")
            masks = _fit_masks(archive["masks"], shape, resize, folder)
    info_path = folder / DATASET_FILE
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if groundtruth is not None:
        _warn_unmatched(gt_path, groundtruth, frames.names, info.get("class_names"))
        groundtruth = groundtruth.fitted(frames.native, shape, resize)
    return Dataset(frames, groundtruth, masks, info)


def _fit_masks(masks: np.ndarray, size: tuple[int, int], resize: str, folder: Path) -> np.ndarray:
    if masks.shape[1:] == tuple(size):
        return masks
    if resize != "pad":
        raise ValueError(
            f"{folder / MASKS_FILE} holds {masks.shape[1]} x {masks.shape[2]} instance masks, "
            f"which follow the frames to {size[0]} x {size[1]} only with the resize policy "
            f"'pad', got {resize!r}; pass --resize pad or the dataset's own canvas size"
        )
    return pad_masks(masks, size)


def _load_moc(moc: MocSplit, size: tuple[int, int] | None, resize: str) -> Dataset:
    frames = moc.open_frames(size, resize)
    info = {"layout": "moc", "root": str(moc.root), "split": moc.split, "game": moc.game}
    info["settings"] = {"game": moc.game}  # where evaluation looks for the HUD filter
    if moc.boxes is None:
        return Dataset(frames, None, None, {**info, "no_groundtruth": moc.missing_boxes()})
    groundtruth = read_moc_boxes(moc, frames)
    info["class_names"] = groundtruth.class_names
    shape = (frames.height, frames.width)
    return Dataset(frames, groundtruth.fitted(frames.native, shape, resize), None, info)


def _warn_unmatched(
    path: Path, groundtruth: GroundTruth, names: list[str], classes: list[str] | None
) -> None:
    """Warn (with counts and examples) about ground-truth rows of frames the folder lacks and
    class names its ``dataset.json`` does not list: such rows are never evaluated."""
    missing = sorted(set(groundtruth.frame.tolist()) - set(names))
    if missing:
        warnings.warn(
            f"{path}: {len(missing)} frame(s) named in the ground truth are not in the folder "
            f"(e.g. {missing[:3]}); their objects are left out of the evaluation",
            stacklevel=3,
        )
    unknown = sorted(set(groundtruth.class_names) - set(classes)) if classes else []
    if unknown:
        rows = int(np.isin(groundtruth.label, unknown).sum())
        warnings.warn(
            f"{path}: {rows} row(s) have class names that {DATASET_FILE} does not list "
            f"(e.g. {unknown[:3]}; listed: {classes[:5]})",
            stacklevel=3,
        )
