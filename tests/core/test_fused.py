"""The fused Triton renderer against the PyTorch reference (on the CPU through Triton's
interpreter, see conftest.py), its compilation for the H100, and the renderer choice."""

import os
import subprocess
import sys

import pytest
import torch

from marionette.core import (
    Decomposition,
    Grid,
    MarioNette,
    ModelConfig,
    plane_order,
    render_fused,
    render_windows,
    resolve_renderer,
)
from marionette.core import fused as fused_module
from marionette.core import renderers as render_module
from marionette.core.renderers import self_check

triton = pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _slots(grid: Grid, batch: int, frames: int, layers: int, k: int, seed: int):
    """Random sprites, ids, presence, offsets (some past the window edge) and a background."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, frames, layers, grid.rows, grid.cols)
    tensors = (
        torch.rand(k, 4, grid.sprite, grid.sprite, generator=g),
        torch.randint(0, k, shape, generator=g),
        torch.rand(shape, generator=g),
        (torch.rand(*shape, 2, generator=g) - 0.5) * 1.4,
        torch.rand(batch, frames, 3, grid.height, grid.width, generator=g),
    )
    return [x.to(DEVICE) for x in tensors]


def _render_and_grad(render, inputs, weight):
    leaves = [x.clone().requires_grad_() if x.is_floating_point() else x for x in inputs]
    out = render(*leaves)
    (out * weight).sum().backward()
    return out.detach(), [x.grad for x in leaves if x.is_floating_point()]


@pytest.mark.parametrize(
    ("height", "width", "cell", "layers", "frames", "gating"),
    [(16, 24, 8, 1, 2, "premultiplied"), (12, 12, 6, 2, 1, "original")],
)
def test_fused_render_equals_reference_values_and_gradients(
    height, width, cell, layers, frames, gating
):
    grid = Grid(height, width, cell)
    inputs = _slots(grid, 1, frames, layers, 5, seed=cell)
    order = plane_order(layers, shuffle_groups=True, generator=torch.Generator().manual_seed(3))
    weight = torch.rand(1, frames, 3, height, width, generator=torch.Generator().manual_seed(4))
    weight = weight.to(DEVICE)

    def slots(table, ids, presence, offsets, background) -> Decomposition:
        return Decomposition(table, ids, presence, offsets, background, order, cell, gating)

    def fused(*inputs):
        return render_fused(slots(*inputs))

    def reference(*inputs):
        return render_windows(slots(*inputs)).reconstruction

    out, grads = _render_and_grad(fused, inputs, weight)
    expected, expected_grads = _render_and_grad(reference, inputs, weight)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for name, grad, want in zip(("sprites", "presence", "offsets", "background"), grads,
                                expected_grads, strict=True):  # fmt: skip
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grad, want, atol=1e-4, rtol=1e-4, msg=name)


def test_fused_render_one_sprite_per_slot_and_bad_ids():
    grid = Grid(16, 16, 8)
    table, ids, presence, offsets, background = _slots(grid, 1, 1, 1, 3, seed=1)
    order = plane_order(1, shuffle_groups=False)
    hard = Decomposition(table, ids, presence, offsets, background, order, 8)
    per_slot = hard.replace(sprites=table[ids].flatten(0, -4), sprite_ids=None)
    expected = render_windows(hard).reconstruction
    torch.testing.assert_close(render_fused(per_slot), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(render_windows(per_slot).reconstruction, expected)
    with pytest.raises(ValueError, match=r"sprite ids must lie in \[0, 2\]"):
        render_fused(hard.replace(sprite_ids=ids + 3))
    with pytest.raises(ValueError, match="one sprite per slot"):
        hard.replace(sprite_ids=None)


def test_model_renders_the_same_with_both_renderers():
    config = ModelConfig(height=16, width=16, layer_size=2, num_layers=1, num_sprites=4, dim_z=8)
    torch.manual_seed(0)
    weights = MarioNette(config).state_dict()
    frames = torch.rand(1, 1, 3, 16, 16, device=DEVICE)
    results = {}
    for renderer in ("torch", "triton"):
        model = MarioNette(config, renderer=renderer)
        model.load_state_dict(weights)
        model = model.to(DEVICE).eval()
        soft = model(frames)
        soft.reconstruction.square().mean().backward()
        hard = model(frames, "hard")
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results[renderer] = (soft, hard, grads)
    (soft, hard, grads), (soft_f, hard_f, grads_f) = results["torch"], results["triton"]
    torch.testing.assert_close(soft_f.reconstruction.float(), soft.reconstruction)
    torch.testing.assert_close(hard_f.reconstruction.float(), hard.reconstruction)
    torch.testing.assert_close(hard_f.planes, hard.planes)  # rendered on demand
    for grad_f, grad in zip(grads_f, grads, strict=True):
        torch.testing.assert_close(grad_f, grad, atol=1e-5, rtol=1e-4)


def test_renderer_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_renderer("torch", cpu) == "torch"
    assert resolve_renderer("auto", cpu) == "torch"
    with pytest.raises(ValueError, match="renderer must be one of"):
        resolve_renderer("cuda", cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA devices"):
        resolve_renderer("triton", cpu)
    with pytest.raises(ValueError, match="renderer must be one of"):
        MarioNette(ModelConfig(height=16, width=16, layer_size=2), renderer="fast")


def test_self_check_passes_and_reports_a_broken_kernel(monkeypatch):
    self_check.cache_clear()
    assert self_check(torch.device(DEVICE)) is None

    def broken():
        raise RuntimeError("ptxas fatal: unsupported")

    monkeypatch.setattr(fused_module, "_kernels", broken)
    self_check.cache_clear()
    assert self_check(torch.device(DEVICE)) == "RuntimeError: ptxas fatal: unsupported"
    self_check.cache_clear()


def test_auto_takes_the_fused_kernel_only_where_it_passes_its_self_check(monkeypatch):
    cuda = torch.device("cuda")  # a device name only: nothing runs on it here
    monkeypatch.setattr(render_module, "triton_unavailable_reason", lambda device: None)
    monkeypatch.setattr(render_module, "self_check", lambda device: None)
    assert resolve_renderer("auto", cuda) == "triton"
    monkeypatch.setattr(render_module, "self_check", lambda device: "frames differ by 0.5")
    with pytest.warns(UserWarning, match=r"self-check on cuda \(frames differ by 0.5\)"):
        assert resolve_renderer("auto", cuda) == "torch"
    assert resolve_renderer("triton", cuda) == "triton"  # asked for explicitly: no check


_COMPILE = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from marionette.core import _fused_kernels as kernels

cell, original = int(sys.argv[1]), sys.argv[2] == "1"
sizes = dict.fromkeys(("layers", "rows", "cols", "height", "width", "planes"), "i32")
flags = dict(cell="constexpr", block="constexpr", original="constexpr")
pointers = ("table", "ids", "presence", "offsets", "background", "order", "out", "behind")
forward = {**{p: "*i32" if p in ("ids", "order") else "*fp32" for p in pointers}, **sizes,
           **flags, "save": "constexpr"}
pointers = ("grad_out", "table", "ids", "presence", "offsets", "order", "behind", "grad_table",
            "grad_presence", "grad_offsets", "grad_background")
backward = {**{p: "*i32" if p in ("ids", "order") else "*fp32" for p in pointers}, **sizes,
            **flags}
constants = dict(cell=cell, block=1 << (cell - 1).bit_length(), original=original)
for kernel, signature, extra in ((kernels.forward_kernel, forward, dict(save=True)),
                                 (kernels.backward_kernel, backward, {})):
    source = ASTSource(kernel, signature, constexprs={**constants, **extra})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
    assert ".target sm_90" in compiled.asm["ptx"], "no sm_90 PTX"
print("compiled")
"""


@pytest.mark.parametrize(("cell", "original"), [(8, False), (16, True), (6, False)])
def test_kernels_compile_for_the_h100(cell, original):
    """Both kernels lower to an sm_90 cubin without a GPU (in a fresh process: the interpreter
    replaces the kernels in this one), so what the interpreter checks is valid device code."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE, str(cell), str(int(original))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-2000:]
