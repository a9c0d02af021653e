"""The sprite dictionary: K learned latent codes decoded by an MLP into RGBA sprites."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._typing import Float, Int64, Tensor, typed

__all__ = [
    "DECODERS",
    "SpriteDictionary",
    "decode_sprites",
    "duplicate_entries",
    "foreground_patches",
    "sprite_looks",
    "whole_extent",
]

DECODERS: tuple[str, ...] = ("mlp", "pixels")


@typed
def decode_sprites(
    latents: Float[Tensor, "K D"], decoder: nn.Module, channels: int, size: int
) -> tuple[Float[Tensor, "K C S S"], Float[Tensor, "K D"]]:
    """Layer-normalise the latents (no affine) and decode them to sprites in (0, 1).

    Returns the sprites and the normalised codes z_k that selection scores against.
    """
    codes = F.layer_norm(latents, (latents.shape[-1],))
    sprites = decoder(codes).reshape(latents.shape[0], channels, size, size)
    return sprites, codes


class SpriteDictionary(nn.Module):
    """K latent codes ~ N(0, 1) and the sprites they stand for.

    With ``decoder="mlp"`` (the original) the sprites are decoded from the layer-normalised
    codes by Linear(D, 8D) -> GroupNorm(8) -> ReLU -> Linear(8D, C S S) -> sigmoid, so all
    sprites share the decoder's weights. With ``decoder="pixels"`` every sprite is its own
    [C, S, S] grid of logits (sigmoid), learned independently; the codes still carry the
    sprite's identity for selection.

    Args:
        num_sprites: dictionary size K.
        size: sprite side S.
        dim: latent width D (a multiple of 8).
        channels: sprite channels (4 = RGBA).
        alpha_init: initial mean opacity in (0, 1); 0 keeps PyTorch's default initialisation
            (opacity near 1/2, as the original).
        decoder: ``"mlp"`` or ``"pixels"``.
    """

    def __init__(
        self,
        num_sprites: int,
        size: int,
        dim: int,
        channels: int = 4,
        alpha_init: float = 0.0,
        decoder: str = "mlp",
    ) -> None:
        super().__init__()
        if num_sprites < 1:
            raise ValueError(f"num_sprites (dictionary size) must be >= 1, got {num_sprites}")
        if decoder not in DECODERS:
            raise ValueError(f"dictionary decoder must be one of {DECODERS}, got {decoder!r}")
        self.size, self.channels = size, channels
        self.latents = nn.Parameter(torch.randn(num_sprites, dim))
        alpha_logit = math.log(alpha_init / (1 - alpha_init)) if alpha_init else 0.0
        if decoder == "mlp":
            self.decoder = nn.Sequential(
                nn.Linear(dim, 8 * dim),
                nn.GroupNorm(8, 8 * dim),
                nn.ReLU(),
                nn.Linear(8 * dim, channels * size * size),
                nn.Sigmoid(),
            )
            if alpha_init:  # start from nearly transparent sprites instead of 50 % grey
                with torch.no_grad():
                    self.decoder[3].bias[(channels - 1) * size * size :] = alpha_logit
            self.pixels = None
        else:
            self.decoder = None
            logits = torch.randn(num_sprites, channels, size, size) * 0.5
            logits[:, channels - 1] += alpha_logit
            self.pixels = nn.Parameter(logits)

    @torch.no_grad()
    def fit(self, targets: Float[Tensor, "K C S S"], ridge: float = 1e-4) -> float:
        """Make the dictionary's sprites equal ``targets`` (values in (0, 1)).

        Pixel sprites are set exactly. For the MLP, the last linear layer is solved in closed
        form: with H the hidden features of the K codes (a column of ones appended for the
        bias) and Y = logit(targets), the ridge solution X = H^T (H H^T + ridge I)^-1 Y
        reproduces the targets up to the ridge term whenever K <= 8D + 1. Returns the remaining
        mean squared error of the sprites.
        """
        logits = torch.logit(targets.clamp(1e-3, 1 - 1e-3)).flatten(1)
        if self.pixels is not None:
            self.pixels.copy_(logits.reshape_as(self.pixels))
            return 0.0
        codes = F.layer_norm(self.latents, (self.latents.shape[-1],))
        hidden = self.decoder[:3](codes)
        features = torch.cat([hidden, torch.ones_like(hidden[:, :1])], dim=1)
        gram = features @ features.T + ridge * torch.eye(len(features))
        solution = features.T @ torch.linalg.solve(gram, logits)  # [8D + 1, C S S]
        last = self.decoder[3]
        last.weight.copy_(solution[:-1].T)
        last.bias.copy_(solution[-1])
        sprites, _ = self()
        return float(F.mse_loss(sprites, targets))

    @torch.no_grad()
    def reseed_unused(self, usage: Int64[Tensor, " K"], generator: torch.Generator) -> int:
        """Give every entry that no slot used a perturbed copy of a used entry's latent, the
        donors drawn in proportion to their use (the vector-quantisation trick of re-seeding
        dead codes). Returns how many entries were re-seeded."""
        unused = (usage == 0).nonzero().flatten()
        used = (usage > 0).nonzero().flatten()
        if len(unused) == 0 or len(used) == 0:
            return 0
        probabilities = usage[used].float() / usage[used].sum()
        picks = torch.multinomial(probabilities, len(unused), replacement=True, generator=generator)
        donors = used[picks].to(self.latents.device)
        noise = torch.randn(len(unused), self.latents.shape[1], generator=generator)
        self.latents[unused.to(self.latents.device)] = self.latents[donors] + 0.5 * noise.to(
            self.latents
        )
        return len(unused)

    @torch.no_grad()
    def replace(self, entries: list[int], patches: Float[Tensor, "M C S S"]) -> float:
        """Make entries ``entries`` equal ``patches``, keeping the others (through :meth:`fit`,
        so for the MLP they move by its ridge error, which is returned)."""
        sprites, _ = self()
        targets = sprites.clone()
        targets[torch.as_tensor(entries, dtype=torch.long)] = patches.to(targets)
        return self.fit(targets)

    @typed
    def forward(self) -> tuple[Float[Tensor, "K C S S"], Float[Tensor, "K D"]]:
        if self.pixels is None:
            return decode_sprites(self.latents, self.decoder, self.channels, self.size)
        return torch.sigmoid(self.pixels), F.layer_norm(self.latents, (self.latents.shape[-1],))


@typed
def sprite_looks(
    sprites: Float[Tensor, "K 4 S S"],
    usage: Int64[Tensor, " K"],
    reach: int | None = None,
    min_iou: float = 0.9,
    max_color: float = 0.1,
) -> list[int]:
    """The look of every entry: the most used entry it repeats, or itself (one sprite per look).

    With masks a_k = [alpha_k > 1/2] and mean colours c_k = sum(alpha_k rgb_k) / sum(alpha_k),
    entry j repeats entry i when, for the best integer shift d in [-reach, reach]^2,

        IoU_ij = max_d |a_i(. - d) & a_j| / (|a_i| + |a_j| - |a_i(. - d) & a_j|) >= min_iou

    and max over channels |c_i - c_j| <= max_color. Going from the most used entry down, an
    entry that repeats entries already kept takes the look of the first of them (the most
    used); the others, and entries with empty masks, keep their own. ``reach`` defaults to half
    a cell, S / 4 pixels.
    """
    reach = sprites.shape[-1] // 4 if reach is None else reach
    masks = (sprites[:, 3:] > 0.5).float()
    areas = masks.sum(dim=(1, 2, 3))
    overlap = F.conv2d(masks, masks, padding=reach).amax(dim=(2, 3))  # [i, j]: best shift
    iou = overlap / (areas[:, None] + areas[None, :] - overlap).clamp_min(1.0)
    alpha = sprites[:, 3:]
    colors = (sprites[:, :3] * alpha).sum(dim=(2, 3)) / alpha.sum(dim=(2, 3)).clamp_min(1e-6)
    close = (colors[:, None] - colors[None, :]).abs().amax(dim=-1) <= max_color
    repeats = (iou >= min_iou) & close & (areas[:, None] > 0) & (areas[None, :] > 0)
    looks = list(range(len(sprites)))
    kept: list[int] = []
    for k in torch.argsort(usage, descending=True, stable=True).tolist():
        looks[k] = next((i for i in kept if bool(repeats[i, k])), k) if areas[k] > 0 else k
        if looks[k] == k:
            kept.append(k)
    return looks


@typed
def duplicate_entries(
    sprites: Float[Tensor, "K 4 S S"],
    usage: Int64[Tensor, " K"],
    reach: int | None = None,
    min_iou: float = 0.9,
    max_color: float = 0.1,
) -> list[int]:
    """Entries that repeat a more used entry (their :func:`sprite_looks` is another), to be
    freed, in increasing order."""
    looks = sprite_looks(sprites, usage, reach, min_iou, max_color)
    return [k for k, look in enumerate(looks) if look != k]


def _blob(mask: Tensor, seed_y: int, seed_x: int, gap: int = 2) -> Tensor:
    """The part of a binary mask [H, W] connected to (seed_y, seed_x), bridging gaps of up to
    ``gap`` - 1 background pixels (pixel-art sprites are often not 4-connected)."""
    blob = torch.zeros_like(mask)
    blob[seed_y, seed_x] = mask[seed_y, seed_x]
    size = 2 * gap + 1
    for _ in range(mask.shape[0] + mask.shape[1]):
        grown = F.max_pool2d(blob[None, None], size, stride=1, padding=gap)[0, 0] * mask
        if torch.equal(grown, blob):
            break
        blob = grown
    return blob


def whole_extent(cell: int) -> int:
    """The largest side (pixels) of a blob that ``foreground_patches(..., whole=True)`` keeps
    whole: it fits the S = 2 ``cell`` sprite with a pixel to spare on each side, S - 2."""
    return 2 * cell - 2


def _whole_blob(mask: Tensor, y: int, x: int, s: int) -> tuple[int, int, Tensor] | None:
    """The blob of the padded mask [H + 2S, W + 2S] at pixel (y, x) of the frame, if it fits an
    S x S window with a pixel to spare on each side: the window's top left corner (padded
    coordinates) centred on the blob's bounding box, and the blob in it; else None."""
    blob = _blob(mask[y : y + 2 * s, x : x + 2 * s], s, s)  # the pixel sits at (s, s)
    ys, xs = blob.nonzero(as_tuple=True)
    if max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 1 > whole_extent(s // 2):
        return None
    top = (int(ys.min() + ys.max()) + 1) // 2 - s // 2
    left = (int(xs.min() + xs.max()) + 1) // 2 - s // 2
    return y + top, x + left, blob[top : top + s, left : left + s]


def _centred_patch(
    padded: Tensor,
    mask: Tensor,
    box: Tensor,
    background: Tensor,
    whole: bool,
    frame: int,
    y: int,
    x: int,
) -> tuple[Tensor, Tensor]:
    """The RGBA patch of the blob at foreground pixel (y, x) of ``frame``.

    With ``whole``, the whole blob where it fits a sprite with a pixel to spare on each side
    (extent <= S - 2), the window centred on its bounding box. Otherwise, and for larger blobs
    (scenery, objects run together), the part of the blob in the window's central box
    (``box``, P x P), the window centred on that part's centroid. Alpha is the blob, color
    the window's pixels (the padded background's where the blob is not). Also returns what the
    patch changes in the frame: its color less the background's, on the blob [3, S, S]."""
    s = box.shape[0]
    found = _whole_blob(mask[frame], y, x, s) if whole else None
    if found is not None:
        top, left, alpha = found
    else:
        for _ in range(2):  # isolate the blob's central part, then centre the window on it
            top, left = y + s - s // 2, x + s - s // 2
            local = mask[frame, top : top + s, left : left + s] * box
            ys, xs = _blob(local, s // 2, s // 2).nonzero(as_tuple=True)
            y = top - s + int(round(float(ys.float().mean()))) if len(ys) else y
            x = left - s + int(round(float(xs.float().mean()))) if len(xs) else x
        top, left = y + s - s // 2, x + s - s // 2
        local = mask[frame, top : top + s, left : left + s] * box
        centre = local[s // 2 - 1 : s // 2 + 1, s // 2 - 1 : s // 2 + 1].nonzero()
        seed = (
            (s // 2 - 1 + int(centre[0, 0]), s // 2 - 1 + int(centre[0, 1]))
            if len(centre)
            else (s // 2, s // 2)
        )
        alpha = _blob(local, *seed)
    window = (frame, slice(None), slice(top, top + s), slice(left, left + s))
    rgb = torch.where(alpha[None] > 0, padded[window], background[window])
    return torch.cat([rgb, 0.02 + 0.93 * alpha[None]]), (rgb - background[window]) * alpha


def _kmeans_plus_plus(features: Tensor, count: int, generator: torch.Generator) -> list[int]:
    """``count`` rows chosen by k-means++ seeding: each next row drawn with probability
    proportional to its squared distance to the chosen ones (uniformly once all coincide)."""
    chosen = [int(torch.randint(len(features), (1,), generator=generator))]
    nearest = (features - features[chosen[0]]).pow(2).sum(1)
    while len(chosen) < count:
        if nearest.sum() <= 0:  # fewer distinct rows than asked for
            chosen.append(int(torch.randint(len(features), (1,), generator=generator)))
            continue
        chosen.append(int(torch.multinomial(nearest, 1, generator=generator)))
        nearest = torch.minimum(nearest, (features - features[chosen[-1]]).pow(2).sum(1))
    return chosen


@typed
def foreground_patches(
    frames: Float[Tensor, "N 3 H W"],
    background: Float[Tensor, "N 3 H W"],
    cell: int,
    count: int,
    generator: torch.Generator,
    threshold: float = 0.1,
    candidates_per_sprite: int = 8,
    whole: bool = False,
) -> Float[Tensor, "K 4 S S"]:
    """Sprite-sized windows of the data centred on foreground blobs, as initial sprites.

    Foreground is where a pixel's largest channel differs from the frame's background (as the
    model draws it before training) by more than ``threshold``. Around a random foreground
    pixel, the blob connected to it (small gaps bridged) gives the alpha and the window's
    pixels the color: its part in the central P x P box of the window, the window re-centred
    on that part's centroid, or with ``whole`` the whole blob, centred on its bounding box,
    where it fits an S x S sprite with a pixel to spare (objects up to twice the cell; larger
    blobs are cut as without it). From ``candidates_per_sprite * count`` such patches,
    ``count`` are chosen by k-means++ seeding (each next patch drawn with probability
    proportional to its squared distance to the chosen ones), so the dictionary starts with the
    different objects rather than the most common one. Patches are compared by what they
    change, their color less the background's on their blob, divided by the square root of
    the blob's area: a small patch is then as far from the others, per pixel, as a large one,
    and a dark one on a bright background as far as a bright one (compared by their pixels,
    color times alpha, a 3-pixel patch lay close to any small patch chosen before it, and
    Carnival's first 100 frames seeded no missile among 76 patches, 3 now; docs/results.md).
    If the frames hold no foreground, the patches are transparent.
    """
    s, half = 2 * cell, cell // 2
    foreground = (frames - background).abs().amax(dim=1) > threshold
    margin = (s, s, s, s)
    padded_background = F.pad(background, margin, mode="replicate")
    padded = F.pad(frames - background, margin) + padded_background
    mask = F.pad(foreground.float(), margin)
    points = foreground.nonzero()
    if len(points) == 0:
        color = background.mean(dim=(0, 2, 3))[:, None, None]
        transparent = torch.cat([color.expand(3, s, s), torch.zeros(1, s, s)])
        return transparent.clamp(0.02, 0.98).expand(count, -1, -1, -1).clone()
    picks = points[
        torch.randint(len(points), (candidates_per_sprite * count,), generator=generator)
    ]
    box = torch.zeros(s, s)
    box[s // 2 - half : s // 2 + half, s // 2 - half : s // 2 + half] = 1.0
    pairs = [
        _centred_patch(padded, mask, box, padded_background, whole, *pick)
        for pick in picks.tolist()
    ]
    patches = torch.stack([patch for patch, _ in pairs])
    changes = torch.stack([change for _, change in pairs])
    area = (patches[:, 3] > 0.5).sum(dim=(1, 2)).clamp_min(1)
    features = changes.flatten(1) / area.sqrt()[:, None]
    return patches.clamp(0.02, 0.98)[_kmeans_plus_plus(features, count, generator)]
