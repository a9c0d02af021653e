import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from marionette.core import (
    composite_layers,
    composite_over,
    flatten_layers,
    gate_presence,
    plane_order,
)
from marionette.core._reference import composite_reference
from tests._checks import check_op, generator, rand


def planes_and_background(b, t, n, h, w, seed):
    return rand(b, t, n, 4, h, w, seed=seed), rand(b, t, 3, h, w, seed=seed + 1)


class TestCompositeOver:
    def test_smoke(self):
        planes, bg = planes_and_background(2, 3, 5, 4, 6, 0)
        assert composite_over(planes, bg).shape == (2, 3, 3, 4, 6)

    @given(b=st.integers(1, 2), t=st.integers(1, 3), n=st.integers(1, 5), seed=st.integers(0, 999))
    def test_zero_alpha_returns_background(self, b, t, n, seed):
        planes, bg = planes_and_background(b, t, n, 3, 5, seed)
        planes[:, :, :, 3] = 0
        torch.testing.assert_close(composite_over(planes, bg), bg)

    @given(n=st.integers(1, 5), seed=st.integers(0, 999))
    def test_opaque_top_plane_wins(self, n, seed):
        planes, bg = planes_and_background(2, 2, n, 3, 5, seed)
        planes[:, :, -1, 3] = 1
        torch.testing.assert_close(composite_over(planes, bg), planes[:, :, -1, :3])

    @given(n=st.integers(1, 5), seed=st.integers(0, 999))
    def test_reference_and_range(self, n, seed):
        planes, bg = planes_and_background(2, 2, n, 3, 4, seed)
        out = composite_over(planes, bg)
        torch.testing.assert_close(out, composite_reference(planes, bg))
        assert out.min() >= 0 and out.max() <= 1

    def test_disjoint_planes_commute(self):
        planes, bg = planes_and_background(1, 1, 2, 4, 4, 3)
        planes[:, :, 0, 3, :, :2] = 0
        planes[:, :, 1, 3, :, 2:] = 0
        torch.testing.assert_close(composite_over(planes, bg), composite_over(planes.flip(2), bg))

    def test_invariants(self):
        planes, bg = planes_and_background(3, 2, 4, 4, 4, 0)
        check_op(composite_over, planes, bg)

    def test_swapped_dimensions_fail(self):
        planes, bg = planes_and_background(2, 3, 5, 4, 6, 0)
        with pytest.raises(TypeError, match="planes"):
            composite_over(planes.transpose(1, 2).contiguous()[:, :, :, :4], bg)

    @pytest.mark.gradcheck
    def test_gradcheck(self):
        planes = rand(1, 1, 3, 4, 2, 2, dtype=torch.float64).requires_grad_()
        bg = rand(1, 1, 3, 2, 2, dtype=torch.float64, seed=1).requires_grad_()
        assert torch.autograd.gradcheck(composite_over, (planes, bg), fast_mode=True)

    def test_compile(self):
        planes, bg = planes_and_background(1, 2, 3, 4, 4, 0)
        compiled = torch.compile(composite_over, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(planes, bg), composite_over(planes, bg))


