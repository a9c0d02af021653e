"""Triton kernels of the fused renderer (see :mod:`marionette.core.fused` for the maths).

Imported only when the fused renderer runs; ``TRITON_INTERPRET=1`` at import time runs them on
the CPU through Triton's interpreter.
"""

import triton
import triton.language as tl


@triton.jit
def taps(sy, sx, size, border: tl.constexpr):
    """Integer corner, fractions and clip gradients of bilinear sampling at (sy, sx)."""
    if border:
        gy = ((sy > 0) & (sy < size - 1)).to(tl.float32)
        gx = ((sx > 0) & (sx < size - 1)).to(tl.float32)
        sy = tl.minimum(tl.maximum(sy, 0.0), size - 1.0)
        sx = tl.minimum(tl.maximum(sx, 0.0), size - 1.0)
    else:
        gy = tl.full(sy.shape, 1.0, tl.float32)
        gx = tl.full(sx.shape, 1.0, tl.float32)
    y0f = tl.floor(sy)
    x0f = tl.floor(sx)
    return y0f.to(tl.int32), x0f.to(tl.int32), sy - y0f, sx - x0f, gy, gx


@triton.jit
def load_tap(base, yy, xx, size, mask):
    inside = mask & (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
    return tl.load(base + yy * size + xx, mask=inside, other=0.0)


@triton.jit
def sample(base, y0, x0, fy, fx, gy, gx, size, mask):
    """Bilinear value and its derivatives along x and y (times the clip gradients)."""
    v00 = load_tap(base, y0, x0, size, mask)
    v01 = load_tap(base, y0, x0 + 1, size, mask)
    v10 = load_tap(base, y0 + 1, x0, size, mask)
    v11 = load_tap(base, y0 + 1, x0 + 1, size, mask)
    top = v00 + fx * (v01 - v00)
    bottom = v10 + fx * (v11 - v10)
    value = top + fy * (bottom - top)
    d_x = ((1 - fy) * (v01 - v00) + fy * (v11 - v10)) * gx
    d_y = (bottom - top) * gy
    return value, d_x, d_y


@triton.jit
def sample_rgba(base, sy, sx, size, mask):
    """A sprite's color (border padding) and alpha (zero padding) at (sy, sx), and their
    derivatives along x and y, as :func:`marionette.core.shift_bilinear` samples them."""
    area = size * size
    y0, x0, fy, fx, gy, gx = taps(sy, sx, size, True)
    c0, c0_x, c0_y = sample(base, y0, x0, fy, fx, gy, gx, size, mask)
    c1, c1_x, c1_y = sample(base + area, y0, x0, fy, fx, gy, gx, size, mask)
    c2, c2_x, c2_y = sample(base + 2 * area, y0, x0, fy, fx, gy, gx, size, mask)
    y0, x0, fy, fx, gy, gx = taps(sy, sx, size, False)
    a, a_x, a_y = sample(base + 3 * area, y0, x0, fy, fx, gy, gx, size, mask)
    return c0, c1, c2, a, c0_x, c1_x, c2_x, a_x, c0_y, c1_y, c2_y, a_y


@triton.jit
def add_tap(base, yy, xx, size, value, mask):
    inside = mask & (yy >= 0) & (yy < size) & (xx >= 0) & (xx < size)
    tl.atomic_add(base + yy * size + xx, value, mask=inside)


@triton.jit
def scatter(base, y0, x0, fy, fx, size, grad, mask):
    """Adjoint of bilinear sampling: add grad to the four taps with their weights."""
    add_tap(base, y0, x0, size, grad * (1 - fy) * (1 - fx), mask)
    add_tap(base, y0, x0 + 1, size, grad * (1 - fy) * fx, mask)
    add_tap(base, y0 + 1, x0, size, grad * fy * (1 - fx), mask)
    add_tap(base, y0 + 1, x0 + 1, size, grad * fy * fx, mask)


@triton.jit
def tile(cols, height, width, cell: tl.constexpr, block: tl.constexpr):
    """This program's frame bt and tile (m, n), the tile's pixels (r, c) within it, their flat
    index y W + x in a channel and which of them lie on the canvas."""
    bt = tl.program_id(0).to(tl.int64)
    m = tl.program_id(1) // (cols + 1)
    n = tl.program_id(1) % (cols + 1)
    r = tl.arange(0, block)[:, None]
    c = tl.arange(0, block)[None, :]
    y = m * cell - cell // 2 + r
    x = n * cell - cell // 2 + c
    mask = (r < cell) & (c < cell) & (y >= 0) & (y < height) & (x >= 0) & (x < width)
    return bt, m, n, r.to(tl.float32), c.to(tl.float32), y * width + x, mask


@triton.jit
def slot_of(order, k, bt, m, n, r, c, ids, presence, offsets, layers, rows, cols,
            cell: tl.constexpr):  # fmt: skip
    """Plane k over tile (m, n): its slot, whether the slot exists, the slot's sprite (offset
    into the table) and presence, and the sampling position (sy, sx) of the tile's pixels."""
    plane = tl.load(order + k)
    layer = plane // 4
    group = plane % 4
    row_parity = ((group + 1) // 2) % 2  # groups (0,0), (1,1), (1,0), (0,1)
    col_parity = group % 2
    i = m - (m + row_parity) % 2
    j = n - (n + col_parity) % 2
    valid = (i >= 0) & (i < rows) & (j >= 0) & (j < cols)
    i_safe = tl.minimum(tl.maximum(i, 0), rows - 1)
    j_safe = tl.minimum(tl.maximum(j, 0), cols - 1)
    slot = ((bt * layers + layer) * rows + i_safe) * cols + j_safe
    sprite = tl.load(ids + slot).to(tl.int64) * 16 * cell * cell  # 4 channels of (2P)^2
    p = tl.where(valid, tl.load(presence + slot), 0.0)
    sy = r + (m - i) * cell - tl.load(offsets + 2 * slot + 1) * cell
    sx = c + (n - j) * cell - tl.load(offsets + 2 * slot) * cell
    return slot, valid, sprite, p, sy, sx


@triton.jit
def load_rgb(base, hw, mask):
    return (
        tl.load(base, mask=mask, other=0.0),
        tl.load(base + hw, mask=mask, other=0.0),
        tl.load(base + 2 * hw, mask=mask, other=0.0),
    )


@triton.jit
def store_rgb(base, hw, v0, v1, v2, mask):
    tl.store(base, v0, mask=mask)
    tl.store(base + hw, v1, mask=mask)
    tl.store(base + 2 * hw, v2, mask=mask)


@triton.jit
def forward_kernel(
    table, ids, presence, offsets, background, order, out, behind,
    layers, rows, cols, height, width, planes,
    cell: tl.constexpr, block: tl.constexpr, original: tl.constexpr, save: tl.constexpr,
):  # fmt: skip
    size = 2 * cell
    hw = height * width
    bt, m, n, r, c, yx, mask = tile(cols, height, width, cell, block)
    frame = bt * 3 * hw + yx
    o0, o1, o2 = load_rgb(background + frame, hw, mask)
    for k in range(planes):
        if save:
            store_rgb(behind + (bt * planes + k) * 3 * hw + yx, hw, o0, o1, o2, mask)
        slot, valid, sprite, p, sy, sx = slot_of(
            order, k, bt, m, n, r, c, ids, presence, offsets, layers, rows, cols, cell
        )
        c0, c1, c2, a, _, _, _, _, _, _, _, _ = sample_rgba(table + sprite, sy, sx, size, mask)
        a = a * p
        if original:
            c0, c1, c2 = c0 * p, c1 * p, c2 * p
        o0 = o0 + a * (c0 - o0)
        o1 = o1 + a * (c1 - o1)
        o2 = o2 + a * (c2 - o2)
    store_rgb(out + frame, hw, o0, o1, o2, mask)


@triton.jit
def backward_kernel(
    grad_out, table, ids, presence, offsets, order, behind,
    grad_table, grad_presence, grad_offsets, grad_background,
    layers, rows, cols, height, width, planes,
    cell: tl.constexpr, block: tl.constexpr, original: tl.constexpr,
):  # fmt: skip
    size = 2 * cell
    area = size * size
    hw = height * width
    bt, m, n, r, c, yx, mask = tile(cols, height, width, cell, block)
    frame = bt * 3 * hw + yx
    g0, g1, g2 = load_rgb(grad_out + frame, hw, mask)
    for step in range(planes):
        k = planes - 1 - step
        slot, valid, sprite, p, sy, sx = slot_of(
            order, k, bt, m, n, r, c, ids, presence, offsets, layers, rows, cols, cell
        )
        c0, c1, c2, alpha, c0_x, c1_x, c2_x, a_x, c0_y, c1_y, c2_y, a_y = sample_rgba(
            table + sprite, sy, sx, size, mask
        )
        a = alpha * p
        b0, b1, b2 = load_rgb(behind + (bt * planes + k) * 3 * hw + yx, hw, mask)
        if original:
            d_a = g0 * (p * c0 - b0) + g1 * (p * c1 - b1) + g2 * (p * c2 - b2)
            d_p = d_a * alpha + a * (g0 * c0 + g1 * c1 + g2 * c2)
            scale = a * p
        else:
            d_a = g0 * (c0 - b0) + g1 * (c1 - b1) + g2 * (c2 - b2)
            d_p = d_a * alpha
            scale = a
        d0 = g0 * scale
        d1 = g1 * scale
        d2 = g2 * scale
        d_alpha = d_a * p
        d_x = -cell * (d0 * c0_x + d1 * c1_x + d2 * c2_x + d_alpha * a_x)
        d_y = -cell * (d0 * c0_y + d1 * c1_y + d2 * c2_y + d_alpha * a_y)
        # scalar masks: the interpreter rejects them, so invalid slots add zeros to a valid one
        used = valid.to(tl.float32)
        tl.atomic_add(grad_presence + slot, used * tl.sum(tl.sum(d_p, 1), 0))
        tl.atomic_add(grad_offsets + 2 * slot, used * tl.sum(tl.sum(d_x, 1), 0))
        tl.atomic_add(grad_offsets + 2 * slot + 1, used * tl.sum(tl.sum(d_y, 1), 0))
        write = mask & (r * 0 + used > 0)
        target = grad_table + sprite
        cy0, cx0, cfy, cfx, _, _ = taps(sy, sx, size, True)
        ay0, ax0, afy, afx, _, _ = taps(sy, sx, size, False)
        scatter(target, cy0, cx0, cfy, cfx, size, d0, write)
        scatter(target + area, cy0, cx0, cfy, cfx, size, d1, write)
        scatter(target + 2 * area, cy0, cx0, cfy, cfx, size, d2, write)
        scatter(target + 3 * area, ay0, ax0, afy, afx, size, d_alpha, write)
        g0 = g0 * (1 - a)
        g1 = g1 * (1 - a)
        g2 = g2 * (1 - a)
    store_rgb(grad_background + frame, hw, g0, g1, g2, mask)
