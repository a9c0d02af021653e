"""Every registry entry against the function it wraps, and the registries' contracts."""

import pytest
import torch

from marionette.core import (
    BACKGROUNDS,
    OFFSET_PREDICTORS,
    PRESENCES,
    SELECTIONS,
    AnchorWindows,
    ColorBackground,
    MarioNette,
    ModelConfig,
    SlidingStripBackground,
    SpriteDictionary,
    StripBackground,
    VerticalStripBackground,
    decode_sprites,
    discrete_offsets,
    expected_displacement,
    match_gains,
    mix_sprites,
    neighbour_repeats,
    scroll_strip,
    selection_logits,
    slide_strip_window,
)
from tests._checks import rand

CONFIG = dict(height=16, width=24, layer_size=2, num_layers=2, num_sprites=3, dim_z=16)


def inputs(config: ModelConfig, seed: int = 0):
    """Codes, windows, soft sprites, weights and the matched selection of a random scene."""
    grid, b, t = config.grid, 2, 1
    codes = rand(b, t, config.num_layers, grid.rows, grid.cols, config.dim_z, seed=seed)
    sprites = rand(config.num_sprites, 4, grid.sprite, grid.sprite, seed=seed + 1)
    windows = AnchorWindows(
        rand(b, t, 3, grid.height, grid.width, seed=seed + 2),
        rand(b, t, 3, grid.height, grid.width, seed=seed + 3),
        grid,
    )
    weights = torch.softmax(rand(*codes.shape[:-1], config.num_sprites, seed=seed + 4), -1)
    return codes, sprites, windows, weights


