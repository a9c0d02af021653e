"""The notebook API: train a configuration, load a trained run."""

import os
from pathlib import Path

import torch

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from .config import Config
from .core import MarioNette
from .rundir import CONFIG_FILE

__all__ = ["load"]


def load(
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> tuple[MarioNette, Config]:
    """The trained model of a run directory (in eval mode) and its configuration.

    Args:
        run_dir: a directory written by ``marionette train``.
        checkpoint: a specific checkpoint file; by default the final one, else the newest
            readable one (a corrupt file is skipped with a warning).
        device: where to put the model.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    config = Config.load(config_path)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
    else:
        found = latest_checkpoint(run_dir)
        if found is None:
            raise CheckpointError(f"{run_dir} has no checkpoint yet; train it first")
        state = found[0]
    model = MarioNette(config.model)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config
