"""Datasets in MOC's (SPACE-Time's) on-disk layout, read as they lie.

MOC writes one folder per game (``docs/data.md``; ``marionette data atari --layout moc`` writes
the same)::

    <Game>-v0/space_like/<split>/NNNNN_t.png   model inputs, 128 x 128, channels stored BGR
    <Game>-v0/rgb/<split>/NNNNN_t.png          raw screens, RGB
    <Game>-v0/bb/<split>/NNNNN_t.csv           boxes: y_min, y_max, x_min, x_max, flag, label

``NNNNN`` is the stack (our clip) and ``t`` the frame inside it. Box coordinates are fractions
of the frame, y first; ``flag`` is ``M`` (a moving game object) or ``S`` (static, the HUD). MOC's
tables carry no object identities; :func:`link_instances` links the boxes of one label between
consecutive frames so that temporal consistency can be measured.
"""

import csv
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .frames import FrameFolder
from .groundtruth import GroundTruth

__all__ = ["MocSplit", "find_moc", "link_instances", "read_moc_boxes"]

#: The folders of one game.
_INPUTS = ("space_like", "rgb")  # preferred first: MOC's model input
_BOXES = "bb"
_GAME = re.compile(r"^(?P<game>.+)-v\d+$")


@dataclass(frozen=True)
class MocSplit:
    """One split of one game in MOC's layout.

    Attributes:
        root: the ``<Game>-v0`` folder.
        game: the game's name (``Pong`` for ``Pong-v0``), which picks the HUD filter.
        split: ``train``, ``validation`` or ``test`` (or any other name the folder uses).
        frames: the folder of frames read (``space_like/<split>``, else ``rgb/<split>``).
        boxes: ``bb/<split>``, or None where it does not exist.
    """

    root: Path
    game: str
    split: str
    frames: Path
    boxes: Path | None

    @property
    def channels(self) -> str:
        """Channel order of the frame files: MOC stored its model inputs BGR."""
        return "bgr" if self.frames.parent.name == "space_like" else "rgb"

    def open_frames(self, size, resize: str) -> FrameFolder:
        """The split's frames, converted to RGB; clips and times from the ``NNNNN_t`` names."""
        return FrameFolder(self.frames, size, resize, channels=self.channels)

    def missing_boxes(self) -> str:
        """Why the split has no ground truth, as an instruction."""
        return (
            f"{self.root / _BOXES / self.split} does not exist: evaluation needs MOC's box tables "
            f"(bb/{self.split}/NNNNN_t.csv, one per frame)"
        )


def _is_game(folder: Path) -> bool:
    return folder.is_dir() and any((folder / kind).is_dir() for kind in (*_INPUTS, _BOXES))


def _game_name(root: Path) -> str:
    match = _GAME.match(root.name)
    return match.group("game") if match else root.name


def _splits(root: Path) -> list[str]:
    """The split folders under the game's input folders."""
    folders = [root / kind for kind in _INPUTS if (root / kind).is_dir()]
    return sorted({p.name for folder in folders for p in folder.iterdir() if p.is_dir()})


def find_moc(path: str | Path, split: str | None = None, default: str = "train") -> MocSplit | None:
    """The MOC split ``path`` points at, or None if ``path`` is not in MOC's layout.

    ``path`` may be a game folder (``Pong-v0``), a split folder (``Pong-v0/space_like/test``, or
    the ``rgb``/``bb`` one) or a folder holding one game folder (MOC's ``aiml_atari_data``, or
    ``OUT/moc`` of ``marionette data atari --layout moc``). A game folder gives ``split``; without
    one, ``default``, or (with a warning) its only split if it lacks that one. A folder of our
    own layout (with ``index.csv`` or ``dataset.json``) is never MOC's.

    Raises:
        ValueError: the folder looks like MOC's but lacks what is needed (inputs, the split), or
            holds several games; the message says what is missing.
    """
    path = Path(path)
    if not path.is_dir() or (path / "index.csv").exists() or (path / "dataset.json").exists():
        return None
    if path.parent.name in (*_INPUTS, _BOXES) and _is_game(path.parent.parent):
        return _split(path.parent.parent, path.name, path.parent.name)
    if not _is_game(path):
        games = sorted(p for p in path.iterdir() if _GAME.match(p.name) and _is_game(p))
        if not games:
            return None
        if len(games) > 1:
            raise ValueError(
                f"{path} holds several MOC games ({', '.join(p.name for p in games)}); point "
                f"--data at one of them, e.g. {games[0]}"
            )
        path = games[0]
    splits = _splits(path)
    if split is None and default not in splits and len(splits) == 1:
        warnings.warn(
            f"MOC dataset {path} has no {default!r} split; using its only split {splits[0]!r}",
            stacklevel=3,
        )
        split = splits[0]
    return _split(path, split or default)


def _split(root: Path, split: str, kind: str | None = None) -> MocSplit:
    kinds = [kind] if kind in _INPUTS else [k for k in _INPUTS if (root / k).is_dir()]
    if not kinds:
        raise ValueError(
            f"{root} looks like a MOC game folder (it has {_BOXES}/) but holds no frames: "
            f"space_like/<split>/ (MOC's BGR inputs) or rgb/<split>/ is missing"
        )
    frames = root / kinds[0] / split
    if not frames.is_dir():
        found = _splits(root)
        raise ValueError(
            f"MOC dataset {root} has no {split!r} split ({frames} is missing; it has "
            f"{', '.join(found) or 'no split'}); point --data at "
            f"{root / kinds[0] / (found[0] if found else split)} or generate the split"
        )
    boxes = root / _BOXES / split
    return MocSplit(root, _game_name(root), split, frames, boxes if boxes.is_dir() else None)