class TestSelections:
    def test_learned_is_the_scaled_dot_product(self):
        config = ModelConfig(**CONFIG)
        codes, sprites, windows, _ = inputs(config)
        dict_codes = rand(3, 16, seed=9)
        selection = SELECTIONS["learned"](codes, dict_codes, sprites, windows, 0.05)
        torch.testing.assert_close(selection.logits, selection_logits(codes, dict_codes))
        assert selection.match is None

    def test_match_adds_the_best_gain_of_the_anchor(self):
        config = ModelConfig(**CONFIG)
        codes, sprites, windows, _ = inputs(config)
        dict_codes = rand(3, 16, seed=9)
        selection = SELECTIONS["match"](codes, dict_codes, sprites, windows, 0.05)
        b, i, j = 1, 0, 2  # one anchor, by hand
        gains = match_gains(windows.frames[b], windows.background[b], sprites)[0, i, j]
        best = gains.flatten(1).amax(-1)
        assert not selection.layered
        for layer in range(2):  # the same matching in every layer
            match = [field[b, 0, layer, i, j] for field in selection.match]
            torch.testing.assert_close(match[0], best)
            torch.testing.assert_close(match[1], expected_displacement(gains, 0.05))
            torch.testing.assert_close(
                selection.logits[b, 0, layer, i, j],
                selection_logits(codes[b, 0, layer, i, j], dict_codes) + best / 0.05,
            )

    @pytest.mark.parametrize("name", ["match", "pursuit"])
    def test_a_small_object_outscores_a_bar_that_gains_less_at_many_places(self, name):
        # A bar across the frame and, above it in the same anchor's window, a small square of
        # a little more contrast (squared 0.49 against 0.41 per pixel). The bar's piece gains as
        # much at 9 horizontal displacements (a soft maximum over displacements adds log 9 for
        # that), the square at one only; the square explains more, so its sprite is selected.
        bar = ((0.0, 0.0, 0.64), (slice(14, 16), slice(None)), (slice(7, 9), slice(4, 12)))
        small = ((0.7, 0.0, 0.0), (slice(10, 12), slice(10, 12)), (slice(7, 9), slice(7, 9)))
        frame, sprites, windows, plain = painted_scene((0.0, 0.0, 0.0), [bar, small])
        queries = torch.zeros(1, 1, 2, 4, 4, 8)  # logits = the matching's
        selection = SELECTIONS[name](queries, torch.zeros(2, 8), sprites, windows, 0.05)
        gains = match_gains(frame[None], plain[0], sprites)[0, 1, 1].flatten(1)  # K, displacements
        near_best = (gains > gains.amax(-1, keepdim=True) - 0.05).sum(-1)
        assert near_best[0] >= 9 and near_best[1] == 1  # the bar's gain is flat, the square's not
        assert gains[1].amax() > gains[0].amax()
        assert torch.logsumexp(gains[0] / 0.05, 0) > torch.logsumexp(gains[1] / 0.05, 0)
        assert selection.logits[0, 0, 0, 1, 1].argmax() == 1

    def test_pursuit_matches_the_back_layer_as_match_does(self):
        config = ModelConfig(**CONFIG)
        codes, sprites, windows, _ = inputs(config)
        dict_codes = rand(3, 16, seed=9)
        match = SELECTIONS["match"](codes, dict_codes, sprites, windows, 0.05)
        pursuit = SELECTIONS["pursuit"](codes, dict_codes, sprites, windows, 0.05)
        assert pursuit.layered
        torch.testing.assert_close(pursuit.logits[:, :, 0], match.logits[:, :, 0])
        for ours, theirs in zip(pursuit.match, match.match, strict=True):
            torch.testing.assert_close(ours[:, :, 0], theirs[:, :, 0])

    def test_pursuit_finds_in_front_what_the_back_layer_left(self):
        # A 6 x 6 square with a 2 x 2 square of another colour on it, in the cell of anchor
        # (1, 1); the dictionary holds both squares. `match` gives both layers the same best
        # sprite; `pursuit` draws one in the back layer and finds the other in front of it.
        big = ((0.9, 0.3, 0.1), (slice(9, 15), slice(9, 15)), (slice(5, 11), slice(5, 11)))
        small = ((0.2, 0.9, 0.9), (slice(11, 13), slice(11, 13)), (slice(7, 9), slice(7, 9)))
        _, sprites, windows, _ = painted_scene((0.1, 0.1, 0.2), [big, small])
        queries = torch.zeros(1, 1, 2, 4, 4, 8)  # logits = the matching's best gains / tau
        picks = {}
        for name in ("match", "pursuit"):
            selection = SELECTIONS[name](queries, torch.zeros(2, 8), sprites, windows, 0.05)
            best = selection.match.best.amax(-1)[0, 0]  # NL Lh Lw
            picks[name] = selection.logits[0, 0, :, 1, 1].argmax(-1).tolist(), best
        assert picks["match"][0][0] == picks["match"][0][1]
        layers, best = picks["pursuit"]
        assert sorted(layers) == [0, 1] and best[1, 1, 1] > 0.1
        assert (best[1] <= 1e-6).sum() >= 12  # elsewhere nothing is left to draw

    def test_pursuit_draws_an_object_on_a_seam_once(self):
        # A 6 x 6 square centred on the seam of anchors (1, 1) and (2, 1): both reach it, at the
        # same best gain. The earlier one draws it; the other is vacated, and in front nothing
        # is left to draw. `match` does not decide it.
        square = ((0.9, 0.3, 0.1), (slice(13, 19), slice(9, 15)), (slice(5, 11), slice(5, 11)))
        _, sprites, windows, _ = painted_scene((0.1, 0.1, 0.2), [square])
        queries = torch.zeros(1, 1, 2, 4, 4, 8)
        selection = SELECTIONS["pursuit"](queries, torch.zeros(1, 8), sprites, windows, 0.05)
        best = selection.match.best[0, 0, :, :, :, 0]  # NL Lh Lw
        assert best[0, 1, 1] > 0.5 and torch.isclose(best[0, 2, 1], best[0, 1, 1])
        assert selection.vacated[0, 0].nonzero().tolist() == [[0, 2, 1]]
        assert (best[1] < 1e-4).all()  # 0 but for float rounding
        assert (
            SELECTIONS["match"](queries, torch.zeros(1, 8), sprites, windows, 0.05).vacated is None
        )

    def test_pursuit_draws_two_neighbouring_objects_both(self):
        # Two squares, each in the cell of its anchor and touching: nothing is vacated.
        left = ((0.9, 0.3, 0.1), (slice(9, 15), slice(9, 15)), (slice(5, 11), slice(5, 11)))
        right = ((0.2, 0.9, 0.9), (slice(9, 15), slice(15, 21)), (slice(5, 11), slice(5, 11)))
        _, sprites, windows, _ = painted_scene((0.1, 0.1, 0.2), [left, right])
        queries = torch.zeros(1, 1, 2, 4, 4, 8)
        selection = SELECTIONS["pursuit"](queries, torch.zeros(2, 8), sprites, windows, 0.05)
        assert selection.match.best[0, 0, 0, 1, 1:3].amax(-1).gt(0.5).all()
        assert not selection.vacated.any()


