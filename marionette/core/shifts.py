"""Sub-cell translation of sprites: the bilinear spatial transformer and discrete offset softmax."""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import einsum, rearrange

from ._typing import Bool, Float, Tensor, typed

__all__ = [
    "NEAR_BEST",
    "SoftMatch",
    "discrete_offsets",
    "expected_displacement",
    "match_gain_map",
    "match_gains",
    "match_offsets",
    "shift_bilinear",
    "shift_discrete",
    "soft_match",
]


@typed
def shift_bilinear(
    sprites: Float[Tensor, "N 4 S S"], offsets: Float[Tensor, "N 2"]
) -> Float[Tensor, "N 4 S S"]:
    """Translate each sprite by s * P pixels with bilinear sampling (the spatial transformer).

    out(x, y) = in(x - s_x P, y - s_y P) with P = S / 2, sampled as ``F.grid_sample`` with
    ``align_corners=False`` samples a translated grid. Color uses border padding, alpha zero
    padding, as the original. Offsets are (x, y) in units of P; a whole number of pixels gives
    an exact integer translation.

    A translation samples every pixel of a sprite at the same fraction: with d = -s P = k + f
    (k whole, 0 <= f < 1) per axis, out(x) = (1 - f) in(x + k) + f in(x + k + 1), the taps
    outside the sprite read the border (color) or zero (alpha). So it is one gather of the
    (S + 1)^2 window the taps cover and two interpolations of the window, about half the
    time of ``grid_sample`` forward and backward on the CPU. At a whole number of pixels the
    offset's gradient is the one-sided derivative towards the next pixel. It computes in the
    wider of the two dtypes, and in float32 under autocast (as autocast runs ``grid_sample``).

    Example:
        >>> a = torch.zeros(1, 4, 4, 4); a[0, 3, 1, 1] = 1.0
        >>> shift_bilinear(a, torch.tensor([[0.5, 0.0]]))[0, 3].nonzero().tolist()
        [[1, 2]]
    """
    dtype = torch.promote_types(sprites.dtype, offsets.dtype)
    if torch.is_autocast_enabled(sprites.device.type):
        dtype = torch.float32
    sprites, offsets = sprites.to(dtype), offsets.to(dtype)
    s = sprites.shape[-1]
    shift = offsets * (-s / 2)  # source minus destination, pixels, (x, y)
    whole = shift.detach().floor()
    taps = whole.long().unsqueeze(-1) + torch.arange(s + 1, device=sprites.device)  # N xy S+1
    inside = (taps >= 0) & (taps < s)
    taps = taps.clamp(0, s - 1)
    index = taps[:, 1, :, None] * s + taps[:, 0, None, :]  # N Sy+1 Sx+1 into the flat sprite
    alpha_inside = inside[:, 1, :, None] & inside[:, 0, None, :]
    return _ShiftWindow.apply(sprites, shift - whole, index, alpha_inside)


