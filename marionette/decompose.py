"""Explicit decompositions on disk: what ``marionette decompose`` writes, and reading it back.

Output folder (the interface other tools read)::

    decomposition.json      canvas, grid, layers, depth order, background, and per frame the
                            present sprites (see DECOMPOSITION FORMAT in the README)
    sprites.npy             float32 [K, 4, S, S] RGBA dictionary, exact (for re-rendering)
    backgrounds.npy         float32 [N, 3, H, W] per-frame backgrounds (learned strips only)
    sprites/<id>.png        each dictionary sprite, RGBA
    sprite_sheet.png        the dictionary over a checkerboard, most used first, with counts
    summary.png             input / hard reconstruction / difference / layers for a few frames
    reconstructions/<frame>.png       hard reconstruction of every frame
    layers/<frame>_layer<l>.png       every depth layer of every frame, RGBA
"""

import json
import os
from pathlib import Path

import numpy as np
import torch

from ._io import atomic_write, write_json
from .core import PARITY_GROUPS, Decomposition, MarioNette, flatten_layers
from .data import FrameSource
from .viz import panel, save_png, sprite_sheet, to_uint8

__all__ = ["FORMAT_VERSION", "decompose_frames", "read_decomposition"]

FORMAT_VERSION = 1


def _rgba_uint8(image: torch.Tensor) -> np.ndarray:
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().cpu()
    return array.permute(1, 2, 0).numpy()


def _records(d: Decomposition, names: list[str]) -> list[dict]:
    """One JSON record per frame, listing every present slot."""
    boxes, visible = d.boxes()
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
        sprites.sort(key=lambda s: (s["depth"], s["row"], s["col"]))
        records.append({"frame": name, "sprites": sprites})
    return records


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

    Returns a summary: number of frames, sprites per frame, PSNR of the hard reconstruction and
    the paths of the sprite sheet and the summary picture.
    """
    out = Path(out)
    for sub in ("sprites", "reconstructions", "layers"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    model = model.eval().to(device)
    grid = model.grid
    records, usage = [], torch.zeros(model.config.num_classes, dtype=torch.long)
    backgrounds, squared_error, pixels = [], 0.0, 0
    first: Decomposition | None = None
    summary_inputs, summary_outputs, summary_layers = [], [], []
    batches = range(0, len(frames), batch_size)
    for start in progress(batches) if progress else batches:
        indices = list(range(start, min(start + batch_size, len(frames))))
        images = frames.frames(indices).float().div(255).to(device)[:, None]
        d = model.decompose(images)
        output = model(images, hard=True, plane_order=d.plane_order)
        names = [frames.names[i] for i in indices]
        records += _records(d, names)
        usage += torch.bincount(
            d.sprite_ids[d.presence > 0.5].flatten().cpu(), minlength=len(usage)
        )
        squared_error += float(((output.reconstruction - images) ** 2).sum())
        pixels += images.numel()
        layers = flatten_layers(output.planes, d.plane_order)
        for i, name in enumerate(names):
            stem = Path(name).stem
            save_png(to_uint8(output.reconstruction[i, 0]), out / "reconstructions" / f"{stem}.png")
            for layer in range(layers.shape[2]):
                save_png(
                    _rgba_uint8(layers[i, 0, layer]), out / "layers" / f"{stem}_layer{layer}.png"
                )
        if model.config.background != "color":
            backgrounds.append(d.background[:, 0].float().cpu())
        if first is None:
            first = d
        if len(summary_inputs) < summary_frames:
            take = slice(0, summary_frames - len(summary_inputs))
            summary_inputs.append(images[take, 0].cpu())
            summary_outputs.append(output.reconstruction[take, 0].cpu())
            summary_layers.append(layers[take, 0].cpu())
    sprites = first.sprites.float().cpu()
    for k in range(len(sprites)):
        save_png(_rgba_uint8(sprites[k]), out / "sprites" / f"{k}.png")
    with atomic_write(out / "sprites.npy") as handle:
        np.save(handle, sprites.numpy())
    background: dict
    if backgrounds:
        with atomic_write(out / "backgrounds.npy") as handle:
            np.save(handle, torch.cat(backgrounds).numpy())
        background = {"kind": "per_frame", "file": "backgrounds.npy"}
    else:
        background = {"kind": "color", "color": [float(v) for v in first.background[0, 0, :, 0, 0]]}
    save_png(sprite_sheet(sprites, usage), out / "sprite_sheet.png")
    save_png(
        panel(torch.cat(summary_inputs), torch.cat(summary_outputs), torch.cat(summary_layers)),
        out / "summary.png",
    )
    psnr_hard = -10 * np.log10(max(squared_error / max(pixels, 1), 1e-10))
    document = {
        "format": FORMAT_VERSION,
        "canvas": {"height": grid.height, "width": grid.width},
        "cell": grid.cell,
        "sprite_size": grid.sprite,
        "grid": {"rows": grid.rows, "cols": grid.cols},
        "num_layers": model.config.num_layers,
        "num_sprites": len(sprites),
        "gating": model.config.gating,
        "plane_order": first.plane_order.tolist(),
        "background": background,
        "coordinates": "pixels; (x, y) with x the column; boxes (x0, y0, x1, y1), x1/y1 "
        "exclusive; offsets in units of the cell size",
        "sprite_usage": usage.tolist(),
        "psnr_hard": psnr_hard,
        "frames": records,
    }
    write_json(out / "decomposition.json", document)
    counts = [sum(s["visible"] for s in r["sprites"]) for r in records]  # not transparent ones
    return {
        "frames": len(records),
        "sprites_per_frame": float(np.mean(counts)) if counts else 0.0,
        "psnr_hard": psnr_hard,
        "sprite_sheet": out / "sprite_sheet.png",
        "summary": out / "summary.png",
        "json": out / "decomposition.json",
    }


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
        colour = torch.tensor(background_info["color"])
        background = colour[None, None, :, None, None].expand(n, 1, 3, height, width).clone()
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
