import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from marionette.core import (
    discrete_offsets,
    expected_displacement,
    match_gain_map,
    match_gains,
    match_offsets,
    shift_bilinear,
    shift_discrete,
    soft_match,
)
from marionette.core._reference import (
    expected_displacement_reference,
    match_gains_reference,
    shift_bilinear_reference,
    shift_discrete_reference,
)
from tests._checks import check_op, rand


def roll_with_fill(sprites, dx, dy):
    """Integer translation by (dx, dy): alpha filled with 0, color with the border value."""
    n, c, s, _ = sprites.shape
    ys = (torch.arange(s) - dy).clamp(0, s - 1)
    xs = (torch.arange(s) - dx).clamp(0, s - 1)
    out = sprites[:, :, ys][:, :, :, xs].clone()
    inside_y = ((torch.arange(s) - dy) >= 0) & ((torch.arange(s) - dy) < s)
    inside_x = ((torch.arange(s) - dx) >= 0) & ((torch.arange(s) - dx) < s)
    out[:, 3] *= inside_y[:, None] & inside_x[None, :]
    return out


class TestShiftBilinear:
    def test_smoke(self):
        assert shift_bilinear(rand(3, 4, 8, 8), rand(3, 2) - 0.5).shape == (3, 4, 8, 8)

    @given(half=st.integers(1, 4), seed=st.integers(0, 999), data=st.data())
    def test_integer_offset_is_roll(self, half, seed, data):
        cell = 2 * half
        dx = data.draw(st.integers(-half, half))
        dy = data.draw(st.integers(-half, half))
        sprites = rand(2, 4, 2 * cell, 2 * cell, seed=seed, dtype=torch.float64)
        offsets = torch.tensor([[dx / cell, dy / cell]] * 2, dtype=torch.float64)
        torch.testing.assert_close(
            shift_bilinear(sprites, offsets), roll_with_fill(sprites, dx, dy)
        )

    def test_zero_offset_is_identity(self):
        sprites = rand(3, 4, 8, 8)
        torch.testing.assert_close(shift_bilinear(sprites, torch.zeros(3, 2)), sprites)

    @given(seed=st.integers(0, 999))
    def test_reference(self, seed):
        sprites = rand(3, 4, 6, 6, seed=seed, dtype=torch.float64)
        offsets = rand(3, 2, seed=seed + 1, dtype=torch.float64) - 0.5
        torch.testing.assert_close(
            shift_bilinear(sprites, offsets), shift_bilinear_reference(sprites, offsets)
        )

    @given(seed=st.integers(0, 999))
    def test_grid_sample_values_and_gradients(self, seed):
        """The translated grid sampled by ``F.grid_sample`` (the spatial transformer as the
        original writes it), offsets reaching past the sprite; gradients away from whole
        pixels, where both are differentiable."""
        sprites = rand(5, 4, 8, 8, seed=seed, dtype=torch.float64).requires_grad_()
        offsets = (rand(5, 2, seed=seed + 1, dtype=torch.float64) * 3 - 1.5).requires_grad_()
        grad = rand(5, 4, 8, 8, seed=seed + 2, dtype=torch.float64)
        one, zero = torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
        theta = torch.stack(
            [
                torch.stack([one, zero, -offsets[:, 0]], -1),
                torch.stack([zero, one, -offsets[:, 1]], -1),
            ],
            1,
        )
        grid = F.affine_grid(theta, [5, 1, 8, 8], align_corners=False)
        expected = torch.cat(
            [
                F.grid_sample(sprites[:, :3], grid, padding_mode="border", align_corners=False),
                F.grid_sample(sprites[:, 3:], grid, padding_mode="zeros", align_corners=False),
            ],
            1,
        )
        got = shift_bilinear(sprites, offsets)
        torch.testing.assert_close(got, expected)
        grads = torch.autograd.grad(got, (sprites, offsets), grad)
        torch.testing.assert_close(grads, torch.autograd.grad(expected, (sprites, offsets), grad))

    def test_dtypes_as_grid_sample_under_autocast(self):
        """bf16 sprites: under autocast shifted in float32 (autocast's policy for
        ``grid_sample``); outside it, in the wider of the sprites' and offsets' dtypes."""
        sprites, offsets = rand(3, 4, 8, 8).bfloat16(), (rand(3, 2) - 0.5).bfloat16()
        in_float = shift_bilinear(sprites.float(), offsets.float())
        with torch.autocast("cpu", torch.bfloat16):
            under_autocast = shift_bilinear(sprites, offsets)
        assert under_autocast.dtype == torch.float32
        torch.testing.assert_close(under_autocast, in_float)
        assert shift_bilinear(sprites, offsets).dtype == torch.bfloat16
        torch.testing.assert_close(shift_bilinear(sprites, offsets.float()), in_float)

    def test_whole_pixel_gradient_is_towards_the_next_pixel(self):
        sprites = rand(3, 4, 8, 8, dtype=torch.float64)
        offsets = torch.tensor([[0.25, -0.5], [0.0, 0.0], [-1.25, 1.0]], dtype=torch.float64)
        offsets.requires_grad_()
        grad = rand(3, 4, 8, 8, seed=1, dtype=torch.float64)
        (got,) = torch.autograd.grad((shift_bilinear(sprites, offsets) * grad).sum(), offsets)
        for axis in (0, 1):
            step = torch.zeros_like(offsets)
            step[:, axis] = -1e-7  # a source position (x - s P) just past the whole pixel
            moved = (shift_bilinear(sprites, offsets.detach() + step) * grad).sum((1, 2, 3))
            still = (shift_bilinear(sprites, offsets.detach()) * grad).sum((1, 2, 3))
            torch.testing.assert_close(got[:, axis], (moved - still) / -1e-7, rtol=1e-5, atol=1e-5)

    def test_x_moves_columns_y_moves_rows(self):
        sprites = torch.zeros(1, 4, 8, 8)
        sprites[0, 3, 4, 4] = 1.0
        moved = shift_bilinear(sprites, torch.tensor([[0.5, -0.25]]))  # +2 px in x, -1 px in y
        assert moved[0, 3].nonzero().tolist() == [[3, 6]]

    def test_invariants(self):
        check_op(shift_bilinear, rand(3, 4, 6, 6), rand(3, 2) - 0.5)

    @pytest.mark.gradcheck
    def test_gradcheck(self):
        sprites = rand(2, 4, 4, 4, dtype=torch.float64).requires_grad_()
        offsets = (rand(2, 2, dtype=torch.float64, seed=1) * 0.8 - 0.4).requires_grad_()
        assert torch.autograd.gradcheck(shift_bilinear, (sprites, offsets), fast_mode=True)


