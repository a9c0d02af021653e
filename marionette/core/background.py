"""Backgrounds: a color estimated from the data, each frame's own color (frames of several
sceneries), a static image (the data's per-pixel mode, refined by learning) and learned
scrolling strips, horizontal or vertical.

Every background is a module named in :data:`BACKGROUNDS` (the ``background`` setting) that
says what it needs: ``own_learning_rate`` (its parameters train at ``lr_bg`` in an optimizer
of their own, as the original's strip) and ``per_frame`` (it differs from frame to frame, so a
decomposition stores it per frame). Each is built by ``cls.from_config(model_config, sample)``
from a sample of training frames (uint8 ``N 3 H W``, or None: a neutral start that a checkpoint
then overwrites) and estimates what it starts from itself.
"""

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._typing import Float, Shaped, Tensor, check_range, typed
from .encoders import GridEncoder, MLPHead

if TYPE_CHECKING:
    from .model import ModelConfig

__all__ = [
    "BACKGROUNDS",
    "ColorBackground",
    "FrameColorBackground",
    "ImageBackground",
    "SlidingStripBackground",
    "StripBackground",
    "VerticalStripBackground",
    "estimate_background_color",
    "estimate_background_image",
    "estimate_frame_colors",
    "scroll_strip",
    "slide_strip_window",
]


@typed
def estimate_background_color(
    frames: Shaped[Tensor, "N 3 H W"], bits: int = 5
) -> Float[Tensor, " 3"]:
    """Mode color of the frames: the most frequent color bin, averaged over its pixels.

    Colors are quantised to ``bits`` bits per channel (32^3 bins by default), which absorbs
    compression noise the way the original's 5-centre k-means does, but deterministically and
    without a cluster that straddles the background and a large sprite. Accepts uint8 in
    [0, 255] or floats in [0, 1]; returns RGB in [0, 1].

    Example:
        >>> f = torch.zeros(1, 3, 4, 4); f[0, :, 0, 0] = 1.0
        >>> estimate_background_color(f).tolist()
        [0.0, 0.0, 0.0]
    """
    values = _unit_float(frames)
    pixels = rearrange(values, "N C H W -> (N H W) C")
    key = _color_bins(pixels[:, 0], pixels[:, 1], pixels[:, 2], bits)
    mode = torch.bincount(key, minlength=(2**bits) ** 3).argmax()
    return pixels[key == mode].mean(dim=0)


@typed
def estimate_background_image(
    frames: Shaped[Tensor, "N 3 H W"], bits: int = 5
) -> Float[Tensor, "3 H W"]:
    """Per-pixel mode color of the frames: at each pixel, the most frequent color bin over the
    N frames, averaged over the frames that fall in it.

    What stays put in most frames (a maze, a playfield, a ground line) is background; what
    moves is not. Colors are binned as in :func:`estimate_background_color`; ties go to the
    smallest bin. Returns RGB in [0, 1].

    Example:
        >>> f = torch.zeros(3, 3, 1, 2); f[0, :, 0, 0] = 1.0; f[:, :, 0, 1] = 0.5
        >>> estimate_background_image(f)[0].tolist()
        [[0.0, 0.5]]
    """
    values = _unit_float(frames)
    key = _color_bins(values[:, 0], values[:, 1], values[:, 2], bits)  # N H W
    mode = torch.mode(key, dim=0).values  # H W
    agree = (key == mode).float()[:, None]  # N 1 H W
    return (values * agree).sum(0) / agree.sum(0)


