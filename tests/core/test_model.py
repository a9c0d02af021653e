import pytest
import torch

from marionette.core import (
    SELECTIONS,
    MarioNette,
    ModelConfig,
    ObjectiveWeights,
    beta_prior_loss,
    presence_loss,
    psnr,
    reconstruction_loss,
    render,
    training_objective,
)
from tests._checks import rand

TINY = dict(num_sprites=5, dim_z=16)


def tiny(**overrides) -> ModelConfig:
    return ModelConfig(**{"height": 32, "width": 32, "layer_size": 4, **TINY, **overrides})


CONFIGS = [
    pytest.param(tiny(), 1, id="square-NL2-T1"),
    pytest.param(tiny(height=32, width=48, num_layers=1), 4, id="rect-NL1-T4"),
    pytest.param(tiny(height=30, width=40, layer_size=3, num_layers=3), 2, id="P10-NL3"),
    pytest.param(tiny(no_spatial_transformer=True), 2, id="discrete"),
    pytest.param(tiny(background="strip", transform_encoder="anchor"), 1, id="strip-anchor"),
    pytest.param(tiny(height=32, width=48, background="strip_vertical"), 2, id="vstrip-rect"),
    pytest.param(tiny(background="frame_color", num_layers=1), 2, id="frame-color"),
    pytest.param(
        tiny(background="strip_st", gating="original", shuffle_all=True), 2, id="strip-st-original"
    ),
    pytest.param(
        tiny(xform_dim=8, learn_background=True, straight_through_probs=True), 1, id="light-xform"
    ),
    pytest.param(tiny(selection="match", transform_encoder="match"), 2, id="match-match"),
    pytest.param(tiny(selection="match", transform_encoder="anchor"), 1, id="match-anchor"),
    pytest.param(tiny(transform_encoder="match", num_layers=1), 2, id="learned-match"),
]