class TestPlaneOrder:
    def test_fixed(self):
        assert plane_order(3, shuffle_groups=False).tolist() == list(range(12))

    def test_shuffled_groups_keep_layer_depth(self):
        for seed in range(10):
            order = plane_order(3, shuffle_groups=True, generator=generator(seed))
            assert (order // 4).tolist() == [0] * 4 + [1] * 4 + [2] * 4
            groups = (order % 4).reshape(3, 4)
            assert (groups == groups[0]).all()  # one permutation shared by every layer
            assert sorted(groups[0].tolist()) == [0, 1, 2, 3]

    def test_shuffle_all_is_permutation(self):
        orders = {
            tuple(
                plane_order(
                    2, shuffle_groups=True, shuffle_all=True, generator=generator(s)
                ).tolist()
            )
            for s in range(20)
        }
        assert all(sorted(o) == list(range(8)) for o in orders)
        assert any([p // 4 for p in o] != sorted(p // 4 for p in o) for o in orders)


class TestCompositeLayers:
    def test_matches_flat_composite(self):
        planes = rand(2, 1, 2, 4, 4, 5, 5)
        bg = rand(2, 1, 3, 5, 5, seed=1)
        order = torch.tensor([4, 6, 5, 7, 0, 2, 1, 3])
        flat = planes.reshape(2, 1, 8, 4, 5, 5)[:, :, order]
        torch.testing.assert_close(composite_layers(planes, bg, order), composite_over(flat, bg))

    @pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
    def test_gradients_match_reference(self, needs):
        # the hand-written backward against autograd of composite_over on the gathered planes
        planes = rand(2, 3, 2, 4, 4, 5, 6).requires_grad_(needs[0])
        bg = rand(2, 3, 3, 5, 6, seed=1).requires_grad_(needs[1])
        order = torch.tensor([5, 1, 7, 0, 2, 4, 6, 3])
        weights = rand(2, 3, 3, 5, 6, seed=2)
        inputs = [x for x in (planes, bg) if x.requires_grad]
        fast = torch.autograd.grad((composite_layers(planes, bg, order) * weights).sum(), inputs)
        flat = planes.reshape(2, 3, 8, 4, 5, 6)[:, :, order]
        slow = torch.autograd.grad((composite_over(flat, bg) * weights).sum(), inputs)
        for a, b in zip(fast, slow, strict=True):
            torch.testing.assert_close(a, b)

    def test_gradcheck(self):
        planes = rand(1, 2, 2, 4, 4, 3, 3, dtype=torch.float64).requires_grad_()
        bg = rand(1, 2, 3, 3, 3, seed=1, dtype=torch.float64).requires_grad_()
        order = plane_order(2, shuffle_groups=True, generator=generator(3))
        assert torch.autograd.gradcheck(composite_layers, (planes, bg, order), fast_mode=True)

    def test_bad_order(self):
        planes = rand(1, 1, 2, 4, 4, 3, 3)
        with pytest.raises(ValueError, match="order must be a permutation of the 8 planes"):
            composite_layers(planes, rand(1, 1, 3, 3, 3), torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))

    def test_flattened_layers_composite_to_same_image(self):
        planes = rand(2, 2, 3, 4, 4, 6, 6)
        bg = rand(2, 2, 3, 6, 6, seed=1)
        order = plane_order(3, shuffle_groups=True, generator=generator(4))
        layers = flatten_layers(planes, order)
        assert layers.shape == (2, 2, 3, 4, 6, 6)
        torch.testing.assert_close(composite_over(layers, bg), composite_layers(planes, bg, order))


class TestGatePresence:
    def test_modes(self):
        windows = rand(5, 4, 6, 6)
        presence = rand(5, seed=1)
        premultiplied = gate_presence(windows, presence, "premultiplied")
        original = gate_presence(windows, presence, "original")
        p = presence[:, None, None]
        torch.testing.assert_close(premultiplied[:, :3], windows[:, :3])
        torch.testing.assert_close(premultiplied[:, 3], windows[:, 3] * p)
        torch.testing.assert_close(original, windows * p[:, None])

    @pytest.mark.parametrize("mode", ["premultiplied", "original"])
    def test_binary_presence_agrees(self, mode):
        windows = rand(4, 4, 6, 6)
        bg = rand(1, 1, 3, 6, 6, seed=2)
        presence = torch.tensor([1.0, 0.0, 1.0, 0.0])
        gated = gate_presence(windows, presence, mode)
        out = composite_over(gated[None, None], bg)
        expected = composite_over(windows[None, None, [0, 2]], bg)
        torch.testing.assert_close(out, expected)

    def test_half_presence_is_a_true_blend(self):
        windows = torch.ones(1, 4, 2, 2)  # opaque white
        bg = torch.zeros(1, 1, 3, 2, 2)
        blend = composite_over(gate_presence(windows, torch.tensor([0.5]))[None, None], bg)
        dark = composite_over(
            gate_presence(windows, torch.tensor([0.5]), "original")[None, None], bg
        )
        assert torch.allclose(blend, torch.full_like(blend, 0.5))
        assert torch.allclose(dark, torch.full_like(dark, 0.25))  # p^2 of the original

    def test_exception(self):
        with pytest.raises(ValueError, match="gating must be one of"):
            gate_presence(rand(2, 4, 2, 2), rand(2), "both")
