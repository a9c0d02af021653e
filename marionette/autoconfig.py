"""Settings chosen from the data: what ``marionette train --data DIR`` uses without a preset.

:func:`auto_config` measures the frames (:func:`marionette.stats.measure`) and applies one rule
per setting; every rule is stated in :data:`RULES` and its outcome, with the numbers it came
from, is recorded in ``Config.reasons`` (and so in config.json). Settings given by the caller
are kept and the others follow from them (a canvas given: frames are measured as they reach
it). The training recipe is the presets' (template matching, a dictionary from the data's
foreground, the straight-through hard loss ramped in, a dearer front layer) with presence
started from the matching evidence and selection matched layer by layer; see
docs/learning.md for where each came from.
"""

import math

import numpy as np

from .config import Config
from .core import whole_extent
from .data import open_frames
from .data.frames import FrameSource
from .data.synthetic import generate
from .stats import SCENERY_SHARE, FrameStats, NoSprites, measure

__all__ = ["RECIPE", "RULES", "auto_config", "choose_settings", "data_stats", "describe"]

#: What the presets found, and matched presence, applied to every dataset (not measured: see
#: docs/learning.md).
RECIPE = dict(
    transform_encoder="match",
    selection="pursuit",
    presence="match",
    lr=1e-3,
    bs=8,
    num_steps=20000,
    hard_mix=1.0,
    hard_warmup=100,
    merge_every=200,
    w_select=0.01,
)

#: ``sprite_init`` is ``"objects"`` where objects larger than the cell that fit the sprite hold
#: more than this share of the recurring foreground: most of it.
WHOLE_SHARE = 0.5

#: The back layer's presence weight that the presets found, and the cell size (px) they found it
#: at (Space Invaders); ``w_probs`` scales it by (``PRESENCE_CELL`` / P)^2, so that a slot costs
#: the same squared error at any cell size P.
PRESENCE_WEIGHT, PRESENCE_CELL = 0.005, 8

#: One line per data-derived setting: the rule that sets it.
RULES = {
    "background": "a uniform color, unless the per-pixel mode image (a static image: maze, "
    "playfield, HUD) or each frame's own mode color (several sceneries) explains >= 1 % more of "
    "the pixels, whichever explains more; where >= 20 % of consecutive pairs scroll, a learned "
    "strip scrolling horizontally (vertically where more pairs scroll so), unless the frames' "
    "own colors are kept (one strip holds one scenery)",
    "layer_size": "the cell P: the smallest even size from the typical sprite (the median over "
    "recurring looks of their larger side) to twice it that divides the canvas, else the one "
    "needing the least padding; anchor rows = height / P",
    "canvas": "the frames' own size, padded (right and bottom) to a multiple of P",
    "num_sprites": "2 x the recurring looks (seen in >= 0.5 % of the components and at least "
    "twice; the headroom covers looks merged by overlap or missed by the sample), those of the "
    "scenery added where the sprites draw a scrolling scenery (frame_color), at least 16 "
    "(the dictionary starts from that many foreground patches; on the demo world 10 sprites "
    "for its 5 looks lost 3-4 dB against 16 at 400 steps)",
    "num_layers": "the 99th percentile of component centres per occupied cell, at least 2 (the "
    "recipe's presence weights are a back and a front layer), at most 4",
    "w_probs": "presence weight 0.005 x (8 / P)^2 for the back layer rising 10x to the front "
    "one (the presets' weights, found at 8 px cells; rising, or every layer draws every object). "
    "The presence cost is a mean over slots and the error a mean over pixels, so a slot of a P "
    "px cell costs 3 P^2 / layers times its weight in squared error: scaled so, a slot costs "
    "the same error at any cell, and a faint object that pays for its slot at 8 px pays at 16 "
    "(Riverraid's helicopters, dark blue on the blue river: recall 0.09 -> 0.34)",
    "dim_z": "64 for up to 32 sprites, 128 above",
    "sprite_init": "objects (each foreground blob whole) when the components larger than the "
    "cell that fit the S = 2P sprite hold most (> 50 %) of the recurring looks' foreground "
    "pixels, else data (each blob cut to the cell): cut, such objects start as several partial "
    "sprites and are drawn in parts (Boxing's boxers: relevant F 0.75 cut, 0.88 whole); whole, "
    "objects run together start as one sprite (Carnival: 0.58 whole, 0.66 cut)",
    "dictionary": "free pixels per sprite where sprites start cut to the cell (data): a sprite "
    "drawn rarely keeps its look (through the shared MLP decoder it drifts with the others: "
    "Seaquest's divers, Carnival's gun); the MLP decoder where objects start whole (objects), "
    "whose poses share its weights (Boxing: relevant F 0.49 with free pixels)",
}


