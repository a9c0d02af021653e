"""Ground-truth object tables: one row per visible object per frame, boxes in pixels (x, y)."""

import csv
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import atomic_write
from .frames import resize_boxes

__all__ = ["GROUNDTRUTH_FILE", "GT_COLUMNS", "GroundTruth"]

GROUNDTRUTH_FILE = "groundtruth.csv"
#: Column order of the generators' tables. Boxes are (x0, y0, x1, y1) in pixels of the saved
#: frame, x horizontal, exclusive x1 / y1.
GT_COLUMNS = ("frame", "clip", "t", "class", "x0", "y0", "x1", "y1", "moving", "instance")


@dataclass
class GroundTruth:
    """Objects of a set of frames.

    Attributes:
        frame: frame name (matching the frame source's names) per row.
        clip, t: clip id and time of that frame.
        label: class name per row.
        boxes: float [N, 4] (x0, y0, x1, y1) in pixels.
        moving: whether the object is a moving game object (False for static HUD elements).
        instance: id of the object, stable across its clip (-1 where unknown).
    """

    frame: np.ndarray
    clip: np.ndarray
    t: np.ndarray
    label: np.ndarray
    boxes: np.ndarray
    moving: np.ndarray
    instance: np.ndarray
    _by_frame: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.frame)
        self.frame = np.asarray(self.frame, dtype=object)
        self.label = np.asarray(self.label, dtype=object)
        self.clip = np.asarray(self.clip, np.int64).reshape(n)
        self.t = np.asarray(self.t, np.int64).reshape(n)
        self.boxes = np.asarray(self.boxes, np.float64).reshape(n, 4)
        self.moving = np.asarray(self.moving, bool).reshape(n)
        self.instance = np.asarray(self.instance, np.int64).reshape(n)
        if not (len(self.label) == n):
            raise ValueError(f"every ground-truth column must have {n} rows")

    def __len__(self) -> int:
        return len(self.frame)

    @classmethod
    def empty(cls) -> "GroundTruth":
        return cls([], [], [], [], np.zeros((0, 4)), [], [])

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "GroundTruth":
        """Build from dicts with the keys of :data:`GT_COLUMNS`."""
        if not rows:
            return cls.empty()
        return cls(
            frame=[r["frame"] for r in rows],
            clip=[r["clip"] for r in rows],
            t=[r["t"] for r in rows],
            label=[r["class"] for r in rows],
            boxes=[[r["x0"], r["y0"], r["x1"], r["y1"]] for r in rows],
            moving=[r["moving"] for r in rows],
            instance=[r["instance"] for r in rows],
        )

    @property
    def class_names(self) -> list[str]:
        """Sorted distinct class names."""
        return sorted(set(self.label.tolist()))

    def rows_of(self, frame: str) -> np.ndarray:
        """Row indices of one frame's objects."""
        if self._by_frame is None:
            index: dict[str, list[int]] = {}
            for i, name in enumerate(self.frame):
                index.setdefault(name, []).append(i)
            self._by_frame = {k: np.array(v, np.int64) for k, v in index.items()}
        return self._by_frame.get(frame, np.zeros(0, np.int64))

    def select(self, mask: np.ndarray) -> "GroundTruth":
        """Rows where ``mask`` is true."""
        return GroundTruth(
            self.frame[mask],
            self.clip[mask],
            self.t[mask],
            self.label[mask],
            self.boxes[mask],
            self.moving[mask],
            self.instance[mask],
        )

    def fitted(self, native: tuple[int, int], size: tuple[int, int], policy: str) -> "GroundTruth":
        """The table for frames that a resize policy brought from ``native`` (h, w) to ``size``
        (H, W): boxes mapped with :func:`marionette.data.frames.resize_boxes`; objects left
        less than half a pixel wide or high (cropped away) are dropped, as the generators do."""
        if tuple(native) == tuple(size):
            return self
        boxes = resize_boxes(self.boxes, native, size, policy)
        kept = (boxes[:, 2] - boxes[:, 0] >= 0.5) & (boxes[:, 3] - boxes[:, 1] >= 0.5)
        return dataclasses.replace(self, boxes=boxes).select(kept)

    def write_csv(self, path: str | os.PathLike) -> None:
        """Write the table with a header (atomically)."""
        with atomic_write(path, "w") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(GT_COLUMNS)
            for i in range(len(self)):
                x0, y0, x1, y1 = (f"{v:g}" for v in self.boxes[i])
                writer.writerow(
                    [
                        self.frame[i],
                        self.clip[i],
                        self.t[i],
                        self.label[i],
                        x0,
                        y0,
                        x1,
                        y1,
                        int(self.moving[i]),
                        self.instance[i],
                    ]
                )

    @classmethod
    def read_csv(cls, path: str | os.PathLike) -> "GroundTruth":
        """Read a table written by :meth:`write_csv` (or any CSV with those named columns)."""
        path = Path(path)
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = set(GT_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise ValueError(
                    f"{path}: ground truth needs the columns {GT_COLUMNS}, missing "
                    f"{sorted(missing)}"
                )
            rows = []
            for line, row in enumerate(reader, start=2):
                try:
                    rows.append(
                        {
                            "frame": row["frame"],
                            "clip": int(row["clip"]),
                            "t": int(row["t"]),
                            "class": row["class"],
                            "x0": float(row["x0"]),
                            "y0": float(row["y0"]),
                            "x1": float(row["x1"]),
                            "y1": float(row["y1"]),
                            "moving": row["moving"].strip().lower() in ("1", "true", "m"),
                            "instance": int(row["instance"]),
                        }
                    )
                except (TypeError, ValueError) as error:
                    raise ValueError(
                        f"{path}:{line}: bad ground-truth row {row} ({error})"
                    ) from error
                _check_box(rows[-1], f"{path}:{line}")
        if not rows:
            raise ValueError(
                f"{path} has a header but no rows: scores against it would all be zero. Remove "
                f"the file for a dataset without ground truth, or regenerate it."
            )
        return cls.from_rows(rows)


def _check_box(row: dict, where: str) -> None:
    """A box must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, all finite."""
    x0, y0, x1, y1 = (row[k] for k in ("x0", "y0", "x1", "y1"))
    if not np.isfinite([x0, y0, x1, y1]).all() or x0 > x1 or y0 > y1:
        raise ValueError(
            f"{where}: box must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got "
            f"({x0:g}, {y0:g}, {x1:g}, {y1:g}); are its x and y swapped, or y first as in MOC's "
            f"tables?"
        )
