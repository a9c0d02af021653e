"""Procedural sprite worlds with exact ground truth: the built-in data that needs no files.

:func:`generate_sprite_world` draws clips of sprites (pixel-art classes with their own shape and
colors) moving and bouncing over a background, occluding each other in a fixed depth order.
:func:`generate_tetrominoes` draws Tetrominoes-like images (35 x 35, 19 orientations, 6 colors,
3 pieces on black) for object-segmentation ARI. Both are deterministic given their seed, and give
per frame every visible object's class, instance id (stable across the clip), box and an instance
mask.
"""

import colorsys
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .frames import InMemoryFrames
from .groundtruth import GroundTruth

__all__ = [
    "SYNTHETIC_WORLDS",
    "GeneratedData",
    "SpriteWorldConfig",
    "TetrominoesConfig",
    "generate",
    "generate_sprite_world",
    "generate_tetrominoes",
    "make_sprite_classes",
]

BACKGROUNDS = ("plain", "stars", "checker")


@dataclass(frozen=True)
class SpriteWorldConfig:
    """Settings of a procedural sprite world.

    Attributes:
        height, width: frame size in pixels.
        num_classes: number of sprite classes (each a fixed pixel-art shape with its colors).
        sprite_size: (smallest, largest) sprite side in pixels.
        objects: (fewest, most) objects per clip.
        frames_per_clip: frames T of every clip.
        num_clips: number of clips.
        speed: largest speed in pixels per frame (objects bounce off the borders).
        static_fraction: share of objects that never move.
        background: ``"plain"``, ``"stars"`` (sparse static dots) or ``"checker"`` (low-contrast
            tiles).
        background_color: RGB in 0..255.
        seed: random seed; the sprite classes depend on ``class_seed`` only, so train and test
            splits share them.
        class_seed: seed of the sprite classes.
    """

    height: int = 64
    width: int = 64
    num_classes: int = 5
    sprite_size: tuple[int, int] = (7, 12)
    objects: tuple[int, int] = (2, 5)
    frames_per_clip: int = 8
    num_clips: int = 256
    speed: float = 1.5
    static_fraction: float = 0.2
    background: str = "plain"
    background_color: tuple[int, int, int] = (20, 20, 32)
    seed: int = 0
    class_seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.sprite_size
        if not 1 <= lo <= hi <= min(self.height, self.width):
            raise ValueError(
                f"sprite_size must be (min, max) with 1 <= min <= max <= canvas side, "
                f"got {self.sprite_size}"
            )
        if not 1 <= self.objects[0] <= self.objects[1]:
            raise ValueError(f"objects must be (min, max) with 1 <= min <= max, got {self.objects}")
        for name in ("num_classes", "frames_per_clip", "num_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")


@dataclass(frozen=True)
class TetrominoesConfig:
    """Settings of the Tetrominoes-like images (after the Multi-Object Datasets' Tetrominoes).

    Attributes:
        size: image side (35).
        block: side of one tetromino block in pixels.
        pieces: pieces per image (non-overlapping).
        num_images: number of images (each its own clip of one frame).
        seed: random seed.
    """

    size: int = 35
    block: int = 5
    pieces: int = 3
    num_images: int = 1000
    seed: int = 0


@dataclass
class GeneratedData:
    """Frames with their ground truth, instance masks and generator settings."""

    frames: InMemoryFrames
    groundtruth: GroundTruth
    masks: np.ndarray  # int16 [N, H, W]: instance id per pixel, -1 for background
    class_names: list[str]
    settings: dict


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def true_sprites(settings: dict) -> list[np.ndarray] | None:
    """The class sprites (RGBA uint8 [h, w, 4]) of a sprite world from its recorded settings
    (a dataset's ``dataset.json``, or the ``settings`` of :class:`GeneratedData`); None for
    other data."""
    if settings.get("generator") != "sprite_world":
        return None
    size = tuple(settings["sprite_size"])
    return make_sprite_classes(settings["num_classes"], size, settings["class_seed"])


