"""Shared invariants for pure operations (after torchvision's check_kernel)."""

import torch


def check_op(fn, *inputs, batch_dims: int = 1, **kwargs):
    """Run ``fn`` and assert: no in-place writes to inputs, dtype kept, batched == stacked singles.

    The first ``batch_dims`` leading axes of every tensor input are treated as batch axes.
    Returns the output of the batched call.
    """
    versions = [x._version for x in inputs if isinstance(x, torch.Tensor)]
    out = fn(*inputs, **kwargs)
    assert [x._version for x in inputs if isinstance(x, torch.Tensor)] == versions, "in-place write"
    first = out[0] if isinstance(out, tuple) else out
    assert first.dtype == next(x for x in inputs if isinstance(x, torch.Tensor)).dtype
    if batch_dims:
        n = inputs[0].shape[0]
        singles = [
            fn(
                *(
                    x[i : i + 1]
                    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == n
                    else x
                    for x in inputs
                ),
                **kwargs,
            )
            for i in range(n)
        ]
        stacked = torch.cat([s[0] if isinstance(s, tuple) else s for s in singles])
        torch.testing.assert_close(first, stacked)
    return out


def generator(seed: int) -> torch.Generator:
    """A seeded CPU generator for building test tensors."""
    return torch.Generator().manual_seed(seed)


def rand(*shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Uniform [0, 1) tensor from a seeded generator."""
    return torch.rand(*shape, generator=generator(seed), dtype=dtype)
