"""Atari clips with object ground truth: ale-py (bundled ROMs) for frames, OCAtari's RAM mode for
boxes.

Known pitfalls handled here (see ``docs/data.md``):

* unversioned game names resolve to ``-v4`` with a stochastic frameskip of 2-5: we always build
  ``ALE/<Game>-v5`` with an explicit ``frameskip`` and ``repeat_action_probability=0``;
* OCAtari's ``step`` returns ``truncated, terminated`` swapped: we only use their ``or``;
* OCAtari decides Space Invaders bullet visibility from the previous detection pass, so objects
  are detected a second time after every step; bullets flicker (drawn on alternate frames), so a
  bullet is kept only if bullet-colored pixels lie inside its box;
* OCAtari's RAM rules do uint8 arithmetic that wraps under numpy 2: the RAM is passed as int64
  (identical results under numpy 1.26);
* some of OCAtari's RAM rules track objects from step to step (Riverraid adds an object when it
  enters at the top and finds it by its order on screen; Carnival fixes its missile's x when it
  is fired): detection runs after every step, the unrecorded ones too, or boxes go to
  objects long gone and to the wrong classes;
* the RAM lists objects the screen does not show: games flicker sprites (MsPacman draws some
  ghosts on one frame, the others on the next) and stack them (its ghost house). A label is kept
  only where its object can be seen (:func:`visible`), unless ``AtariConfig.hidden`` asks for all;
* some RAM boxes are much wider than what the screen draws (Carnival's player missile: 6 pixels
  for a 1-pixel line): those are shrunk to the pixels their object draws (:func:`drawn_boxes`).
"""

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_write
from ._screen import fit_screen, import_extra, scale_boxes
from .dataset import DatasetWriter, package_versions
from .groundtruth import GroundTruth

__all__ = [
    "MOC_SIZE",
    "HUD_OBJECTS",
    "AtariConfig",
    "background_screen",
    "drawn_boxes",
    "generate_atari",
    "moc_labels",
    "visible",
]

#: Seeds per split when none is given (MOC used 0, 1, 2 for train, validation, test).
SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
#: Space Invaders bullets are drawn in this color.
BULLET_RGB = (142, 142, 142)
#: MOC's model input size (H, W).
MOC_SIZE = (128, 128)
#: A pixel shows something other than the background where a channel differs by more than this.
BACKGROUND_TOLERANCE = 30
#: Screens of the separate rollout whose per-pixel median is the background (odd: a true median).
BACKGROUND_SCREENS = 129
#: Objects that OCAtari lists as game objects but that are part of the HUD, as in MOC's labels
#: (flag S): (game, category) -> whether a native box (x0, y0, x1, y1) is one. MsPacman's fruit
#: below the maze is the level indicator (MOC's ``save_fruit``); Carnival's wheel is a fixed
#: decoration above the gallery, where MOC's HUD filter keeps no detection.
HUD_OBJECTS: dict[tuple[str, str], Callable[[tuple[int, int, int, int]], bool]] = {
    ("MsPacman", "Fruit"): lambda box: box[1] >= 171,
    ("Carnival", "Wheel"): lambda box: True,
}