class TestModel:
    @pytest.mark.parametrize("config, frames_per_item", CONFIGS)
    def test_forward_shapes(self, config, frames_per_item):
        model = MarioNette(config)
        grid = config.grid
        b, t, nl, k, d = 2, frames_per_item, config.num_layers, config.num_sprites, config.dim_z
        out = model(rand(b, t, 3, config.height, config.width))
        lh, lw, s = grid.rows, grid.cols, grid.sprite
        assert out.reconstruction.shape == (b, t, 3, config.height, config.width)
        assert out.planes.shape == (b, t, nl, 4, 4, config.height, config.width)
        assert out.weights.shape == (b, t, nl, lh, lw, k)
        assert out.presence.shape == out.sprite_ids.shape == (b, t, nl, lh, lw)
        assert out.offsets.shape == out.centers.shape == (b, t, nl, lh, lw, 2)
        assert out.alpha.shape == (b, t, nl, lh, lw, s, s)
        assert out.codes.shape == (b, t, nl, lh, lw, d)
        assert out.sprites.shape == (k, 4, s, s)
        assert out.layers().shape == (b, t, nl, 4, config.height, config.width)
        assert out.boxes()[0].shape == (b, t, nl, lh, lw, 4)
        assert out.reconstruction.min() >= 0 and out.reconstruction.max() <= 1
        assert out.offsets.abs().max() < 0.5 + 1e-6

    @pytest.mark.parametrize("config, frames_per_item", CONFIGS)
    def test_gradients_are_finite(self, config, frames_per_item):
        model = MarioNette(config)
        frames = rand(2, frames_per_item, 3, config.height, config.width)
        out = model(frames)
        loss = (
            reconstruction_loss(out.reconstruction, frames)
            + beta_prior_loss(out.weights, out.presence)
            + presence_loss(out.presence, [0.005])
        )
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert model.dictionary.latents.grad.abs().sum() > 0

    @pytest.mark.parametrize("config, frames_per_item", CONFIGS)
    def test_hard_rendering_and_round_trip(self, config, frames_per_item):
        model = MarioNette(config).eval()
        frames = rand(2, frames_per_item, 3, config.height, config.width)
        hard = model(frames, "hard")
        assert set(hard.weights.unique().tolist()) <= {0.0, 1.0}
        assert (hard.weights.sum(-1) == 1).all()
        assert set(hard.presence.unique().tolist()) <= {0.0, 1.0}
        decomposition = model.decompose(frames)
        torch.testing.assert_close(render(decomposition), hard.reconstruction)
        boxes, visible = decomposition.boxes()
        torch.testing.assert_close(boxes, hard.boxes()[0])

    def test_hard_pass_reuses_the_encoding(self):
        model = MarioNette(tiny()).eval()
        frames = rand(2, 1, 3, 32, 32)
        encoding = model.encode(frames)
        soft = model.render(encoding)
        hard = model.render(encoding, "hard")
        torch.testing.assert_close(soft.reconstruction, model(frames).reconstruction)
        torch.testing.assert_close(hard.reconstruction, model(frames, "hard").reconstruction)
        # the hard weights are the arg-max of the soft ones
        assert torch.equal(hard.sprite_ids, soft.sprite_ids)

    def test_decompose_needs_no_gradients(self):
        model = MarioNette(tiny())
        decomposition = model.decompose(rand(1, 1, 3, 32, 32))
        assert not decomposition.background.requires_grad
        assert model.training  # decompose does not change the mode

    def test_centers_follow_offsets(self):
        model = MarioNette(tiny()).eval()
        out = model(rand(1, 1, 3, 32, 32))
        i, j = 2, 3
        expected = (torch.tensor([j, i]) + 0.5 + out.offsets[0, 0, 0, i, j]) * 8
        torch.testing.assert_close(out.centers[0, 0, 0, i, j], expected)

    def test_edit_and_render(self):
        model = MarioNette(tiny(num_layers=1)).eval()
        frames = rand(1, 1, 3, 32, 32)
        decomposition = model.decompose(frames)
        hidden = decomposition.replace(presence=torch.zeros_like(decomposition.presence))
        torch.testing.assert_close(render(hidden), decomposition.background)
        swapped = decomposition.sprites.flip(0)
        ids = decomposition.sprite_ids
        relabelled = decomposition.replace(sprites=swapped, sprite_ids=4 - ids)
        torch.testing.assert_close(render(relabelled), render(decomposition))

    def test_eval_order_is_fixed_and_training_order_random(self):
        model = MarioNette(tiny())
        frames = rand(1, 1, 3, 32, 32)
        orders = {tuple(model(frames).plane_order.tolist()) for _ in range(8)}
        assert len(orders) > 1
        model.eval()
        assert model(frames).plane_order.tolist() == list(range(8))

    def test_straight_through_presence_is_binary_in_soft_pass(self):
        model = MarioNette(tiny(straight_through_probs=True))
        out = model(rand(1, 1, 3, 32, 32))
        assert set(out.presence.unique().tolist()) <= {0.0, 1.0}

    def test_background_starts_from_the_sample(self):
        sample = torch.tensor([26, 51, 77], dtype=torch.uint8)[None, :, None, None]
        model = MarioNette(tiny(), background_sample=sample.expand(2, 3, 32, 32))
        out = model(rand(1, 1, 3, 32, 32))
        torch.testing.assert_close(out.background[0, 0, :, 5, 5], sample[0, :, 0, 0] / 255)

    def test_presence_bias(self):
        model = MarioNette(tiny(presence_bias=3.0))
        assert model(rand(1, 1, 3, 32, 32)).presence.mean() > 0.8


