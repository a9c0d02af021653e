"""Explicit decompositions on disk: what ``marionette decompose`` writes, and reading it back.

Output folder (the interface other tools read)::

    decomposition.json      canvas, grid, layers, depth order, background, and per frame the
                            present sprites (see DECOMPOSITION FORMAT in the README)
    sprites.npy             float32 [K, 4, S, S] RGBA dictionary, exact (for re-rendering)
    backgrounds.npy         float32 [N, 3, H, W] per-frame backgrounds (strips, frame_color)
    background.npy          float32 [3, H, W] the one background (color, image)
    sprites/<id>.png        each dictionary sprite, RGBA
    sprite_sheet.png        each used look once (repeated entries counted with the entry they
                            repeat), over a checkerboard, most used first, with counts
    summary.png             input / hard reconstruction / difference / layers for a few frames
    reconstructions/<frame>.png       hard reconstruction of every frame
    layers/<frame>_layer<l>.png       every depth layer of every frame, RGBA
"""

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ._io import atomic_directory, atomic_write, write_json
from .core import (
    PARITY_GROUPS,
    Decomposition,
    MarioNette,
    plane_order_for,
    psnr_of_mse,
    sprite_looks,
)
from .data import FrameSource
from .eval.objects import suppress_overlaps
from .viz import panel, save_png, sprite_sheet, to_uint8

__all__ = ["FORMAT_VERSION", "decompose_frames", "read_decomposition"]

FORMAT_VERSION = 1


def _rgba_uint8(image: torch.Tensor) -> np.ndarray:
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    return array.permute(1, 2, 0).numpy()


def _records(d: Decomposition, footprints: tuple[Tensor, Tensor], names: list[str]) -> list[dict]:
    """One JSON record per frame, listing every present slot (``footprints``: its global boxes
    and whether each is visible, see :meth:`Decomposition.boxes`); ``repeat`` marks the visible
    ones that draw an object a more present slot draws (:func:`~marionette.eval.suppress_overlaps`,
    as evaluation leaves them out)."""
    boxes, visible = footprints
    centers = d.centers()
    order = d.plane_order.tolist()
    depth_of_plane = {plane: depth for depth, plane in enumerate(order)}
    records = []
    for b, name in enumerate(names):
        sprites = []
        present = (d.presence[b, 0] > 0.5).nonzero().tolist()
        for layer, row, col in present:
            group = PARITY_GROUPS.index((row % 2, col % 2))
            sprites.append(
                {
                    "layer": layer,
                    "row": row,
                    "col": col,
                    "sprite": int(d.sprite_ids[b, 0, layer, row, col]),
                    "presence": float(d.presence[b, 0, layer, row, col]),
                    "offset": [float(v) for v in d.offsets[b, 0, layer, row, col]],
                    "center": [float(v) for v in centers[b, 0, layer, row, col]],
                    "box": [float(v) for v in boxes[b, 0, layer, row, col]],
                    "visible": bool(visible[b, 0, layer, row, col]),
                    "depth": depth_of_plane[layer * 4 + group],
                }
            )
        shown = [sprite for sprite in sprites if sprite["visible"]]
        kept = suppress_overlaps(
            np.array([sprite["box"] for sprite in shown]).reshape(-1, 4),
            np.array([sprite["presence"] for sprite in shown]),
            np.zeros(len(shown), np.int64),
        )
        for sprite in sprites:
            sprite["repeat"] = False
        for sprite, keep in zip(shown, kept, strict=True):
            sprite["repeat"] = not keep
        sprites.sort(key=lambda s: (s["depth"], s["row"], s["col"]))
        records.append({"frame": name, "sprites": sprites})
    return records


