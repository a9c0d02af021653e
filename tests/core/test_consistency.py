"""The object-consistency loss: equality with a naive loop, gradients, the fork's bugs fixed."""

import dataclasses
import math

import einops
import pytest
import torch
import torch.nn.functional as F

from marionette.core import Grid, consistency_loss, encoding_consistency, global_centers
from marionette.core.model import MarioNette, ModelConfig


def naive_consistency(codes, presence, centers, radius, tau=0.1, threshold=0.5, looks=None):
    """Object by object: the nearest object of the next frame within the radius is the match
    (if it is also the most similar candidate); -log of its softmax share over all objects, or
    with ``looks`` over all slots of the next frame but the match's look-alike objects."""
    total, matched = 0.0, 0
    batch, steps, slots, _ = codes.shape
    for b in range(batch):
        for t in range(steps - 1):
            objects = [j for j in range(slots) if presence[b, t + 1, j] > threshold]
            for i in range(slots):
                if presence[b, t, i] <= threshold:
                    continue
                distance = {
                    j: float(torch.dist(centers[b, t, i], centers[b, t + 1, j])) for j in objects
                }
                candidates = [j for j in objects if distance[j] <= radius]
                if not candidates:
                    continue
                cos = {
                    j: float(F.cosine_similarity(codes[b, t, i], codes[b, t + 1, j], dim=0))
                    for j in objects
                }
                nearest = min(candidates, key=lambda j: distance[j])
                if max(candidates, key=lambda j: cos[j]) != nearest:
                    continue
                if looks is None:
                    counted = objects
                else:
                    look = looks[b, t + 1, nearest]
                    alike = {j for j in objects if looks[b, t + 1, j] == look and j != nearest}
                    counted = [j for j in range(slots) if j not in alike]
                sims = {
                    j: float(F.cosine_similarity(codes[b, t, i], codes[b, t + 1, j], dim=0))
                    for j in counted
                }
                share = math.exp(cos[nearest] / tau) / sum(math.exp(c / tau) for c in sims.values())
                total -= math.log(share)
                matched += 1
    return total / (batch * (steps - 1) * slots), matched


def random_case(seed, batch=2, steps=3, slots=12, dim=5):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randn(batch, steps, slots, dim, generator=generator)
    presence = torch.rand(batch, steps, slots, generator=generator)
    centers = torch.rand(batch, steps, slots, 2, generator=generator) * 20
    return codes, presence, centers


@pytest.mark.parametrize("seed", range(5))
def test_equals_the_naive_loop(seed):
    codes, presence, centers = random_case(seed)
    loss, matched = consistency_loss(codes, presence, centers, radius=8.0)
    expected, count = naive_consistency(codes, presence, centers, radius=8.0)
    assert int(matched) == count > 0
    torch.testing.assert_close(loss, torch.as_tensor(expected, dtype=loss.dtype))


@pytest.mark.parametrize("seed", range(5))
def test_looks_contrast_equals_the_naive_loop(seed):
    codes, presence, centers = random_case(seed)
    looks = torch.randint(0, 3, presence.shape, generator=torch.Generator().manual_seed(seed))
    loss, matched = consistency_loss(codes, presence, centers, radius=8.0, looks=looks)
    expected, count = naive_consistency(codes, presence, centers, radius=8.0, looks=looks)
    assert int(matched) == count > 0
    torch.testing.assert_close(loss, torch.as_tensor(expected, dtype=loss.dtype))
    assert not torch.allclose(loss, consistency_loss(codes, presence, centers, 8.0).loss)