class TestShiftDiscrete:
    def test_centre_index_is_identity(self):
        sprites = rand(2, 4, 8, 8)
        w = torch.zeros(2, 5)
        w[:, 2] = 1
        torch.testing.assert_close(shift_discrete(sprites, w, w), sprites)

    @given(half=st.integers(1, 3), seed=st.integers(0, 999))
    def test_reference(self, half, seed):
        cell = 2 * half
        sprites = rand(2, 4, 2 * cell, 2 * cell, seed=seed, dtype=torch.float64)
        wx = torch.softmax(rand(2, cell + 1, seed=seed + 1, dtype=torch.float64) * 4, -1)
        wy = torch.softmax(rand(2, cell + 1, seed=seed + 2, dtype=torch.float64) * 4, -1)
        torch.testing.assert_close(
            shift_discrete(sprites, wx, wy), shift_discrete_reference(sprites, wx, wy)
        )

    def test_index_zero_moves_right_and_down(self):
        sprites = torch.zeros(1, 4, 8, 8)
        sprites[0, 3, 4, 4] = 1.0
        w = torch.zeros(1, 5)
        w[0, 0] = 1
        assert shift_discrete(sprites, w, w)[0, 3].nonzero().tolist() == [[6, 6]]

    def test_matches_bilinear_at_integer_offsets(self):
        sprites = rand(1, 4, 8, 8)
        sprites[..., 0, :] = sprites[..., -1, :] = sprites[..., :, 0] = sprites[..., :, -1] = 0
        wx, wy = torch.zeros(1, 5), torch.zeros(1, 5)
        wx[0, 1], wy[0, 4] = 1, 1
        offsets = discrete_offsets(wx, wy)
        assert offsets.tolist() == [[0.25, -0.5]]
        discrete = shift_discrete(sprites, wx, wy)
        bilinear = shift_bilinear(sprites, offsets)
        torch.testing.assert_close(discrete[:, 3], bilinear[:, 3])

    def test_exception(self):
        with pytest.raises(ValueError, match="P \\+ 1 = 5 entries, got 4"):
            shift_discrete(rand(1, 4, 8, 8), rand(1, 4), rand(1, 4))

    @pytest.mark.gradcheck
    def test_gradcheck(self):
        sprites = rand(1, 4, 4, 4, dtype=torch.float64).requires_grad_()
        wx = torch.softmax(rand(1, 3, dtype=torch.float64, seed=1), -1).requires_grad_()
        wy = torch.softmax(rand(1, 3, dtype=torch.float64, seed=2), -1).requires_grad_()
        assert torch.autograd.gradcheck(shift_discrete, (sprites, wx, wy), fast_mode=True)


