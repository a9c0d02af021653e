"""Frames from disk or memory: numbered frame folders, image conversion and resize policies.

A *frame source* holds N frames of one size with, per frame, a name, a clip id and a time index
inside its clip. :class:`FrameFolder` reads a folder of numbered images; :class:`InMemoryFrames`
wraps a uint8 tensor (the synthetic worlds produce these). :class:`marionette.data.FrameStacks`
turns either into training items of T consecutive frames.
"""

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = [
    "INDEX_FILE",
    "RESIZE_POLICIES",
    "FrameFolder",
    "FrameSource",
    "InMemoryFrames",
    "adapt_frames",
    "frame_sort_key",
    "load_image",
    "resize_boxes",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RESIZE_POLICIES = ("keep", "crop", "resize", "pad")
#: Written by the generators: one row per frame, columns ``frame,clip,t``.
INDEX_FILE = "index.csv"
_MOC_NAME = re.compile(r"^(\d+)_(\d+)$")
_NUMBER = re.compile(r"\d+")


def frame_sort_key(name: str) -> tuple[int, ...]:
    """Numeric sort key of a frame file name: the tuple of the integers in its stem.

    ``"10.png"`` sorts after ``"9.png"``; MOC's ``"00012_3.png"`` sorts as (12, 3).

    Example:
        >>> sorted(["10.png", "9.png", "frame_0002.jpg"], key=frame_sort_key)
        ['frame_0002.jpg', '9.png', '10.png']
    """
    numbers = _NUMBER.findall(Path(name).stem)
    if not numbers:
        raise ValueError(
            f"frame file names must contain a number (0.png, 1.png, ...), got {name!r}"
        )
    return tuple(int(n) for n in numbers)


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """RGB version of any PIL mode; transparent pixels are composited over black."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = 1.0 if array.max() <= 1.0 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, image).convert("RGB")
    if image.mode != "RGB":
        try:
            return image.convert("RGB")
        except (ValueError, OSError) as error:
            raise ValueError(f"{path}: cannot convert image mode {image.mode!r} to RGB") from error
    return image


def _resize(image: Image.Image, size: tuple[int, int], policy: str) -> Image.Image:
    """Apply a resize policy to reach ``size`` = (height, width)."""
    height, width = size
    if policy == "resize":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if policy == "crop":  # scale so the image covers the canvas, then crop the centre
        scale = max(width / image.width, height / image.height)
        scaled = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(scaled, Image.Resampling.LANCZOS)
        left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
        return image.crop((left, top, left + width, top + height))
    if policy == "pad":  # keep pixels, extend right and bottom edges (or crop if larger)
        array = np.asarray(image)[:height, :width]
        pad = ((0, height - array.shape[0]), (0, width - array.shape[1]), (0, 0))
        return Image.fromarray(np.pad(array, pad, mode="edge"))
    return image


def resize_boxes(
    boxes: np.ndarray, native: tuple[int, int], size: tuple[int, int], policy: str
) -> np.ndarray:
    """Map (x0, y0, x1, y1) pixel boxes ``[N, 4]`` of a ``native`` (h, w) frame to the frame a
    resize policy makes of it at ``size`` (H, W), clipped to that frame.

    ``resize`` scales x by W / w and y by H / h; ``crop`` scales both by
    s = max(W / w, H / h) (as rounded to whole pixels) and shifts by the centred crop's corner;
    ``pad`` and ``keep`` leave pixels where they are.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    (h, w), (height, width) = native, size
    if policy == "resize":
        boxes = boxes * np.array([width / w, height / h] * 2)
    elif policy == "crop":
        scale = max(width / w, height / h)
        scaled = (max(width, round(w * scale)), max(height, round(h * scale)))
        corner = np.array([(scaled[0] - width) // 2, (scaled[1] - height) // 2] * 2)
        boxes = boxes * np.array([scaled[0] / w, scaled[1] / h] * 2) - corner
    return np.clip(boxes, 0.0, [width, height, width, height])


def load_image(
    path: str | os.PathLike, size: tuple[int, int] | None = None, policy: str = "keep"
) -> np.ndarray:
    """Read one image as RGB uint8 [H, W, 3], applying a resize policy when ``size`` is given.

    RGBA, LA and palette images are composited over black; grayscale and 16-bit images are
    replicated to three channels.
    """
    path = Path(path)
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    try:
        with Image.open(path) as image:
            image.load()
            rgb = _to_rgb(image, path)
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: unreadable or truncated image ({error})") from error
    if size is not None and policy != "keep":
        rgb = _resize(rgb, size, policy)
    return np.array(rgb, dtype=np.uint8)  # a writable copy of the decoded pixels


@dataclass
class FrameSource:
    """Frames with names and clip structure; subclasses provide :meth:`frame`.

    Attributes:
        names: per-frame name (file name for folders).
        clips: per-frame clip id; stacks of consecutive frames never cross a clip.
        times: per-frame time index inside its clip.
        height, width: frame size in pixels.
    """

    names: list[str]
    clips: np.ndarray
    times: np.ndarray
    height: int
    width: int

    def __len__(self) -> int:
        return len(self.names)

    def frame(self, index: int) -> torch.Tensor:
        """Frame ``index`` as uint8 [3, H, W]."""
        raise NotImplementedError

    def frames(self, indices) -> torch.Tensor:
        """Several frames as uint8 [N, 3, H, W]."""
        return torch.stack([self.frame(int(i)) for i in indices])

    def head(self, count: int) -> "InMemoryFrames":
        """The first ``count`` frames (all if ``count`` is 0 or larger), decoded into memory."""
        count = len(self) if not count or count > len(self) else count
        return InMemoryFrames(
            self.frames(range(count)), self.clips[:count], self.times[:count], self.names[:count]
        )


class InMemoryFrames(FrameSource):
    """Frames held as one uint8 tensor [N, 3, H, W]."""

    def __init__(
        self, frames: torch.Tensor, clips=None, times=None, names: list[str] | None = None
    ) -> None:
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(
                f"frames must be uint8 [N, 3, H, W], got {frames.dtype} {tuple(frames.shape)}"
            )
        n = frames.shape[0]
        clips = np.zeros(n, np.int64) if clips is None else np.asarray(clips, np.int64)
        times = np.arange(n) if times is None else np.asarray(times, np.int64)
        names = [f"{i}.png" for i in range(n)] if names is None else list(names)
        if not len(clips) == len(times) == len(names) == n:
            raise ValueError(f"clips, times and names must have one entry per frame ({n})")
        super().__init__(names, clips, times, frames.shape[2], frames.shape[3])
        self.data = frames

    def frame(self, index: int) -> torch.Tensor:
        return self.data[index]

    def frames(self, indices) -> torch.Tensor:
        return self.data[torch.as_tensor(np.asarray(indices, np.int64))]


def _read_index(folder: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    path = folder / INDEX_FILE
    if not path.exists():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"frame", "clip", "t"} <= set(rows[0]):
        raise ValueError(f"{path}: the index must have the columns frame, clip, t")
    by_name = {row["frame"]: (int(row["clip"]), int(row["t"])) for row in rows}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f"{path} does not list {len(missing)} frames of the folder, e.g. "
            f"{missing[:3]}; regenerate the dataset or delete the index"
        )
    clips = np.array([by_name[n][0] for n in names], np.int64)
    times = np.array([by_name[n][1] for n in names], np.int64)
    return clips, times


def _clips_from_names(names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    matches = [_MOC_NAME.match(Path(n).stem) for n in names]
    if not all(matches):
        return None
    clips = np.array([int(m.group(1)) for m in matches], np.int64)
    times = np.array([int(m.group(2)) for m in matches], np.int64)
    return clips, times


class FrameFolder(FrameSource):
    """A folder of numbered frames (``0.png, 1.png, ...``; png or jpg), sorted numerically.

    Clip boundaries come from ``index.csv`` (written by the generators), else from MOC-style
    names ``NNNNN_t.png`` (clip NNNNN, time t), else the whole folder is one clip.

    Args:
        folder: the directory.
        size: target (height, width); ``None`` keeps the frames' own size.
        resize: ``"keep"`` (frames must already be ``size``, or all share one size),
            ``"crop"`` (scale to cover, centre crop: the original's policy), ``"resize"``
            (plain resize to H x W, any aspect ratio) or ``"pad"`` (keep pixels, extend the
            right and bottom edges).
        cache: keep decoded frames in memory as uint8: ``True``, ``False`` or ``"auto"``
            (when they take less than ``cache_limit_bytes``).
        cache_limit_bytes: the ``"auto"`` budget.
        channels: the files' channel order, ``"rgb"``, or ``"bgr"`` (MOC's model inputs):
            frames are always returned as RGB.

    Attributes:
        native: (height, width) of the files (of the first one), before the resize policy.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        size: tuple[int, int] | None = None,
        resize: str = "keep",
        cache: bool | str = "auto",
        cache_limit_bytes: int = 4 << 30,
        channels: str = "rgb",
    ) -> None:
        folder = Path(folder)
        if channels not in ("rgb", "bgr"):
            raise ValueError(f"channels must be 'rgb' or 'bgr', got {channels!r}")
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {resize!r}")
        if not folder.exists():
            raise FileNotFoundError(f"data folder {folder} does not exist")
        if not folder.is_dir():
            raise NotADirectoryError(f"data folder {folder} is not a directory")
        if folder.name.endswith(".partial"):
            raise ValueError(f"{folder} is an unfinished dataset (its generator did not complete)")
        files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            others = sorted(p.name for p in folder.iterdir())[:5]
            raise ValueError(
                f"data folder {folder} holds no .png or .jpg frames"
                + (f" (found {others})" if others else " (it is empty)")
            )
        files.sort(key=lambda p: frame_sort_key(p.name))
        keys = [frame_sort_key(p.name) for p in files]
        for a, b, key_a, key_b in zip(files, files[1:], keys, keys[1:], strict=False):
            if key_a == key_b:
                raise ValueError(f"{a.name} and {b.name} in {folder} have the same frame number")
        names = [p.name for p in files]
        structure = _read_index(folder, names) or _clips_from_names(names)
        clips, times = structure or (np.zeros(len(names), np.int64), np.arange(len(names)))
        self.folder, self.resize, self.paths, self.channels = folder, resize, files, channels
        first = load_image(files[0])
        native = self.native = (int(first.shape[0]), int(first.shape[1]))
        if size is None:
            size = native
        elif resize == "keep" and tuple(native) != tuple(size):
            raise ValueError(
                f"{files[0]} is {native[0]} x {native[1]} (H x W) but the canvas is "
                f"{size[0]} x {size[1]}; pass a resize policy (crop, resize or pad) or a "
                f"matching canvas size"
            )
        super().__init__(names, clips, times, int(size[0]), int(size[1]))
        estimate = len(files) * 3 * self.height * self.width
        self._cache: dict[int, torch.Tensor] | None = None
        if cache is True or (cache == "auto" and estimate <= cache_limit_bytes):
            self._cache = {}
        elif cache not in (False, "auto"):
            raise ValueError(f"cache must be True, False or 'auto', got {cache!r}")

    def frame(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        path = self.paths[index]
        array = load_image(path, (self.height, self.width), self.resize)
        if array.shape[:2] != (self.height, self.width):
            raise ValueError(
                f"{path} is {array.shape[0]} x {array.shape[1]} (H x W), unlike the other frames "
                f"({self.height} x {self.width}); pass a resize policy (crop, resize or pad)"
            )
        if self.channels == "bgr":
            array = np.ascontiguousarray(array[..., ::-1])
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        if self._cache is not None:
            self._cache[index] = tensor
        return tensor

    def check(self) -> None:
        """Decode every frame: a full check of the folder (lazy decoding otherwise meets a bad
        file only when a batch draws it).

        Raises:
            ValueError: some frames cannot be used; the message names them and the count.
        """
        problems = []
        for index in range(len(self)):
            try:
                self.frame(index)
            except ValueError as error:
                problems.append(str(error))
        if problems:
            shown = "\n  ".join(problems[:5])
            more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise ValueError(
                f"{len(problems)} of {len(self)} frames in {self.folder} cannot be used:\n  "
                f"{shown}{more}\nReplace or remove them (marionette data check lists them)."
            )

    def load_all(self) -> "InMemoryFrames":
        """Decode every frame into an :class:`InMemoryFrames` (fails early on a bad file)."""
        data = torch.stack([self.frame(i) for i in range(len(self))])
        return InMemoryFrames(data, self.clips, self.times, self.names)


def adapt_frames(
    frames: FrameSource, size: tuple[int, int], policy: str, what: str = "frames"
) -> InMemoryFrames:
    """Bring in-memory frames to ``size`` = (height, width) with a resize policy.

    ``"keep"`` accepts only frames that already have that size.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    if (frames.height, frames.width) == tuple(size):
        return (
            frames
            if isinstance(frames, InMemoryFrames)
            else InMemoryFrames(
                frames.frames(range(len(frames))), frames.clips, frames.times, frames.names
            )
        )
    if policy == "keep":
        raise ValueError(
            f"{what} are {frames.height} x {frames.width} (H x W) but the canvas is "
            f"{size[0]} x {size[1]}; pass a resize policy (crop, resize or pad) or a matching "
            f"canvas size"
        )
    resized = [
        np.asarray(_resize(Image.fromarray(frames.frame(i).permute(1, 2, 0).numpy()), size, policy))
        for i in range(len(frames))
    ]
    data = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous()
    return InMemoryFrames(data, frames.clips, frames.times, frames.names)