def test_looks_contrast_lets_look_alikes_share_a_code():
    """Two identical objects that keep one code: against every object the term pushes them apart
    (only their position could tell them apart); against other looks it is satisfied."""
    codes = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).expand(1, 2, 3, 2)
    centers = torch.tensor([[0.0, 0.0], [20.0, 0.0], [40.0, 0.0]]).expand(1, 2, 3, 2)
    presence = torch.tensor([1.0, 1.0, 0.0]).expand(1, 2, 3)  # slot 2 is empty
    same_look = torch.zeros(1, 2, 3, dtype=torch.int64)
    alike = consistency_loss(codes, presence, centers, 4.0, agreement=False, looks=same_look)
    apart = consistency_loss(codes, presence, centers, 4.0, agreement=False)
    assert int(alike.matched) == int(apart.matched) == 2
    # each object against itself and the empty slot (cosine 0): -log(e^10 / (e^10 + 1))
    expected = 2 * math.log1p(math.exp(-10.0)) / 3
    assert float(alike.loss) == pytest.approx(expected, abs=1e-6)  # float32 logsumexp
    assert float(apart.loss) == pytest.approx(2 * math.log(2.0) / 3, rel=1e-4)


def test_gradient_pulls_the_match_and_pushes_the_other_object():
    # One object at t; at t + 1 its match (same place, similar code) and a neighbour 4 px away.
    codes = torch.tensor([[[[1.0, 0.2, 0.0], [0.0, 0.0, 0.0]], [[1.0, 0.0, 0.3], [0.5, 1.0, 0.0]]]])
    codes.requires_grad_(True)
    presence = torch.tensor([[[0.9, 0.1], [0.9, 0.9]]])
    centers = torch.tensor([[[[10.0, 10.0], [0.0, 0.0]], [[10.0, 11.0], [14.0, 10.0]]]])
    loss, matched = consistency_loss(codes, presence, centers, radius=6.0)
    assert matched == 1
    loss.backward()
    with torch.no_grad():
        moved = codes - 0.1 * codes.grad

    def cos(x, j):
        return float(F.cosine_similarity(x[0, 0, 0], x[0, 1, j], dim=0))

    assert cos(moved, 0) > cos(codes.detach(), 0)  # closer to its match
    assert cos(moved, 1) < cos(codes.detach(), 1)  # further from the neighbour
    assert codes.grad[0, 0, 1].abs().sum() == 0  # absent slots get no gradient


def test_global_positions_and_other_layers():
    """An object that moves into the next cell and into another layer is still matched; the
    fork compared local offsets (which jump by a cell) within one layer and missed it."""
    grid = Grid(32, 32, 8)
    model = MarioNette(ModelConfig(height=32, width=32, layer_size=4, num_layers=2, dim_z=8))
    frames = torch.rand(1, 2, 3, 32, 32)
    encoding = model.encode(frames)
    presence = torch.zeros_like(encoding.presence)
    offsets = torch.zeros_like(encoding.offsets)
    codes = torch.randn_like(encoding.codes)
    # t = 0: layer 0, cell (1, 1), offset +0.4 x -> x = 1.5 * 8 + 3.2 = 15.2.
    presence[0, 0, 0, 1, 1] = 1
    offsets[0, 0, 0, 1, 1] = torch.tensor([0.4, 0.0])
    # t = 1: layer 1, cell (1, 2), offset -0.45 x -> x = 2.5 * 8 - 3.6 = 16.4; and another object
    # far away (layer 0, cell (3, 3)) with the same code: a negative, however far.
    presence[0, 1, 1, 1, 2] = 1
    offsets[0, 1, 1, 1, 2] = torch.tensor([-0.45, 0.0])
    codes[0, 1, 1, 1, 2] = codes[0, 0, 0, 1, 1]
    presence[0, 1, 0, 3, 3] = 1
    codes[0, 1, 0, 3, 3] = codes[0, 0, 0, 1, 1]
    moved = dataclasses.replace(encoding, presence=presence, offsets=offsets, codes=codes)
    loss, matched = encoding_consistency(moved, grid, radius=2.0)
    assert matched == 1
    expected = math.log(2) / 32  # its match and the far object look the same; 32 slots
    assert math.isclose(float(loss), expected, rel_tol=1e-4)


