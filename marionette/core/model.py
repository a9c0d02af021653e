"""The MarioNette model: anchor codes select dictionary sprites that are shifted, placed and
composited in depth layers to reconstruct the input frames."""

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from einops import einsum, rearrange, repeat
from torch import nn

from ._typing import Bool, Float, Int64, Tensor, check_finite, check_range, typed
from .background import BACKGROUNDS, ColorBackground, StripBackground
from .compositing import GATING_MODES, flatten_layers, plane_order
from .dictionary import DECODERS, SpriteDictionary
from .encoders import GridEncoder, MLPHead
from .fused import RENDERERS
from .geometry import Grid, footprint_boxes, global_centers
from .placement import extract_windows
from .render import Decomposition, Rendering, render_slots
from .selection import (
    hard_presence,
    hard_weights,
    mix_sprites,
    selection_logits,
)
from .selection import straight_through as straight_through_fn
from .shifts import discrete_offsets, expected_displacement, match_gains, match_offsets

__all__ = ["Encoding", "MarioNette", "MarioNetteOutput", "ModelConfig"]

TRANSFORM_ENCODERS: tuple[str, ...] = ("conv", "anchor", "match")
SELECTIONS: tuple[str, ...] = ("learned", "match")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`MarioNette`. Defaults are the original's.

    Attributes:
        height, width: canvas size H x W in pixels (the original's ``--canvas_size`` sets both).
        layer_size: anchor rows Lh; the cell size is P = height / layer_size and must divide
            the width too (sprites are S = 2P pixels).
        num_layers: depth layers NL.
        num_classes: dictionary size K.
        dim_z: code width D (a multiple of 8).
        no_spatial_transformer: discrete softmax over P + 1 offsets per axis instead of the
            bilinear spatial transformer.
        straight_through_probs: round presence in the forward pass, identity gradient.
        background: ``"color"`` (a colour estimated from the data), ``"strip"`` (a learned
            horizontally scrolling strip, softmax over offsets) or ``"strip_st"`` (the strip
            with a spatial-transformer window).
        learn_background: train the background colour instead of keeping the estimate.
        shuffle_groups: shuffle the 4 parity groups of each layer on every training forward.
        shuffle_all: shuffle the depth of all planes, across layers too.
        gating: ``"premultiplied"`` (presence scales alpha) or ``"original"`` (presence scales
            colour and alpha); see :func:`marionette.core.gate_presence`.
        transform_encoder: ``"conv"`` (the original: a CNN over [image window, soft sprite] per
            slot predicts the offset) or ``"anchor"`` (an MLP on the anchor code predicts it; no
            per-slot CNN, many times cheaper).
        xform_dim: channels of the ``"conv"`` transform encoder (0: same as ``dim_z``).
        presence_bias: initial bias of the presence logit (0: presence starts near 1/2).
        alpha_init: initial mean sprite opacity in (0, 1); 0 keeps the default initialisation
            (about 1/2, as the original).
        dictionary: ``"mlp"`` (sprites decoded from codes by a shared MLP, the original) or
            ``"pixels"`` (every sprite its own learned pixel grid).
        selection: ``"learned"`` (the original: scaled dot product of projected anchor codes
            with dictionary codes) or ``"match"`` (those logits plus, per sprite, how much
            placing it at its best displacement would reduce the window's error; see
            :func:`marionette.core.match_gains`). With ``transform_encoder="match"`` each
            sprite then comes with its own matched offset.
        match_temperature: softness, in per-pixel squared error, of the matching softmaxes.
    """

    height: int = 128
    width: int = 128
    layer_size: int = 8
    num_layers: int = 2
    num_classes: int = 150
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
    alpha_init: float = 0.0
    dictionary: str = "mlp"
    selection: str = "learned"
    match_temperature: float = 0.05

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
        if self.xform_dim < 0 or self.xform_dim % 8:
            raise ValueError(f"xform_dim must be 0 or a multiple of 8, got {self.xform_dim}")
        choices = (
            ("background", BACKGROUNDS),
            ("gating", GATING_MODES),
            ("transform_encoder", TRANSFORM_ENCODERS),
            ("dictionary", DECODERS),
            ("selection", SELECTIONS),
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
class Encoding:
    """Per-slot quantities inferred from frames, before rendering (B and T flattened).

    Attributes:
        codes: layer-normalised anchor codes.
        queries: projected, layer-normalised codes scored against the dictionary.
        presence: presence probability per slot.
        weights: softmax selection weights over the K sprites.
        windows: soft (weighted) sprite per slot.
        offsets: local offset (x, y) in units of P (the expected offset in discrete mode).
        offset_weights: (x, y) distributions over the P + 1 integer offsets (discrete mode).
        sprite_offsets: with matched selection and offsets, every sprite's own matched offset
            per anchor (shared by the layers); ``offsets`` is their selection-weighted mean.
        sprites, dict_codes: the decoded dictionary and its codes.
        background: canvas under the sprites.
    """

    codes: Float[Tensor, "BT NL Lh Lw D"]
    queries: Float[Tensor, "BT NL Lh Lw D"]
    presence: Float[Tensor, "BT NL Lh Lw"]
    weights: Float[Tensor, "BT NL Lh Lw K"]
    windows: Float[Tensor, "BT NL Lh Lw 4 S S"]
    offsets: Float[Tensor, "BT NL Lh Lw 2"]
    offset_weights: tuple[Float[Tensor, "BT NL Lh Lw Q"], Float[Tensor, "BT NL Lh Lw Q"]] | None
    sprite_offsets: Float[Tensor, "BT Lh Lw K 2"] | None
    sprites: Float[Tensor, "K 4 S S"]
    dict_codes: Float[Tensor, "K D"]
    background: Float[Tensor, "BT 3 H W"]


@typed
@dataclass(frozen=True)
class MarioNetteOutput:
    """Everything one forward pass produces, with named dimensions.

    Positions are global pixels in (x, y) order; ``offsets`` are local, (x, y), in units of P.

    Attributes:
        background: the canvas under the sprites.
        rendering: the composited frames with their planes and placed alphas (see
            :attr:`reconstruction`, :attr:`planes`, :attr:`alpha`).
        plane_order: back-to-front order of the planes used for this reconstruction.
        weights: selection weights over the dictionary (one-hot when ``hard``).
        presence: presence per slot (0 / 1 when ``hard``).
        offsets: local offset (x, y) of each slot in units of P.
        centers: global sprite centre (x, y) of each slot in pixels.
        codes: anchor codes (the object representation before projection).
        queries: projected codes that select sprites.
        sprites: the dictionary.
        cell: cell size P in pixels.
        hard: whether this is the discrete (arg-max sprite, rounded presence) rendering.
        gating: how presence gated the sprites.
    """

    background: Float[Tensor, "B T 3 H W"]
    rendering: Rendering
    plane_order: Int64[Tensor, " N"]
    weights: Float[Tensor, "B T NL Lh Lw K"]
    presence: Float[Tensor, "B T NL Lh Lw"]
    offsets: Float[Tensor, "B T NL Lh Lw 2"]
    centers: Float[Tensor, "B T NL Lh Lw 2"]
    codes: Float[Tensor, "B T NL Lh Lw D"]
    queries: Float[Tensor, "B T NL Lh Lw D"]
    sprites: Float[Tensor, "K 4 S S"]
    cell: int
    hard: bool
    gating: str

    @property
    def grid(self) -> Grid:
        """Canvas and anchor-grid geometry."""
        return Grid(self.reconstruction.shape[-2], self.reconstruction.shape[-1], self.cell)

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

    def decomposition(self) -> Decomposition:
        """The editable decomposition (sprite ids, presence, offsets, background, depth order)."""
        return Decomposition(
            sprites=self.sprites,
            sprite_ids=self.sprite_ids,
            presence=self.presence,
            offsets=self.offsets,
            background=self.background,
            plane_order=self.plane_order,
            cell=self.cell,
            gating=self.gating,
        )


class MarioNette(nn.Module):
    """Self-supervised sprite decomposition (Smirnov et al., NeurIPS 2021).

    An image encoder gives one code per (layer, anchor). Each code yields a presence probability
    and, through a projection scored against the dictionary codes, selection weights over the K
    sprites. A transform encoder predicts each slot's sub-cell offset. Sprites are shifted, gated
    by presence, placed on the anchor grid and composited back to front over the background.

    Args:
        config: architecture.
        background_color: initial background colour (RGB in [0, 1]) for ``"color"`` backgrounds,
            usually :func:`marionette.core.estimate_background_color` of the training frames.
        renderer: ``"auto"`` (the fused Triton kernel on CUDA, PyTorch elsewhere), ``"torch"``
            or ``"triton"``; an execution choice, not part of the architecture (see
            :func:`marionette.core.render_slots`). Set :attr:`renderer` to change it later.

    Example:
        >>> model = MarioNette(ModelConfig(height=32, width=48, layer_size=4, num_classes=6,
        ...                                dim_z=16))
        >>> out = model(torch.rand(2, 3, 3, 32, 48))
        >>> tuple(out.reconstruction.shape), tuple(out.centers.shape)
        ((2, 3, 3, 32, 48), (2, 3, 2, 4, 6, 2))
    """

    def __init__(
        self,
        config: ModelConfig,
        background_color: Tensor | None = None,
        renderer: str = "auto",
    ) -> None:
        super().__init__()
        if renderer not in RENDERERS:
            raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
        self.renderer = renderer
        self.config = config
        grid = config.grid
        self.grid = grid
        d = config.dim_z
        self.dictionary = SpriteDictionary(
            config.num_classes,
            grid.sprite,
            d,
            alpha_init=config.alpha_init,
            decoder=config.dictionary,
        )
        self.image_encoder = GridEncoder(
            3, d, (grid.height, grid.width), (grid.rows, grid.cols), config.num_layers
        )
        self.presence_head = MLPHead(d, 1, nn.Sigmoid())
        with torch.no_grad():
            self.presence_head[3].bias.fill_(config.presence_bias)
        self.project = nn.Linear(d, d)
        if config.transform_encoder == "conv":
            xform_dim = config.xform_dim or d
            self.transform_encoder = GridEncoder(7, xform_dim, (grid.sprite, grid.sprite), (1, 1))
        else:
            xform_dim = d
            self.transform_encoder = None
        if config.transform_encoder == "match":
            pass  # offsets come from matching: no learned offset head
        elif config.no_spatial_transformer:
            self.offset_heads = nn.ModuleList(
                MLPHead(xform_dim, grid.cell + 1, nn.Softmax(dim=-1)) for _ in range(2)
            )
        else:
            self.shift_head = MLPHead(xform_dim, 2, nn.Tanh())
        if config.background == "color":
            self.background = ColorBackground(
                grid.height, grid.width, background_color, learnable=config.learn_background
            )
        else:
            mode = "softmax" if config.background == "strip" else "spatial_transformer"
            self.background = StripBackground(grid.height, grid.width, d, mode, background_color)

    @typed
    def encode(self, frames: Float[Tensor, "B T 3 H W"]) -> Encoding:
        """Infer codes, presence, selection weights, soft sprites and offsets of every slot."""
        self._check_frames(frames)
        grid, config = self.grid, self.config
        images = rearrange(frames, "B T C H W -> (B T) C H W")
        sprites, dict_codes = self.dictionary()
        codes = self.image_encoder(images)
        presence = self.presence_head(codes)[..., 0]
        queries = F.layer_norm(self.project(codes), (config.dim_z,))
        logits = selection_logits(queries, dict_codes)
        background = self.background(images)
        matched = config.selection == "match" or config.transform_encoder == "match"
        if matched:
            image_windows = extract_windows(images, grid)
            background_windows = extract_windows(background, grid)
        sprite_offsets = None
        if config.selection == "match":
            per_anchor = "BT Lh Lw C Sy Sx -> (BT Lh Lw) C Sy Sx"
            gains = match_gains(
                rearrange(image_windows, per_anchor),
                rearrange(background_windows, per_anchor),
                sprites,
            )
            gains = rearrange(
                gains, "(BT Lh Lw) K Qy Qx -> BT Lh Lw K Qy Qx", Lh=grid.rows, Lw=grid.cols
            )
            tau = config.match_temperature
            logits = logits + torch.logsumexp(gains.flatten(-2) / tau, dim=-1)[:, None]
            if config.transform_encoder == "match":
                sprite_offsets = expected_displacement(gains, tau)
        weights = torch.softmax(logits, dim=-1)
        windows = mix_sprites(weights, sprites)
        offset_weights = None
        if sprite_offsets is not None:
            offsets = einsum(
                weights, sprite_offsets, "BT NL Lh Lw K, BT Lh Lw K xy -> BT NL Lh Lw xy"
            )
        elif config.transform_encoder == "match":
            per_slot = "BT Lh Lw C Sy Sx -> (BT NL Lh Lw) C Sy Sx"
            offsets = match_offsets(
                repeat(image_windows, per_slot, NL=config.num_layers),
                rearrange(windows, "BT NL Lh Lw C Sy Sx -> (BT NL Lh Lw) C Sy Sx"),
                repeat(background_windows, per_slot, NL=config.num_layers),
                config.match_temperature,
            ).reshape(*presence.shape, 2)
        else:
            if self.transform_encoder is not None:
                image_windows = repeat(
                    extract_windows(images, grid),
                    "BT Lh Lw C Sy Sx -> BT NL Lh Lw C Sy Sx",
                    NL=config.num_layers,
                )
                stacked = torch.cat([image_windows, windows], dim=-3)
                xform = self.transform_encoder(
                    rearrange(stacked, "BT NL Lh Lw C Sy Sx -> (BT NL Lh Lw) C Sy Sx")
                )
                xform = xform.reshape(*presence.shape, -1)
            else:
                xform = codes
            if config.no_spatial_transformer:
                offset_weights = (self.offset_heads[0](xform), self.offset_heads[1](xform))
                offsets = discrete_offsets(*offset_weights)
            else:
                offsets = self.shift_head(xform) / 2
        return Encoding(
            codes,
            queries,
            presence,
            weights,
            windows,
            offsets,
            offset_weights,
            sprite_offsets,
            sprites,
            dict_codes,
            background,
        )

    @typed
    def render(
        self,
        encoding: Encoding,
        batch: int,
        *,
        hard: bool = False,
        straight_through: bool = False,
        plane_order: Int64[Tensor, " N"] | None = None,
    ) -> MarioNetteOutput:
        """Render an encoding softly (training) or hard (arg-max sprite, rounded presence, one-hot
        discrete offsets). The hard rendering reuses the encoders' outputs: it needs no second pass.

        Args:
            encoding: from :meth:`encode`.
            batch: B (the encoding flattens B and T).
            hard: discrete rendering.
            straight_through: with ``hard``, keep gradients: the forward values are the hard
                ones, the gradients those of the soft weights and presence (straight-through
                estimator), so a loss on the hard reconstruction can train the model.
            plane_order: back-to-front plane order; by default random parity groups while
                training (as configured) and the fixed layer-major order in eval mode.
        """
        config, e = self.config, encoding
        if plane_order is None:
            plane_order = plane_order_for(config, self.training)
        offset_weights = e.offset_weights
        table, ids = e.windows, None  # one sprite per slot, in slot order
        if hard and straight_through:
            weights = straight_through_fn(hard_weights(e.weights), e.weights)
            presence = straight_through_fn(hard_presence(e.presence), e.presence)
            table = mix_sprites(weights, e.sprites)
            if offset_weights is not None:
                offset_weights = tuple(
                    straight_through_fn(hard_weights(w), w) for w in offset_weights
                )
        elif hard:
            weights, presence = hard_weights(e.weights), hard_presence(e.presence)
            table, ids = e.sprites, e.weights.argmax(dim=-1)
            if offset_weights is not None:
                offset_weights = tuple(hard_weights(w) for w in offset_weights)
        else:
            weights, presence = e.weights, e.presence
            if config.straight_through_probs:
                presence = straight_through_fn(hard_presence(presence), presence)
        if offset_weights is not None:
            offsets = discrete_offsets(*offset_weights)
        elif hard and e.sprite_offsets is not None:  # the chosen sprite's own matched offset
            offsets = einsum(
                weights, e.sprite_offsets, "BT NL Lh Lw K, BT Lh Lw K xy -> BT NL Lh Lw xy"
            )
        else:
            offsets = e.offsets

        def split(x: Tensor) -> Tensor:
            return rearrange(x, "(B T) ... -> B T ...", B=batch)

        rendering = render_slots(
            table if ids is not None else table.flatten(0, -4),
            None if ids is None else split(ids),
            split(presence),
            split(e.background),
            plane_order,
            self.grid,
            offsets=split(offsets) if offset_weights is None else None,
            offset_weights=None
            if offset_weights is None
            else (split(offset_weights[0]), split(offset_weights[1])),
            gating=config.gating,
            renderer=self.renderer,
        )
        return MarioNetteOutput(
            background=split(e.background),
            rendering=rendering,
            plane_order=plane_order,
            weights=split(weights),
            presence=split(presence),
            offsets=split(offsets),
            centers=global_centers(split(offsets), self.grid),
            codes=split(e.codes),
            queries=split(e.queries),
            sprites=e.sprites,
            cell=self.grid.cell,
            hard=hard,
            gating=config.gating,
        )

    @typed
    def forward(
        self,
        frames: Float[Tensor, "B T 3 H W"],
        *,
        hard: bool = False,
        plane_order: Int64[Tensor, " N"] | None = None,
    ) -> MarioNetteOutput:
        """Reconstruct ``frames`` in [0, 1] (see :meth:`render` for ``hard``, ``plane_order``)."""
        return self.render(self.encode(frames), frames.shape[0], hard=hard, plane_order=plane_order)

    @torch.no_grad()
    def decompose(self, frames: Float[Tensor, "B T 3 H W"]) -> Decomposition:
        """Hard decomposition of ``frames`` with the fixed depth order, without gradients.

        :func:`marionette.core.render` of the result reproduces the hard reconstruction.
        """
        order = plane_order_for(self.config, training=False)
        return self(frames, hard=True, plane_order=order).decomposition()

    def _check_frames(self, frames: Tensor) -> None:
        grid = self.grid
        if frames.shape[-2:] != (grid.height, grid.width):
            raise ValueError(
                f"frames must be {grid.height} x {grid.width} (H x W) for this model, got "
                f"{frames.shape[-2]} x {frames.shape[-1]}; resize them or build the model with "
                f"height={frames.shape[-2]}, width={frames.shape[-1]}"
            )
        check_finite(frames, "frames")
        check_range(frames, "frames", 0.0, 1.0)


def plane_order_for(config: ModelConfig, training: bool) -> Tensor:
    """The plane order a model with ``config`` uses: random as configured while training, else
    the fixed layer-major order."""
    return plane_order(
        config.num_layers,
        shuffle_groups=training and config.shuffle_groups,
        shuffle_all=training and config.shuffle_all,
    )