class _Summary:
    """What the whole pass accumulates besides the per-frame files: usage, squared error,
    per-frame backgrounds and the first frames for the summary picture."""

    def __init__(self, num_sprites: int, summary_frames: int) -> None:
        self.usage = torch.zeros(num_sprites, dtype=torch.long)
        self.squared_error, self.pixels = 0.0, 0
        self.backgrounds: list[torch.Tensor] = []
        self.first: Decomposition | None = None
        self.pictures: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.room = summary_frames

    def add(self, images, d: Decomposition, reconstruction, layers, per_frame: bool) -> None:
        present = d.sprite_ids[d.presence > 0.5].flatten().cpu()
        self.usage += torch.bincount(present, minlength=len(self.usage))
        self.squared_error += float(((reconstruction - images) ** 2).sum())
        self.pixels += images.numel()
        if per_frame:
            self.backgrounds.append(d.background[:, 0].float().cpu())
        if self.first is None:
            self.first = d
        if self.room > 0:
            take = slice(0, self.room)
            self.pictures.append(
                (images[take, 0].cpu(), reconstruction[take, 0].cpu(), layers[take, 0].cpu())
            )
            self.room -= len(self.pictures[-1][0])

    @property
    def psnr(self) -> float:
        return psnr_of_mse(self.squared_error / max(self.pixels, 1))


def _write_frames(out: Path, names: list[str], reconstruction, layers) -> None:
    """Each frame's hard reconstruction and its layers as PNGs."""
    for i, name in enumerate(names):
        stem = Path(name).stem
        save_png(to_uint8(reconstruction[i, 0]), out / "reconstructions" / f"{stem}.png")
        for layer in range(layers.shape[2]):
            save_png(_rgba_uint8(layers[i, 0, layer]), out / "layers" / f"{stem}_layer{layer}.png")


def _write_dictionary(out: Path, model: MarioNette, summary: _Summary) -> tuple[dict, list[int]]:
    """Sprites, backgrounds, the sprite sheet and the summary picture; returns the document's
    ``background`` entry and the look of every sprite (:func:`marionette.core.sprite_looks`)."""
    sprites = summary.first.sprites.float().cpu()
    for k in range(len(sprites)):
        save_png(_rgba_uint8(sprites[k]), out / "sprites" / f"{k}.png")
    with atomic_write(out / "sprites.npy") as handle:
        np.save(handle, sprites.numpy())
    looks = sprite_looks(sprites, summary.usage)
    save_png(sprite_sheet(sprites, summary.usage, looks=looks), out / "sprite_sheet.png")
    save_png(panel(*(torch.cat(parts) for parts in zip(*summary.pictures, strict=True))),
             out / "summary.png")  # fmt: skip
    if summary.backgrounds:
        with atomic_write(out / "backgrounds.npy") as handle:
            np.save(handle, torch.cat(summary.backgrounds).numpy())
        return {"kind": "per_frame", "file": "backgrounds.npy"}, looks
    image = summary.first.background[0, 0].float().cpu()  # the same for every frame
    if torch.equal(image, image[:, :1, :1].expand_as(image)):
        return {"kind": "color", "color": [float(v) for v in image[:, 0, 0]]}, looks
    with atomic_write(out / "background.npy") as handle:
        np.save(handle, image.numpy())
    return {"kind": "image", "file": "background.npy"}, looks


def _document(
    model: MarioNette, summary: _Summary, background: dict, looks: list[int], records: list
) -> dict:
    grid, first = model.grid, summary.first
    return {
        "format": FORMAT_VERSION,
        "canvas": {"height": grid.height, "width": grid.width},
        "cell": grid.cell,
        "sprite_size": grid.sprite,
        "grid": {"rows": grid.rows, "cols": grid.cols},
        "num_layers": model.config.num_layers,
        "num_sprites": len(first.sprites),
        "gating": model.config.gating,
        "plane_order": first.plane_order.tolist(),
        "background": background,
        "coordinates": "pixels; (x, y) with x the column; boxes (x0, y0, x1, y1), x1/y1 "
        "exclusive; offsets in units of the cell size",
        "sprite_usage": summary.usage.tolist(),
        "sprite_looks": looks,
        "psnr_hard": summary.psnr,
        "frames": records,
    }