def _recurring(looks: np.ndarray) -> np.ndarray:
    """Per look of components with these ``looks``, whether it recurs: seen in >= 0.5 % of
    the components and at least twice."""
    counts = np.bincount(looks)
    return counts >= max(2, 0.005 * len(looks))


def typical_extent(stats: FrameStats) -> float:
    """The median over recurring looks (all looks when none recurs) of each look's median
    larger side: every look counts once, however often it is drawn."""
    recurring = _recurring(stats.looks)
    looks = np.flatnonzero(recurring) if recurring.any() else np.arange(len(recurring))
    extents = stats.extents
    return float(np.median([np.median(extents[stats.looks == look]) for look in looks]))


def whole_share(stats: FrameStats, cell: int) -> float:
    """The share of the recurring looks' foreground pixels in components larger than ``cell``
    that fit its S = 2 ``cell`` sprite with a pixel to spare (larger side <= S - 2,
    :func:`marionette.core.whole_extent`): what ``sprite_init="objects"`` starts whole and
    ``"data"`` cuts to the cell."""
    recurring = _recurring(stats.looks)[stats.looks]
    extents = stats.extents
    fits = (extents > cell) & (extents <= whole_extent(cell))
    total = stats.areas[recurring].sum()
    return float(stats.areas[recurring & fits].sum() / total) if total else 0.0


def _cell(extent: float, height: int, width: int, fixed: bool) -> int:
    """The smallest even P in [extent, 2 extent] (P >= 4) that divides the canvas, else the one
    that needs the least padding (then the smallest). On a ``fixed`` canvas (given, so never
    padded): the smallest even divisor >= extent, else the largest below it."""
    if fixed:
        divisors = [p for p in range(4, min(height, width) + 1, 2) if not height % p | width % p]
        if not divisors:
            raise ValueError(
                f"no even cell size >= 4 divides the given {height} x {width} canvas; choose a "
                f"canvas that is a multiple of 4 or 8 (e.g. --canvas-size 128)"
            )
        above = [p for p in divisors if p >= extent]
        return above[0] if above else divisors[-1]
    low = max(4, 2 * math.ceil(extent / 2))
    candidates = range(low, max(low, 2 * math.floor(extent)) + 1, 2)

    def padding(p: int) -> int:
        return math.ceil(height / p) * p * math.ceil(width / p) * p - height * width

    return min(candidates, key=lambda p: (padding(p), p))


