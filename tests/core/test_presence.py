"""Matched presence: the evidence it starts from, and where its gradient goes."""

import pytest
import torch

from marionette.core import (
    MarioNette,
    ModelConfig,
    Selection,
    SoftMatch,
    match_gain_map,
    match_gains,
    matched_presence,
    soft_match,
)


def scene():
    """A 16 x 16 frame of one color with one 4 x 4 square of another at rows 9-12, columns
    2-5 (anchor row 1, column 0 of a 2 x 2 grid of 8 px cells), and a dictionary holding that
    square (sprite 0) and a square of a third color (sprite 1)."""
    color, square, other = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.9, 0.8, 0.1]), 0.5
    frame = color[:, None, None].expand(3, 16, 16).clone()
    frame[:, 9:13, 2:6] = square[:, None, None]
    sprites = torch.zeros(2, 4, 16, 16)
    sprites[0, :3, 6:10, 6:10] = square[:, None, None]
    sprites[1, :3, 6:10, 6:10] = other
    sprites[:, 3, 6:10, 6:10] = 1.0
    background = color[:, None, None].expand(3, 16, 16)
    return frame[None], background[None], sprites


def selection_of(gain_map):
    """The matched selection of one frame of the scene (T = 1, zero learned logits)."""
    match = soft_match(gain_map, 8, 0.05)
    layers = (x[:, None, None].expand(1, 1, 2, *x.shape[1:]) for x in match)
    return Selection(torch.zeros(1, 1, 2, 2, 2, 2), SoftMatch(*layers))


def test_the_evidence_is_positive_on_the_object_and_not_over_background():
    frame, background, sprites = scene()
    gains = match_gains(frame, background, sprites)  # 1 Lh Lw K Q Q
    best = gains.flatten(-3).amax(-1)[0]
    assert best[1, 0] > 0.5  # the square explains its anchor: most of its pixels' error
    assert best[0, 1] <= 0 and best[1, 1] <= 0  # background alone: a sprite only adds error
    logits = torch.zeros(1, 1, 2, 2, 2)
    selection = selection_of(match_gain_map(frame, background, sprites))
    presence = matched_presence(logits, selection, 0.05)[0, 0]
    assert presence[0, 1, 0] > 0.99 and presence[0, 0, 1] < 0.5 and presence[0, 1, 1] < 0.5
    assert (presence[1] == 0.5).all()  # the front layer: its own logit only


def test_gradient_reaches_every_logit_and_the_back_layers_best_gains():
    frame, background, sprites = scene()
    gain_map = match_gain_map(frame, background, sprites).requires_grad_()
    logits = torch.zeros(1, 1, 2, 2, 2, requires_grad=True)
    matched_presence(logits, selection_of(gain_map), 1.0).sum().backward()  # nothing saturates
    assert (logits.grad != 0).all()
    # only each anchor's best sprites (tied sprites share, as amax's), each at its best
    # displacement: over background every displacement of a sprite gains the same, and of tied
    # displacements the one nearest the centre is the best: map pixel (k, iP + a, jP + b)
    gains = match_gains(frame, background, sprites)[0]
    expected = torch.zeros_like(gain_map, dtype=torch.bool)
    for i, j in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        top = gains[i, j].max()
        for k in range(gains.shape[2]):
            ties = (gains[i, j, k] == top).nonzero().tolist()
            if ties:
                a, b = min(ties, key=lambda ab: (ab[0] - 4) ** 2 + (ab[1] - 4) ** 2)
                expected[0, k, 8 * i + a, 8 * j + b] = True
    assert expected.sum() < expected.numel() / 4
    assert torch.equal(gain_map.grad != 0, expected)


def test_a_model_with_matched_presence_needs_matched_selection():
    config = dict(height=16, width=16, layer_size=2, num_sprites=2, dim_z=16, presence="match")
    with pytest.raises(ValueError, match="presence 'match' needs the matching"):
        MarioNette(ModelConfig(**config))(torch.rand(1, 1, 3, 16, 16))
    model = MarioNette(ModelConfig(**config, selection="match", transform_encoder="match"))
    out = model(torch.rand(2, 1, 3, 16, 16))
    assert out.presence.shape == (2, 1, 2, 2, 2) and ((out.presence > 0) & (out.presence < 1)).all()