def test_an_objects_weight_does_not_depend_on_the_others():
    """A mean over slots: adding frames without objects scales the loss by the slot count only,
    so the first objects to appear are not pulled harder than later ones (the old normalisation
    by matched objects put the whole weight on them)."""
    codes, presence, centers = random_case(3)
    single = consistency_loss(codes, presence, centers, radius=8.0)
    padded = consistency_loss(
        torch.cat([codes, codes]),
        torch.cat([presence, torch.zeros_like(presence)]),
        torch.cat([centers, centers]),
        radius=8.0,
    )
    torch.testing.assert_close(padded.loss, single.loss / 2)
    assert int(padded.matched) == int(single.matched) > 0


def test_equal_codes_are_no_minimum():
    """MOC's linear loss was lowest when every code is the same; the contrastive one is not."""
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]]).expand(1, 2, 3, 2)
    presence = torch.ones(1, 2, 3)
    same = consistency_loss(torch.ones(1, 2, 3, 4), presence, centers, 4.0)
    distinct = consistency_loss(torch.eye(3, 4).expand(1, 2, 3, 4), presence, centers, 4.0)
    assert float(same.loss) > 10 * float(distinct.loss)
    assert math.isclose(float(same.loss), math.log(3), rel_tol=1e-5)


def test_agreement_check():
    # The most similar candidate is the far one: with the check the object is not matched.
    codes = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]]).repeat(1, 1, 2, 1)
    codes[0, 1, 1] = torch.tensor([1.0, 0.0])
    presence = torch.tensor([[[0.9, 0.0], [0.9, 0.9]]])
    centers = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [5.0, 0.0]]]])
    assert consistency_loss(codes, presence, centers, 8.0).matched == 0
    assert consistency_loss(codes, presence, centers, 8.0, agreement=False).matched == 1


def test_nothing_present_or_single_frame():
    codes, presence, centers = random_case(0)
    codes.requires_grad_(True)
    loss, matched = consistency_loss(codes, presence * 0, centers, 8.0)
    loss.backward()
    assert float(loss) == 0 and int(matched) == 0 and torch.isfinite(codes.grad).all()
    loss, matched = consistency_loss(codes[:, :1], presence[:, :1], centers[:, :1], 8.0)
    assert float(loss) == 0 and int(matched) == 0


def test_swapped_time_and_batch_is_refused():
    codes, presence, centers = random_case(0, batch=2, steps=3)
    with pytest.raises(Exception, match="presence"):
        consistency_loss(codes, presence.transpose(0, 1), centers, 8.0)


def test_temperature_must_be_positive():
    codes, presence, centers = random_case(0)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        consistency_loss(codes, presence, centers, 8.0, temperature=0.0)


def test_unknown_code_kind():
    model = MarioNette(ModelConfig(height=32, width=32, layer_size=4, num_layers=1, dim_z=8))
    encoding = model.encode(torch.rand(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="code must be one of"):
        encoding_consistency(encoding, model.grid, code="z_what")
    with pytest.raises(ValueError, match="contrast must be one of"):
        encoding_consistency(encoding, model.grid, contrast="classes")


def test_encoding_looks_are_the_drawn_sprites():
    model = MarioNette(ModelConfig(height=32, width=32, layer_size=4, num_layers=2, dim_z=8))
    encoding = model.encode(torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    grid = model.grid
    slots = "B T NL Lh Lw ... -> B T (NL Lh Lw) ..."
    args = (
        einops.rearrange(encoding.codes, slots),
        einops.rearrange(encoding.presence, slots),
        einops.rearrange(global_centers(encoding.offsets, grid), slots),
    )
    looks = einops.rearrange(encoding.weights.argmax(-1), slots)
    expected = consistency_loss(*args, radius=float(grid.cell), looks=looks)
    result = encoding_consistency(encoding, grid, contrast="looks")
    torch.testing.assert_close(result.loss, expected.loss)