class TestMatching:
    """Template matching: the FFT gains, their soft arg-max and the per-slot offsets."""

    @pytest.mark.parametrize("seed", range(3))
    def test_gains_equal_the_naive_loop(self, seed):
        # a rectangular canvas of 3 x 4 cells of 4 px: sprites reach past its edges and into
        # the neighbouring cells
        images, behind = rand(2, 3, 12, 16, seed=seed), rand(2, 3, 12, 16, seed=seed + 10)
        sprites = rand(3, 4, 8, 8, seed=seed + 20)
        sprites[:, 3] = (sprites[:, 3] > 0.5).float()  # binary alpha: the gain is exact
        torch.testing.assert_close(
            match_gains(images, behind, sprites),
            match_gains_reference(images, behind, sprites),
            atol=1e-4,
            rtol=1e-4,
        )

    def test_the_true_displacement_has_the_highest_gain(self):
        sprite = torch.zeros(1, 4, 8, 8)
        sprite[0, :3, 3:5, 3:5], sprite[0, 3, 3:5, 3:5] = 1.0, 1.0  # a 2 x 2 white square
        image = torch.zeros(1, 3, 8, 8)
        # anchor (0, 0) puts the square on rows and columns 1..2; here it is moved by (-1, +1)
        image[0, :, 2:4, 0:2] = 1.0
        gains = match_gains(image, torch.zeros(1, 3, 8, 8), sprite)[0, 0, 0, 0]
        i, j = divmod(int(gains.argmax()), gains.shape[-1])
        assert (j - 2, i - 2) == (-1, 1)
        offsets = expected_displacement(gains, temperature=1e-3)
        torch.testing.assert_close(offsets, torch.tensor([-1 / 4, 1 / 4]))

    def test_a_sprite_is_scored_against_the_neighbouring_cell_it_covers(self):
        # a white 4 x 8 bar sprite and a white bar in the frame that runs on past anchor
        # (0, 0)'s window: the sprite is scored against the pixels it lands on
        sprite = torch.zeros(1, 4, 8, 8)
        sprite[0, :, 2:6, :] = 1.0
        image = torch.zeros(1, 3, 8, 16)
        image[0, :, 2:6, 0:12] = 1.0
        gains = match_gains(image, torch.zeros(1, 3, 8, 16), sprite)[0, 0, 0, 0]
        # displacement (x, y) = (+2, +2) puts the bar on columns 0..7, rows 2..5, all white: each
        # pixel gains 2 s.I - ||s||^2 = 3 (the window alone, columns -2..5, would see 6 of 8)
        assert float(gains[4, 4]) == pytest.approx(3.0)
        # (-2, +2) puts half of it off the canvas: 16 pixels gain 3, 16 cost 3
        assert float(gains[4, 0]) == pytest.approx(0.0, abs=1e-5)

    def test_the_gains_have_gradients_for_the_sprites_and_the_background(self):
        images = rand(1, 3, 8, 8, dtype=torch.float64)
        behind = rand(1, 3, 8, 8, dtype=torch.float64, seed=1).requires_grad_()
        sprites = rand(2, 4, 4, 4, dtype=torch.float64, seed=2).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda b, k: match_gains(images, b, k), (behind, sprites), fast_mode=True
        )

    @pytest.mark.parametrize("temperature", [0.05, 1.0])
    def test_expected_displacement_equals_the_naive_loop(self, temperature):
        gains = rand(2, 3, 5, 5) - 0.5
        torch.testing.assert_close(
            expected_displacement(gains, temperature),
            expected_displacement_reference(gains, temperature),
        )

    @pytest.mark.parametrize("temperature", [0.05, 1.0])
    def test_expected_displacement_equals_the_naive_loop_with_tied_maxima(self, temperature):
        gains = ((rand(3, 2, 5, 5) * 3).round() - 1) / 4  # few distinct values: tied maxima
        torch.testing.assert_close(
            expected_displacement(gains, temperature),
            expected_displacement_reference(gains, temperature),
        )

    def test_a_faint_object_is_placed_at_its_best_displacement(self):
        # P = 16: a faint object gains 0.06 per pixel at (x, y) = (+5, -4) and half of that one
        # pixel to the right; its 287 other displacements about 0. A softmax over the whole
        # window at tau = 0.05 keeps ~1 % of the weight at the best one and would place the
        # object near the anchor's centre; the displacements near the best one refine it.
        gains = (rand(17, 17) - 0.5) * 0.01
        gains[8 - 4, 8 + 5], gains[8 - 4, 8 + 6] = 0.06, 0.03
        x, y = (expected_displacement(gains, temperature=0.05) * 16).tolist()
        assert 5 < x < 6  # towards (+6, -4), the better neighbour
        assert y == pytest.approx(-4, abs=0.1)  # the rows above and below weigh the same

    def test_a_window_of_equal_gains_places_the_sprite_at_the_centre(self):
        # every displacement ties: the best is the centre's, and its neighbours share the weight
        offsets = expected_displacement(torch.zeros(2, 5, 5), temperature=0.05)
        torch.testing.assert_close(offsets, torch.zeros(2, 2))

    def test_the_gain_map_holds_every_anchors_windows(self):
        images, behind = rand(2, 3, 8, 12), rand(2, 3, 8, 12, seed=1)
        sprites = rand(3, 4, 8, 8, seed=2)
        gain_map = match_gain_map(images, behind, sprites)
        gains = match_gains(images, behind, sprites)
        assert gain_map.shape == (2, 3, 9, 13)
        for i, j in itertools.product(range(2), range(3)):  # anchor (i, j): rows 4i .. 4i + 4
            torch.testing.assert_close(
                gains[:, i, j], gain_map[:, :, 4 * i : 4 * i + 5, 4 * j : 4 * j + 5]
            )

    @staticmethod
    def soft_match_reference(gain_map, cell, temperature):
        """soft_match as the composition it replaces: the gain at the best displacement (of
        tied maxima the one nearest the centre, the first of those in row-major order; found by
        a loop) and expected_displacement of the windows of match_gains."""
        q = cell + 1
        windows = gain_map.unfold(-2, q, cell).unfold(-2, q, cell).permute(0, 2, 3, 1, 4, 5)
        flat = windows.flatten(-2)
        chosen = torch.zeros(*flat.shape[:-1], 1, dtype=torch.long)
        centre = (q - 1) / 2
        for at in itertools.product(*map(range, flat.shape[:-1])):
            values = flat[at].tolist()
            top = max(values)
            ties = [o for o, v in enumerate(values) if v == top]
            chosen[at] = min(ties, key=lambda o: (o // q - centre) ** 2 + (o % q - centre) ** 2)
        return flat.gather(-1, chosen)[..., 0], expected_displacement(windows, temperature)

    @pytest.mark.parametrize("temperature", [0.05, 1.0])
    @pytest.mark.parametrize("ties", [False, True])
    def test_soft_match_equals_its_composition_in_values_and_gradients(self, temperature, ties):
        # a rectangular grid of 2 x 3 anchors of 4 px: the windows overlap on their seams; with
        # ties, gains in steps of 1/4 (the best gain's gradient goes to the displacement that
        # the offset is refined around: of tied maxima the one nearest the centre)
        gain_map = rand(2, 3, 9, 13, dtype=torch.float64) - 0.5
        gain_map = ((gain_map * 4).round() / 4 if ties else gain_map).requires_grad_()
        fast = soft_match(gain_map, 4, temperature)
        slow = self.soft_match_reference(gain_map, 4, temperature)
        assert fast.best.shape == (2, 2, 3, 3)
        assert fast.offsets.shape == (2, 2, 3, 3, 2)
        upstream = [rand(*x.shape, dtype=torch.float64, seed=i) for i, x in enumerate(slow)]
        grads = []
        for outputs in (fast, slow):
            total = sum((x * u).sum() for x, u in zip(outputs, upstream, strict=True))
            grads.append(torch.autograd.grad(total, gain_map)[0])
        for a, b in zip(fast, slow, strict=True):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(*grads)

    def test_soft_match_gradcheck_with_some_outputs_unused(self):
        gain_map = (rand(1, 2, 5, 9, dtype=torch.float64) - 0.5).requires_grad_()
        for pick in ([0, 1], [0], [1]):
            assert torch.autograd.gradcheck(
                lambda m: tuple(soft_match(m, 4, 0.5)[i] for i in pick), (gain_map,)
            )

    def test_soft_match_refuses_a_map_that_is_not_a_grid_of_windows(self):
        with pytest.raises(ValueError, match=r"gain_map must be \[N, K, Lh P \+ 1"):
            soft_match(torch.zeros(1, 2, 8, 9), 4, 0.05)
        with pytest.raises(ValueError, match="for cell P = 0"):
            soft_match(torch.zeros(1, 2, 9, 9), 0, 0.05)

    def test_match_offsets_are_the_own_sprite_gains(self):
        images, behind = rand(2, 3, 8, 12), rand(2, 3, 8, 12, seed=1)
        sprites = rand(2, 2, 3, 2, 4, 8, 8, seed=2)  # N Lh Lw M 4 S S: each slot its own
        own = torch.zeros(2, 2, 3, 2, 5, 5)
        for n, i, j, m in itertools.product(range(2), range(2), range(3), range(2)):
            gains = match_gains(images[n : n + 1], behind[n : n + 1], sprites[n, i, j, m][None])
            own[n, i, j, m] = gains[0, i, j, 0]
        torch.testing.assert_close(
            match_offsets(images, behind, sprites, 0.05), expected_displacement(own, 0.05)
        )
        check_op(match_offsets, images, behind, sprites, 0.05)
