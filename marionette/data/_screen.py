"""Helpers shared by the game generators: optional imports, screen resizes, box scaling."""

import importlib
from types import ModuleType

import numpy as np
from PIL import Image

__all__ = ["fit_screen", "import_extra", "scale_boxes"]


def import_extra(module: str, extra: str) -> ModuleType:
    """Import ``module``, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module} is needed for this generator but could not be imported ({error}); "
            f"install it with: pip install 'marionette[{extra}]'"
        ) from error


def fit_screen(
    screen: np.ndarray, size: tuple[int, int] | None, rows: tuple[int, int] | None
) -> np.ndarray:
    """Crop a native screen ``[h, w, 3]`` to ``rows`` (y0, y1) and resize it to ``size`` (H, W).

    The resize averages over each output pixel's area (PIL's box filter, OpenCV's INTER_AREA),
    which keeps one-pixel bullets as faint streaks where nearest-neighbour would drop them.
    """
    if rows is not None:
        screen = screen[rows[0] : rows[1]]
    if size is None or screen.shape[:2] == tuple(size):
        return np.ascontiguousarray(screen)
    image = Image.fromarray(screen).resize((size[1], size[0]), Image.Resampling.BOX)
    return np.asarray(image)


def scale_boxes(
    boxes: np.ndarray,
    native: tuple[int, int],
    size: tuple[int, int] | None,
    rows: tuple[int, int] | None,
    min_side: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Map native-pixel boxes ``[N, 4]`` (x0, y0, x1, y1) to the saved frame.

    ``native`` is the screen's (h, w); ``rows`` the cropped row range; ``size`` the saved (H, W).
    Boxes are clipped to the frame; returns the boxes and a mask of those at least ``min_side``
    pixels wide and high after clipping.
    """
    y0, y1 = rows if rows is not None else (0, native[0])
    height, width = size if size is not None else (y1 - y0, native[1])
    scale = np.array([width / native[1], height / (y1 - y0)] * 2)
    shift = np.array([0.0, y0] * 2)
    out = (np.asarray(boxes, np.float64).reshape(-1, 4) - shift) * scale
    out = np.clip(out, 0.0, [width, height, width, height])
    keep = (out[:, 2] - out[:, 0] >= min_side) & (out[:, 3] - out[:, 1] >= min_side)
    return out, keep
