"""Encoders, dictionary, backgrounds and losses."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from marionette.core import (
    ColorBackground,
    FrameColorBackground,
    GridEncoder,
    ImageBackground,
    ModelConfig,
    SlidingStripBackground,
    SpriteDictionary,
    StripBackground,
    beta_prior_loss,
    compensated_conv2d,
    duplicate_entries,
    estimate_background_color,
    estimate_background_image,
    estimate_frame_colors,
    foreground_patches,
    presence_loss,
    psnr,
    reconstruction_loss,
    scroll_strip,
    selection_prediction_loss,
    slide_strip_window,
    sprite_looks,
)
from marionette.core._reference import (
    beta22_density,
    estimate_background_reference,
    partial_conv_reference,
)
from marionette.core.encoders import FloatGroupNorm
from tests._checks import rand

#: float32 against bf16 results: bf16 keeps 8 bits of the mantissa.
BF16 = dict(atol=0.05, rtol=0.02)


class TestCompensatedConv:
    @given(
        h=st.integers(1, 9),
        w=st.integers(1, 9),
        stride=st.sampled_from([1, 2]),
        seed=st.integers(0, 999),
    )
    def test_reference(self, h, w, stride, seed):
        x = rand(2, 3, h, w, seed=seed, dtype=torch.float64)
        weight = rand(5, 3, 3, 3, seed=seed + 1, dtype=torch.float64) - 0.5
        bias = rand(5, seed=seed + 2, dtype=torch.float64)
        torch.testing.assert_close(
            compensated_conv2d(x, weight, bias, stride, 1),
            partial_conv_reference(x, weight, bias, stride, 1),
        )

    def test_border_scaling(self):
        x = torch.ones(1, 1, 4, 4)
        out = compensated_conv2d(x, torch.ones(1, 1, 3, 3), None)
        assert out[0, 0, 0, 0] == 9.0 and out[0, 0, 0, 1] == 9.0 and out[0, 0, 1, 1] == 9.0
        single = compensated_conv2d(torch.full((1, 1, 1, 1), 2.0), torch.ones(1, 1, 3, 3), None)
        assert single.item() == 2.0 * 9  # one valid tap scaled by 9

    def test_keeps_the_dtype_of_the_convolution_under_autocast(self):
        """Under bf16 autocast the output stays bf16 (the scale and the float32 bias do not
        promote it), and equals the float32 result to bf16 rounding."""
        x, weight, bias = rand(2, 8, 6, 7), rand(4, 8, 3, 3, seed=1) - 0.5, rand(4, seed=2)
        with torch.autocast("cpu", torch.bfloat16):
            low = compensated_conv2d(x, weight, bias)
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), compensated_conv2d(x, weight, bias), **BF16)

    @pytest.mark.gradcheck
    def test_gradcheck(self):
        x = rand(1, 2, 3, 3, dtype=torch.float64).requires_grad_()
        weight = rand(2, 2, 3, 3, dtype=torch.float64, seed=1).requires_grad_()
        bias = rand(2, dtype=torch.float64, seed=2).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, b, c: compensated_conv2d(a, b, c, 2), (x, weight, bias), fast_mode=True
        )


class TestGridEncoder:
    @pytest.mark.parametrize(
        "size, grid",
        [((32, 32), (4, 4)), ((32, 48), (4, 6)), ((210, 160), (21, 16)), ((20, 20), (1, 1))],
    )
    def test_shapes_and_normalisation(self, size, grid):
        encoder = GridEncoder(3, 16, size, grid, num_heads=2)
        codes = encoder(rand(2, 3, *size))
        assert codes.shape == (2, 2, *grid, 16)
        torch.testing.assert_close(codes.mean(-1), torch.zeros(codes.shape[:-1]), atol=1e-5, rtol=0)

    def test_exception(self):
        with pytest.raises(ValueError, match="multiple of 8"):
            GridEncoder(3, 12, (32, 32), (4, 4))
        with pytest.raises(ValueError, match="at least twice the grid"):
            GridEncoder(3, 16, (4, 4), (4, 4))
        with pytest.raises(ValueError, match="base width must be at most 16"):
            GridEncoder(3, 16, (32, 32), (4, 4), base_width=32)

    def test_bf16_convolutions_give_float32_codes_and_gradients(self):
        """With ``autocast_dtype`` bf16 the codes and every parameter's gradient come back in
        float32, near the float32 encoder's (measured: codes within 0.07, gradients at cosine
        >= 0.985); the setting is not part of the weights."""
        torch.manual_seed(0)
        encoder = GridEncoder(3, 16, (32, 32), (4, 4), num_heads=2)
        x = rand(2, 3, 32, 32)

        def codes_and_gradients():
            codes = encoder(x)
            grads = torch.autograd.grad(codes.square().sum(), list(encoder.parameters()))
            return codes, grads

        exact, exact_grads = codes_and_gradients()
        encoder.autocast_dtype = torch.bfloat16
        low, low_grads = codes_and_gradients()
        assert low.dtype == torch.float32 and all(g.dtype == torch.float32 for g in low_grads)
        assert (low - exact).abs().max() < 0.2 and (low - exact).abs().mean() < 0.03
        for grad, exact_grad in zip(low_grads, exact_grads, strict=True):
            assert F.cosine_similarity(grad.flatten(), exact_grad.flatten(), 0) > 0.95
        assert (low - exact).abs().max() > 0  # the convolutions did run in bf16
        assert "autocast_dtype" not in str(encoder.state_dict().keys())

    def test_group_norm_runs_in_float32_under_cpu_autocast(self):
        """bf16 channels-last input under the CPU's bf16 autocast: normalised in float32 and
        returned in bf16, channels-last (plain ``nn.GroupNorm`` runs in bf16 there); without
        autocast, in float32, it is ``nn.GroupNorm``."""
        torch.manual_seed(0)
        norm = FloatGroupNorm(8, 32)
        torch.nn.init.normal_(norm.weight)
        x = (rand(2, 32, 8, 8) * 4 + 100).to(memory_format=torch.channels_last)
        exact = F.group_norm(x, 8, norm.weight, norm.bias)
        torch.testing.assert_close(norm(x), exact)
        with torch.autocast("cpu", torch.bfloat16):
            low = norm(x.bfloat16())
        assert low.dtype == torch.bfloat16 and low.is_contiguous(memory_format=torch.channels_last)
        in_float = F.group_norm(x.bfloat16().float(), 8, norm.weight, norm.bias)
        torch.testing.assert_close(low, in_float.bfloat16())
        torch.testing.assert_close(norm.bfloat16()(x.bfloat16()), low)  # bf16 parameters too
        assert FloatGroupNorm(8, 32, affine=False)(x).dtype == torch.float32

    def test_a_channel_pyramid_narrows_the_early_blocks_and_keeps_the_codes(self):
        """128 px to a 16 x 16 grid: 3 blocks of 32, 64, 128 channels instead of 128 each; the
        multiply-adds of the down blocks fall by 5.8x, the codes keep their shape."""
        size, grid = (128, 128), (16, 16)
        wide, narrow = GridEncoder(3, 128, size, grid), GridEncoder(3, 128, size, grid, 2, 32)
        widths = [block[0].out_channels for block in narrow.blocks]
        assert widths == [32, 64, 128] and [b[0].out_channels for b in wide.blocks] == [128] * 3

        def macs(encoder):
            total, pixels = 0, size[0] * size[1]
            for block in encoder.blocks:
                first, second = block[0], block[3]
                total += first.in_channels * first.out_channels * 9 * pixels
                pixels //= 4
                total += second.in_channels * second.out_channels * 9 * pixels
            return total

        assert 5.7 < macs(wide) / macs(narrow) < 5.8
        codes = narrow(rand(2, 3, *size))
        assert codes.shape == (2, 2, 16, 16, 128)


class TestDictionary:
    def test_sprites(self):
        dictionary = SpriteDictionary(7, 8, 16)
        sprites, codes = dictionary()
        assert sprites.shape == (7, 4, 8, 8) and codes.shape == (7, 16)
        assert sprites.min() > 0 and sprites.max() < 1
        torch.testing.assert_close(codes.mean(-1), torch.zeros(7), atol=1e-5, rtol=0)

    def test_exception(self):
        with pytest.raises(ValueError, match="num_sprites"):
            SpriteDictionary(0, 8, 16)

    @pytest.mark.parametrize("decoder", ["mlp", "pixels"])
    def test_replace_sets_the_entries_and_keeps_the_others(self, decoder):
        dictionary = SpriteDictionary(6, 8, 16, decoder=decoder)
        before, _ = dictionary()
        patches = torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
        dictionary.replace([1, 4], patches)
        after, _ = dictionary()
        torch.testing.assert_close(after[[1, 4]], patches, atol=2e-3, rtol=0)
        torch.testing.assert_close(after[[0, 2, 3, 5]], before[[0, 2, 3, 5]], atol=2e-3, rtol=0)


class TestForegroundPatches:
    """Initial sprites (S = 2P) cut from the data around foreground blobs."""

    @staticmethod
    def patches(frame, count, whole=True, cell=8):
        background = torch.zeros_like(frame)
        generator = torch.Generator().manual_seed(0)
        return foreground_patches(frame, background, cell, count, generator, whole=whole)

    @staticmethod
    def opaque(patch):
        return (patch[3] > 0.5).nonzero().tolist()

    def test_an_object_larger_than_the_cell_is_one_whole_centred_patch(self):
        frame = torch.zeros(1, 3, 40, 40)
        frame[0, 0, 6:18, 20:25] = 1.0  # 12 x 5 px: larger than the 8 px cell, fits S = 16
        (patch,) = self.patches(frame, 1)
        opaque = self.opaque(patch)
        assert len(opaque) == 12 * 5
        rows, cols = zip(*opaque)
        assert (min(rows), max(rows), min(cols), max(cols)) == (2, 13, 6, 10)
        torch.testing.assert_close(patch[:3, 2, 6], torch.tensor([0.98, 0.02, 0.02]))
        for cut in self.patches(frame, 3, whole=False):  # without whole: the central cell's part
            rows, cols = zip(*self.opaque(cut))
            assert max(rows) - min(rows) + 1 <= 8 and max(cols) - min(cols) + 1 == 5

    @pytest.mark.parametrize("whole", [True, False])
    def test_a_blob_larger_than_a_sprite_keeps_its_central_cell(self, whole):
        frame = torch.zeros(1, 3, 40, 40)
        frame[0, 1, 2:38, 10:14] = 1.0  # 36 px tall: no sprite holds it
        for patch in self.patches(frame, 3, whole):
            rows, cols = zip(*self.opaque(patch))
            assert max(rows) - min(rows) + 1 <= 8 and max(cols) - min(cols) + 1 == 4
            assert 4 <= min(rows) and max(rows) < 12  # the window's central 8 x 8 box

    def test_distinct_objects_start_distinct_entries(self):
        frame = torch.zeros(1, 3, 40, 40)
        frame[0, 0, 4:10, 4:10] = 1.0
        frame[0, 2, 25:35, 22:25] = 1.0
        first, second = self.patches(frame, 2)
        sizes = sorted([len(self.opaque(first)), len(self.opaque(second))])
        assert sizes == [30, 36]

    def test_small_objects_are_told_apart_by_color_as_large_ones_are(self):
        # Two 6 x 6 squares (red, blue) and six 1 x 3 lines of each of two colors (yellow,
        # cyan), three entries: compared by raw pixels, a line is close to any other line
        # (3 pixels) and far from the squares (36), so the seeds never held both lines (0 of
        # 40 generator seeds); per pixel of its blob, the second line is a look of its own
        # (7 of 40: the two lines are closer to each other than to the squares).
        frame = torch.zeros(1, 3, 64, 64)
        frame[0, :, 4:10, 4:10] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
        frame[0, :, 4:10, 36:42] = torch.tensor([0.1, 0.1, 0.9])[:, None, None]
        yellow, cyan = torch.tensor([0.9, 0.9, 0.2]), torch.tensor([0.2, 0.9, 0.9])
        for i in range(12):
            y, x = 24 + 12 * (i // 6), 4 + 10 * (i % 6)
            frame[0, :, y : y + 3, x] = (yellow if i % 2 else cyan)[:, None]
        both = 0
        for seed in range(40):
            generator = torch.Generator().manual_seed(seed)
            patches = foreground_patches(frame, torch.zeros_like(frame), 8, 3, generator)
            lines = patches[(patches[:, 3] > 0.5).sum(dim=(1, 2)) == 3]
            both += len({round(float(line[0].amax()), 1) for line in lines}) == 2  # red channel
        assert both >= 4

    def test_no_foreground_gives_transparent_patches(self):
        patches = self.patches(torch.zeros(1, 3, 16, 16), 2)
        assert patches.shape == (2, 4, 16, 16) and (patches[:, 3] < 0.05).all()


def looks_reference(sprites, usage, reach, min_iou=0.9, max_color=0.1):
    """sprite_looks by explicit shifts of zero-padded masks."""
    masks = sprites[:, 3] > 0.5
    alpha = sprites[:, 3:]
    colors = (sprites[:, :3] * alpha).sum((2, 3)) / alpha.sum((2, 3)).clamp_min(1e-6)
    size = masks.shape[-1]
    padded = torch.nn.functional.pad(masks.float(), (reach,) * 4)

    def repeats(i, j):
        if not masks[i].any() or not masks[j].any():
            return False
        best = max(
            float((padded[i, dy : dy + size, dx : dx + size] * masks[j]).sum())
            for dy in range(2 * reach + 1)
            for dx in range(2 * reach + 1)
        )
        union = float(masks[i].sum() + masks[j].sum()) - best
        return best / union >= min_iou and (colors[i] - colors[j]).abs().max() <= max_color

    kept, looks = [], list(range(len(sprites)))
    for k in sorted(range(len(sprites)), key=lambda k: (-int(usage[k]), k)):
        repeated = [i for i in kept if masks[k].any() and repeats(i, k)]
        if repeated:
            looks[k] = repeated[0]
        else:
            kept.append(k)
    return looks


class TestDuplicates:
    def test_a_shifted_copy_repeats_and_the_less_used_goes(self):
        sprites = torch.full((5, 4, 12, 12), 0.02)
        sprites[:, :3] = torch.tensor([0.8, 0.2, 0.2])[:, None, None]
        sprites[0, 3, 2:7, 3:9] = 0.95  # a 5 x 6 block
        sprites[1, 3, 4:9, 5:11] = 0.95  # the same block, shifted by (2, 2)
        sprites[2, 3, 2:7, 3:9] = 0.95
        sprites[2, :3] = torch.tensor([0.2, 0.2, 0.8])[:, None, None]  # same shape, other color
        sprites[3, 3, 1:11, 5:7] = 0.95  # another shape
        usage = torch.tensor([3, 9, 5, 1, 0])  # entry 4 is empty: never a duplicate
        assert sprite_looks(sprites, usage, reach=2) == [1, 1, 2, 3, 4]
        assert duplicate_entries(sprites, usage, reach=2) == [0]
        assert duplicate_entries(sprites, usage, reach=1) == []  # the shift is out of reach

    def test_matches_the_reference(self):
        g = torch.Generator().manual_seed(3)
        for _ in range(5):
            base = (torch.rand(3, 1, 6, 6, generator=g) > 0.4).float()
            masks = torch.zeros(9, 1, 10, 10)
            for k in range(9):
                dy, dx = (int(v) for v in torch.randint(0, 4, (2,), generator=g))
                masks[k, :, dy : dy + 6, dx : dx + 6] = base[k % 3]
            colors = torch.rand(9, 3, 1, 1, generator=g).round() * 0.6 + 0.2
            sprites = torch.cat([colors.expand(-1, -1, 10, 10), masks * 0.9 + 0.05], 1)
            usage = torch.randint(0, 10, (9,), generator=g)
            looks = looks_reference(sprites, usage, 2)
            assert sprite_looks(sprites, usage, 2) == looks
            repeats = [k for k, look in enumerate(looks) if look != k]
            assert duplicate_entries(sprites, usage, 2) == repeats


class TestBackgroundColor:
    def test_mode_matches_exact_mode(self):
        frames = torch.randint(
            0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
        )
        frames[:, :, 2:14, 1:15] = torch.tensor([20, 40, 200], dtype=torch.uint8)[:, None, None]
        torch.testing.assert_close(
            estimate_background_color(frames), estimate_background_reference(frames)
        )

    def test_robust_to_a_large_sprite_and_noise(self):
        g = torch.Generator().manual_seed(1)
        frames = torch.full((5, 3, 20, 20), 0.1) + torch.rand(5, 3, 20, 20, generator=g) * 0.01
        frames[:, :, :9, :] = torch.tensor([0.9, 0.2, 0.2])[:, None, None]  # 45 % of the pixels
        torch.testing.assert_close(
            estimate_background_color(frames), torch.full((3,), 0.105), atol=0.004, rtol=0
        )

    def test_uint8_and_float_agree(self):
        frames = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
        torch.testing.assert_close(
            estimate_background_color(frames), estimate_background_color(frames.float() / 255)
        )

    def test_exception(self):
        with pytest.raises(ValueError, match="frames must lie in \\[0.0, 1.0\\]"):
            estimate_background_color(torch.full((1, 3, 2, 2), 2.0))
        with pytest.raises(TypeError, match="uint8 or floating point"):
            estimate_background_color(torch.zeros(1, 3, 2, 2, dtype=torch.int32))

    def test_module(self):
        fixed = ColorBackground(4, 6, torch.tensor([0.2, 0.4, 0.6]))
        out = fixed(rand(2, 3, 4, 6))
        torch.testing.assert_close(out[1, :, 3, 5], torch.tensor([0.2, 0.4, 0.6]))
        assert not list(fixed.parameters())
        learned = ColorBackground(4, 6, torch.tensor([0.2, 0.4, 0.6]), learnable=True)
        learned(rand(1, 3, 4, 6)).sum().backward()
        assert learned.logit.grad is not None


class TestFrameColors:
    def test_each_frame_is_its_own_exact_mode(self):
        g = torch.Generator().manual_seed(2)
        frames = torch.randint(0, 256, (5, 3, 12, 10), generator=g, dtype=torch.uint8)
        for n, color in enumerate(torch.randint(0, 256, (4, 3), generator=g, dtype=torch.uint8)):
            frames[n, :, 1 : 9 - n, 2:] = color[:, None, None]  # the last frame: noise alone
        colors = estimate_frame_colors(frames)
        assert colors.shape == (5, 3)
        for n, (frame, color) in enumerate(zip(frames, colors, strict=True)):
            torch.testing.assert_close(color, estimate_background_color(frame[None]))
            if n < 4:
                torch.testing.assert_close(color, estimate_background_reference(frame[None]))

    def test_module_follows_every_frame_and_learns_nothing(self):
        frames = torch.full((2, 3, 4, 6), 0.2)
        frames[1, :, :, 1:] = torch.tensor([0.9, 0.5, 0.1])[:, None, None]
        frames[0, :, 0, 0] = 0.8
        frames.requires_grad_()
        config = ModelConfig(height=4, width=6, layer_size=2, num_sprites=2, dim_z=8)
        background = FrameColorBackground.from_config(config, None)
        out = background(frames)
        expected = torch.tensor([[0.2, 0.2, 0.2], [0.9, 0.5, 0.1]])[:, :, None, None]
        torch.testing.assert_close(out, expected.expand(2, 3, 4, 6))
        assert not list(background.parameters()) and not out.requires_grad


class TestBackgroundImage:
    def test_each_pixel_is_the_exact_mode_of_its_colors(self):
        g = torch.Generator().manual_seed(0)
        frames = torch.randint(0, 256, (7, 3, 6, 5), generator=g, dtype=torch.uint8)
        planted = torch.randint(0, 256, (3, 6, 5), generator=g, dtype=torch.uint8)
        frames[:4] = planted  # 4 of 7 frames agree at every pixel: a strict mode
        image = estimate_background_image(frames)
        for y in range(6):
            for x in range(5):
                pixel = frames[:, :, y : y + 1, x : x + 1]
                torch.testing.assert_close(image[:, y, x], estimate_background_reference(pixel))

    def test_what_moves_is_not_background(self):
        frames = torch.full((6, 3, 8, 12), 0.1)
        frames[:, :, 6:] = 0.7  # a static ground line
        for n in range(6):  # a sprite at a different place in every frame
            frames[n, :, 1:3, 2 * n : 2 * n + 2] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
        expected = torch.full((3, 8, 12), 0.1)
        expected[:, 6:] = 0.7
        torch.testing.assert_close(estimate_background_image(frames), expected)

    def test_module_learns_and_checks_its_image(self):
        frames = torch.zeros(3, 3, 4, 6, dtype=torch.uint8)
        frames[:, 0, :, :3] = 255
        config = ModelConfig(height=4, width=6, layer_size=2, num_sprites=2, dim_z=8)
        background = ImageBackground.from_config(config, frames)
        out = background(rand(2, 3, 4, 6))
        assert out.shape == (2, 3, 4, 6) and background.own_learning_rate
        assert out[1, 0, 0, 0] > 0.99 and out[1, 0, 0, 5] < 0.01
        out.sum().backward()
        assert background.logit.grad.abs().min() > 0
        with pytest.raises(ValueError, match="image must be 3 x 4 x 6"):
            ImageBackground(4, 6, torch.zeros(3, 4, 5))


class TestStrip:
    def test_scroll_reference(self):
        strip = rand(3, 4, 10)
        weights = torch.softmax(rand(2, 7, seed=1) * 3, -1)
        out = scroll_strip(strip, weights)
        expected = sum(
            weights[:, o, None, None, None] * strip[None, :, :, o : o + 4] for o in range(7)
        )
        torch.testing.assert_close(out, expected)

    def test_one_hot_scroll_is_a_window(self):
        strip = rand(3, 4, 10)
        weights = torch.zeros(1, 7)
        weights[0, 5] = 1
        torch.testing.assert_close(scroll_strip(strip, weights)[0], strip[:, :, 5:9])

    @pytest.mark.parametrize("offset", [0, 3, 12])
    def test_sliding_window_at_integer_offsets(self, offset):
        strip = rand(3, 5, 16, dtype=torch.float64)
        f = 4 / 16
        position = torch.tensor([1 - f - 2 * offset / 16], dtype=torch.float64)
        torch.testing.assert_close(
            slide_strip_window(strip, position, 4)[0], strip[:, :, offset : offset + 4]
        )

    @pytest.mark.parametrize("kind", [StripBackground, SlidingStripBackground])
    def test_module(self, kind):
        strip = kind(16, 24, 16, color=torch.tensor([0.1, 0.5, 0.9]))
        out = strip(rand(2, 3, 16, 24))
        assert out.shape == (2, 3, 16, 24)
        torch.testing.assert_close(
            strip.strip()[:, 0, 0], torch.tensor([0.1, 0.5, 0.9]), atol=0.05, rtol=0
        )


class TestLosses:
    def test_beta_prior_density(self):
        weights = rand(4, 5)  # one K-way selection per slot
        presence = rand(4, seed=1)
        expected = 0.5 * (
            sum(beta22_density(x) for x in weights.flatten().tolist()) / weights.numel()
            + sum(beta22_density(x) for x in presence.tolist()) / presence.numel()
        )
        assert abs(float(beta_prior_loss(weights, presence)) - expected) < 1e-6

    def test_beta_prior_pushes_to_binary(self):
        p = torch.tensor([0.3, 0.7], requires_grad=True)
        beta_prior_loss(torch.ones(2, 1), p).backward()
        assert p.grad[0] > 0 and p.grad[1] < 0

    def test_presence_loss(self):
        presence = torch.zeros(2, 1, 2, 3, 3)
        presence[:, :, 1] = 1.0
        assert float(presence_loss(presence, [0.005])) == pytest.approx(0.0025)
        assert float(presence_loss(presence, [0.0, 1.0])) == pytest.approx(0.5)
        with pytest.raises(ValueError, match="w_probs must have 1 or num_layers=2 values"):
            presence_loss(presence, [1.0, 2.0, 3.0])

    def test_selection_prediction_equals_the_loop(self):
        logits = 4 * rand(3, 4, 6) - 2
        weights = torch.softmax(4 * rand(3, 4, 6, seed=1), -1)
        presence = rand(3, 4, seed=2)
        expected = 0.0
        for i in range(3):
            for j in range(4):
                scores, targets = logits[i, j].tolist(), weights[i, j].tolist()
                norm = math.log(sum(math.exp(v) for v in scores))
                ce = -sum(w * (v - norm) for w, v in zip(targets, scores, strict=True))
                expected += float(presence[i, j]) * ce / 12
        loss = selection_prediction_loss(logits, weights, presence)
        assert float(loss) == pytest.approx(expected, rel=1e-5)

    def test_selection_prediction_trains_only_the_logits(self):
        logits = torch.zeros(2, 3, requires_grad=True)
        weights = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
        presence = torch.tensor([1.0, 0.0], requires_grad=True)
        selection_prediction_loss(logits, weights, presence).backward()
        assert weights.grad is None and presence.grad is None
        # the present slot's logits move towards its sprite; the empty slot's do not move
        assert logits.grad[0, 0] < 0 and (logits.grad[0, 1:] > 0).all()
        assert torch.equal(logits.grad[1], torch.zeros(3))

    def test_selection_prediction_of_its_own_softmax_has_no_gradient(self):
        logits = torch.randn(4, 5, requires_grad=True)
        selection_prediction_loss(logits, torch.softmax(logits, -1), torch.ones(4)).backward()
        torch.testing.assert_close(logits.grad, torch.zeros(4, 5), atol=1e-7, rtol=0)

    def test_reconstruction_and_psnr(self):
        a, b = torch.zeros(1, 1, 3, 4, 4), torch.full((1, 1, 3, 4, 4), 0.01)
        assert float(reconstruction_loss(a, b)) == pytest.approx(1e-4)
        assert float(psnr(a, b)) == pytest.approx(40.0, abs=1e-4)
