import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from marionette.core import (
    discrete_offsets,
    expected_displacement,
    match_gains,
    match_offsets,
    shift_bilinear,
    shift_discrete,
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
        images, behind = rand(2, 3, 8, 8, seed=seed), rand(2, 3, 8, 8, seed=seed + 10)
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
        image[0, :, 4:6, 2:4] = 1.0  # the square moved by (x, y) = (-1, +1)
        gains = match_gains(image, torch.zeros(1, 3, 8, 8), sprite)[0, 0]
        i, j = divmod(int(gains.argmax()), gains.shape[-1])
        assert (j - 2, i - 2) == (-1, 1)
        offsets = expected_displacement(gains, temperature=1e-3)
        torch.testing.assert_close(offsets, torch.tensor([-1 / 4, 1 / 4]))

    @pytest.mark.parametrize("temperature", [0.05, 1.0])
    def test_expected_displacement_equals_the_naive_loop(self, temperature):
        gains = rand(2, 3, 5, 5) - 0.5
        torch.testing.assert_close(
            expected_displacement(gains, temperature),
            expected_displacement_reference(gains, temperature),
        )

    def test_match_offsets_are_the_own_sprite_gains(self):
        images, behind, sprites = (
            rand(3, 3, 8, 8),
            rand(3, 3, 8, 8, seed=1),
            rand(3, 4, 8, 8, seed=2),
        )
        own = torch.stack(
            [
                match_gains(*(x[n : n + 1] for x in (images, behind, sprites)))[0, 0]
                for n in range(3)
            ]
        )
        torch.testing.assert_close(
            match_offsets(images, sprites, behind, 0.05), expected_displacement(own, 0.05)
        )
        check_op(match_offsets, images, sprites, behind, 0.05)
