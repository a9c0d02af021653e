"""Checkpoints: atomic, code-free (``weights_only`` loading), newest first with fallback."""

import os
import re
import warnings
from pathlib import Path

import torch

from ._io import atomic_write

__all__ = [
    "CHECKPOINT_DIR",
    "FINAL",
    "CheckpointError",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

CHECKPOINT_DIR = "checkpoints"
FINAL = "final.pt"
FORMAT = 1
_STEP = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """No usable checkpoint could be read."""


def save_checkpoint(run_dir: str | os.PathLike, state: dict, name: str | None = None) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically.

    The file is ``checkpoints/step_<step>.pt`` unless ``name`` is given (e.g. :data:`FINAL`). A
    failure while writing (a full disk, Ctrl-C) leaves every existing checkpoint untouched.
    """
    directory = Path(run_dir) / CHECKPOINT_DIR
    path = directory / (name or f"step_{int(state['step']):09d}.pt")
    with atomic_write(path) as handle:
        torch.save({"format": FORMAT, **state}, handle)
    return path


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Step checkpoints of a run, oldest first (the final checkpoint is not included)."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` newest step checkpoints."""
    for path in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read one checkpoint without executing code from it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, bad magic, unsafe pickle content, ...
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({error})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a marionette checkpoint")
    return state


def latest_checkpoint(
    run_dir: str | os.PathLike, map_location="cpu", include_final: bool = True
) -> tuple[dict, Path] | None:
    """The newest readable checkpoint of a run (final first), or ``None`` if there is none.

    A corrupt or truncated file is named in a warning and the previous one is tried.
    """
    candidates = list_checkpoints(run_dir)[::-1]
    final = Path(run_dir) / CHECKPOINT_DIR / FINAL
    if include_final and final.exists():
        candidates.insert(0, final)
    errors = []
    for path in candidates:
        try:
            return load_checkpoint(path, map_location), path
        except CheckpointError as error:
            errors.append(str(error))
            warnings.warn(f"{error}; falling back to the previous checkpoint", stacklevel=2)
    if errors:
        raise CheckpointError("no readable checkpoint: " + "; ".join(errors))
    return None