@typed
def estimate_frame_colors(frames: Shaped[Tensor, "N 3 H W"], bits: int = 5) -> Float[Tensor, "N 3"]:
    """Mode color of each frame on its own: :func:`estimate_background_color` of every frame,
    in one pass (each frame's color bins counted in a row of their own).

    Example:
        >>> f = torch.zeros(2, 3, 2, 2); f[1] = 1.0; f[1, :, 0, 0] = 0.0
        >>> estimate_frame_colors(f).tolist()
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    """
    values = _unit_float(frames)
    key = rearrange(_color_bins(values[:, 0], values[:, 1], values[:, 2], bits), "N H W -> N (H W)")
    counts = key.new_zeros(key.shape[0], (2**bits) ** 3).scatter_add_(1, key, torch.ones_like(key))
    agree = (key == counts.argmax(1, keepdim=True)).float()  # N (H W)
    pixels = rearrange(values, "N C H W -> N C (H W)")
    return (pixels * agree[:, None]).sum(-1) / agree.sum(-1, keepdim=True)


def _unit_float(frames: Tensor) -> Tensor:
    """uint8 in [0, 255] or floats in [0, 1] as float32 in [0, 1], checked and non-empty."""
    if frames.dtype == torch.uint8:
        values = frames.float() / 255.0
    elif frames.is_floating_point():
        check_range(frames, "frames", 0.0, 1.0)
        values = frames.float()
    else:
        raise TypeError(f"frames must be uint8 or floating point, got {frames.dtype}")
    if values.numel() == 0:
        raise ValueError("frames must hold at least one pixel, got an empty tensor")
    return values


def _color_bins(r: Tensor, g: Tensor, b: Tensor, bits: int) -> Tensor:
    """Index of each color's bin when every channel is quantised to ``bits`` bits."""
    levels = 2**bits
    r, g, b = ((c * (levels - 1)).round().long() for c in (r, g, b))
    return (r * levels + g) * levels + b


@typed
def scroll_strip(
    strip: Float[Tensor, "3 H Ws"], weights: Float[Tensor, "B O"]
) -> Float[Tensor, "B 3 H W"]:
    """Blend of the strip's W-wide windows at integer offsets o.

    out_b = sum_o w_bo strip[:, :, o:o+W].

    W = Ws - O + 1. Computed as one cross-correlation of the strip rows with the weights.
    """
    channels, height, strip_width = strip.shape
    width = strip_width - weights.shape[1] + 1
    if width < 1:
        raise ValueError(
            f"strip of width {strip_width} is too narrow for {weights.shape[1]} offsets"
        )
    rows = rearrange(strip, "C H Ws -> (C H) 1 Ws")
    out = F.conv1d(rows, weights[:, None, :])  # (C H) B W
    return rearrange(out, "(C H) B W -> B C H W", C=channels, H=height)


