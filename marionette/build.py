"""From a :class:`marionette.config.Config` to the objects a run needs: its device, frames,
evaluation data and model (with the data-derived background color and dictionary)."""

import numpy as np
import torch

from .config import Config
from .core import MarioNette, foreground_patches
from .data import Dataset, FrameSource, generate, load_dataset, open_frames
from .data.dataset import pad_masks
from .data.frames import adapt_frames
from .data.synthetic import GeneratedData

__all__ = ["build_data", "build_eval_data", "build_model", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for but CUDA is not available; use --device cpu or auto"
        )
    return device


def _synthetic(config: Config, split: str) -> GeneratedData:
    model, data = config.model, config.data
    overrides = {}
    if data.synthetic_clips and split == "train":
        key = "num_images" if data.synthetic == "tetrominoes" else "num_clips"
        overrides[key] = data.synthetic_clips
    if data.synthetic != "tetrominoes":  # sprite worlds are drawn at the canvas size
        overrides.update(height=model.height, width=model.width)
    return generate(data.synthetic, split, **overrides)


def build_data(config: Config, split: str = "train") -> FrameSource:
    """The frames a configuration trains on (``split="test"``: held-out synthetic clips)."""
    model, data = config.model, config.data
    size = (model.height, model.width)
    if data.data is not None:
        return open_frames(data.data, size, data.resize)
    frames = _synthetic(config, split).frames
    if (frames.height, frames.width) != size:
        frames = adapt_frames(frames, size, data.resize, what=f"synthetic world {data.synthetic!r}")
    return frames


def build_eval_data(config: Config) -> Dataset | None:
    """Frames with ground truth to evaluate on: ``eval_data``, else the training folder if it
    has ground truth (a MOC game folder: its test split), else the synthetic world's held-out
    clips (None: nothing)."""
    model, data = config.model, config.data
    size = (model.height, model.width)
    folder = data.eval_data or data.data
    if folder is not None:
        dataset = load_dataset(folder, size, data.resize)
        return dataset if dataset.groundtruth is not None else None
    generated = _synthetic(config, "test")
    frames, masks = generated.frames, generated.masks
    if (frames.height, frames.width) != size:
        if data.resize != "pad":
            raise ValueError(
                f"synthetic world {data.synthetic!r} is {frames.height} x {frames.width}; its "
                f"ground truth matches the canvas only with resize 'pad' (extends right/bottom)"
            )
        frames, masks = adapt_frames(frames, size, "pad"), pad_masks(masks, size)
    return Dataset(frames, generated.groundtruth, masks, {"settings": generated.settings})


def build_model(config: Config, frames: FrameSource | None = None) -> MarioNette:
    """A model for ``config`` with its renderer. Given frames, its background starts from up to
    100 of them (their mode color or per-pixel mode image), and with ``sprite_init`` ``"data"`` or
    ``"objects"`` its dictionary starts from their foreground against that background."""
    renderer = config.train.renderer
    if frames is None:
        return MarioNette(config.model, renderer=renderer)
    seed = config.train.seed
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(frames), size=min(100, len(frames)), replace=False))
    sample = frames.frames(picks)
    model = MarioNette(config.model, sample, renderer=renderer)
    if config.train.sprite_init != "random":
        images = sample.float() / 255
        with torch.no_grad():
            background = model.background(images)
        patches = foreground_patches(
            images,
            background,
            model.grid.cell,
            config.model.num_sprites,
            torch.Generator().manual_seed(seed),
            whole=config.train.sprite_init == "objects",
        )
        model.dictionary.fit(patches)
    return model