@dataclass(frozen=True)
class AtariConfig:
    """How to record an Atari dataset.

    Attributes:
        game: ALE game name without version, e.g. ``SpaceInvaders``, ``Pong``, ``MsPacman``.
        clips, frames_per_clip: number of clips and consecutive frames per clip.
        frameskip: emulator frames per recorded step (deterministic).
        seed: seeds the environment and the random policy (default: 0/1/2 for
            train/validation/test).
        burn_in: steps after every reset before recording (skips the start screen).
        gap: range [lo, hi) of random steps between clips (decorrelates clips).
        size: saved frame size (H, W); None keeps the native 210 x 160.
        rows: optional crop of native rows (y0, y1) before resizing (e.g. (20, 200) drops the
            score line).
        hud: record HUD objects (score, lives, and those of :data:`HUD_OBJECTS`) too, flagged
            as not moving.
        hidden: keep the labels of objects the frame does not show (flickered, stacked: see
            :func:`visible`), with OCAtari's boxes as the RAM gives them; by default only what
            can be seen is labelled, as in MOC's labels (and boxes much wider than their object
            are shrunk to it: :func:`drawn_boxes`).
    """

    game: str = "SpaceInvaders"
    clips: int = 100
    frames_per_clip: int = 8
    frameskip: int = 2
    seed: int | None = None
    burn_in: int = 50
    gap: tuple[int, int] = (10, 120)
    size: tuple[int, int] | None = (128, 128)
    rows: tuple[int, int] | None = None
    hud: bool = True
    hidden: bool = False

    def __post_init__(self) -> None:
        for name in ("clips", "frames_per_clip", "frameskip"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.gap[0] < self.gap[1]:
            raise ValueError(f"gap must be a range 0 <= lo < hi, got {self.gap}")
        if self.size is not None and min(self.size) < 8:
            raise ValueError(f"size must be at least 8 x 8 pixels, got {self.size}")
        if self.rows is not None and not 0 <= self.rows[0] < self.rows[1] <= 250:
            raise ValueError(f"rows must be 0 <= y0 < y1 <= screen height, got {self.rows}")


@dataclass
class _Object:
    category: str
    box: tuple[int, int, int, int]  # native x0, y0, x1, y1
    hud: bool
    slot: int
    rgb: tuple[int, int, int]


def _make_env(config: AtariConfig):
    gymnasium = import_extra("gymnasium", "atari")
    ale_py = import_extra("ale_py", "atari")
    core = import_extra("ocatari.core", "atari")
    gymnasium.register_envs(ale_py)
    if config.game not in core.AVAILABLE_GAMES:
        raise ValueError(
            f"game must be one that OCAtari annotates, got {config.game!r}; choose one of "
            f"{', '.join(sorted(core.AVAILABLE_GAMES))}"
        )
    env = core.OCAtari(
        f"ALE/{config.game}-v5",
        mode="ram",
        hud=config.hud,
        obs_mode="ori",
        render_mode="rgb_array",
        frameskip=config.frameskip,
        repeat_action_probability=0.0,
    )
    return env, core.detect_objects_ram


def _track(env, detect_objects_ram, passes: int = 1) -> None:
    """Run OCAtari's RAM detection ``passes`` times on the current int64 RAM (see the module
    notes), updating ``env.objects``."""
    ram = np.asarray(env.get_ram(), np.int64)
    for _ in range(passes):
        detect_objects_ram(env.objects, ram, env.game_name, env.hud)


def _detect(env, detect_objects_ram, game: str) -> list[_Object]:
    """Run OCAtari's RAM detection twice (see the module notes); present objects, those of
    :data:`HUD_OBJECTS` flagged HUD."""
    _track(env, detect_objects_ram, passes=2)
    objects = []
    for slot, obj in enumerate(env.objects):
        if not obj or obj.w <= 0 or obj.h <= 0:
            continue
        x, y, w, h = (int(v) for v in obj.xywh)
        rgb = tuple(int(c) for c in obj.rgb) if getattr(obj, "rgb", None) is not None else (0, 0, 0)
        box = (x, y, x + w, y + h)
        hud = _is_hud(game, obj.category, box, bool(obj.hud))
        objects.append(_Object(obj.category, box, hud, slot, rgb))
    return objects


def _is_hud(game: str, category: str, box: tuple[int, int, int, int], flagged: bool) -> bool:
    """Whether an object is part of the HUD: OCAtari flags it, or :data:`HUD_OBJECTS` names it."""
    rule = HUD_OBJECTS.get((game, category))
    return flagged or (rule is not None and rule(box))


def _drawn(screen: np.ndarray, obj: _Object) -> bool:
    """Whether a Space Invaders bullet is drawn in this frame (bullets flicker)."""
    x0, y0, x1, y1 = obj.box
    patch = screen[max(y0, 0) : y1, max(x0, 0) : x1]
    return bool((patch == BULLET_RGB).all(axis=-1).any())


def background_screen(screens: np.ndarray) -> np.ndarray:
    """The per-pixel, per-channel median of ``screens`` [N, H, W, 3] (the lower middle value for
    even N), i.e. what a pixel shows most of the time: the playfield, maze and static objects
    without the sprites that move over them."""
    return np.quantile(screens, 0.5, axis=0, method="lower").astype(np.uint8)


def _pixels(
    screen: np.ndarray, background: np.ndarray, obj: _Object
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of the object's box (clipped to the screen): whether it differs from
    ``background`` by more than ``BACKGROUND_TOLERANCE`` in a channel, and whether it has the
    object's own colour."""
    x0, y0, x1, y1 = obj.box
    box = (slice(max(y0, 0), max(y1, 0)), slice(max(x0, 0), max(x1, 0)))
    patch = screen[box].astype(np.int16)
    differs = (np.abs(patch - background[box]) > BACKGROUND_TOLERANCE).any(axis=-1)
    return differs, (patch == obj.rgb).all(axis=-1)


def visible(screen: np.ndarray, background: np.ndarray, objects: list[_Object]) -> list[bool]:
    """Which objects of the RAM's list ``screen`` [H, W, 3] shows.

    An object is hidden when no pixel of its box differs from ``background`` by more than
    ``BACKGROUND_TOLERANCE`` in a channel and none has the object's own colour (a sprite the game
    did not draw this frame; a static object, drawn in the background itself, shows its colour).
    Of objects that share one exact box only one can be seen: the first that shows its own colour
    (else the first) is kept. HUD objects are always kept.
    """
    keep = [obj.hud for obj in objects]
    stacks: dict[tuple, list[tuple[bool, int]]] = {}  # box -> (no own colour, index) of the seen
    for i, obj in enumerate(objects):
        differs, colour = _pixels(screen, background, obj)
        if not obj.hud and (differs.any() or colour.any()):
            stacks.setdefault(obj.box, []).append((not colour.any(), i))
    for stack in stacks.values():
        keep[min(stack)[1]] = True  # the first that shows its colour, else the first
    return keep


def drawn_boxes(
    screen: np.ndarray, background: np.ndarray, objects: list[_Object]
) -> list[_Object]:
    """The objects, each box that its object's drawn pixels (those of :func:`visible`) fill
    less than half of shrunk to the bounding box of these pixels; HUD objects keep theirs.
    ``screen`` and ``background`` are [H, W, 3] native screens, boxes (x0, y0, x1, y1) in their
    pixels.

    OCAtari's RAM rules give some objects a box much wider than what the screen draws
    (Carnival's player missile: 6 native pixels for a 1-pixel line). MOC labels a detection
    by the share of the ground-truth box it covers, at least 1/2, so below that share even an
    exact detection of the drawn pixels could never count (MOC's own boxes were those of the
    coloured pixels). Boxes filled more are kept: the background, a median of screens, holds
    objects that stay put (Space Invaders' player at its start), and their pixels over it do
    not differ from it.
    """
    shrunk = []
    for obj in objects:
        differs, colour = _pixels(screen, background, obj)
        ys, xs = np.nonzero(differs | colour)
        if obj.hud or len(ys) == 0:
            shrunk.append(obj)
            continue
        x0, y0 = max(obj.box[0], 0), max(obj.box[1], 0)
        box = (
            x0 + int(xs.min()),
            y0 + int(ys.min()),
            x0 + int(xs.max()) + 1,
            y0 + int(ys.max()) + 1,
        )
        area = (box[2] - box[0]) * (box[3] - box[1])
        shrunk.append(replace(obj, box=box) if 2 * area < differs.size else obj)
    return shrunk


def moc_labels(game: str, objects: list[_Object]) -> list[str | None]:
    """MOC's label names for OCAtari objects (None: MOC never labelled it, e.g. pills).

    Space Invaders aliens become ``enemy_0`` .. ``enemy_5`` by the rank of their row among the
    rows present, top to bottom; MsPacman ghosts are named by their color; other classes map
    one to one (see ``docs/data.md``).
    """
    names = {
        "SpaceInvaders": {
            "Player": "player",
            "Shield": "block",
            "Bullet": "bullet",
            "Satellite": "space_ship",
            "P1Score": "left_score",
            "P2Score": "right_score",
            "Lives": None,
        },
        "Pong": {
            "Player": "player",
            "Enemy": "enemy",
            "Ball": "ball",
            "PlayerScore": "player_score",
            "EnemyScore": "enemy_score",
        },
        "Boxing": {
            "Player": "white",
            "Enemy": "black",
            "PlayerScore": "white_score",
            "EnemyScore": "black_score",
            "Clock": "clock",
        },
        "MsPacman": {
            "Player": "pacman",
            "Pill": None,
            "PowerPill": None,
            "Score": "score",
            "Life": "life1",
        },
    }.get(game, {})
    ghosts = {
        (180, 122, 48): "sue",
        (84, 184, 153): "inky",
        (198, 89, 179): "pinky",
        (200, 72, 72): "blinky",
    }
    alien_rows = sorted({o.box[1] for o in objects if o.category == "Alien"})
    labels: list[str | None] = []
    for obj in objects:
        if game == "SpaceInvaders" and obj.category == "Alien":
            labels.append(f"enemy_{alien_rows.index(obj.box[1])}")
        elif game == "MsPacman" and obj.category == "Ghost":
            labels.append(ghosts.get(obj.rgb, "ghost"))
        elif game == "MsPacman" and obj.category == "Fruit":
            labels.append("fruit" if obj.box[1] < 171 else "save_fruit")
        else:
            labels.append(names.get(obj.category, obj.category.lower()))
    return labels


def _write_moc(
    root: Path, split: str, clip: int, t: int, screen: np.ndarray, objects, game: str
) -> None:
    """MOC's on-disk files for one frame: raw RGB, 128 x 128 BGR input, and the box CSV with
    (y_min, y_max, x_min, x_max) normalised by the native 210 x 160 screen, then flag and label.

    The input is resized with the area filter of our own frames (MOC used Lanczos), so that a
    128 x 128 dataset's two copies hold the same pixels."""
    stem = f"{clip:05d}_{t}"
    height, width = screen.shape[:2]
    for kind in ("rgb", "space_like", "bb"):
        (root / kind / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(screen).save(root / "rgb" / split / f"{stem}.png")
    small = fit_screen(screen, MOC_SIZE, None)
    Image.fromarray(small[..., ::-1].copy()).save(root / "space_like" / split / f"{stem}.png")
    with atomic_write(root / "bb" / split / f"{stem}.csv", "w") as handle:
        for obj, label in zip(objects, moc_labels(game, objects), strict=True):
            if label is None:
                continue
            x0, y0, x1, y1 = obj.box
            values = np.clip([y0 / height, y1 / height, x0 / width, x1 / width], 0.0, 1.0)
            flag = "S" if obj.hud else "M"
            handle.write(",".join(f"{v:.10g}" for v in values) + f",{flag},{label}\n")


class _Recorder:
    """An OCAtari environment driven by a seeded random policy, clip by clip."""

    def __init__(self, config: AtariConfig, seed: int | list[int]) -> None:
        self.config, self.rng = config, np.random.default_rng(seed)
        self.env, self.detect_objects_ram = _make_env(config)
        self.env.action_space.seed(int(self.rng.integers(2**31)))
        self.background: np.ndarray | None = None
        self.hidden = 0  # labels left out by `visible`

    def reset(self) -> None:
        self.env.reset(seed=int(self.rng.integers(2**31)))
        self.advance(self.config.burn_in)

    def advance(self, steps: int) -> bool:
        """Step the underlying ALE env without recording, the RAM detection kept in step (see
        the module notes); False if the episode ended (then it was reset). Gymnasium's order
        here: terminated, truncated."""
        for _ in range(steps):
            *_, terminated, truncated, _ = self.env._env.step(self.env.action_space.sample())
            if terminated or truncated:
                self.reset()
                return False
            _track(self.env, self.detect_objects_ram)
        return True

    def clip(self) -> list[tuple[np.ndarray, list[_Object]]] | None:
        """The next clip's (screen, objects) after a random gap; None (and a reset) if the
        episode ended inside it."""
        config, env = self.config, self.env
        self.advance(int(self.rng.integers(*config.gap)))
        recorded = []
        for _ in range(config.frames_per_clip):
            *_, truncated, terminated, _ = env.step(env.action_space.sample())
            if truncated or terminated:
                self.reset()
                return None
            screen = np.asarray(env.getScreenRGB(), np.uint8)
            objects = _detect(env, self.detect_objects_ram, config.game)
            if not config.hud:  # OCAtari left out its own HUD objects, these are ours
                objects = [o for o in objects if not o.hud]
            if config.game == "SpaceInvaders":
                objects = [o for o in objects if o.category != "Bullet" or _drawn(screen, o)]
            if self.background is not None:
                shown = visible(screen, self.background, objects)
                self.hidden += len(objects) - sum(shown)
                objects = [o for o, keep in zip(objects, shown, strict=True) if keep]
                objects = drawn_boxes(screen, self.background, objects)
            recorded.append((screen, objects))
        return recorded

    def sample_background(self) -> np.ndarray:
        """:func:`background_screen` of ``BACKGROUND_SCREENS`` screens of this recorder's
        rollout, one after every random gap (then the environment is closed)."""
        self.reset()
        screens = []
        for _ in range(BACKGROUND_SCREENS):
            self.advance(int(self.rng.integers(*self.config.gap)))
            screens.append(np.asarray(self.env.getScreenRGB(), np.uint8))
        self.env.close()
        return background_screen(np.stack(screens))


def _rows(name: str, clip: int, t: int, objects: list[_Object], native, config) -> list[dict]:
    """Ground-truth rows of one frame, boxes in pixels of the saved frame. HUD objects, and
    those MOC never labelled (MsPacman's pills: part of the maze, which a model rightly draws
    as background), are not ``moving``, so the moving and relevant views leave them out."""
    boxes, keep = scale_boxes(
        np.array([o.box for o in objects]).reshape(-1, 4), native, config.size, config.rows
    )
    labelled = [label is not None for label in moc_labels(config.game, objects)]
    return [
        dict(frame=name, clip=clip, t=t, x0=box[0], y0=box[1], x1=box[2], y1=box[3],
             moving=labelled and not obj.hud, instance=obj.slot, **{"class": obj.category})
        for obj, box, kept, labelled in zip(objects, boxes, keep, labelled, strict=True)
        if kept
    ]  # fmt: skip


def generate_atari(
    out: str | os.PathLike,
    config: AtariConfig,
    split: str = "train",
    layout: str = "marionette",
    overwrite: bool = False,
    progress: Callable | None = None,
) -> Path:
    """Record ``config.clips`` clips of consecutive frames with a seeded random policy.

    Writes the dataset layout of :mod:`marionette.data.dataset` (frames ``0.png ..``,
    ``index.csv``, ``groundtruth.csv`` with boxes in pixels of the saved frames, instance = the
    OCAtari slot, stable within a clip; ``dataset.json``). With ``layout="moc"`` it also writes
    MOC's layout under ``moc/<Game>-v0/`` (``rgb/``, ``space_like/`` in BGR, ``bb/`` CSVs, y
    first and normalised) so that MOC's loader and metrics can read the same frames.
    A clip cut by the end of an episode is dropped and recorded again after a reset. Labels of
    objects a frame does not show are left out (:func:`visible`, against the background of a
    separate rollout; their number is ``labels_hidden`` in ``dataset.json``) and boxes much
    wider than their object shrunk to its drawn pixels (:func:`drawn_boxes`) unless
    ``config.hidden``.
    """
    if layout not in ("marionette", "moc"):
        raise ValueError(f"layout must be 'marionette' or 'moc', got {layout!r}")
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}, got {split!r}")
    seed = SPLIT_SEEDS[split] if config.seed is None else config.seed
    recorder = _Recorder(config, seed)
    if not config.hidden:  # a rollout of its own seed: the recorded frames stay the same
        recorder.background = _Recorder(config, [seed, 1]).sample_background()
    rows, frames, dropped = [], 0, 0
    bar = progress(total=config.clips, desc=f"{config.game} {split}") if progress else None
    with DatasetWriter(out, overwrite) as writer:
        moc_root = writer.folder / "moc" / f"{config.game}-v0" if layout == "moc" else None
        recorder.reset()
        native = recorder.env.getScreenRGB().shape[:2]
        clip = 0
        while clip < config.clips:
            recorded = recorder.clip()
            if recorded is None:
                dropped += 1
                continue
            for t, (screen, objects) in enumerate(recorded):
                name, frames = f"{frames}.png", frames + 1
                writer.add(name, fit_screen(screen, config.size, config.rows), clip, t)
                rows += _rows(name, clip, t, objects, native, config)
                if moc_root is not None:
                    _write_moc(moc_root, split, clip, t, screen, objects, config.game)
            clip += 1
            if bar is not None:
                bar.update()
        recorder.env.close()
        groundtruth = GroundTruth.from_rows(rows)
        writer.finish(
            {
                "generator": "atari",
                "env": f"ALE/{config.game}-v5",
                "split": split,
                "seed": seed,
                "layout": layout,
                "native_size": list(native),
                "clips_dropped_at_episode_end": dropped,
                "labels_hidden": None if config.hidden else recorder.hidden,
                "boxes": "OCAtari's RAM boxes"
                + ("" if config.hidden else ", shrunk to the drawn pixels where these fill < 1/2"),
                "ram_detection": "every step",
                "class_names": groundtruth.class_names,
                "settings": asdict(config),
                "versions": package_versions("ale-py", "gymnasium", "ocatari"),
            },
            groundtruth,
        )
    if bar is not None:
        bar.close()
    return Path(out)
