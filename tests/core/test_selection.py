import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from marionette.core import (
    gather_sprites,
    hard_presence,
    hard_weights,
    mix_sprites,
    selection_logits,
    straight_through,
)
from marionette.core._reference import mix_sprites_reference
from tests._checks import check_op, rand


class TestSelection:
    def test_logits_are_scaled_dot_products(self):
        q, z = rand(2, 3, 16), rand(7, 16, seed=1)
        expected = torch.stack(
            [torch.stack([q[b, s] @ z[k] for k in range(7)]) for b in range(2) for s in range(3)]
        ).reshape(2, 3, 7)
        torch.testing.assert_close(selection_logits(q, z), expected / math.sqrt(16))

    @given(k=st.integers(1, 6), seed=st.integers(0, 999))
    def test_mix_reference(self, k, seed):
        weights = torch.softmax(rand(2, 3, k, seed=seed), -1)
        sprites = rand(k, 4, 5, 5, seed=seed + 1)
        torch.testing.assert_close(
            mix_sprites(weights, sprites), mix_sprites_reference(weights, sprites)
        )

    def test_mix_invariants(self):
        check_op(mix_sprites, torch.softmax(rand(3, 4, 5), -1), rand(5, 4, 6, 6))

    @given(seed=st.integers(0, 999), k=st.integers(2, 9))
    def test_hard_weights_are_one_hot(self, seed, k):
        weights = torch.softmax(rand(4, 3, k, seed=seed) * 5, -1)
        hard = hard_weights(weights)
        assert set(hard.unique().tolist()) <= {0.0, 1.0}
        assert (hard.sum(-1) == 1).all()
        assert (hard.argmax(-1) == weights.argmax(-1)).all()

    def test_gather_equals_one_hot_mix(self):
        weights = torch.softmax(rand(2, 5, 6), -1)
        sprites = rand(6, 4, 4, 4)
        torch.testing.assert_close(
            gather_sprites(weights.argmax(-1), sprites), mix_sprites(hard_weights(weights), sprites)
        )

    def test_gather_exception(self):
        with pytest.raises(ValueError, match="sprite ids must lie in \\[0, 5\\], got min=0, max=6"):
            gather_sprites(torch.tensor([0, 6]), rand(6, 4, 2, 2))

    def test_hard_presence(self):
        assert hard_presence(torch.tensor([0.2, 0.51, 0.9])).tolist() == [0.0, 1.0, 1.0]

    def test_straight_through(self):
        soft = torch.tensor([0.3, 0.7], requires_grad=True)
        out = straight_through(hard_presence(soft), soft)
        assert out.tolist() == [0.0, 1.0]
        (out * torch.tensor([2.0, 3.0])).sum().backward()
        assert soft.grad.tolist() == [2.0, 3.0]

    @pytest.mark.gradcheck
    def test_gradcheck(self):
        weights = torch.softmax(rand(2, 3, dtype=torch.float64), -1).requires_grad_()
        sprites = rand(3, 4, 2, 2, dtype=torch.float64, seed=1).requires_grad_()
        assert torch.autograd.gradcheck(mix_sprites, (weights, sprites), fast_mode=True)