class TestModelInputs:
    def test_wrong_canvas(self):
        with pytest.raises(
            ValueError, match="frames must be 32 x 32 \\(H x W\\) for this model, got 32 x 48"
        ):
            MarioNette(tiny())(rand(1, 1, 3, 32, 48))

    def test_nan(self):
        frames = rand(1, 1, 3, 32, 32)
        frames[0, 0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="frames must be finite, got 1 NaN"):
            MarioNette(tiny())(frames)

    def test_out_of_range(self):
        with pytest.raises(ValueError, match="frames must lie in \\[0.0, 1.0\\]"):
            MarioNette(tiny())(rand(1, 1, 3, 32, 32) * 255)

    def test_wrong_rank(self):
        with pytest.raises(TypeError, match="frames"):
            MarioNette(tiny())(rand(1, 3, 32, 32))

    def test_wrong_dtype(self):
        with pytest.raises(TypeError, match="frames"):
            MarioNette(tiny())(torch.zeros(1, 1, 3, 32, 32, dtype=torch.uint8))

    def test_channels_and_time_swapped(self):
        with pytest.raises(TypeError, match="frames"):
            MarioNette(tiny())(rand(1, 4, 3, 32, 32).transpose(1, 2))

    @pytest.mark.parametrize(
        "overrides, error, match",
        [
            (dict(height=30), ValueError, "canvas height must be divisible by layer_size"),
            (dict(width=36), ValueError, "width must be divisible by the cell size 8, got 36"),
            (dict(dim_z=12), ValueError, "dim_z must be a positive multiple of 8, got 12"),
            (dict(num_layers=0), ValueError, "num_layers must be >= 1, got 0"),
            (dict(background="sky"), ValueError, "background must be one of"),
            (dict(gating="both"), ValueError, "gating must be one of"),
            (dict(layer_size=2.0), TypeError, "layer_size must be int, got 2.0"),
            (dict(layer_size=32), ValueError, "32 / 32 = 1 must be even"),
        ],
    )
    def test_config_exceptions(self, overrides, error, match):
        with pytest.raises(error, match=match):
            tiny(**overrides)


def squares_world(n: int = 6, seed: int = 0) -> torch.Tensor:
    """A handful of 32 x 32 frames with three colored 6 px squares on a dark background."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.full((n, 1, 3, 32, 32), 0.1)
    colors = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.9, 0.3], [0.3, 0.4, 0.95]])
    for i in range(n):
        for color in colors:
            x, y = torch.randint(0, 26, (2,), generator=g).tolist()
            frames[i, 0, :, y : y + 6, x : x + 6] = color[:, None, None]
    return frames


@pytest.mark.slow
def test_overfits_a_handful_of_frames():
    torch.manual_seed(0)
    frames = squares_world()
    config = ModelConfig(
        height=32,
        width=32,
        layer_size=4,
        num_layers=1,
        num_sprites=4,
        dim_z=32,
        transform_encoder="anchor",
    )
    model = MarioNette(config, frames[:, 0])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(250):
        out = model(frames)
        loss = (
            reconstruction_loss(out.reconstruction, frames)
            + 0.002 * beta_prior_loss(out.weights, out.presence)
            + presence_loss(out.presence, [0.005])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(psnr(out.reconstruction.detach(), frames)))
    assert history[-1] > history[0] + 6.0, history[::25]


def test_selection_prediction_trains_the_codes_not_the_dictionary():
    """The term's gradient reaches the image encoder and the projection (the code's own logits),
    never the dictionary, whose codes are held fixed."""
    model = MarioNette(tiny(selection="match", transform_encoder="match"))
    weights = ObjectiveWeights(w_select=1.0)
    objective = training_objective(model, rand(2, 1, 3, 32, 32), weights, step=0)
    select = objective.terms["select_loss"]
    assert select.detach() > 0
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(select, list(params.values()), allow_unused=True)
    moved = {name for name, g in zip(params, grads, strict=True) if g is not None and g.any()}
    assert any(name.startswith("image_encoder.") for name in moved)
    assert any(name.startswith("project.") for name in moved)
    assert not any(name.startswith("dictionary.") for name in moved)
    without = training_objective(model, rand(2, 1, 3, 32, 32), ObjectiveWeights(), step=0)
    assert "select_loss" not in without.terms


def test_vacated_slots_are_left_empty(monkeypatch):
    """A slot its selection vacates (a neighbour of its layer draws the same object) has
    presence 0, in the soft and the hard rendering; the other slots keep theirs."""
    model = MarioNette(tiny(selection="pursuit", presence="match", transform_encoder="match"))
    frames = rand(2, 1, 3, 32, 32)
    pursuit = SELECTIONS["pursuit"]
    vacated = rand(2, 1, 2, 4, 4, seed=3) > 0.5

    def vacating(*args):
        return pursuit(*args)._replace(vacated=vacated)

    with torch.no_grad():
        free = model.encode(frames).presence
        monkeypatch.setitem(SELECTIONS, "pursuit", vacating)
        encoding = model.encode(frames)
    assert (free[vacated] > 0).all() and (encoding.presence[vacated] == 0).all()
    torch.testing.assert_close(encoding.presence[~vacated], free[~vacated])
    hard = model.render(encoding, "hard").decomposition.presence
    assert (hard[vacated] == 0).all()
