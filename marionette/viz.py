"""Pictures of what a model learned: sprite sheets, layer panels, reconstructions."""

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ._io import atomic_write

__all__ = ["checkerboard", "over_checkerboard", "panel", "save_png", "sprite_sheet", "to_uint8"]


def checkerboard(height: int, width: int, tile: int = 8) -> torch.Tensor:
    """Grey / white checkerboard [3, H, W] (0.8 / 1.0), the usual transparency backdrop."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    light = ((ys // tile + xs // tile) % 2 == 0).float()
    return (0.8 + 0.2 * light).expand(3, height, width)


def over_checkerboard(rgba: torch.Tensor, tile: int = 8) -> torch.Tensor:
    """Composite straight-alpha RGBA [..., 4, H, W] over a checkerboard: [..., 3, H, W]."""
    board = checkerboard(rgba.shape[-2], rgba.shape[-1], tile).to(rgba)
    alpha = rgba[..., 3:, :, :]
    return alpha * rgba[..., :3, :, :] + (1 - alpha) * board


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] to [H, W, 3] uint8."""
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    return array.permute(1, 2, 0).numpy()


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write an [H, W, C] uint8 array as PNG (atomically)."""
    with atomic_write(path) as handle:
        Image.fromarray(array).save(handle, format="PNG")


def _border(image: torch.Tensor, width: int = 1) -> torch.Tensor:
    return torch.nn.functional.pad(image, (width, width, width, width), value=0.0)


def panel(
    frames: torch.Tensor, reconstruction: torch.Tensor, layers: torch.Tensor, scale: int = 2
) -> np.ndarray:
    """One row per frame: input, reconstruction, 4 x |difference|, then each layer over a
    checkerboard; every tile with a 1 px black border.

    Args:
        frames, reconstruction: [N, 3, H, W] in [0, 1].
        layers: [N, NL, 4, H, W] straight-alpha RGBA per layer.
        scale: nearest-neighbour upscaling of the result.
    """
    rows = []
    for i in range(frames.shape[0]):
        difference = (4 * (frames[i] - reconstruction[i]).abs()).clamp(0, 1)
        tiles = [frames[i], reconstruction[i], difference]
        tiles += [over_checkerboard(layers[i, layer]) for layer in range(layers.shape[1])]
        rows.append(torch.cat([_border(t.float().cpu()) for t in tiles], dim=-1))
    image = to_uint8(torch.cat(rows, dim=-2))
    return np.kron(image, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else image


def sprite_sheet(
    sprites: torch.Tensor,
    usage: torch.Tensor | None = None,
    columns: int = 0,
    scale: int = 3,
    order_by_usage: bool = True,
    looks: Sequence[int] | None = None,
) -> np.ndarray:
    """The dictionary over a checkerboard, optionally ordered by use and labelled with counts.

    Args:
        sprites: [K, 4, S, S] straight-alpha RGBA.
        usage: [K] how many slots use each sprite; shown under each sprite as ``#id n``.
        columns: sprites per row (0: about square).
        scale: nearest-neighbour upscaling of each sprite.
        order_by_usage: most used first (when ``usage`` is given).
        looks: the look of every entry (:func:`marionette.core.sprite_looks`; needs ``usage``):
            each used look is drawn once, with the use of its repeats added to its count and
            their number after it (``#id n +r``); unused entries are left out.
    """
    k, _, s, _ = sprites.shape
    order, counts, repeats = list(range(k)), usage, [0] * k
    if looks is not None:
        if usage is None or len(looks) != k:
            raise ValueError(
                f"looks need the usage and one look per entry ({k}), got usage "
                f"{None if usage is None else tuple(usage.shape)} and {len(looks)} looks"
            )
        counts = torch.zeros(k, dtype=torch.long)
        for entry, look in enumerate(looks):
            counts[look] += int(usage[entry])
            repeats[look] += look != entry
        order = [entry for entry in order if looks[entry] == entry and counts[entry] > 0]
    if counts is not None and order_by_usage:
        order = sorted(order, key=lambda i: (-int(counts[i]), i))
    columns = columns or max(1, int(np.ceil(np.sqrt(len(order)))))
    rows = max(1, int(np.ceil(len(order) / columns)))
    cell = s * scale + 2
    label = 12 if counts is not None else 0
    sheet = Image.new("RGB", (columns * cell, rows * (cell + label)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    tiles = over_checkerboard(sprites.detach().float().cpu(), tile=max(2, s // 4))
    for position, index in enumerate(order):
        row, col = divmod(position, columns)
        tile = np.kron(to_uint8(_border(tiles[index])), np.ones((scale, scale, 1), np.uint8))
        tile = Image.fromarray(tile).resize((cell, cell), Image.Resampling.NEAREST)
        sheet.paste(tile, (col * cell, row * (cell + label)))
        if counts is not None:
            text = f"#{index} {int(counts[index])}" + (f" +{repeats[index]}" * bool(repeats[index]))
            draw.text((col * cell + 2, row * (cell + label) + cell), text, fill=(0, 0, 0))
    return np.asarray(sheet)
