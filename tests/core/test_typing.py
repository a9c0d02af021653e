import subprocess
import sys

import pytest
import torch
from jaxtyping import TypeCheckError

from marionette.core import (
    composite_layers,
    place_sprites,
    set_typecheck,
    shift_bilinear,
    typecheck,
    typecheck_enabled,
)
from marionette.core.geometry import Grid
from tests._checks import rand


def test_swapped_layers_and_time_fail_with_names_and_shapes():
    planes = rand(2, 3, 5, 4, 4, 8, 8)  # B=2, T=3, NL=5
    background = rand(2, 3, 3, 8, 8)
    order = torch.arange(20)
    swapped = planes.transpose(1, 2)  # B=2, NL=5 where T belongs
    with pytest.raises(TypeError) as info:
        composite_layers(swapped, background, order)
    message = str(info.value)
    assert "background" in message or "planes" in message
    assert "f32[2,5,3,4,4,8,8]" in message or "f32[2,3,3,8,8]" in message
    assert "B T NL G 4 H W" in message or "B T 3 H W" in message


def test_checks_switch_off_and_back():
    assert typecheck_enabled()
    with typecheck(False):
        assert not typecheck_enabled()
        # with checks off, the wrong rank reaches the function body and fails there instead
        with pytest.raises(Exception) as info:
            shift_bilinear(rand(2, 4, 8), rand(2, 2))
        assert not isinstance(info.value, TypeCheckError)
    assert typecheck_enabled()
    set_typecheck(False)
    try:
        assert not typecheck_enabled()
    finally:
        set_typecheck(True)


def test_environment_switch():
    code = "import marionette.core as c; print(c.typecheck_enabled())"
    for value, expected in (("0", "False"), ("1", "True")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={"MARIONETTE_TYPECHECK": value, "PATH": ""},
            check=True,
        )
        assert out.stdout.strip() == expected
    # other spellings, and a value that is none: tests/test_reliability.py


def test_compiled_function_runs_with_checks_on():
    grid = Grid(8, 8, 4)
    compiled = torch.compile(lambda w: place_sprites(w, grid), backend="eager", fullgraph=True)
    windows = rand(1, 2, 2, 4, 8, 8)
    torch.testing.assert_close(compiled(windows), place_sprites(windows, grid))


def test_data_dependent_checks_run_only_while_checks_are_on(monkeypatch):
    """The sprite-id range and the plane-order permutation are read on the host: with checks
    off they are not read at all (no device synchronisation on the training hot path)."""
    from marionette.core import gather_sprites

    planes, background = rand(1, 1, 1, 4, 4, 8, 8), rand(1, 1, 3, 8, 8)
    repeated = torch.tensor([0, 0, 1, 2])  # not a permutation
    sprites, ids = rand(3, 4, 2, 2), torch.tensor([0, 2])
    with pytest.raises(ValueError, match="permutation"):
        composite_layers(planes, background, repeated)
    with pytest.raises(ValueError, match=r"sprite ids must lie in \[0, 1\]"):
        gather_sprites(ids, sprites[:2])

    def no_host_reads(*args, **kwargs):
        raise AssertionError("a check read a tensor on the host while checks were off")

    with typecheck(False):
        monkeypatch.setattr(torch.Tensor, "cpu", no_host_reads)
        monkeypatch.setattr(torch.Tensor, "__int__", no_host_reads)
        composite_layers(planes, background, repeated)  # silently its own business now
        gather_sprites(ids, sprites)