@torch.no_grad()
def decompose_frames(
    model: MarioNette,
    frames: FrameSource,
    out: str | os.PathLike,
    batch_size: int = 16,
    summary_frames: int = 6,
    device: torch.device | str = "cpu",
    progress=None,
) -> dict:
    """Hard-decompose every frame and write the output folder described in the module.

    Returns a summary: number of frames, visible sprites per frame, objects per frame (the
    visible sprites less their repeats), PSNR of the hard reconstruction and the paths of the
    sprite sheet and the summary picture.
    """
    final = Path(out)
    if final.is_dir() and any(final.iterdir()) and not (final / "decomposition.json").exists():
        raise FileExistsError(
            f"{final} exists and is not a decomposition folder (no decomposition.json); "
            f"choose another --out or remove it"
        )
    with atomic_directory(final, overwrite=True) as out:  # no stale frames of an earlier run
        for sub in ("sprites", "reconstructions", "layers"):
            (out / sub).mkdir()
        summary, records = _decompose_into(out, model, frames, batch_size, summary_frames,
                                           device, progress)  # fmt: skip
    shown = [sum(s["visible"] for s in r["sprites"]) for r in records]  # not transparent ones
    objects = [sum(s["visible"] and not s["repeat"] for s in r["sprites"]) for r in records]
    return {
        "frames": len(records),
        "sprites_per_frame": float(np.mean(shown)) if shown else 0.0,
        "objects_per_frame": float(np.mean(objects)) if objects else 0.0,
        "psnr_hard": summary.psnr,
        "sprite_sheet": final / "sprite_sheet.png",
        "summary": final / "summary.png",
        "json": final / "decomposition.json",
    }


def _decompose_into(out, model, frames, batch_size, summary_frames, device, progress):
    model = model.eval().to(device)
    order = plane_order_for(model.config, training=False)
    summary, records = _Summary(model.config.num_sprites, summary_frames), []
    batches = range(0, len(frames), batch_size)
    for start in progress(batches) if progress else batches:
        indices = list(range(start, min(start + batch_size, len(frames))))
        images = frames.frames(indices).float().div(255).to(device)[:, None]
        output = model(images, "hard", order)
        d, names = output.decomposition, [frames.names[i] for i in indices]
        layers = output.layers()
        records += _records(d, output.boxes(), names)
        _write_frames(out, names, output.reconstruction, layers)
        summary.add(images, d, output.reconstruction, layers, model.background.per_frame)
    background, looks = _write_dictionary(out, model, summary)
    write_json(out / "decomposition.json", _document(model, summary, background, looks, records))
    return summary, records


def read_decomposition(folder: str | os.PathLike) -> tuple[Decomposition, list[str]]:
    """Read a decomposition folder back (no pickle) as one :class:`Decomposition` with B = the
    number of frames and T = 1, plus the frame names. :func:`marionette.render` of it gives the
    hard reconstructions."""
    folder = Path(folder)
    document = json.loads((folder / "decomposition.json").read_text())
    if document.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{folder}/decomposition.json has format {document.get('format')}, "
            f"expected {FORMAT_VERSION}"
        )
    sprites = torch.from_numpy(np.load(folder / "sprites.npy", allow_pickle=False))
    n = len(document["frames"])
    rows, cols = document["grid"]["rows"], document["grid"]["cols"]
    layers = document["num_layers"]
    height, width = document["canvas"]["height"], document["canvas"]["width"]
    ids = torch.zeros(n, 1, layers, rows, cols, dtype=torch.long)
    presence = torch.zeros(n, 1, layers, rows, cols)
    offsets = torch.zeros(n, 1, layers, rows, cols, 2)
    for b, record in enumerate(document["frames"]):
        for s in record["sprites"]:
            at = (b, 0, s["layer"], s["row"], s["col"])
            ids[at], presence[at] = s["sprite"], s["presence"]
            offsets[at] = torch.tensor(s["offset"])
    background_info = document["background"]
    if background_info["kind"] == "color":
        color = torch.tensor(background_info["color"])
        background = color[None, None, :, None, None].expand(n, 1, 3, height, width).clone()
    elif background_info["kind"] == "image":
        stored = np.load(folder / background_info["file"], allow_pickle=False)
        background = torch.from_numpy(stored)[None, None].expand(n, 1, -1, -1, -1).clone()
    else:
        stored = np.load(folder / background_info["file"], allow_pickle=False)
        background = torch.from_numpy(stored)[:, None]
    decomposition = Decomposition(
        sprites=sprites,
        sprite_ids=ids,
        presence=presence,
        offsets=offsets,
        background=background,
        plane_order=torch.tensor(document["plane_order"]),
        cell=document["cell"],
        gating=document["gating"],
    )
    return decomposition, [r["frame"] for r in document["frames"]]
