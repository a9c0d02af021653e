"""The MarioNette model: anchor codes select dictionary sprites that are shifted, placed and
composited in depth layers to reconstruct the input frames."""

import warnings
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._typing import Bool, Float, Int64, Tensor, check_finite, check_range, typed
from .background import BACKGROUNDS
from .compositing import GATING_MODES, flatten_layers, plane_order
from .decomposition import Decomposition
from .dictionary import DECODERS, SpriteDictionary
from .encoders import GridEncoder, MLPHead
from .encoding import Encoding
from .geometry import Grid, footprint_boxes
from .modes import decompose_encoding
from .offsets import OFFSET_PREDICTORS
from .placement import AnchorWindows
from .presence import PRESENCES
from .renderers import RENDERER_CHOICES, Rendering, render_decomposition
from .selection import SELECTIONS, mix_sprites

__all__ = ["MarioNette", "MarioNetteOutput", "ModelConfig", "plane_order_for"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`MarioNette`. Defaults are the original's.

    Attributes:
        height, width: canvas size H x W in pixels (the original's ``--canvas_size`` sets both).
        layer_size: anchor rows Lh; the cell size is P = height / layer_size and must divide
            the width too (sprites are S = 2P pixels).
        num_layers: depth layers NL.
        num_sprites: dictionary size K (the original's ``--num_classes``).
        dim_z: code width D (a multiple of 8).
        no_spatial_transformer: discrete softmax over P + 1 offsets per axis instead of the
            bilinear spatial transformer.
        straight_through_probs: round presence in the forward pass, identity gradient.
        background: ``"color"`` (a color estimated from the data), ``"frame_color"`` (each
            frame's own mode color, read from the frame: frames of several sceneries),
            ``"image"`` (a static image: the data's per-pixel mode, refined by learning),
            ``"strip"`` (a learned horizontally scrolling strip, softmax over offsets),
            ``"strip_st"`` (the strip with a spatial-transformer window) or
            ``"strip_vertical"`` (a learned vertically scrolling strip).
        learn_background: train the background color instead of keeping the estimate.
        shuffle_groups: shuffle the 4 parity groups of each layer on every training forward.
        shuffle_all: shuffle the depth of all planes, across layers too.
        gating: ``"premultiplied"`` (presence scales alpha) or ``"original"`` (presence scales
            color and alpha); see :func:`marionette.core.gate_presence`.
        transform_encoder: ``"conv"`` (the original: a CNN over [image window, soft sprite] per
            slot predicts the offset) or ``"anchor"`` (an MLP on the anchor code predicts it; no
            per-slot CNN, many times cheaper).
        xform_dim: channels of the ``"conv"`` transform encoder (0: same as ``dim_z``).
        presence_bias: initial bias of the presence logit (0: presence starts near 1/2).
        presence: ``"learned"`` (the original: the sigmoid of the presence head's logit) or
            ``"match"`` (that logit plus the anchor's best matching gain, on the back layer, or
            with ``selection="pursuit"`` on every layer its own; needs a matched selection; see
            :func:`marionette.core.matched_presence`).
        alpha_init: initial mean sprite opacity in (0, 1); 0 keeps the default initialisation
            (about 1/2, as the original).
        dictionary: ``"mlp"`` (sprites decoded from codes by a shared MLP, the original) or
            ``"pixels"`` (every sprite its own learned pixel grid).
        selection: ``"learned"`` (the original: scaled dot product of projected anchor codes
            with dictionary codes) or ``"match"`` (those logits plus, per sprite, how much
            placing it at its best displacement would reduce the window's error; see
            :func:`marionette.core.match_gains`), or ``"pursuit"`` (the same, each layer
            matched against the background with the layers behind it drawn: a second object in
            an anchor is found by the next layer, and of two neighbouring anchors that would
            draw the same object only the better-matching one does; see
            :func:`marionette.core.pursuit_selection`).
            With ``transform_encoder="match"`` each sprite then comes with its own matched
            offset.
        match_temperature: softness, in per-pixel squared error, of the matching softmaxes.
        encoder_base_width: channels of the image encoder's first, full-resolution block; each
            later block doubles them, up to ``dim_z`` (a multiple of 8; 0: ``dim_z`` at every
            resolution, the original). See :class:`marionette.core.GridEncoder`.
    """

    height: int = 128
    width: int = 128
    layer_size: int = 8
    num_layers: int = 2
    num_sprites: int = 150
    dim_z: int = 128
    no_spatial_transformer: bool = False
    straight_through_probs: bool = False
    background: str = "color"
    learn_background: bool = False
    shuffle_groups: bool = True
    shuffle_all: bool = False
    gating: str = "premultiplied"
    transform_encoder: str = "conv"
    xform_dim: int = 0
    presence_bias: float = 0.0
    presence: str = "learned"
    alpha_init: float = 0.0
    dictionary: str = "mlp"
    selection: str = "learned"
    match_temperature: float = 0.05
    encoder_base_width: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = f.type
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise TypeError(f"{f.name} must be {expected.__name__}, got {value!r}")
        Grid.from_layer_size(self.height, self.width, self.layer_size)  # raises on a bad canvas
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.dim_z < 8 or self.dim_z % 8:
            raise ValueError(f"dim_z must be a positive multiple of 8, got {self.dim_z}")
        if self.no_spatial_transformer and self.transform_encoder == "match":
            raise ValueError(
                "no_spatial_transformer selects learned discrete offsets; it cannot "
                "be combined with transform_encoder='match'"
            )
        if self.match_temperature <= 0:
            raise ValueError(f"match_temperature must be > 0, got {self.match_temperature}")
        if not 0.0 <= self.alpha_init < 1.0:
            raise ValueError(f"alpha_init must lie in [0, 1), got {self.alpha_init}")
        if self.encoder_base_width < 0 or self.encoder_base_width % 8:
            raise ValueError(
                f"encoder_base_width must be 0 or a multiple of 8, got {self.encoder_base_width}"
            )
        if self.encoder_base_width > self.dim_z:
            raise ValueError(
                f"encoder_base_width must be at most dim_z ({self.dim_z}), got "
                f"{self.encoder_base_width}"
            )
        if self.xform_dim < 0 or self.xform_dim % 8:
            raise ValueError(f"xform_dim must be 0 or a multiple of 8, got {self.xform_dim}")
        choices = (
            ("background", tuple(BACKGROUNDS)),
            ("gating", GATING_MODES),
            ("transform_encoder", tuple(OFFSET_PREDICTORS)),
            ("dictionary", DECODERS),
            ("selection", tuple(SELECTIONS)),
            ("presence", tuple(PRESENCES)),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def grid(self) -> Grid:
        """Canvas and anchor-grid geometry."""
        return Grid.from_layer_size(self.height, self.width, self.layer_size)

    def to_dict(self) -> dict:
        """Plain-data form (for JSON)."""
        return asdict(self)


@typed
@dataclass(frozen=True)
class MarioNetteOutput:
    """One rendering of an encoding: what was drawn, and how, with named dimensions.

    Positions are global pixels in (x, y) order; ``offsets`` are local, (x, y), in units of P.

    Attributes:
        encoding: what the encoders inferred (codes, queries, soft weights and presence, ...).
        weights: the selection weights this rendering used (one-hot when hard).
        decomposition: the slots as drawn: presence (0 / 1 when hard), offsets, background,
            depth order and sprite table.
        rendering: the composited frames with their planes and placed alphas.
        mode: ``soft``, ``hard`` or ``straight_through`` (see :data:`RENDER_MODES`).
    """

    encoding: Encoding
    weights: Float[Tensor, "B T NL Lh Lw K"]
    decomposition: Decomposition
    rendering: Rendering
    mode: str

    @property
    def grid(self) -> Grid:
        """Canvas and anchor-grid geometry."""
        return self.decomposition.grid

    @property
    def reconstruction(self) -> Float[Tensor, "B T 3 H W"]:
        """Composited frames."""
        return self.rendering.reconstruction

    @property
    def planes(self) -> Float[Tensor, "B T NL G 4 H W"]:
        """Placed RGBA planes per (layer, parity group); layer index is depth (0 at the back)."""
        return self.rendering.planes

    @property
    def alpha(self) -> Float[Tensor, "B T NL Lh Lw S S"]:
        """Placed (shifted, un-gated) alpha of each slot, in its window."""
        return self.rendering.alpha

    @property
    def presence(self) -> Float[Tensor, "B T NL Lh Lw"]:
        """Presence per slot as drawn (0 / 1 when hard)."""
        return self.decomposition.presence

    @property
    def offsets(self) -> Float[Tensor, "B T NL Lh Lw 2"]:
        """Local offset (x, y) of each slot in units of P."""
        return self.decomposition.offsets

    @property
    def centers(self) -> Float[Tensor, "B T NL Lh Lw 2"]:
        """Global sprite centre (x, y) of each slot in pixels."""
        return self.decomposition.centers()

    @property
    def background(self) -> Float[Tensor, "B T 3 H W"]:
        """The canvas under the sprites."""
        return self.decomposition.background

    @property
    def plane_order(self) -> Int64[Tensor, " NL*4"]:
        """Back-to-front order of the planes used for this reconstruction."""
        return self.decomposition.plane_order

    @property
    def codes(self) -> Float[Tensor, "B T NL Lh Lw D"]:
        """Anchor codes (the object representation before projection)."""
        return self.encoding.codes

    @property
    def queries(self) -> Float[Tensor, "B T NL Lh Lw D"]:
        """Projected codes that select sprites."""
        return self.encoding.queries

    @property
    def sprites(self) -> Float[Tensor, "K 4 S S"]:
        """The dictionary."""
        return self.encoding.sprites

    @property
    def sprite_ids(self) -> Int64[Tensor, "B T NL Lh Lw"]:
        """Arg-max dictionary index per slot."""
        return self.weights.argmax(dim=-1)

    def layers(self) -> Float[Tensor, "B T NL 4 H W"]:
        """One straight-alpha RGBA image per depth layer."""
        return flatten_layers(self.planes, self.plane_order)

    def boxes(
        self, threshold: float = 0.5
    ) -> tuple[Float[Tensor, "B T NL Lh Lw 4"], Bool[Tensor, "B T NL Lh Lw"]]:
        """Global alpha-footprint boxes (x0, y0, x1, y1) in pixels and whether each is visible."""
        return footprint_boxes(self.alpha, self.grid, threshold)


class MarioNette(nn.Module):
    """Self-supervised sprite decomposition (Smirnov et al., NeurIPS 2021).

    An image encoder gives one code per (layer, anchor). Each code yields a presence logit,
    made a probability by :data:`PRESENCES`, and, through a projection, selection weights over
    the K sprites (:data:`SELECTIONS`). An
    offset predictor places each slot's sprite inside its cell (:data:`OFFSET_PREDICTORS`).
    Sprites are shifted, gated by presence, placed on the anchor grid and composited back to
    front over the background (:data:`BACKGROUNDS`).

    Args:
        config: architecture (default: the original's, :class:`ModelConfig`).
        background_sample: training frames (uint8 or [0, 1] floats, ``N 3 H W``) the background
            estimates its start from (its mode color, or per-pixel mode image; see
            :data:`BACKGROUNDS`); None starts neutral (a checkpoint's weights then replace it).
        renderer: ``"auto"`` (the fused Triton kernel on CUDA, PyTorch elsewhere), ``"torch"``
            or ``"triton"``; an execution choice, not part of the architecture (see
            :func:`marionette.core.render_decomposition`).

    Example:
        >>> model = MarioNette(ModelConfig(height=32, width=48, layer_size=4, num_sprites=6,
        ...                                dim_z=16))
        >>> out = model(torch.rand(2, 3, 3, 32, 48))
        >>> tuple(out.reconstruction.shape), tuple(out.centers.shape)
        ((2, 3, 3, 32, 48), (2, 3, 2, 4, 6, 2))
    """

    def __init__(
        self,
        config: ModelConfig | None = None,
        background_sample: Tensor | None = None,
        renderer: str = "auto",
    ) -> None:
        super().__init__()
        if renderer not in RENDERER_CHOICES:
            raise ValueError(f"renderer must be one of {RENDERER_CHOICES}, got {renderer!r}")
        config = ModelConfig() if config is None else config
        self.config, self.renderer, self.grid = config, renderer, config.grid
        grid, d = config.grid, config.dim_z
        self.dictionary = SpriteDictionary(
            config.num_sprites, grid.sprite, d, alpha_init=config.alpha_init,
            decoder=config.dictionary,
        )  # fmt: skip
        self.image_encoder = GridEncoder(
            3,
            d,
            (grid.height, grid.width),
            (grid.rows, grid.cols),
            config.num_layers,
            config.encoder_base_width,
        )
        self.presence_head = MLPHead(d, 1, nn.Identity())  # logits: PRESENCES make them p
        with torch.no_grad():
            self.presence_head[3].bias.fill_(config.presence_bias)
        self.project = nn.Linear(d, d)
        self.offsets = OFFSET_PREDICTORS[config.transform_encoder](config)
        self.background = BACKGROUNDS[config.background].from_config(config, background_sample)
        self._register_load_state_dict_pre_hook(_rename_old_keys)

    @typed
    def encode(self, frames: Float[Tensor, "B T 3 H W"]) -> Encoding:
        """Infer codes, presence, selection weights, soft sprites and offsets of every slot."""
        frames = self._check_frames(frames)
        config, t = self.config, frames.shape[1]
        images = rearrange(frames, "B T C H W -> (B T) C H W")
        sprites, dict_codes = self.dictionary()

        def split(x: Tensor) -> Tensor:  # by T, so that an empty batch (B = 0) splits too
            return rearrange(x, "(B T) ... -> B T ...", T=t)

        codes = split(self.image_encoder(images))
        queries = F.layer_norm(self.project(codes), (config.dim_z,))
        background = split(self.background(images))
        windows = AnchorWindows(frames, background, self.grid)
        selection = SELECTIONS[config.selection](
            queries, dict_codes, sprites, windows, config.match_temperature
        )
        presence = PRESENCES[config.presence](
            self.presence_head(codes)[..., 0], selection, config.match_temperature
        )
        if selection.vacated is not None:  # a neighbour of the same layer draws its object
            presence = presence.masked_fill(selection.vacated, 0.0)
        weights = torch.softmax(selection.logits, dim=-1)
        mixed = mix_sprites(weights, sprites)
        offsets = self.offsets(codes, windows, mixed, weights, selection)
        return Encoding(
            codes, queries, presence, weights, mixed, offsets.offsets, offsets.weights,
            offsets.per_sprite, sprites, dict_codes, background,
        )  # fmt: skip

    @typed
    def render(
        self,
        encoding: Encoding,
        mode: str = "soft",
        plane_order: Int64[Tensor, " _"] | None = None,
    ) -> MarioNetteOutput:
        """Render an encoding in a mode of :data:`RENDER_MODES`: ``soft`` (training), ``hard``
        (arg-max sprite, rounded presence, one-hot discrete offsets) or ``straight_through``
        (the hard values with soft gradients, so a loss on it trains the model). The hard
        rendering reuses the encoders' outputs: it needs no second pass.

        ``plane_order``: back-to-front plane order; by default random parity groups while
        training (as configured) and the fixed layer-major order in eval mode.
        """
        if plane_order is None:
            plane_order = plane_order_for(self.config, self.training)
        weights, decomposition = decompose_encoding(
            encoding, mode, plane_order, self.grid.cell, self.config.gating,
            round_presence=self.config.straight_through_probs,
        )  # fmt: skip
        rendering = render_decomposition(decomposition, self.renderer)
        return MarioNetteOutput(encoding, weights, decomposition, rendering, mode)

    @typed
    def forward(
        self,
        frames: Float[Tensor, "B T 3 H W"],
        mode: str = "soft",
        plane_order: Int64[Tensor, " _"] | None = None,
    ) -> MarioNetteOutput:
        """Reconstruct ``frames`` in [0, 1] (see :meth:`render` for ``mode``, ``plane_order``)."""
        return self.render(self.encode(frames), mode, plane_order)

    @torch.no_grad()
    def decompose(self, frames: Float[Tensor, "B T 3 H W"]) -> Decomposition:
        """Hard decomposition of ``frames`` with the fixed depth order, without gradients.

        :func:`marionette.core.render` of the result reproduces the hard reconstruction.
        """
        encoding = self.encode(frames)
        order = plane_order_for(self.config, training=False)
        return decompose_encoding(encoding, "hard", order, self.grid.cell, self.config.gating)[1]

    def _check_frames(self, frames: Tensor) -> Tensor:
        """``frames`` checked (size, finite, in [0, 1]) and in the model's floating type (another
        one is cast, with a warning, rather than failing deep in a convolution)."""
        grid = self.grid
        if frames.shape[-2:] != (grid.height, grid.width):
            raise ValueError(
                f"frames must be {grid.height} x {grid.width} (H x W) for this model, got "
                f"{frames.shape[-2]} x {frames.shape[-1]}; resize them or build the model with "
                f"height={frames.shape[-2]}, width={frames.shape[-1]}"
            )
        check_finite(frames, "frames")
        check_range(frames, "frames", 0.0, 1.0)
        dtype = next(self.parameters()).dtype
        if frames.dtype != dtype:
            warnings.warn(
                f"frames are {frames.dtype}, the model is {dtype}: frames were cast to {dtype}",
                stacklevel=4,
            )
            frames = frames.to(dtype)
        return frames


#: Parameter names of models saved before the offset predictors and backgrounds had a registry.
_OLD_KEYS = (
    ("transform_encoder.", "offsets.encoder."),
    ("shift_head.", "offsets.head.mlp."),
    ("offset_heads.", "offsets.head.axes."),
)


def _rename_old_keys(state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for old, new in _OLD_KEYS:
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old) :]] = state_dict.pop(key)


def plane_order_for(config: ModelConfig, training: bool) -> Tensor:
    """The plane order a model with ``config`` uses: random as configured while training, else
    the fixed layer-major order."""
    return plane_order(
        config.num_layers,
        shuffle_groups=training and config.shuffle_groups,
        shuffle_all=training and config.shuffle_all,
    )