def choose_settings(stats: FrameStats, given: dict) -> tuple[dict, dict[str, str]]:
    """Settings for data with these statistics, and the reason for each (see :data:`RULES`).

    ``given`` holds settings fixed by the caller; they are kept and the rest follows from them
    (``layer_size`` with a canvas fixes the cell). Raises :class:`marionette.stats.NoSprites`
    when the sprites fit no cell.
    """
    settings: dict = {}
    reasons: dict[str, str] = {}
    h, w = stats.height, stats.width
    extent = typical_extent(stats)
    if extent > min(h, w) / 2:
        raise NoSprites(
            f"the typical foreground component is {extent:.0f} px across, more than half the "
            f"{h} x {w} frames: no grid of cells fits it (a large moving playfield or a "
            f"camera pan?). Give the cell by hand (--layer-size) and the background "
            f"(--background)"
        )
    looks = int(_recurring(stats.looks).sum())
    where = f"{stats.sampled} of {stats.frames} frames, {len(stats.areas)} components"
    if "layer_size" in given:
        cell = given.get("height", h) // given["layer_size"]
        reasons["layer_size"] = f"given: {given['layer_size']} rows, cell {cell} px"
    else:
        fixed = "height" in given or "width" in given
        cell = _cell(extent, given.get("height", h), given.get("width", w), fixed)
        reasons["layer_size"] = (
            f"typical sprite {extent:.0f} px (median larger side over {looks} recurring "
            f"looks; {where}) -> cell {cell} px"
        )
    if "height" not in given and "width" not in given:
        height, width = math.ceil(h / cell) * cell, math.ceil(w / cell) * cell
        settings.update(height=height, width=width)
        padded = (height, width) != (h, w)
        if "resize" not in given:
            settings["resize"] = "pad" if padded else "keep"
        reasons["canvas"] = f"the frames' {h} x {w}" + (
            f", padded to {height} x {width} (multiples of the {cell} px cell)" if padded else ""
        )
    height = settings.get("height", given.get("height", h))
    if "layer_size" not in given:
        settings["layer_size"] = height // cell
    if "num_sprites" not in given:
        scenery = int(_recurring(stats.scenery_looks).sum())
        settings["num_sprites"] = max(16, 2 * (looks + scenery))
        drawn = (
            f" + {scenery} of the scenery, which the sprites draw (the background does not "
            f"scroll with it)"
            if len(stats.scenery_looks)
            else ""
        )
        reasons["num_sprites"] = (
            f"{looks} recurring looks{drawn} -> {settings['num_sprites']} sprites"
        )
    if "num_layers" not in given:
        crowding = stats.cell_crowding(cell)
        busiest = int(np.percentile(crowding, 99)) if len(crowding) else 1
        layers = min(4, max(busiest, 2))
        settings["num_layers"] = layers
        reasons["num_layers"] = (
            f"99 % of occupied {cell} px cells hold <= {busiest} component centres, "
            f"{stats.overlap_share:.1%} of components overlap another -> {layers} layers"
        )
    layers = settings.get("num_layers", given.get("num_layers"))
    if "w_probs" not in given:
        back = PRESENCE_WEIGHT * (PRESENCE_CELL / cell) ** 2
        settings["w_probs"] = tuple(back * 10 ** (i / max(1, layers - 1)) for i in range(layers))
        cost = 3 * PRESENCE_CELL**2 * PRESENCE_WEIGHT / layers  # = 3 P^2 back / layers
        reasons["w_probs"] = (
            f"cell {cell} px -> presence weight {back:.3g} for the back layer rising 10x to the "
            f"front one: a back layer slot costs {cost:.2g} of squared error at any cell (the "
            f"presets' weight at {PRESENCE_CELL} px)"
        )
    if "background" not in given:
        settings["background"] = stats.background
        reasons["background"] = (
            f"{_shares(stats)}; {_scrolling(stats)} of consecutive pairs scroll -> "
            f"{stats.background}{_moving(stats)}{_changing_scenery(stats)}"
        )
    if "dim_z" not in given:
        sprites = settings.get("num_sprites", given.get("num_sprites"))
        settings["dim_z"] = 64 if sprites <= 32 else 128
        reasons["dim_z"] = f"{sprites} sprites -> code width {settings['dim_z']}"
    if "sprite_init" not in given:
        share = whole_share(stats, cell)
        whole = share > WHOLE_SHARE
        settings["sprite_init"] = "objects" if whole else "data"
        reasons["sprite_init"] = (
            f"{share:.0%} of the recurring looks' foreground lies in components of "
            f"{cell + 1}-{whole_extent(cell)} px (larger than the {cell} px cell, fitting the "
            f"{2 * cell} px sprite) -> {settings['sprite_init']} "
            f"({'each blob whole' if whole else 'each blob cut to the cell'})"
        )
    if "dictionary" not in given:
        init = settings.get("sprite_init", given.get("sprite_init"))
        settings["dictionary"] = "mlp" if init == "objects" else "pixels"
        reasons["dictionary"] = f"sprite_init {init} -> {settings['dictionary']} " + (
            "(objects start whole: their poses share the decoder)"
            if init == "objects"
            else "(each sprite keeps its own look, however rarely drawn)"
        )
    for name, value in RECIPE.items():
        if name not in given:
            settings[name] = value
            reasons[name] = "the recipe (docs/learning.md)"
    return settings, reasons


def _measured_frames(config: Config, given: dict) -> FrameSource:
    """The training frames as the statistics see them: at the given canvas if there is one,
    else at their own size."""
    data, model = config.data, config.model
    canvas = (model.height, model.width) if ("height" in given or "width" in given) else None
    if data.data is not None:
        resize = data.resize if "resize" in given or canvas is None else "resize"
        return open_frames(data.data, canvas, resize)
    overrides = {"height": canvas[0], "width": canvas[1]} if canvas else {}
    if data.synthetic == "tetrominoes":
        overrides = {}
    if data.synthetic_clips:
        key = "num_images" if data.synthetic == "tetrominoes" else "num_clips"
        overrides[key] = data.synthetic_clips
    return generate(data.synthetic, "train", **overrides).frames


def _normalised(given: dict | None) -> dict:
    """``given`` with settings under their own names and types (command line strings
    converted) and ``canvas_size`` as height and width."""
    given = {Config.canonical(name): value for name, value in (given or {}).items()}
    if "canvas_size" in given:
        size = given.pop("canvas_size")
        given.setdefault("height", size)
        given.setdefault("width", size)
    typed = Config().replace(**given)
    return {name: typed.get(name) for name in given}