class TestNeighbourRepeats:
    @staticmethod
    def naive(footprints, score, cell, overlap=0.5, grow=1):
        """Sequential greedy suppression over every pair of neighbours, pixel by pixel on the
        canvas, after growing each footprint pixel by pixel inside its window."""
        n, lh, lw, s, _ = footprints.shape
        grown = torch.zeros_like(footprints)
        for y in range(s):
            for x in range(s):
                near = footprints[
                    ..., max(0, y - grow) : y + grow + 1, max(0, x - grow) : x + grow + 1
                ]
                grown[..., y, x] = near.flatten(-2).any(-1)
        footprints = grown
        canvas = torch.zeros(n, lh, lw, (lh + 1) * cell, (lw + 1) * cell, dtype=torch.bool)
        for i in range(lh):
            for j in range(lw):
                canvas[:, i, j, i * cell : i * cell + s, j * cell : j * cell + s] = footprints[
                    :, i, j
                ]
        suppressed = torch.zeros(n, lh, lw, dtype=torch.bool)
        for b in range(n):
            order = sorted(range(lh * lw), key=lambda a: (-float(score[b].flatten()[a]), a))
            kept = []
            for a in order:
                i, j = divmod(a, lw)
                mine = canvas[b, i, j]
                if not mine.any():
                    continue
                for k in kept:
                    ki, kj = divmod(k, lw)
                    theirs = canvas[b, ki, kj]
                    smaller = min(int(mine.sum()), int(theirs.sum()))
                    if (
                        max(abs(ki - i), abs(kj - j)) == 1
                        and (mine & theirs).sum() > overlap * smaller
                    ):
                        suppressed[b, i, j] = True
                        break
                else:
                    kept.append(a)
        return suppressed

    @pytest.mark.parametrize("grow", [0, 1])
    @pytest.mark.parametrize("seed", range(4))
    def test_matches_sequential_greedy_suppression(self, seed, grow):
        generator = torch.Generator().manual_seed(seed)
        n, lh, lw, cell = 3, 4, 5, 4
        s = 2 * cell
        # one random box per anchor window, some empty; scores with ties
        footprints = torch.zeros(n, lh, lw, s, s, dtype=torch.bool)
        corners = torch.randint(0, s - 2, (n, lh, lw, 2), generator=generator)
        sizes = torch.randint(2, s + 1, (n, lh, lw, 2), generator=generator)
        for b in range(n):
            for i in range(lh):
                for j in range(lw):
                    y, x = corners[b, i, j].tolist()
                    h, w = sizes[b, i, j].tolist()
                    footprints[b, i, j, y : y + h, x : x + w] = True
        footprints &= torch.rand(n, lh, lw, 1, 1, generator=generator) > 0.2
        score = torch.randint(0, 4, (n, lh, lw), generator=generator).float()
        ours = neighbour_repeats(footprints, score, cell, grow=grow)
        assert ours.any() and torch.equal(ours, self.naive(footprints, score, cell, grow=grow))

    def test_parts_of_a_thin_object_side_by_side_clash(self):
        # Anchors 0 and 1 (cell 4, 8 px windows; window 1 starts 4 px right of window 0) each
        # draw a column of one 2 x 3 object on their seam: canvas columns 5 and 6, no pixel
        # shared. Grown by a pixel they clash; two touching 2-px-wide objects do not.
        footprints = torch.zeros(1, 1, 2, 8, 8, dtype=torch.bool)
        footprints[0, 0, 0, 2:5, 5] = True
        footprints[0, 0, 1, 2:5, 2] = True
        score = torch.tensor([[[0.4, 0.5]]])
        assert neighbour_repeats(footprints, score, 4, grow=0).tolist() == [[[False, False]]]
        assert neighbour_repeats(footprints, score, 4).tolist() == [[[True, False]]]
        footprints[0, 0, 0, 2:5, 4] = True  # canvas columns 4-5 and 6-7
        footprints[0, 0, 1, 2:5, 3] = True
        assert not neighbour_repeats(footprints, score, 4).any()
        with pytest.raises(ValueError, match="grow must be >= 0 .*got -1"):
            neighbour_repeats(footprints, score, 4, grow=-1)


