"""Shape-annotated tensor types, the one switchable run-time checker, and value checks.

Dimension legend, used by every annotation and einops pattern in the package::

    B  batch                 T  frames per item (1 for single frames)
    NL depth layers          G  parity groups of a layer (always 4); NP = NL * G planes
    Lh Lw anchor-grid rows and columns (of a depth layer; Gh Gw: of one parity group)
    K  sprites of a dictionary or sprite table
    P  cell size in pixels (anchor spacing)        S  sprite window side (= 2P)
    Sy Sx the rows and columns of an S x S window  Sp a window padded by P/2 (S + P)
    Q  integer offsets per axis (P + 1); Qy Qx those of y and x
    C  channels (3 = RGB, 4 = RGBA)                H W canvas height and width in pixels
    D  code width            N  a flattened axis of slots, windows or objects
    xy a position's (x, y) axis                    M  ground-truth boxes beside N predictions
    Ws O  a background strip's width and its window offsets
    k  a convolution's kernel side                 Ho Wo its output size

Positions that leave the core are global pixel coordinates in (x, y) order: x is the column
(horizontal) axis, y the row (vertical) axis; boxes are (x0, y0, x1, y1) with exclusive x1, y1.

Checking is on by default (tests, notebooks, scripts) and off under ``python -O`` or with
``MARIONETTE_TYPECHECK=0``. The trainer checks its first step and then switches checking off.
Inside a ``torch.compile`` region the raw function runs, so compiled graphs never see the checker.
"""

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from beartype import beartype
from jaxtyping import Bool, Float, Int64, Shaped, jaxtyped
from torch import Tensor

__all__ = [
    "Bool",
    "Float",
    "Int64",
    "Shaped",
    "Tensor",
    "checks_active",
    "check_finite",
    "check_range",
    "set_typecheck",
    "typecheck",
    "typecheck_enabled",
    "typed",
]

_F = TypeVar("_F", bound=Callable)


_ON, _OFF = {"1", "true", "on", "yes"}, {"0", "false", "off", "no", ""}


def _from_environment() -> bool:
    """``MARIONETTE_TYPECHECK``: 1 / true / on / yes or 0 / false / off / no. Anything else is
    named in a warning and leaves the checks on (never a failed import)."""
    default = "1" if __debug__ else "0"
    value = os.environ.get("MARIONETTE_TYPECHECK", default).strip().lower()
    if value not in _ON | _OFF:
        warnings.warn(
            f"MARIONETTE_TYPECHECK must be one of {sorted(_ON)} or {sorted(_OFF - {''})}, got "
            f"{value!r}; shape checks stay on",
            stacklevel=2,
        )
        return True
    return value in _ON


_ENABLED = _from_environment()


def typecheck_enabled() -> bool:
    """Whether run-time shape, dtype and value checks are on."""
    return _ENABLED


def set_typecheck(enabled: bool) -> None:
    """Switch run-time checks on or off for the whole process."""
    global _ENABLED
    _ENABLED = bool(enabled)


@contextlib.contextmanager
def typecheck(enabled: bool) -> Iterator[None]:
    """Context manager that sets run-time checking for its body and restores it afterwards."""
    previous = _ENABLED
    set_typecheck(enabled)
    try:
        yield
    finally:
        set_typecheck(previous)


def checks_active() -> bool:
    """True when checks are on and we are not being traced by ``torch.compile``."""
    return _ENABLED and not torch.compiler.is_compiling()


def typed(fn: _F) -> _F:
    """Check a function's jaxtyping annotations with beartype, when checking is on.

    Dimension names bind across all arguments and the return value of one call, so a tensor whose
    axes are swapped relative to its siblings fails with a ``TypeError`` naming the argument, the
    expected annotation and the actual shape. When checks are off (or under ``torch.compile``) the
    raw function runs at the cost of one flag test. Applied to a dataclass, it checks the fields
    given to ``__init__`` the same way.
    """
    if isinstance(fn, type):
        raw_init = fn.__init__
        jaxtyped(typechecker=beartype)(fn)  # replaces __init__ by a checked one, in place
        fn.__init__ = _switch(raw_init, fn.__init__)
        return fn
    return _switch(fn, jaxtyped(typechecker=beartype)(fn))


def _switch(fn: _F, checked: Callable) -> _F:
    """Call ``checked`` while checks are active, else ``fn``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _ENABLED or torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        return checked(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_finite(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity (only while checks are active)."""
    if checks_active() and x.is_floating_point() and not bool(torch.isfinite(x.detach()).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN or infinite values of {x.numel()}")


def check_range(x: Tensor, name: str, low: float, high: float) -> None:
    """Raise ``ValueError`` if ``x`` leaves ``[low, high]`` (only while checks are active)."""
    if checks_active() and x.numel() > 0:
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if not (lo >= low and hi <= high):  # NaN fails both comparisons
            raise ValueError(f"{name} must lie in [{low}, {high}], got min={lo:.4g}, max={hi:.4g}")