class _ShiftWindow(torch.autograd.Function):
    """The bilinear translation of :func:`shift_bilinear` from its parts: ``fraction``
    ``[N, 2]`` (f_x, f_y), ``index`` ``[N, S+1, S+1]`` the flat source pixel of each tap
    (clamped to the sprite), ``alpha_inside`` where the tap lies inside the sprite.

    window = gather(sprite, index) (alpha zeroed outside), rows = lerp(window[..., :S],
    window[..., 1:], f_x), out = lerp(rows[..., :S, :], rows[..., 1:, :], f_y). The backward
    runs the same steps in reverse: each lerp's gradient is itself a lerp of the shifted
    gradient (g_rows[r] = (1 - f_y) g[r] + f_y g[r - 1]), df = sum g (far tap - near tap), and
    a scatter-add returns the window's gradient to the sprite (clamped taps add up on the
    border pixels, as ``grid_sample``'s border padding does)."""

    @staticmethod
    def forward(ctx, sprites, fraction, index, alpha_inside):
        n, c, s, _ = sprites.shape
        flat_index = index.reshape(n, 1, (s + 1) ** 2).expand(n, c, -1)
        window = sprites.reshape(n, c, s * s).gather(2, flat_index).view(n, c, s + 1, s + 1)
        window[:, -1].mul_(alpha_inside)
        fx, fy = (fraction[:, i, None, None, None] for i in (0, 1))
        rows = torch.lerp(window[..., :s], window[..., 1:], fx)
        ctx.save_for_backward(fraction, flat_index, alpha_inside, window, rows)
        return torch.lerp(rows[..., :s, :], rows[..., 1:, :], fy)

    @staticmethod
    def backward(ctx, grad):
        fraction, flat_index, alpha_inside, window, rows = ctx.saved_tensors
        n, c, s, _ = grad.shape
        fx, fy = (fraction[:, i, None, None, None] for i in (0, 1))
        grad_rows = _spread(grad, fy, -2)
        grad_fraction = grad_sprites = None
        if ctx.needs_input_grad[1]:
            grad_fraction = torch.stack(
                [
                    _per_item_dot(grad_rows, window[..., 1:] - window[..., :s]),
                    _per_item_dot(grad, rows[..., 1:, :] - rows[..., :s, :]),
                ],
                dim=1,
            )
        if ctx.needs_input_grad[0]:
            grad_window = _spread(grad_rows, fx, -1)
            grad_window[:, -1].mul_(alpha_inside)
            grad_sprites = grad.new_zeros(n, c, s * s)
            grad_sprites.scatter_add_(2, flat_index, grad_window.view(n, c, (s + 1) ** 2))
            grad_sprites = grad_sprites.view(n, c, s, s)
        return grad_sprites, grad_fraction, None, None


def _spread(grad: Tensor, fraction: Tensor, dim: int) -> Tensor:
    """The gradient of ``lerp(x[:S], x[1:], f)`` along ``dim`` (-1 or -2) with respect to x
    (S + 1 entries): (1 - f) g[r] + f g[r - 1], g zero outside its S entries."""
    padded = F.pad(grad, (1, 1) if dim == -1 else (0, 0, 1, 1))
    s = padded.shape[dim]
    return torch.lerp(padded.narrow(dim, 1, s - 1), padded.narrow(dim, 0, s - 1), fraction)


def _per_item_dot(a: Tensor, b: Tensor) -> Tensor:
    """sum over all but the first dimension of a * b: ``[N]``."""
    return torch.einsum("n...,n...->n", a, b)


@typed
def shift_discrete(
    sprites: Float[Tensor, "N 4 S S"],
    weights_x: Float[Tensor, "N Q"],
    weights_y: Float[Tensor, "N Q"],
) -> Float[Tensor, "N 4 S S"]:
    """Translate each sprite by a distribution over the Q = P + 1 integer offsets per axis.

    Offset index k moves the content by (P/2 - k) pixels: k = 0 moves it right/down by P/2,
    k = P/2 leaves it in place, k = P moves it left/up by P/2. Outside the sprite is zero.
    out = sum_{k, l} wy_k wx_l pad(sprite)[k : k + S, l : l + S].
    """
    s = sprites.shape[-1]
    q = weights_x.shape[-1]
    if q != s // 2 + 1:
        raise ValueError(f"offset weights must have P + 1 = {s // 2 + 1} entries, got {q}")
    pad = (q - 1) // 2
    padded = F.pad(sprites, (pad, pad, pad, pad))
    rows = padded.unfold(2, s, 1)  # every vertical window: N C Qy Sp Sy
    vertical = einsum(rows, weights_y, "N C Qy Sp Sy, N Qy -> N C Sy Sp")
    cols = vertical.unfold(3, s, 1)  # every horizontal window: N C Sy Qx Sx
    return einsum(cols, weights_x, "N C Sy Qx Sx, N Qx -> N C Sy Sx")


