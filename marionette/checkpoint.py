"""Checkpoints: atomic, code-free (``weights_only`` loading), newest first with fallback."""

import os
import pickle
import re
import warnings
from collections.abc import Callable
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
    "nonfinite_tensors",
    "prune_checkpoints",
    "unusable",
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
    """Read one checkpoint without executing code from it (``weights_only`` loading: a file
    that holds Python objects beyond tensors and plain data is refused, never run)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # what weights_only raises on unsafe content
        raise CheckpointError(
            f"checkpoint {path} was refused: it is not a weights-only checkpoint (it holds Python "
            f"objects that loading would have to execute, which marionette never does). Use a "
            f"checkpoint written by marionette, or retrain."
        ) from None
    except Exception as error:  # truncated zip, bad magic, ...
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a marionette checkpoint")
    return state


def nonfinite_tensors(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinity."""
    return [
        name
        for name, tensor in weights.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def unusable(state: dict, refuse: Callable[[dict], str | None] | None = None) -> str | None:
    """Why a readable checkpoint cannot be used (non-finite weights, or ``refuse(state)``'s
    reason), or ``None`` when it can."""
    bad = nonfinite_tensors(state["model"])
    if bad:
        return f"it has non-finite weights ({', '.join(bad[:3])})"
    return refuse(state) if refuse else None


def latest_checkpoint(
    run_dir: str | os.PathLike,
    map_location="cpu",
    include_final: bool = True,
    refuse: Callable[[dict], str | None] | None = None,
) -> tuple[dict, Path] | None:
    """The newest usable checkpoint of a run (final first), or ``None`` if there is none.

    A corrupt or truncated file, one with non-finite weights, or one that ``refuse(state)``
    explains away (returns a reason) is named in a warning and the previous one is tried.
    """
    candidates = list_checkpoints(run_dir)[::-1]
    final = Path(run_dir) / CHECKPOINT_DIR / FINAL
    if include_final and final.exists():
        candidates.insert(0, final)
    errors = []
    for path in candidates:
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as error:
            reason = str(error)
        else:
            reason = unusable(state, refuse)
            if reason is None:
                return state, path
            reason = f"checkpoint {path}: {reason}"
        errors.append(reason)
        warnings.warn(f"{reason}; falling back to the previous checkpoint", stacklevel=2)
    if errors:
        raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
    return None
