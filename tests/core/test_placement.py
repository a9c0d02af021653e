import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from marionette.core import Grid, extract_windows, footprint_boxes, global_centers, place_sprites
from marionette.core._reference import place_sprites_reference
from marionette.core.geometry import window_origins
from tests._checks import check_op, rand


class TestGrid:
    def test_derived_sizes(self):
        grid = Grid(210, 160, 10)
        assert (grid.rows, grid.cols, grid.sprite) == (21, 16, 20)
        assert Grid.from_layer_size(128, 96, 8).cell == 16

    @pytest.mark.parametrize(
        "args, match",
        [
            ((100, 96, 16), "height must be divisible by the cell size 16, got 100"),
            ((96, 90, 16), "width must be divisible"),
            ((96, 96, 3), "cell size must be even"),
            ((0, 96, 16), "height must be a positive integer"),
        ],
    )
    def test_exception(self, args, match):
        with pytest.raises(ValueError, match=match):
            Grid(*args)

    def test_layer_size_exception(self):
        with pytest.raises(ValueError, match="divisible by layer_size"):
            Grid.from_layer_size(128, 128, 12)


class TestGeometry:
    def test_window_origins(self):
        origins = window_origins(Grid(32, 48, 8))
        for i in range(4):
            for j in range(6):
                assert origins[i, j].tolist() == [j * 8 - 4, i * 8 - 4]

    def test_global_centers_formula(self):
        grid = Grid(24, 40, 8)
        offsets = rand(2, 3, 5, 2) - 0.5
        centers = global_centers(offsets, grid)
        for i in range(3):
            for j in range(5):
                expected_x = (j + 0.5 + offsets[:, i, j, 0]) * 8
                expected_y = (i + 0.5 + offsets[:, i, j, 1]) * 8
                torch.testing.assert_close(centers[:, i, j, 0], expected_x)
                torch.testing.assert_close(centers[:, i, j, 1], expected_y)

    def test_footprint_boxes(self):
        grid = Grid(16, 24, 4)  # 4 x 6 anchors, 8 px windows
        alpha = torch.zeros(4, 6, 8, 8)
        alpha[1, 2, 2:5, 1:7] = 1.0  # rows 2..4 (y), cols 1..6 (x): wide in x, short in y
        alpha[0, 0, 0:3, 0:3] = 1.0  # top-left corner window, partly off the canvas
        boxes, visible = footprint_boxes(alpha, grid)
        assert visible.sum() == 2
        # window (1, 2) starts at x = 2*4 - 2 = 6, y = 1*4 - 2 = 2
        assert boxes[1, 2].tolist() == [6 + 1, 2 + 2, 6 + 7, 2 + 5]
        # window (0, 0) starts at (-2, -2): clipped to the canvas
        assert boxes[0, 0].tolist() == [0, 0, 1, 1]
        assert boxes[3, 5].tolist() == [0, 0, 0, 0] and not visible[3, 5]

    def test_footprint_leaves_out_lone_pixels(self):
        grid = Grid(16, 16, 4)  # window (r, c) starts at x = 4 c - 2, y = 4 r - 2
        alpha = torch.zeros(4, 4, 8, 8)
        alpha[1, 1, 3:5, 5:7] = 1.0  # a 2 x 2 body
        alpha[1, 1, 4, 1] = 0.9  # a stray pixel two columns away: not in the box
        alpha[1, 1, 5, 7] = 0.9  # a diagonal neighbour of the body: in it
        alpha[2, 2, 3, 3] = 1.0  # a one-pixel sprite keeps its pixel
        alpha[2, 1, 1, 1] = alpha[2, 1, 5, 6] = 1.0  # only lone pixels: all kept
        boxes, visible = footprint_boxes(alpha, grid)

        def local(row, col):
            return (boxes[row, col] - torch.tensor([4 * col - 2, 4 * row - 2] * 2)).tolist()

        assert local(1, 1) == [5, 3, 8, 6]
        assert local(2, 2) == [3, 3, 4, 4] and visible[2, 2]
        assert local(2, 1) == [1, 1, 7, 6]

    def test_footprint_outside_canvas_is_invisible(self):
        grid = Grid(8, 8, 4)
        alpha = torch.zeros(2, 2, 8, 8)
        alpha[0, 0, 0, 0] = 1.0  # pixel (-2, -2) lies outside the canvas
        _, visible = footprint_boxes(alpha, grid)
        assert not visible.any()


class TestPlaceSprites:
    def test_smoke(self):
        grid = Grid(32, 48, 8)
        planes = place_sprites(rand(2, 4, 6, 4, 16, 16), grid)
        assert planes.shape == (2, 4, 4, 32, 48)

    @given(
        rows=st.integers(1, 4),
        cols=st.integers(1, 4),
        half=st.integers(1, 3),
        batch=st.integers(1, 2),
        seed=st.integers(0, 2**16),
    )
    def test_reference(self, rows, cols, half, batch, seed):
        cell = 2 * half
        grid = Grid(rows * cell, cols * cell, cell)
        windows = rand(batch, rows, cols, 3, 2 * cell, 2 * cell, seed=seed)
        torch.testing.assert_close(
            place_sprites(windows, grid), place_sprites_reference(windows, grid)
        )

    def test_invariants(self):
        grid = Grid(16, 24, 4)
        check_op(place_sprites, rand(3, 4, 6, 4, 8, 8), grid)

    def test_groups_do_not_overlap(self):
        grid = Grid(32, 32, 8)
        planes = place_sprites(torch.ones(4, 4, 1, 16, 16), grid)
        # each group plane is covered at most once, and every pixel by some group
        assert planes.max() == 1.0
        assert (planes.sum(dim=0) >= 1).all()

    def test_exception(self):
        with pytest.raises(ValueError, match="windows must have shape"):
            place_sprites(rand(1, 4, 6, 4, 16, 16), Grid(32, 32, 8))

    @pytest.mark.gradcheck
    def test_gradcheck(self):
        grid = Grid(4, 6, 2)
        windows = rand(1, 2, 3, 2, 4, 4, dtype=torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda w: place_sprites(w, grid), (windows,), fast_mode=True
        )


class TestExtractWindows:
    @given(
        rows=st.integers(1, 3),
        cols=st.integers(1, 3),
        half=st.integers(1, 3),
        seed=st.integers(0, 2**16),
    )
    def test_reference(self, rows, cols, half, seed):
        cell = 2 * half
        grid = Grid(rows * cell, cols * cell, cell)
        image = rand(2, 3, grid.height, grid.width, seed=seed)
        windows = extract_windows(image, grid)
        padded = torch.nn.functional.pad(image, (half, half, half, half))
        for i in range(rows):
            for j in range(cols):
                expected = padded[
                    ..., i * cell : i * cell + 2 * cell, j * cell : j * cell + 2 * cell
                ]
                torch.testing.assert_close(windows[:, i, j], expected)

    def test_place_inverts_extract_on_each_group(self):
        grid = Grid(24, 16, 4)
        image = rand(1, 3, 24, 16)
        planes = place_sprites(extract_windows(image, grid), grid)
        for g in range(4):
            covered = place_sprites(torch.ones(1, 6, 4, 1, 8, 8), grid)[0, g, 0] > 0
            torch.testing.assert_close(planes[0, g][:, covered], image[0][:, covered])

    def test_exception(self):
        with pytest.raises(ValueError, match="images must be 16 x 16"):
            extract_windows(rand(1, 3, 16, 24), Grid(16, 16, 4))