@typed
def discrete_offsets(
    weights_x: Float[Tensor, "*batch Q"], weights_y: Float[Tensor, "*batch Q"]
) -> Float[Tensor, "*batch 2"]:
    """Expected offset (x, y) in units of P of discrete offset distributions: sum_k w_k (P/2 - k)/P.

    Example:
        >>> w = torch.zeros(1, 5); w[0, 0] = 1.0
        >>> discrete_offsets(w, w).tolist()
        [[0.5, 0.5]]
    """
    q = weights_x.shape[-1]
    p = q - 1
    displacement = (p / 2 - torch.arange(q, device=weights_x.device, dtype=weights_x.dtype)) / p
    return rearrange([weights_x @ displacement, weights_y @ displacement], "xy ... -> ... xy")


def _gain_signals(frames: Tensor, background: Tensor, cell: int) -> Tensor:
    """The frames and 2 b.I - ||b||^2, zero-padded by the cell size P on every side (the reach of
    a sprite displaced by -P/2 from an edge anchor): the signals of :func:`match_gains`."""
    signals = torch.cat(
        [frames, (2 * background * frames - background * background).sum(-3, keepdim=True)], -3
    )
    return F.pad(signals, (cell, cell, cell, cell))


def _gain_kernels(sprites: Tensor) -> tuple[Tensor, Tensor]:
    """Kernels (2 a s, -a) / m and constant sum a ||s||^2 / m of each sprite, m = max(sum a, 1):
    the gain is the kernels' cross-correlation with the signals minus the constant (the scale
    is applied to the small kernels, not to the correlation maps)."""
    color, alpha = sprites.split([3, 1], dim=-3)
    mass = alpha.sum(dim=(-3, -2, -1), keepdim=True).clamp(min=1.0)
    kernels = torch.cat([2 * alpha * color, -alpha], dim=-3) / mass
    energy = (alpha * color * color).sum(dim=(-3, -2, -1), keepdim=True) / mass
    return kernels, energy[..., 0, 0, 0]


def _transformable(x: Tensor) -> Tensor:
    """x in a precision the FFTs take: float32 or float64 as it is, half precisions in float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """sum_c a[..., c, :, :] b[..., c, :, :] of broadcastable spectra, one channel at a time
    (on the CPU about twice as fast as the complex batched matrix product ``einsum`` makes of
    it, whose matrices are only C = 4 deep)."""
    pairs = zip(a.unbind(-3), b.unbind(-3), strict=True)
    first_a, first_b = next(pairs)
    total = first_a * first_b
    for channel_a, channel_b in pairs:
        total = total + channel_a * channel_b
    return total


class _FramesBySprites(torch.autograd.Function):
    """sum_c a[n, c] b[k, c] of the frames' spectra a ``[N, C, ...]`` and the sprites' b
    ``[K, C, ...]``: ``[N, K, ...]``, accumulated in place one frame at a time (on the CPU about
    half the time of ``_channel_dot`` and of its autograd backward, which write a product of
    the whole ``[N, K, ...]`` size for every channel and then sum the frames out). Frame by
    frame, each frame's products round the same whatever the batch, so that ranks of a
    distributed run agree with one process (accumulated over the whole batch at once, two
    ranks drifted from one process by more than 1e-4 in three steps). The backward, with the
    conjugate convention of PyTorch's complex autograd: grad_b[k, c] = sum_n g[n, k]
    conj(a[n, c]) and grad_a[n, c] = sum_k g[n, k] conj(b[k, c])."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        a, b = a.resolve_conj(), b.resolve_conj()
        ctx.save_for_backward(a, b)
        out = a.new_empty(a.shape[0], b.shape[0], *a.shape[2:])
        for frame, spectra in zip(out, a, strict=True):
            torch.mul(b[:, 0], spectra[0], out=frame)
            for channel in range(1, a.shape[1]):
                frame.addcmul_(b[:, channel], spectra[channel])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            conj_b = b.conj().resolve_conj()
            grad_a = torch.stack([(g[:, None] * conj_b).sum(0) for g in grad])
        if ctx.needs_input_grad[1]:
            conj_a = a.conj().resolve_conj()
            grad_b = b.new_zeros(b.shape)
            for g, spectra in zip(grad, conj_a, strict=True):
                grad_b.addcmul_(g[:, None], spectra[None])
        return grad_a, grad_b