def painted_scene(background, objects):
    """A 32 x 32 frame of one colour with rectangles painted on it in order, a dictionary of one
    16 x 16 sprite per rectangle (8 px cells, a 4 x 4 grid), the anchor windows and the plain
    background. ``objects``: (colour, (rows, columns) in the frame, (rows, columns) of the
    sprite's opaque part)."""
    frame = torch.tensor(background)[:, None, None].repeat(1, 32, 32)
    sprites = torch.zeros(len(objects), 4, 16, 16)
    for k, (color, (rows, cols), (sprite_rows, sprite_cols)) in enumerate(objects):
        frame[:, rows, cols] = torch.tensor(color)[:, None, None]
        sprites[k, :3] = torch.tensor(color)[:, None, None]
        sprites[k, 3, sprite_rows, sprite_cols] = 1.0
    grid = ModelConfig(height=32, width=32, layer_size=4).grid
    plain = torch.tensor(background)[:, None, None].expand(1, 1, 3, 32, 32)
    return frame, sprites, AnchorWindows(frame[None, None], plain, grid), plain


class TestPresences:
    def test_learned_is_the_sigmoid_of_the_logit(self):
        config = ModelConfig(**CONFIG)
        codes, sprites, windows, _ = inputs(config)
        selection = SELECTIONS["learned"](codes, rand(3, 16), sprites, windows, 0.05)
        logits = rand(*codes.shape[:-1], seed=5) - 0.5
        torch.testing.assert_close(PRESENCES["learned"](logits, selection, 0.05), logits.sigmoid())

    def test_match_adds_the_best_gain_of_the_anchor_to_the_back_layer(self):
        config = ModelConfig(**CONFIG)
        codes, sprites, windows, _ = inputs(config)
        selection = SELECTIONS["match"](codes, rand(3, 16), sprites, windows, 0.05)
        logits = rand(*codes.shape[:-1], seed=5) - 0.5
        presence = PRESENCES["match"](logits, selection, 0.05)
        for b, i, j in [(0, 0, 0), (1, 1, 2)]:  # anchors by hand: the best sprite and displacement
            gains = match_gains(windows.frames[b], windows.background[b], sprites)[0, i, j]
            best = max(float(g) for g in gains.flatten())
            back = torch.sigmoid(logits[b, 0, 0, i, j] + best / 0.05)
            torch.testing.assert_close(presence[b, 0, 0, i, j], back)
        torch.testing.assert_close(presence[:, :, 1], logits[:, :, 1].sigmoid())

    def test_match_adds_each_layers_own_best_gain_with_pursuit(self):
        config = ModelConfig(**CONFIG)
        codes, sprites, windows, _ = inputs(config)
        selection = SELECTIONS["pursuit"](codes, rand(3, 16), sprites, windows, 0.05)
        logits = rand(*codes.shape[:-1], seed=5) - 0.5
        best = selection.match.best.amax(-1)
        assert not torch.equal(best[:, :, 0], best[:, :, 1])
        torch.testing.assert_close(
            PRESENCES["match"](logits, selection, 0.05), torch.sigmoid(logits + best / 0.05)
        )


