"""The notebook API: train a configuration, load a trained run."""

import os
from pathlib import Path
from typing import NamedTuple

import torch

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, unusable
from .config import Config
from .core import MarioNette
from .rundir import CONFIG_FILE, RunDirectory

__all__ = ["LoadedRun", "load", "load_run"]


class LoadedRun(NamedTuple):
    """A trained model (in eval mode), its configuration, the training step its weights are
    from and the checkpoint file they were read from."""

    model: MarioNette
    config: Config
    step: int
    checkpoint: Path


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
    loaded = load_run(run_dir, checkpoint, device)
    return loaded.model, loaded.config


def load_run(
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> LoadedRun:
    """:func:`load`, with the step of the weights and the checkpoint they come from."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    config = Config.load(config_path)
    refuse = RunDirectory(run_dir).refuse_checkpoint(config)
    if checkpoint is not None:
        state, path = load_checkpoint(checkpoint), Path(checkpoint)
        reason = unusable(state, refuse)
        if reason:
            raise CheckpointError(
                f"checkpoint {path} cannot be used with {config_path}: {reason}. Pick another "
                f"checkpoint of the run, or omit --checkpoint for the newest usable one."
            )
    else:
        found = latest_checkpoint(run_dir, refuse=refuse)
        if found is None:
            raise CheckpointError(f"{run_dir} has no checkpoint yet; train it first")
        state, path = found
    model = MarioNette(config.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # missing keys or other shapes
        first = str(error).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path} does not fit the model of {config_path} "
            f"({' '.join(line.strip() for line in first[:3])}); it belongs to another run"
        ) from None
    return LoadedRun(model.to(device).eval(), config, int(state["step"]), path)