def _check_canvas(frames: Tensor, sprites: Tensor) -> int:
    """The cell size P = S / 2, after checking that it divides the canvas."""
    cell = sprites.shape[-1] // 2
    if frames.shape[-2] % cell or frames.shape[-1] % cell:
        raise ValueError(
            f"the canvas must be divisible by the cell size S / 2 = {cell}, got "
            f"{tuple(frames.shape[-2:])}"
        )
    return cell


@typed
def match_gain_map(
    frames: Float[Tensor, "N 3 H W"],
    background: Float[Tensor, "N 3 H W"],
    sprites: Float[Tensor, "K 4 S S"],
) -> Float[Tensor, "N K H+1 W+1"]:
    """Per-pixel gain of placing each sprite with its top-left corner at each position of the
    frame, from -P/2 to H - P/2 (rows) and W - P/2 (columns), P = S / 2.

    Placing a sprite (alpha a, color s) at top-left corner u0 over background b changes the
    squared error of the frame I by
        cost(u0) = sum_u a(u - u0) ||s(u - u0)||^2 - 2 sum_u (a s)(u - u0) . I(u)
                   + sum_u a(u - u0) (2 b(u) . I(u) - ||b(u)||^2),
    a constant minus cross-correlations of I with a s and of 2 b.I - ||b||^2 with a; the gain
    is -cost / max(sum a, 1). Entry [n, k, y, x] is the corner (x - P/2, y - P/2). The sprite is
    scored against the frame it lands on; outside the canvas frame and background are zero, so
    sprite parts placed there cost their energy and gain nothing. Each frame is correlated with
    each sprite once, by FFTs of the canvas padded by P (size H + S, which cannot wrap around).
    """
    cell = _check_canvas(frames, sprites)
    (n, _, h, w), k = frames.shape, sprites.shape[0]
    if n == 0:  # no frames: FFT libraries refuse empty batches
        return sprites.new_zeros(0, k, h + 1, w + 1)
    signals = _gain_signals(frames, background, cell)
    kernels, constant = _gain_kernels(sprites)
    size = signals.shape[-2:]
    spectrum = _FramesBySprites.apply(
        _transposed_spectrum(_transformable(signals), size),
        _transposed_spectrum(_transformable(kernels), size).conj(),
    )
    correlation = _leading_inverse(spectrum, size, (h + 1, w + 1)).to(sprites.dtype)
    return correlation - constant[:, None, None]


def _anchor_windows(gain_map: Tensor, cell: int) -> Tensor:
    """The (P + 1)^2 displacements of every anchor, cut from the gain map as overlapping views:
    ``[..., Lh, Lw, Qy, Qx]``; anchor (i, j) reads rows iP .. iP + P and columns jP .. jP + P."""
    q = cell + 1
    return gain_map.unfold(-2, q, cell).unfold(-2, q, cell)


@typed
def match_gains(
    frames: Float[Tensor, "N 3 H W"],
    background: Float[Tensor, "N 3 H W"],
    sprites: Float[Tensor, "K 4 S S"],
) -> Float[Tensor, "N Lh Lw K Q Q"]:
    """Per-pixel gain of placing each sprite at each integer displacement of each anchor: the
    gains of :func:`match_gain_map` that anchor (i, j) reaches. It places the sprite at
    u0 = (iP - P/2, jP - P/2) displaced by o in [-P/2, P/2]^2 (P = S / 2); entry
    [n, i, j, k, a, b] is displacement (x, y) = (b - P/2, a - P/2), the sprite scored against
    the frame it lands on, the neighbouring cells included.
    """
    cell = sprites.shape[-1] // 2
    per_anchor = _anchor_windows(match_gain_map(frames, background, sprites), cell)
    return rearrange(per_anchor, "N K Lh Lw Qy Qx -> N Lh Lw K Qy Qx")


class SoftMatch(NamedTuple):
    """What the matching says about every sprite at every anchor, from one softmax over its
    displacements o near the best one of the gains g(o) at temperature tau (:func:`soft_match`).

    Attributes:
        best: the maximum gain, max_o g(o): what the sprite explains at its best placement.
        offsets: the softmax-weighted mean displacement (x, y) near the best one, in units of P.
    """

    best: Float[Tensor, "*batch K"]
    offsets: Float[Tensor, "*batch K 2"]