class TestOffsetPredictors:
    @pytest.mark.parametrize(
        "name, discrete",
        [(name, False) for name in sorted(OFFSET_PREDICTORS)]
        + [(name, True) for name in sorted(OFFSET_PREDICTORS) if name != "match"],
    )
    def test_shapes_and_range(self, name, discrete):
        config = ModelConfig(**CONFIG, transform_encoder=name, no_spatial_transformer=discrete)
        codes, sprites, windows, weights = inputs(config)
        selection = SELECTIONS["learned"](codes, rand(3, 16), sprites, windows, 0.05)
        predictor = OFFSET_PREDICTORS[name](config)
        result = predictor(codes, windows, mix_sprites(weights, sprites), weights, selection)
        assert result.offsets.shape == (*codes.shape[:-1], 2)
        assert result.offsets.abs().max() <= 0.5
        assert (result.weights is not None) == discrete
        if discrete:
            torch.testing.assert_close(result.offsets, discrete_offsets(*result.weights))

    def test_match_with_matched_selection_mixes_each_sprites_own_offset(self):
        config = ModelConfig(**CONFIG, transform_encoder="match", selection="match")
        codes, sprites, windows, weights = inputs(config)
        selection = SELECTIONS["match"](codes, rand(3, 16), sprites, windows, 0.05)
        mixed = mix_sprites(weights, sprites)
        result = OFFSET_PREDICTORS["match"](config)(codes, windows, mixed, weights, selection)
        own = torch.stack(
            [
                match_gains(windows.frames[b], windows.background[b], sprites)
                for b in range(windows.frames.shape[0])
            ]
        )  # B T Lh Lw K Q Q
        own = expected_displacement(own, config.match_temperature)
        for layer in range(2):  # every layer holds the same matching
            torch.testing.assert_close(result.per_sprite[:, :, layer], own)
        b, layer, i, j = 0, 1, 1, 1
        torch.testing.assert_close(
            result.offsets[b, 0, layer, i, j], weights[b, 0, layer, i, j] @ own[b, 0, i, j]
        )

    def test_match_with_learned_selection_aligns_the_slots_soft_sprite(self):
        config = ModelConfig(**CONFIG, transform_encoder="match")
        codes, sprites, windows, weights = inputs(config)
        mixed = mix_sprites(weights, sprites)
        selection = SELECTIONS["learned"](codes, rand(3, 16), sprites, windows, 0.05)
        result = OFFSET_PREDICTORS["match"](config)(codes, windows, mixed, weights, selection)
        for b, layer, i, j in [(0, 0, 0, 0), (1, 1, 1, 2)]:  # slots by hand
            own = match_gains(
                windows.frames[b], windows.background[b], mixed[b, 0, layer, i, j][None]
            )[0, i, j, 0]
            torch.testing.assert_close(
                result.offsets[b, 0, layer, i, j],
                expected_displacement(own, config.match_temperature),
            )


