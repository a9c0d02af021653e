"""Rendering a decomposition: the PyTorch reference, the fused kernel, and the choice between them.

:func:`render_windows` shifts, gates, places and composites with PyTorch operations; it is the
reference every fast path is tested against and the fallback wherever the fused Triton kernel
(:func:`marionette.core.fused.render_fused`) cannot run. :data:`RENDERERS` names both;
:func:`resolve_renderer` says which one ``"auto"`` means on a device.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, cached_property

import torch
from einops import rearrange

from ._typing import Float, Tensor, check_finite, check_range, typed
from .compositing import composite_layers, gate_presence, plane_order
from .decomposition import Decomposition, shift_slots
from .fused import render_fused, triton_unavailable_reason
from .geometry import Grid
from .placement import place_sprites

__all__ = [
    "RENDERERS",
    "RENDERER_CHOICES",
    "Rendering",
    "render",
    "render_decomposition",
    "render_windows",
    "resolve_renderer",
    "self_check",
]


@typed
@dataclass(frozen=True, eq=False)
class Rendering:
    """What rendering produces: the frames, and the pieces that explain them.

    Attributes:
        reconstruction: composited frames in [0, 1].
        pieces: returns (planes, alpha); called once, on first access of either (the fused
            kernel writes no planes, so they are rendered by the reference path only if asked).
    """

    reconstruction: Float[Tensor, "B T 3 H W"]
    pieces: Callable[[], tuple[Tensor, Tensor]] = field(repr=False)

    @cached_property
    def _pieces(self) -> tuple[Tensor, Tensor]:
        return self.pieces()

    @property
    def planes(self) -> Float[Tensor, "B T NL G 4 H W"]:
        """Placed, presence-gated RGBA planes, one per (layer, parity group)."""
        return self._pieces[0]

    @property
    def alpha(self) -> Float[Tensor, "B T NL Lh Lw S S"]:
        """Every slot's placed (shifted, not presence-gated) alpha, in window coordinates."""
        return self._pieces[1]


@typed
def render_windows(decomposition: Decomposition) -> Rendering:
    """Shift every slot's sprite, gate it by presence, place it and composite all planes.

    out = sum_i a_i c_i prod_{j > i} (1 - a_j) + prod_i (1 - a_i) bg over the planes i in
    ``plane_order``, each plane holding the gated, shifted windows of one (layer, parity group).
    """
    d = decomposition
    shifted = shift_slots(d)
    t = shifted.shape[1]
    batched = "B T NL Lh Lw ... -> (B T) NL Lh Lw ..."
    gated = gate_presence(rearrange(shifted, batched), rearrange(d.presence, batched), d.gating)
    planes = rearrange(place_sprites(gated, d.grid), "(B T) NL G C H W -> B T NL G C H W", T=t)
    reconstruction = composite_layers(planes, d.background, d.plane_order)
    alpha = shifted[..., 3, :, :]
    return Rendering(reconstruction, lambda: (planes, alpha))


def _render_fused(decomposition: Decomposition) -> Rendering:
    """The fused kernel's frames; planes and alphas come from the reference path when read."""

    def pieces() -> tuple[Tensor, Tensor]:
        rendering = render_windows(decomposition)
        return rendering.planes, rendering.alpha

    return Rendering(render_fused(decomposition), pieces)


#: The renderers by name: ``torch`` the PyTorch reference, ``triton`` the fused kernel (bilinear
#: offsets only). ``"auto"`` (see :func:`resolve_renderer`) picks one per device.
RENDERERS: dict[str, Callable[[Decomposition], Rendering]] = {
    "torch": render_windows,
    "triton": _render_fused,
}
RENDERER_CHOICES: tuple[str, ...] = ("auto", *RENDERERS)