@typed
def slide_strip_window(
    strip: Float[Tensor, "3 H Ws"], position: Float[Tensor, " B"], width: int
) -> Float[Tensor, "B 3 H W"]:
    """Bilinear window of ``width`` pixels centred at normalised x = -position along the strip.

    theta = [[f, 0, -position], [0, 1, 0]] with f = W / Ws; position in (-(1 - f), 1 - f) keeps
    the window inside the strip (the original's spatial-transformer background, f = 1/4).
    """
    batch = position.shape[0]
    height, strip_width = strip.shape[1], strip.shape[2]
    f = width / strip_width
    zero, one = torch.zeros_like(position), torch.ones_like(position)
    theta = torch.stack(
        [torch.stack([one * f, zero, -position], -1), torch.stack([zero, one, zero], -1)], dim=1
    )
    grid = F.affine_grid(theta, [batch, 3, height, width], align_corners=False)
    return F.grid_sample(
        strip.expand(batch, -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )


class ColorBackground(nn.Module):
    """A constant color canvas (the original's default), fixed or learned.

    Args:
        height, width: canvas size.
        color: initial RGB in [0, 1] (usually :func:`estimate_background_color` of the data).
        learnable: train the color (through a logit) instead of keeping it fixed.
    """

    own_learning_rate = False
    per_frame = False

    def __init__(
        self, height: int, width: int, color: Tensor | None = None, learnable: bool = False
    ) -> None:
        super().__init__()
        self.height, self.width, self.learnable = height, width, learnable
        initial = torch.full((3,), 0.5) if color is None else color.detach().float().clone()
        logit = torch.logit(initial.clamp(1e-3, 1 - 1e-3))
        if learnable:
            self.logit = nn.Parameter(logit)
        else:
            self.register_buffer("logit", logit)

    @classmethod
    def from_config(cls, config: "ModelConfig", sample: Tensor | None) -> "ColorBackground":
        return cls(config.height, config.width, _mode_color(sample),
                   learnable=config.learn_background)  # fmt: skip

    @property
    def color(self) -> Tensor:
        """Current RGB color in (0, 1)."""
        return torch.sigmoid(self.logit)

    def set_color(self, color: Tensor) -> None:
        """Set the color (e.g. from :func:`estimate_background_color`)."""
        with torch.no_grad():
            self.logit.copy_(torch.logit(color.float().clamp(1e-3, 1 - 1e-3)))

    @typed
    def forward(self, frames: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
        return self.color.to(frames.dtype)[None, :, None, None].expand(
            frames.shape[0], 3, self.height, self.width
        )


class FrameColorBackground(nn.Module):
    """Each frame's own mode color (:func:`estimate_frame_colors`), read from the frame itself:
    for frames of several sceneries (a game's levels above ground, under ground, under water)
    whose colors neither one color, one image nor one strip holds. Nothing is learned; what
    differs from the color (the scenery's tiles, the sprites) is left to the sprites."""

    own_learning_rate = False
    per_frame = True

    @classmethod
    def from_config(cls, config: "ModelConfig", sample: Tensor | None) -> "FrameColorBackground":
        return cls()

    @typed
    def forward(self, frames: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
        colors = estimate_frame_colors(frames.detach()).to(frames.dtype)
        return colors[:, :, None, None].expand_as(frames)


class ImageBackground(nn.Module):
    """A static background image, learned: it starts as the per-pixel mode of the training
    frames (:func:`estimate_background_image`) and trains at ``lr_bg`` through a logit, so
    that what the mode got wrong (a sprite that rested on a pixel in most frames) is refined.

    Args:
        height, width: canvas size.
        image: initial RGB image in [0, 1] (default: mid grey).
    """

    own_learning_rate = True
    per_frame = False

    def __init__(self, height: int, width: int, image: Tensor | None = None) -> None:
        super().__init__()
        self.height, self.width = height, width
        initial = torch.full((3, height, width), 0.5) if image is None else image.float()
        if initial.shape != (3, height, width):
            raise ValueError(
                f"image must be 3 x {height} x {width} (the canvas), got {tuple(initial.shape)}"
            )
        self.logit = nn.Parameter(torch.logit(initial.clamp(1e-3, 1 - 1e-3)))

    @classmethod
    def from_config(cls, config: "ModelConfig", sample: Tensor | None) -> "ImageBackground":
        image = None if sample is None else estimate_background_image(sample)
        return cls(config.height, config.width, image)

    @property
    def image(self) -> Float[Tensor, "3 H W"]:
        """Current RGB image in (0, 1)."""
        return torch.sigmoid(self.logit)

    @typed
    def forward(self, frames: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
        return self.image.to(frames.dtype).expand(frames.shape[0], -1, -1, -1)


def _mode_color(sample: Tensor | None) -> Tensor | None:
    return None if sample is None else estimate_background_color(sample)


class _LearnedStrip(nn.Module):
    """A learned strip 4W wide behind the sprites, and an encoder of the frame that says where
    the W-wide window sits (``positions`` outputs through ``final``).

    The strip is decoded from a 4-dim latent (LayerNorm -> Linear(4, 32) -> GroupNorm(8) ->
    ReLU -> Linear(32, 3 H 4W) -> sigmoid); with a color it starts as that color.
    """

    own_learning_rate = True
    per_frame = True

    def __init__(
        self,
        height: int,
        width: int,
        dim: int,
        positions: int,
        final: nn.Module,
        color: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.latent = nn.Parameter(torch.randn(1, 4))
        self.decoder = nn.Sequential(
            nn.Linear(4, 32),
            nn.GroupNorm(8, 32),
            nn.ReLU(),
            nn.Linear(32, 3 * height * 4 * width),
            nn.Sigmoid(),
        )
        if color is not None:  # start from the data's color rather than grey noise
            with torch.no_grad():
                bias = torch.logit(color.float().clamp(1e-3, 1 - 1e-3))
                self.decoder[3].bias.copy_(bias.repeat_interleave(height * 4 * width))
        self.encoder = GridEncoder(3, dim, (height, width), (1, 1))
        self.position = MLPHead(dim, positions, final)

    @classmethod
    def from_config(cls, config: "ModelConfig", sample: Tensor | None) -> "_LearnedStrip":
        return cls(config.height, config.width, config.dim_z, _mode_color(sample))

    def strip(self) -> Float[Tensor, "3 H Ws"]:
        """The decoded strip [3, H, 4W]."""
        latent = F.layer_norm(self.latent, (4,))
        return self.decoder(latent).reshape(3, self.height, 4 * self.width)

    def _position(self, frames: Tensor) -> Tensor:
        return self.position(self.encoder(frames)[:, 0, 0, 0])


class StripBackground(_LearnedStrip):
    """The original's scrolling background: a softmax over the 3W + 1 integer offsets of the
    window along the strip (:func:`scroll_strip`)."""

    def __init__(self, height: int, width: int, dim: int, color: Tensor | None = None) -> None:
        super().__init__(height, width, dim, 3 * width + 1, nn.Softmax(dim=-1), color)

    @typed
    def forward(self, frames: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
        return scroll_strip(self.strip().to(frames.dtype), self._position(frames))


class SlidingStripBackground(_LearnedStrip):
    """The original's spatial-transformer background: a bilinear window at a continuous
    position along the strip (:func:`slide_strip_window`)."""

    def __init__(self, height: int, width: int, dim: int, color: Tensor | None = None) -> None:
        super().__init__(height, width, dim, 1, nn.Tanh(), color)

    @typed
    def forward(self, frames: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
        strip = self.strip().to(frames.dtype)
        limit = 1 - self.width / strip.shape[-1]
        return slide_strip_window(strip, self._position(frames)[:, 0] * limit, self.width)


class VerticalStripBackground(nn.Module):
    """A learned vertically scrolling strip (a vertical shooter's river or sky): the
    :class:`StripBackground` of the frames with rows and columns swapped, so its strip is 4H
    tall and its window slides along the rows."""

    own_learning_rate = True
    per_frame = True

    def __init__(self, height: int, width: int, dim: int, color: Tensor | None = None) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.swapped = StripBackground(width, height, dim, color)

    @classmethod
    def from_config(cls, config: "ModelConfig", sample: Tensor | None) -> "VerticalStripBackground":
        return cls(config.height, config.width, config.dim_z, _mode_color(sample))

    def strip(self) -> Float[Tensor, "3 Hs W"]:
        """The decoded strip [3, 4H, W]."""
        return rearrange(self.swapped.strip(), "C W Hs -> C Hs W")

    @typed
    def forward(self, frames: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
        swapped = self.swapped(rearrange(frames, "B C H W -> B C W H"))
        return rearrange(swapped, "B C W H -> B C H W")


#: Background kinds by name (the ``background`` setting); each is built with
#: ``cls.from_config(model_config, sample)`` from a sample of training frames (or None).
BACKGROUNDS: dict[str, type[nn.Module]] = {
    "color": ColorBackground,
    "frame_color": FrameColorBackground,
    "image": ImageBackground,
    "strip": StripBackground,
    "strip_st": SlidingStripBackground,
    "strip_vertical": VerticalStripBackground,
}