class TestBackgrounds:
    def test_strips_are_their_functions(self):
        frames = rand(2, 3, 16, 24)
        strip = StripBackground(16, 24, 16)
        weights = strip.position(strip.encoder(frames)[:, 0, 0, 0])
        torch.testing.assert_close(strip(frames), scroll_strip(strip.strip(), weights))
        sliding = SlidingStripBackground(16, 24, 16)
        position = sliding.position(sliding.encoder(frames)[:, 0, 0, 0])[:, 0] * 0.75
        torch.testing.assert_close(
            sliding(frames), slide_strip_window(sliding.strip(), position, 24)
        )

    def test_the_vertical_strip_is_the_strip_of_swapped_frames(self):
        frames = rand(2, 3, 16, 24)
        vertical = VerticalStripBackground(16, 24, 16)
        swapped = vertical.swapped  # a horizontal strip of 24 x 16 frames
        weights = swapped.position(swapped.encoder(frames.transpose(2, 3))[:, 0, 0, 0])
        strip = vertical.strip()
        assert strip.shape == (3, 64, 24)  # 4 H tall
        expected = scroll_strip(strip.transpose(1, 2), weights).transpose(2, 3)
        torch.testing.assert_close(vertical(frames), expected)
        # a window lower down the strip is the window's rows further on
        one_hot = torch.zeros(1, weights.shape[1])
        one_hot[0, 5] = 1
        window = scroll_strip(swapped.strip(), one_hot).transpose(2, 3)[0]
        torch.testing.assert_close(window, strip[:, 5 : 5 + 16])

    def test_every_kind_says_what_it_needs(self):
        needs = {  # (own_learning_rate, per_frame)
            "color": (False, False),
            "frame_color": (False, True),
            "image": (True, False),
            "strip": (True, True),
            "strip_st": (True, True),
            "strip_vertical": (True, True),
        }
        assert set(needs) == set(BACKGROUNDS)
        for name, kind in BACKGROUNDS.items():
            background = kind.from_config(ModelConfig(**CONFIG, background=name), None)
            assert (background.own_learning_rate, background.per_frame) == needs[name]
            assert background(rand(2, 3, 16, 24)).shape == (2, 3, 16, 24)

    def test_color(self):
        color = torch.tensor([0.1, 0.6, 0.9])
        out = ColorBackground(4, 6, color)(rand(2, 3, 4, 6))
        torch.testing.assert_close(out, color[None, :, None, None].expand(2, 3, 4, 6))


def test_dictionary_is_its_function():
    dictionary = SpriteDictionary(5, 8, 16)
    sprites, codes = dictionary()
    expected = decode_sprites(dictionary.latents, dictionary.decoder, 4, 8)
    torch.testing.assert_close(sprites, expected[0])
    torch.testing.assert_close(codes, expected[1])


def test_reseeding_copies_used_latents():
    dictionary = SpriteDictionary(4, 8, 16)
    before = dictionary.latents.detach().clone()
    usage = torch.tensor([5, 0, 0, 1])
    assert dictionary.reseed_unused(usage, torch.Generator().manual_seed(0)) == 2
    after = dictionary.latents.detach()
    assert torch.equal(after[[0, 3]], before[[0, 3]])
    for k in (1, 2):
        distances = (after[k] - before[[0, 3]]).norm(dim=-1)
        assert distances.min() < 0.5 * 16**0.5 * 2  # a perturbed copy of a used entry
    assert dictionary.reseed_unused(torch.tensor([1, 1, 1, 1]), torch.Generator()) == 0


def test_the_default_model_is_the_originals():
    model = MarioNette()
    assert model.config == ModelConfig()
    assert (model.grid.rows, model.grid.cols, model.config.num_sprites) == (8, 8, 150)


@pytest.mark.parametrize("batch, frames", [(0, 1), (2, 1)])
def test_degenerate_batches(batch, frames):
    config = ModelConfig(**CONFIG, selection="match", transform_encoder="match")
    model = MarioNette(config)
    out = model(rand(batch, frames, 3, 16, 24))
    assert out.reconstruction.shape == (batch, frames, 3, 16, 24)
    assert model.decompose(rand(batch, frames, 3, 16, 24)).presence.shape == (
        batch,
        frames,
        2,
        2,
        3,
    )


@pytest.mark.parametrize(
    "settings, old, new",
    [
        (dict(transform_encoder="conv"), "transform_encoder.", "offsets.encoder."),
        (dict(transform_encoder="anchor"), "shift_head.", "offsets.head.mlp."),
        (dict(no_spatial_transformer=True), "offset_heads.", "offsets.head.axes."),
    ],
)
def test_models_saved_before_the_registries_load(settings, old, new):
    model = MarioNette(ModelConfig(**CONFIG, **settings))
    state = model.state_dict()
    saved = {k.replace(new, old, 1): v for k, v in state.items()}
    assert any(k.startswith(old) for k in saved)
    fresh = MarioNette(ModelConfig(**CONFIG, **settings))
    fresh.load_state_dict(saved)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