def _displacements(q: int, like: Tensor) -> Tensor:
    """The Q = P + 1 integer displacements of an axis in units of P: (o - P/2) / P."""
    return (torch.arange(q, device=like.device, dtype=like.dtype) - (q - 1) / 2) / (q - 1)


#: The softmax that turns gains into a displacement spans the displacements within this many
#: pixels (on each axis) of the best one: enough to place a sprite between two integer
#: displacements. Over the whole window the many displacements of a faint object's gain near 0
#: outweighed its best one: Riverraid's helicopters (dark blue on the blue river, 0.06 per pixel
#: at the best displacement, temperature 0.05) kept 3-27 % of the weight there, and were drawn
#: 2-6 px towards the anchor's centre, where they explain nothing (docs/learning.md).
NEAR_BEST = 1


def _near_best(ties: Bool[Tensor, "*batch QQ"], q: int) -> tuple[Tensor, Tensor]:
    """The displacements within :data:`NEAR_BEST` pixels (on each axis) of the best one of a
    flattened Q x Q window, given where its maximum is (``ties``): their flat indices
    ``[..., (2 NEAR_BEST + 1)^2]`` and whether each lies in the window (one past its edge is
    clamped to it and marked False). Of tied maxima the best is the one nearest the centre (the
    first of those in row-major order)."""
    d = _displacements(q, ties.new_empty(0, dtype=torch.float32))
    distance = (d[:, None] ** 2 + d[None, :] ** 2).flatten()
    best = torch.where(ties, distance, torch.inf).argmin(dim=-1, keepdim=True)
    steps = torch.arange(-NEAR_BEST, NEAR_BEST + 1, device=ties.device)
    rows = best // q + steps.repeat_interleave(len(steps))
    cols = best % q + steps.repeat(len(steps))
    inside = (rows >= 0) & (rows < q) & (cols >= 0) & (cols < q)
    return rows.clamp(0, q - 1) * q + cols.clamp(0, q - 1), inside