def data_stats(given: dict) -> FrameStats:
    """Statistics of the frames named in ``given`` (``data`` or ``synthetic``), as they reach
    the canvas that ``given`` fixes (their own size when it fixes none)."""
    given = _normalised(given)
    return measure(_measured_frames(Config().replace(**given), given))


def auto_config(given: dict | None = None, stats: FrameStats | None = None) -> Config:
    """A configuration for the data named in ``given`` (``data=DIR``, or ``synthetic=NAME``),
    with every setting not in ``given`` chosen from the frames (see :data:`RULES`; ``stats``:
    already measured by :func:`data_stats`) and the reasons in ``Config.reasons``.

    Example:
        >>> config = auto_config({"synthetic": "demo", "synthetic_clips": 64})
        >>> config.model.layer_size, config.model.background, config.reasons["layer_size"][:15]
        (4, 'color', 'typical sprite ')
    """
    given = _normalised(given)
    base = Config(preset="auto").replace(**given)
    if stats is None:
        stats = measure(_measured_frames(base, given))
    settings, reasons = choose_settings(stats, given)
    canvas_given = "height" in given or "width" in given
    if canvas_given and "resize" not in given and base.data.data is not None:
        settings["resize"] = "resize"  # a canvas given for a folder: frames resized to it
        reasons["canvas"] = "given; the frames are resized to it"
    return base.replace(**settings).with_reasons(reasons)


def _shares(stats: FrameStats) -> str:
    """The foreground shares against each static background."""
    return (
        f"foreground {stats.foreground_color:.1%} of pixels against the mode color, "
        f"{stats.foreground_image:.1%} against the per-pixel mode image, "
        f"{stats.foreground_frame_color:.1%} against each frame's own mode color"
    )


def _scrolling(stats: FrameStats) -> str:
    """The shares of consecutive pairs that scroll horizontally and vertically."""
    return f"{stats.scroll_share:.0%} horizontally, {stats.vertical_scroll_share:.0%} vertically"


def _moving(stats: FrameStats) -> str:
    """For a scrolling screen, the foreground the components are cut from."""
    if not stats.scrolls:
        return ""
    return f" (foreground moving against the scrolled scenery: {stats.foreground:.1%})"


def _changing_scenery(stats: FrameStats) -> str:
    """A caution where a static background leaves more than
    :data:`marionette.stats.SCENERY_SHARE` of the pixels as foreground: scenery that no static
    background holds, which sprites will draw (also on a scrolling screen that keeps the
    frames' own colors rather than a strip)."""
    share = stats.scenery
    if share <= SCENERY_SHARE:
        return ""
    return (
        f". Caution: {share:.0%} of the pixels differ from it (more than "
        f"{SCENERY_SHARE:.0%}): the scenery changes from frame to frame and sprites will draw "
        f"it. Frames of one level or screen, where the game allows (marionette data mario "
        f"--stages 1-1), learn cleaner sprites"
    )


def describe(stats: FrameStats) -> list[str]:
    """The statistics as lines of text, for ``marionette data stats``."""
    extents = stats.extents
    recurring = _recurring(stats.looks)
    q = np.percentile(extents, [10, 50, 90]).round().astype(int)
    crowding = ", ".join(
        f"{p} px: {np.percentile(stats.cell_crowding(p), 99):.0f}" for p in (8, 16, 32)
    )
    scenery = (
        f"; the scenery the sprites draw: {len(stats.scenery_looks)} components, "
        f"{int(_recurring(stats.scenery_looks).sum())} recurring looks"
        if len(stats.scenery_looks)
        else ""
    )
    return [
        f"frames: {stats.frames} of {stats.height} x {stats.width} (H x W); {stats.sampled} "
        f"sampled",
        f"background: mode color {np.round(stats.color * 255).astype(int).tolist()} (RGB); "
        f"{_shares(stats)}; consecutive pairs scrolling {_scrolling(stats)} -> "
        f"{stats.background}{_moving(stats)}",
        f"foreground threshold: {stats.threshold * 255:.1f} / 255 (max over channels)",
        f"components: {len(stats.areas)} ({stats.per_frame:.1f} per frame), {stats.specks} "
        f"specks of < 3 px left out; larger side 10 / 50 / 90 %: {q[0]} / {q[1]} / {q[2]} px, "
        f"max {extents.max()} px",
        f"looks: {stats.num_looks} distinct, {int(recurring.sum())} recurring (>= 0.5 % of "
        f"the components); typical sprite (median larger side over the recurring looks): "
        f"{typical_extent(stats):.0f} px{scenery}",
        f"crowding: {stats.overlap_share:.1%} of components overlap another; 99th percentile "
        f"of centres per occupied cell at {crowding}",
    ]
