"""Time the renderer kernels and the training step; print a table and write a JSON record.

    python -m benchmarks.run                       # CPU: default + Space Invaders settings
    python -m benchmarks.run --device cuda --batch 8 32 64
    python -m benchmarks.run --small               # seconds; what the CI smoke test runs

Every measurement is the median (and interquartile range) of ``--repeats`` timed runs after
``--warmup`` untimed ones, with the device synchronised around each run. Peak memory is the CUDA
allocator's peak (on the CPU: the growth of the process's peak resident set, a coarse bound).
Kernels are timed forward and forward + backward; their memory-bandwidth floor is the bytes
they must read and write at least once, divided by ``--bandwidth`` (GB/s).
"""

import argparse
import itertools
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from marionette._io import write_json
from marionette.build import build_model
from marionette.config import CHOICES, Config
from marionette.core import (
    RENDERER_CHOICES,
    Decomposition,
    Grid,
    composite_layers,
    consistency_loss,
    mix_sprites,
    place_sprites,
    plane_order,
    render_fused,
    render_windows,
    shift_bilinear,
    triton_unavailable_reason,
    typecheck,
)
from marionette.step import TrainingStep, prepare_training, resolve_precision

#: Model settings measured. ``default`` is the original's default model on a 128 px canvas (the
#: configuration of the issue's baseline table), ``space_invaders`` the fork's SI settings.
#: ``faithful`` keeps the original's per-slot CNN transform encoder and learned selection;
#: ``match`` is ours (template-matched offsets and selection, see docs/learning.md);
#: ``match_pyramid`` adds the image encoder's channel pyramid (32 channels at full resolution).
CONFIGS = {
    "default": dict(height=128, width=128, layer_size=8, num_sprites=150, dim_z=128),
    "space_invaders": dict(height=128, width=128, layer_size=16, num_sprites=54, dim_z=128),
    "small": dict(height=32, width=32, layer_size=4, num_sprites=8, dim_z=16),
}
VARIANTS = {
    "faithful": dict(transform_encoder="conv", selection="learned"),
    "match": dict(transform_encoder="match", selection="match"),
    "match_pyramid": dict(transform_encoder="match", selection="match", encoder_base_width=32),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> dict:
    """Median / IQR of the wall time of ``fn`` in ms, and its peak memory in MiB (on the CPU
    the growth of the peak resident set from before the warm-up runs, which allocate what the
    timed ones reuse: a bound only in a fresh process, see ``benchmarks.scaling``)."""
    rss_before = _peak_rss_mb()
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = max(_peak_rss_mb() - rss_before, 0.0)
    return {
        "median_ms": statistics.median(times),
        "iqr_ms": quartiles[2] - quartiles[0],
        "peak_mib": peak,
    }


def kernel_cases(config: dict, batch: int, device: torch.device, dtype: torch.dtype):
    """(name, function of requires_grad inputs, inputs, bytes moved at least once)."""
    grid = Grid(config["height"], config["width"], config["height"] // config["layer_size"])
    nl, k, s = 2, config["num_sprites"], grid.sprite
    slots = (batch, nl, grid.rows, grid.cols)
    n = batch * nl * grid.rows * grid.cols
    size = torch.finfo(dtype).bits // 8

    def make(*shape):
        return torch.rand(*shape, device=device, dtype=dtype)

    weights, sprites = torch.softmax(make(*slots, k), -1), make(k, 4, s, s)
    windows, offsets = make(n, 4, s, s), make(n, 2) - 0.5
    placed = make(batch * nl, grid.rows, grid.cols, 4, s, s)
    planes, background = (
        make(batch, 1, nl, 4, 4, grid.height, grid.width),
        make(batch, 1, 3, grid.height, grid.width),
    )
    order = plane_order(nl, shuffle_groups=False).to(device)
    stacks, slot_count, d = max(batch // 4, 1), nl * grid.rows * grid.cols, config["dim_z"]
    codes, presence = make(stacks, 4, slot_count, d), make(stacks, 4, slot_count)
    centers = make(stacks, 4, slot_count, 2) * grid.width
    render_inputs = (  # the soft (training) form: one mixed sprite per slot
        windows,
        make(batch, 1, *slots[1:]),
        offsets.reshape(batch, 1, *slots[1:], 2),
        background,
    )
    render_bytes = (windows.numel() + n * 3 + 2 * background.numel()) * size

    def soft(table, presence, offsets, background) -> Decomposition:
        return Decomposition(table, None, presence, offsets, background, order, grid.cell)

    renders = [
        ("render (PyTorch: shift, place, composite)",
         lambda *x: render_windows(soft(*x)).reconstruction, render_inputs, render_bytes),
    ]  # fmt: skip
    if device.type == "cuda" and triton_unavailable_reason(device) is None:
        renders.append(
            ("render (fused Triton kernel)", lambda *x: render_fused(soft(*x)),
             render_inputs, render_bytes)
        )  # fmt: skip
    return renders + [
        ("select (mix K sprites)", mix_sprites, (weights, sprites),
         (weights.numel() + sprites.numel() + n * 4 * s * s) * size),
        ("shift (bilinear)", shift_bilinear, (windows, offsets),
         (2 * windows.numel() + offsets.numel()) * size),
        ("place (parity planes)", lambda w: place_sprites(w, grid), (placed,),
         (placed.numel() + batch * nl * 4 * 4 * grid.height * grid.width) * size),
        ("composite (over)", lambda p, b: composite_layers(p, b, order), (planes, background),
         (planes.numel() + 2 * background.numel()) * size),
        ("consistency loss (T=4)", lambda c, p, x: consistency_loss(c, p, x, float(grid.cell)).loss,
         (codes, presence, centers), (codes.numel() + presence.numel() + centers.numel()) * size),
    ]  # fmt: skip


def bench_kernels(config, batch, device, dtype, repeats, warmup, bandwidth) -> list[dict]:
    rows = []
    for name, fn, inputs, nbytes in kernel_cases(config, batch, device, dtype):
        forward = measure(lambda fn=fn, inputs=inputs: fn(*inputs), device, repeats, warmup)
        leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]

        def backward(fn=fn, leaves=leaves):
            fn(*leaves).sum().backward()

        both = measure(backward, device, repeats, warmup)
        floor_ms = nbytes / (bandwidth * 1e9) * 1000
        rows.append(
            {
                "kernel": name,
                "batch": batch,
                "forward_ms": forward["median_ms"],
                "forward_iqr_ms": forward["iqr_ms"],
                "forward_backward_ms": both["median_ms"],
                "forward_backward_iqr_ms": both["iqr_ms"],
                "bytes": nbytes,
                "achieved_gbps": nbytes / (forward["median_ms"] / 1000) / 1e9,
                "floor_ms": floor_ms,
                "x_floor": forward["median_ms"] / floor_ms,
                "peak_mib": both["peak_mib"],
            }
        )
    return rows


def bench_step(
    name: str,
    variant: str,
    batch: int,
    device,
    precision: str,
    repeats: int,
    warmup: int,
    aow: float = 0.0,
    frames_per_item: int = 1,
    renderer: str = "auto",
    compile_backend: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """One training step as the trainer runs it: soft forward, losses, backward, AdamW; the
    hard pass only runs (without autograd) when metrics are logged, so it is not timed here.
    ``compile_backend``: the model's forward through ``torch.compile`` with that backend;
    ``overrides``: settings that replace the configuration's."""
    stacks = max(batch // frames_per_item, 1)
    settings = {**CONFIGS[name], **VARIANTS[variant], **(overrides or {})}
    config = Config().replace(
        **settings, bs=stacks, frames_per_item=frames_per_item, aow=aow, renderer=renderer,
        precision=precision,
    )  # fmt: skip
    torch.manual_seed(0)
    model = prepare_training(build_model(config), device)  # as the trainer runs it
    if compile_backend is not None:
        model.forward = torch.compile(model.forward, backend=compile_backend)
    update = TrainingStep(model, config, device)
    frames = torch.rand(
        stacks, frames_per_item, 3, config.model.height, config.model.width, device=device
    )
    result = measure(lambda: update(frames, step=10**6), device, repeats, warmup)
    print(f"  step {name}/{variant}/{renderer} batch {stacks * frames_per_item} "
          f"T {frames_per_item} aow {aow}: {result['median_ms']:.1f} ms",
          file=sys.stderr, flush=True)  # fmt: skip
    return {
        "config": name,
        "variant": variant,
        "renderer": renderer,
        "batch": stacks * frames_per_item,
        "precision": precision,
        "T": frames_per_item,
        "consistency": aow > 0,
        "step_ms": result["median_ms"],
        "step_iqr_ms": result["iqr_ms"],
        "frames_per_s": stacks * frames_per_item / (result["median_ms"] / 1000),
        "peak_mib": result["peak_mib"],
    }


def _step_or_oom(name, variant, batch, device, precision, repeats, warmup, **setting) -> dict:
    """:func:`bench_step` (``setting``: aow, frames_per_item, renderer, compile_backend), or a
    row saying that it ran out of memory."""
    try:
        return bench_step(name, variant, batch, device, precision, repeats, warmup, **setting)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        nan = float("nan")
        return {
            "config": name,
            "variant": variant,
            "renderer": setting["renderer"],
            "batch": batch,
            "precision": precision,
            "T": setting.get("frames_per_item", 1),
            "consistency": setting.get("aow", 0.0) > 0,
            "step_ms": nan,
            "step_iqr_ms": nan,
            "frames_per_s": nan,
            "peak_mib": nan,
            "error": "out of memory",
        }


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--configs", nargs="+", default=["default", "space_invaders"], choices=list(CONFIGS)
    )
    parser.add_argument(
        "--variants", nargs="+", default=["faithful", "match"], choices=list(VARIANTS)
    )
    parser.add_argument(
        "--renderers", nargs="+", default=["auto"], choices=RENDERER_CHOICES, help="training step"
    )
    parser.add_argument("--batch", type=int, nargs="+", help="default: 8 (CPU) or 8 32 64 (CUDA)")
    parser.add_argument("--kernel-batch", type=int, help="kernel batch (default 64 CUDA, 8 CPU)")
    parser.add_argument(
        "--precision", default="auto", choices=CHOICES["precision"],
        help="the training setting; auto: bf16 on CUDA, bf16_encoder on a CPU with native bf16",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--bandwidth", type=float, default=None, help="GB/s (default: H100 3350, CPU 20)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["kernels", "step", "consistency"])
    parser.add_argument("--small", action="store_true", help="tiny sizes, 2 repeats (smoke test)")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/<device>.json)")
    args = parser.parse_args(argv)  # fmt: skip
    with typecheck(False):  # restored afterwards: a notebook calling main keeps its checks
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    bandwidth = args.bandwidth or (3350.0 if device.type == "cuda" else 20.0)
    configs, repeats, warmup = args.configs, args.repeats, args.warmup
    batches = args.batch or ([8, 32, 64] if device.type == "cuda" else [8])
    kernel_batch = args.kernel_batch or (64 if device.type == "cuda" else 8)
    if args.small:
        configs, batches, kernel_batch, repeats, warmup = ["small"], [4], 2, 2, 1

    kernels, steps = [], []
    for name in configs:
        if "kernels" not in args.skip:
            for row in bench_kernels(
                CONFIGS[name], kernel_batch, device, torch.float32, repeats, warmup, bandwidth
            ):
                kernels.append({"config": name, **row})
        if "step" not in args.skip:
            for variant, renderer, batch in itertools.product(
                args.variants, args.renderers, batches
            ):
                common = (name, variant, batch, device, precision, repeats, warmup)
                steps.append(_step_or_oom(*common, renderer=renderer))
                if "consistency" not in args.skip and batch >= 4:
                    for aow in (0.0, 1e-2):  # same stacks of T = 4, without and with the term
                        steps.append(
                            _step_or_oom(*common, aow=aow, frames_per_item=4, renderer=renderer)
                        )
    record = {
        "device": _device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": _commit(),
        "precision": precision,
        "repeats": repeats,
        "warmup": warmup,
        "bandwidth_gbps": bandwidth,
        "configs": {name: CONFIGS[name] for name in configs},
        "variants": VARIANTS,
        "kernels": kernels,
        "steps": steps,
    }  # fmt: skip
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    print(f"# {record['device']}, torch {record['torch']}, commit {record['commit']}, {precision}")
    if kernels:
        print("\n## Kernels (float32)\n")
        print(_table(kernels, ["config", "kernel", "batch", "forward_ms", "forward_backward_ms",
                               "achieved_gbps", "floor_ms", "x_floor"]))  # fmt: skip
    if steps:
        print("\n## Training step\n")
        print(_table(steps, ["config", "variant", "renderer", "precision", "batch", "T",
                             "consistency", "step_ms", "step_iqr_ms", "frames_per_s",
                             "peak_mib"]))  # fmt: skip
    print(f"\nwrote {out}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