def _steps(index: Tensor, q: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The displacements (dx, dy) in units of P of flat indices into a Q x Q window."""
    d = _displacements(q, like)
    return d[index % q], d[index // q]


def _near_softmax(logits: Float[Tensor, "*batch QQ"], q: int) -> tuple[Tensor, Tensor, Tensor]:
    """softmax(logits) over the displacements near the best one (``_near_best``): their
    weights and flat indices ``[..., (2 NEAR_BEST + 1)^2]`` (weight 0 for those past the
    window's edge, the best one in the middle), and the maximum ``[..., 1]``."""
    top = logits.amax(dim=-1, keepdim=True)
    index, inside = _near_best(logits == top, q)
    weights = (logits.gather(-1, index) - top.detach()).exp() * inside  # small: out of place
    return weights / weights.sum(dim=-1, keepdim=True), index, top


def _mean_displacement(weights: Tensor, index: Tensor, q: int) -> Tensor:
    """sum_o w_o (dx_o, dy_o) over the displacements of flat indices ``index``: ``[..., 2]``."""
    dx, dy = _steps(index, q, weights)
    return torch.stack([(weights * dx).sum(dim=-1), (weights * dy).sum(dim=-1)], -1)


class _SoftMatch(torch.autograd.Function):
    """:func:`soft_match` with a backward written out, so that the softmax is computed once and
    the overlapping windows' gradients are summed into the map without ``unfold``'s backward.

    With o* the best displacement (of tied maxima the one nearest the centre), p = softmax(g /
    tau) over the displacements o near it (:data:`NEAR_BEST`; p_o = 0 elsewhere), (x, y) =
    sum_o p_o (dx_o, dy_o) and b = g(o*):
        dL/dg_o = p_o (g_x (dx_o - x) + g_y (dy_o - y)) / tau + g_b [o = o*].
    Which displacement is o*, and which are near it, is piecewise constant in g.
    """

    @staticmethod
    def forward(ctx, gain_map: Tensor, cell: int, temperature: float):
        q = cell + 1
        windows = _anchor_windows(gain_map, cell)  # N K Lh Lw Qy Qx, overlapping views
        logits = (windows / temperature).flatten(-2)  # contiguous
        weights, index, top = _near_softmax(logits, q)
        offsets = _mean_displacement(weights, index, q)
        ctx.save_for_backward(weights, index, offsets)
        ctx.cell, ctx.temperature, ctx.map_shape = cell, temperature, gain_map.shape
        ctx.set_materialize_grads(False)
        return top[..., 0] * temperature, offsets

    @staticmethod
    def backward(ctx, grad_best, grad_offsets):
        weights, index, offsets = ctx.saved_tensors
        cell, tau = ctx.cell, ctx.temperature
        q = cell + 1
        near = torch.zeros_like(weights)  # the gradient of the displacements near o*
        if grad_offsets is not None:
            dx, dy = _steps(index, q, weights)
            (x, y), (grad_x, grad_y) = offsets.unbind(-1), grad_offsets.unbind(-1)
            near = grad_x[..., None] * (dx - x[..., None]) + grad_y[..., None] * (dy - y[..., None])
            near = near.mul_(weights).div_(tau)
        if grad_best is not None:  # o* itself, the middle of its neighbourhood
            near[..., (index.shape[-1] - 1) // 2] += grad_best.to(near.dtype)
        grad_windows = weights.new_zeros(*index.shape[:-1], q * q).scatter_add_(-1, index, near)
        return _fold_windows(grad_windows.unflatten(-1, (q, q)), cell, ctx.map_shape), None, None


def _fold_windows(windows: Tensor, cell: int, shape: torch.Size) -> Tensor:
    """The adjoint of ``_anchor_windows``: every window's values summed into the map. The
    windows overlap only on their last row and column (stride P, size P + 1), so the P x P
    blocks fill the map and the seams are added on top."""
    p = cell
    lh, lw = windows.shape[-4:-2]
    grad = windows.new_empty(shape)
    grad[..., -1, :] = 0
    grad[..., :, -1] = 0
    blocks = grad[..., : lh * p, : lw * p].unflatten(-1, (lw, p)).unflatten(-3, (lh, p))
    blocks.copy_(rearrange(windows[..., :p, :p], "... Lh Lw Py Px -> ... Lh Py Lw Px"))
    seam_rows = grad[..., p::p, : lw * p].unflatten(-1, (lw, p))  # rows P, 2P, ..., Lh P
    seam_rows += windows[..., p, :p]
    seam_columns = grad[..., : lh * p, p::p].unflatten(-2, (lh, p))  # ... Lh Py Lw
    seam_columns += rearrange(windows[..., :p, p], "... Lh Lw Py -> ... Lh Py Lw")
    grad[..., p::p, p::p] += windows[..., p, p]
    return grad


@typed
def soft_match(gain_map: Float[Tensor, "N K Hq Wq"], cell: int, temperature: float) -> SoftMatch:
    """Best gain and expected displacement of every sprite at every anchor of a gain map of
    :func:`match_gain_map`, from one softmax over the anchor's displacements near the best one:

        best = max_o g(o),   offsets = sum_{o in N} softmax_N(g / tau)_o o / P,

    with g the gains of :func:`match_gains` at the anchor's (P + 1)^2 displacements, N those
    within :data:`NEAR_BEST` pixels of o* = argmax_o g(o) on each axis (of tied maxima the
    nearest to the centre) and tau = ``temperature``; the same values as
    ``amax`` and :func:`expected_displacement` of those windows, with a hand-written backward
    that sums the overlapping windows' gradients into the map. Fields are ``[N, Lh, Lw, K,
    ...]``.
    """
    rows, cols = gain_map.shape[-2] - 1, gain_map.shape[-1] - 1
    if cell < 1 or rows < cell or cols < cell or rows % cell or cols % cell:
        raise ValueError(
            f"gain_map must be [N, K, Lh P + 1, Lw P + 1] for cell P = {cell}, got "
            f"{tuple(gain_map.shape)}"
        )
    fields = _SoftMatch.apply(gain_map, cell, temperature)
    return SoftMatch(*(rearrange(x, "N K Lh Lw ... -> N Lh Lw K ...") for x in fields))


def _transposed_spectrum(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``rfft2(x, s=size)`` of x zero-padded to ``size``, transposed to ``[..., Fx, Fy]``: the
    rows' transforms taken of x's own rows only, then the columns' of the padded length (exact:
    the zero rows transform to zero), both along the contiguous axis. Spectra stay transposed
    until ``_leading_inverse``, so that of the four transforms of a correlation only the
    last reads across rows."""
    rows = torch.fft.rfft(x, n=size[-1], dim=-1)
    return torch.fft.fft(rows.transpose(-1, -2).contiguous(), n=size[-2], dim=-1)


def _leading_inverse(spectrum: Tensor, size: tuple[int, int], kept: tuple[int, int]) -> Tensor:
    """``irfft2(spectrum, s=size)[..., :rows, :cols]`` of a ``_transposed_spectrum``
    ``[..., Fx, Fy]`` without the rows that are cut: the inverse along the columns first (the
    contiguous axis), then along the rows of the rows kept only (exact)."""
    rows, cols = kept
    leading = torch.fft.ifft(spectrum, dim=-1)[..., :rows].transpose(-1, -2)
    return torch.fft.irfft(leading, n=size[-1], dim=-1)[..., :cols]


@typed
def expected_displacement(
    gains: Float[Tensor, "*batch Q Q"], temperature: float
) -> Float[Tensor, "*batch 2"]:
    """Softmax(gain / temperature)-weighted mean displacement (x, y) in units of P = Q - 1,
    over the displacements within :data:`NEAR_BEST` pixels of the best one (of tied maxima the
    nearest to the centre): a sub-pixel refinement of the best displacement."""
    q = gains.shape[-1]
    weights, index, _ = _near_softmax((gains / temperature).flatten(-2), q)
    return _mean_displacement(weights, index, q)


@typed
def match_offsets(
    frames: Float[Tensor, "N 3 H W"],
    background: Float[Tensor, "N 3 H W"],
    sprites: Float[Tensor, "N Lh Lw M 4 S S"],
    temperature: float = 0.05,
) -> Float[Tensor, "N Lh Lw M 2"]:
    """Offset (x, y) in units of P that best aligns each slot's own sprite with the frame.

    The gain of :func:`match_gains` of the M slots of every anchor, each with its own sprite
    (correlated with the anchor's (S + P)-pixel reach of the frame), turned into an offset by
    :func:`expected_displacement`.
    """
    cell = _check_canvas(frames, sprites)
    q, reach = cell + 1, 3 * cell
    anchors = (frames.shape[-2] // cell, frames.shape[-1] // cell)
    if sprites.shape[1:3] != anchors:
        raise ValueError(
            f"sprites must have one row per anchor, [N, {anchors[0]}, {anchors[1]}, M, 4, S, S] "
            f"for {tuple(frames.shape[-2:])} frames, got {tuple(sprites.shape)}"
        )
    if frames.shape[0] == 0:  # no frames: FFT libraries refuse empty batches
        return sprites.new_zeros(*sprites.shape[:4], 2)
    signals = _gain_signals(frames, background, cell)
    windows = signals.unfold(-2, reach, cell).unfold(-2, reach, cell)
    kernels, constant = _gain_kernels(sprites)
    size = (reach, reach)
    spectrum = _channel_dot(
        rearrange(
            _transposed_spectrum(_transformable(windows), size),
            "N C Lh Lw Fx Fy -> N Lh Lw 1 C Fx Fy",
        ),
        _transposed_spectrum(_transformable(kernels), size).conj(),
    )
    correlation = _leading_inverse(spectrum, size, (q, q)).to(sprites.dtype)
    gains = correlation - constant[..., None, None]
    return expected_displacement(gains, temperature)