def make_sprite_classes(num_classes: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Pixel-art sprites, RGBA uint8 [h, w, 4] with binary alpha: left-right symmetric random
    patterns (like arcade invaders) in a distinct hue per class, with a darker second tone.

    Every sprite's alpha touches all four sides of its array, so its box is its array size.
    """
    rng = np.random.default_rng(seed)
    offset = rng.random()
    sprites = []
    for k in range(num_classes):
        h, w = (int(v) for v in rng.integers(size[0], size[1] + 1, size=2))
        half = (w + 1) // 2
        while True:
            left = rng.random((h, half)) < 0.6
            mask = np.concatenate([left, left[:, : w - half][:, ::-1]], axis=1)
            if mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask.mean() > 0.35:
                break
        hue = offset + k / num_classes
        main, second = _hsv(hue, 0.75, 0.95), _hsv(hue, 0.9, 0.55)
        tone = rng.random((h, half)) < 0.25
        tone = np.concatenate([tone, tone[:, : w - half][:, ::-1]], axis=1)
        rgb = np.where(tone[..., None], second, main)
        sprite = np.zeros((h, w, 4), np.uint8)
        sprite[..., :3] = np.round(rgb).astype(np.uint8)
        sprite[..., 3] = mask * 255
        sprites.append(sprite)
    return sprites


def _background(config: SpriteWorldConfig, rng: np.random.Generator) -> np.ndarray:
    base = np.empty((config.height, config.width, 3), np.uint8)
    base[:] = config.background_color
    if config.background == "stars":
        stars = rng.random((config.height, config.width)) < 0.01
        base[stars] = np.clip(np.array(config.background_color) + 90, 0, 255)
    elif config.background == "checker":
        ys, xs = np.mgrid[: config.height, : config.width]
        light = ((ys // 8 + xs // 8) % 2).astype(bool)
        base[light] = np.clip(np.array(config.background_color) + 14, 0, 255)
    return base


def generate_sprite_world(config: SpriteWorldConfig) -> GeneratedData:
    """Generate ``config.num_clips`` clips of ``config.frames_per_clip`` frames (see the module).

    Objects are drawn at integer pixel positions in object order (later objects in front) and
    stay fully inside the canvas, so every box is exact: the object's own pixels span it.
    """
    sprites = make_sprite_classes(config.num_classes, config.sprite_size, config.class_seed)
    names = [f"sprite_{k}" for k in range(config.num_classes)]
    rng = np.random.default_rng(config.seed)
    t_len, height, width = config.frames_per_clip, config.height, config.width
    n_frames = config.num_clips * t_len
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    masks = np.full((n_frames, height, width), -1, np.int16)
    rows: list[dict] = []
    background = _background(config, rng)
    for clip in range(config.num_clips):
        count = int(rng.integers(config.objects[0], config.objects[1] + 1))
        classes = rng.integers(0, config.num_classes, size=count)
        sizes = np.array([sprites[c].shape[:2] for c in classes])  # (h, w)
        limit = np.stack([width - sizes[:, 1], height - sizes[:, 0]], axis=1).astype(float)
        position = rng.random((count, 2)) * limit  # top-left (x, y)
        velocity = (rng.random((count, 2)) * 2 - 1) * config.speed
        velocity[rng.random(count) < config.static_fraction] = 0.0
        for t in range(t_len):
            index = clip * t_len + t
            frame = background.copy()
            for obj, c in enumerate(classes):
                x, y = (int(v) for v in np.round(position[obj]))
                sprite = sprites[c]
                h, w = sprite.shape[:2]
                opaque = sprite[..., 3] > 0
                frame[y : y + h, x : x + w][opaque] = sprite[..., :3][opaque]
                masks[index, y : y + h, x : x + w][opaque] = obj
            frames[index] = frame
            for obj, c in enumerate(classes):
                if not (masks[index] == obj).any():
                    continue  # fully occluded
                x, y = (int(v) for v in np.round(position[obj]))
                h, w = sprites[c].shape[:2]
                rows.append(
                    {
                        "frame": f"{index}.png",
                        "clip": clip,
                        "t": t,
                        "class": names[c],
                        "x0": x,
                        "y0": y,
                        "x1": x + w,
                        "y1": y + h,
                        "moving": bool(np.any(velocity[obj] != 0)),
                        "instance": obj,
                    }
                )
            position, velocity = _bounce(position + velocity, velocity, limit)
    clips = np.repeat(np.arange(config.num_clips), t_len)
    times = np.tile(np.arange(t_len), config.num_clips)
    source = InMemoryFrames(
        torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(),
        clips,
        times,
        [f"{i}.png" for i in range(n_frames)],
    )
    settings = {"generator": "sprite_world", **asdict(config)}
    return GeneratedData(source, GroundTruth.from_rows(rows), masks, names, settings)


def _bounce(position: np.ndarray, velocity: np.ndarray, limit: np.ndarray):
    low = position < 0
    high = position > limit
    position = np.where(low, -position, np.where(high, 2 * limit - position, position))
    velocity = np.where(low | high, -velocity, velocity)
    return np.clip(position, 0, limit), velocity


_TETROMINOES = {  # 19 fixed orientations as block matrices
    "I": ["1111", "1\n1\n1\n1"],
    "O": ["11\n11"],
    "T": ["111\n010", "10\n11\n10", "010\n111", "01\n11\n01"],
    "S": ["011\n110", "10\n11\n01"],
    "Z": ["110\n011", "01\n11\n10"],
    "J": ["100\n111", "11\n10\n10", "111\n001", "01\n01\n11"],
    "L": ["001\n111", "10\n10\n11", "111\n100", "11\n01\n01"],
}
_TETROMINO_COLORS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}


def _tetromino_masks(block: int) -> list[tuple[str, np.ndarray]]:
    shapes = []
    for name, variants in _TETROMINOES.items():
        for variant in variants:
            cells = np.array([[c == "1" for c in row] for row in variant.split("\n")])
            shapes.append((name, np.kron(cells, np.ones((block, block), bool))))
    return shapes


def generate_tetrominoes(config: TetrominoesConfig) -> GeneratedData:
    """Tetrominoes-like images: ``pieces`` non-overlapping tetrominoes on black (see the module).

    The class of a piece is its shape letter (I, O, T, S, Z, J, L); its color is one of six.
    """
    shapes = _tetromino_masks(config.block)
    colors = list(_TETROMINO_COLORS.values())
    rng = np.random.default_rng(config.seed)
    n, size = config.num_images, config.size
    frames = np.zeros((n, size, size, 3), np.uint8)
    masks = np.full((n, size, size), -1, np.int16)
    rows = []
    for index in range(n):
        for piece in range(config.pieces):
            for _ in range(1000):
                name, shape = shapes[int(rng.integers(len(shapes)))]
                h, w = shape.shape
                y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
                if not (masks[index, y : y + h, x : x + w][shape] >= 0).any():
                    break
            else:
                raise RuntimeError(
                    f"could not place {config.pieces} pieces without overlap in a "
                    f"{size} x {size} image; use fewer pieces or smaller blocks"
                )
            color = colors[int(rng.integers(len(colors)))]
            frames[index, y : y + h, x : x + w][shape] = color
            masks[index, y : y + h, x : x + w][shape] = piece
            rows.append(
                {
                    "frame": f"{index}.png",
                    "clip": index,
                    "t": 0,
                    "class": name,
                    "x0": x,
                    "y0": y,
                    "x1": x + w,
                    "y1": y + h,
                    "moving": True,
                    "instance": piece,
                }
            )
    source = InMemoryFrames(
        torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(),
        np.arange(n),
        np.zeros(n, np.int64),
        [f"{i}.png" for i in range(n)],
    )
    settings = {"generator": "tetrominoes", **asdict(config)}
    return GeneratedData(source, GroundTruth.from_rows(rows), masks, sorted(_TETROMINOES), settings)


#: Built-in worlds by name. ``demo`` is the default data of ``marionette train``.
SYNTHETIC_WORLDS: dict[str, SpriteWorldConfig | TetrominoesConfig] = {
    "demo": SpriteWorldConfig(),
    "tiny": SpriteWorldConfig(
        height=32, width=32, num_classes=4, sprite_size=(4, 7), objects=(1, 3), num_clips=128
    ),
    "stars": SpriteWorldConfig(background="stars"),
    "large": SpriteWorldConfig(
        height=128, width=128, num_classes=8, sprite_size=(10, 16), objects=(3, 8), speed=2.0
    ),
    "tetrominoes": TetrominoesConfig(),
}


def generate(name: str, split: str = "train", **overrides) -> GeneratedData:
    """Generate a built-in world by name; ``split="test"`` draws held-out clips (other seed).

    Example:
        >>> data = generate("demo", num_clips=2)
        >>> tuple(data.frames.data.shape), data.class_names[:2]
        ((16, 3, 64, 64), ['sprite_0', 'sprite_1'])
    """
    if name not in SYNTHETIC_WORLDS:
        raise ValueError(
            f"unknown synthetic world {name!r}; choose one of {sorted(SYNTHETIC_WORLDS)}"
        )
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    config = replace(SYNTHETIC_WORLDS[name], **overrides)
    if split == "test":
        config = replace(config, seed=config.seed + 1_000_003)
    if isinstance(config, TetrominoesConfig):
        return generate_tetrominoes(config)
    return generate_sprite_world(config)