def _read_table(path: Path) -> list[tuple[float, float, float, float, bool, str]]:
    """One box CSV: (y_min, y_max, x_min, x_max) as fractions, moving, label per row."""
    rows = []
    with open(path, newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            try:
                y0, y1, x0, x1 = (float(v) for v in row[:4])
                flag, label = row[4].strip(), row[5].strip()
            except (ValueError, IndexError) as error:
                raise ValueError(
                    f"{path}:{line}: a MOC box row is y_min, y_max, x_min, x_max, flag, label "
                    f"(fractions of the frame, flag M or S), got {row} ({error})"
                ) from error
            if flag not in ("M", "S"):
                raise ValueError(f"{path}:{line}: the flag must be M or S, got {flag!r}")
            if not (0 <= y0 <= y1 <= 1 and 0 <= x0 <= x1 <= 1):
                raise ValueError(
                    f"{path}:{line}: MOC boxes are y_min <= y_max, x_min <= x_max as fractions "
                    f"of the frame in [0, 1], got {row[:4]}; is this MOC's bb/ table?"
                )
            rows.append((y0, y1, x0, x1, flag == "M", label))
    return rows


def read_moc_boxes(split: MocSplit, frames: FrameFolder) -> GroundTruth:
    """The ground truth of a MOC split for its frames: boxes in pixels of the files, as
    (x0, y0, x1, y1), moving from the flag, instances from :func:`link_instances`.

    Raises:
        ValueError: frames without a box table (MOC writes one per frame, never an empty one).
    """
    if split.boxes is None:
        raise ValueError(split.missing_boxes())
    tables = [split.boxes / (Path(name).stem + ".csv") for name in frames.names]
    missing = [t.name for t in tables if not t.exists()]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(tables)} frames of {split.frames} have no box table in "
            f"{split.boxes} (e.g. {missing[:3]}); MOC writes one per frame: regenerate them or "
            f"remove those frames"
        )
    extra = {p.stem for p in split.boxes.glob("*.csv")} - {Path(n).stem for n in frames.names}
    if extra:
        warnings.warn(
            f"{len(extra)} box tables in {split.boxes} have no frame in {split.frames} (e.g. "
            f"{sorted(extra)[:3]}); they are ignored",
            stacklevel=3,
        )
    height, width = frames.native
    rows = []
    for name, clip, t, table in zip(frames.names, frames.clips, frames.times, tables, strict=True):
        for y0, y1, x0, x1, moving, label in _read_table(table):
            box = dict(x0=x0 * width, y0=y0 * height, x1=x1 * width, y1=y1 * height)
            rows.append(dict(frame=name, clip=clip, t=t, moving=moving, instance=-1, **box,
                             **{"class": label}))  # fmt: skip
    groundtruth = GroundTruth.from_rows(rows)
    kept = ((groundtruth.boxes[:, 2:] - groundtruth.boxes[:, :2]) >= 0.5).all(1)
    groundtruth = groundtruth.select(kept)  # as the generators: sub-pixel boxes are dropped
    groundtruth.instance = link_instances(groundtruth, frames.native)
    return groundtruth


def link_instances(groundtruth: GroundTruth, size: tuple[int, int]) -> np.ndarray:
    """Object identities for a table without them: within a clip, each box of frame t + 1 takes
    the identity of a box with the same label at frame t, matched one to one, closest centres
    first, among pairs less than a quarter of the frame's diagonal apart (``size`` = (H, W));
    the others start a new identity. Identities are unique within a clip.
    """
    instance = np.full(len(groundtruth), -1, np.int64)
    centre = (groundtruth.boxes[:, :2] + groundtruth.boxes[:, 2:]) / 2
    reach = np.hypot(*size) / 4
    for clip in np.unique(groundtruth.clip):
        in_clip = np.flatnonzero(groundtruth.clip == clip)
        fresh = 0
        for label in np.unique(groundtruth.label[in_clip]):
            rows = in_clip[groundtruth.label[in_clip] == label]
            previous = np.zeros(0, np.int64)
            for t in np.unique(groundtruth.t[rows]):
                now = rows[groundtruth.t[rows] == t]
                if len(previous) and groundtruth.t[previous[0]] == t - 1:
                    cost = np.linalg.norm(centre[previous][:, None] - centre[now][None], axis=-1)
                    for a, b in _closest_pairs(cost, cost <= reach):
                        instance[now[b]] = instance[previous[a]]
                for row in now[instance[now] < 0]:
                    instance[row], fresh = fresh, fresh + 1
                previous = now
    return instance


def _closest_pairs(cost: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """A one-to-one matching of rows and columns, taking allowed pairs by increasing cost."""
    pairs, rows, columns = [], set(), set()
    for flat in np.argsort(cost, axis=None, kind="stable"):
        a, b = np.unravel_index(flat, cost.shape)
        if allowed[a, b] and a not in rows and b not in columns:
            pairs.append((int(a), int(b)))
            rows.add(a)
            columns.add(b)
    return pairs
