"""The typed functional sprite renderer and the MarioNette model."""

from ._typing import check_finite, check_range, set_typecheck, typecheck, typecheck_enabled, typed
from .background import (
    ColorBackground,
    StripBackground,
    estimate_background_color,
    scroll_strip,
    slide_strip_window,
)
from .compositing import (
    composite_layers,
    composite_over,
    flatten_layers,
    gate_presence,
    plane_order,
)
from .consistency import CODE_KINDS, consistency_loss, encoding_consistency
from .dictionary import SpriteDictionary, decode_sprites, foreground_patches
from .encoders import CompensatedConv2d, GridEncoder, MLPHead, compensated_conv2d
from .geometry import Grid, footprint_boxes, global_centers, window_origins
from .losses import beta_prior_loss, presence_loss, psnr, reconstruction_loss
from .model import Encoding, MarioNette, MarioNetteOutput, ModelConfig
from .placement import PARITY_GROUPS, extract_windows, place_sprites
from .render import Decomposition, Rendering, render, render_decomposition, render_windows
from .selection import (
    gather_sprites,
    hard_presence,
    hard_weights,
    mix_sprites,
    selection_logits,
    straight_through,
)
from .shifts import discrete_offsets, match_offsets, shift_bilinear, shift_discrete

__all__ = [
    "CODE_KINDS",
    "consistency_loss",
    "encoding_consistency",
    "PARITY_GROUPS",
    "ColorBackground",
    "CompensatedConv2d",
    "Decomposition",
    "Encoding",
    "Grid",
    "GridEncoder",
    "MLPHead",
    "MarioNette",
    "MarioNetteOutput",
    "ModelConfig",
    "Rendering",
    "SpriteDictionary",
    "StripBackground",
    "beta_prior_loss",
    "check_finite",
    "check_range",
    "compensated_conv2d",
    "composite_layers",
    "composite_over",
    "decode_sprites",
    "discrete_offsets",
    "estimate_background_color",
    "extract_windows",
    "flatten_layers",
    "footprint_boxes",
    "foreground_patches",
    "gate_presence",
    "gather_sprites",
    "global_centers",
    "hard_presence",
    "hard_weights",
    "match_offsets",
    "mix_sprites",
    "place_sprites",
    "plane_order",
    "presence_loss",
    "psnr",
    "reconstruction_loss",
    "render",
    "render_decomposition",
    "render_windows",
    "scroll_strip",
    "selection_logits",
    "set_typecheck",
    "shift_bilinear",
    "shift_discrete",
    "slide_strip_window",
    "straight_through",
    "typecheck",
    "typecheck_enabled",
    "typed",
    "window_origins",
]