def resolve_renderer(renderer: str, device: torch.device) -> str:
    """``"torch"`` or ``"triton"``: which renderer ``renderer`` means on ``device``.

    ``"auto"`` takes the fused kernel on CUDA devices where it passes :func:`self_check` (once
    per device and process); where it does not, it warns and takes the PyTorch path.
    """
    if renderer not in RENDERER_CHOICES:
        raise ValueError(f"renderer must be one of {RENDERER_CHOICES}, got {renderer!r}")
    if renderer == "torch":
        return "torch"
    reason = triton_unavailable_reason(device)
    if renderer == "triton":
        if reason is not None:
            raise RuntimeError(f"renderer='triton' cannot run: {reason}; use renderer='auto'")
        return "triton"
    if reason is not None or device.type != "cuda":
        return "torch"
    failure = self_check(device)
    if failure is not None:
        warnings.warn(
            f"the fused renderer failed its self-check on {device} ({failure}); rendering "
            f"with PyTorch instead (same results, slower). Please report this.",
            stacklevel=2,
        )
        return "torch"
    return "triton"


@typed
def render_decomposition(decomposition: Decomposition, renderer: str = "auto") -> Rendering:
    """Render a decomposition with the chosen renderer, keeping its planes and placed alphas.

    ``renderer``: ``"auto"``, ``"torch"`` or ``"triton"`` (see :func:`resolve_renderer`); both
    renderers give the same frames and gradients. Discrete offsets (``offset_weights``) are
    drawn by the PyTorch path.
    """
    d = decomposition
    check_range(d.presence, "presence", 0.0, 1.0)
    check_finite(d.offsets, "offsets")
    check_finite(d.sprites, "sprites")
    name = resolve_renderer(renderer, d.sprites.device)
    if d.offset_weights is not None and name == "triton":
        if renderer == "triton":
            raise ValueError(
                "the fused renderer draws bilinear offsets only; discrete offset weights "
                "(no_spatial_transformer) need renderer='torch' or 'auto'"
            )
        name = "torch"
    return RENDERERS[name](d)


@typed
def render(decomposition: Decomposition, renderer: str = "auto") -> Float[Tensor, "B T 3 H W"]:
    """Frames described by a decomposition: the sprite of every slot, shifted by its offset, gated
    by its presence, placed in its window, composited back to front over the background.

    Rendering the decomposition that :meth:`MarioNette.decompose` returns reproduces the model's
    hard reconstruction. ``renderer``: see :func:`render_decomposition`.
    """
    return render_decomposition(decomposition, renderer).reconstruction


@cache
def self_check(device: torch.device) -> str | None:
    """Render a small random scene with the fused kernel on ``device`` and with the PyTorch
    path, frames and gradients; None when they agree (to 1e-3), else what went wrong."""
    grid = Grid(16, 24, 8)
    g = torch.Generator().manual_seed(0)
    shape = (1, 1, 2, grid.rows, grid.cols)
    leaves = [
        torch.rand(3, 4, grid.sprite, grid.sprite, generator=g),
        torch.rand(shape, generator=g),
        torch.rand(*shape, 2, generator=g) - 0.5,
        torch.rand(1, 1, 3, grid.height, grid.width, generator=g),
    ]
    ids = torch.randint(0, 3, shape, generator=g).to(device)
    order = plane_order(2, shuffle_groups=True, generator=g).to(device)
    weight = torch.rand(1, 1, 3, grid.height, grid.width, generator=g).to(device)
    try:
        with (  # float32 with gradients, whatever the caller's context
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device.type, enabled=False),
        ):
            results = [
                _frames_and_gradients(renderer, device, leaves, ids, order, grid, weight)
                for renderer in (_render_fused, render_windows)
            ]
    except Exception as error:  # any failure to build or run the kernel means: do not use it
        return f"{type(error).__name__}: {error}"
    names = ("frames", "sprite gradient", "presence gradient", "offset gradient",
             "background gradient")  # fmt: skip
    for name, fused, reference in zip(names, *results, strict=True):
        difference = float((fused - reference).abs().max())
        if not difference <= 1e-3:
            return f"{name} differs from the PyTorch path by {difference:.3g}"
    return None


def _frames_and_gradients(renderer, device, leaves, ids, order, grid, weight) -> list[Tensor]:
    """Frames and the gradients of (weight * frames).sum() from one renderer (self-check)."""
    sprites, presence, offsets, background = (x.to(device).requires_grad_() for x in leaves)
    decomposition = Decomposition(sprites, ids, presence, offsets, background, order, grid.cell)
    frames = renderer(decomposition).reconstruction
    (frames * weight).sum().backward()
    return [frames.detach(), *(x.grad for x in (sprites, presence, offsets, background))]
