"""One prepared call that measures everything on a GPU, in at most ``--budget`` seconds.

    python -m benchmarks.gpu --out DIR                      # on the GPU machine
    python -m benchmarks.gpu --out DIR --data data/si --eval-data data/si-test
    python -m benchmarks.gpu --out DIR --dry                # the same code, tiny, on the CPU

Phases, in order, each recorded as it ends (``DIR/gpu.json`` and ``DIR/gpu.md`` are rewritten
after every phase, so a call cut short still returns what it measured; a phase that fails is
recorded with its error and the next one runs):

1. ``environment``: torch, CUDA, device, Triton, bf16, the packages the trainer imports.
2. ``self_check``: the fused kernel against the PyTorch path, frames and gradients.
3. ``kernels``: every renderer kernel (forward, forward + backward, bandwidth floor), float32
   and bfloat16.
4. ``steps``: the training step of the original's default architecture (``faithful``) and
   ours (``match``) at batch 8 / 32 / 64, both renderers, bf16 and fp32, peak memory; stacks of
   4 frames with and without the consistency term.
5. ``compile``: the ``match`` step with and without ``torch.compile``.
6. ``training``: the ``space_invaders`` preset for ``--steps`` steps (2,000) on ``--data``
   (the built-in demo world without it), then evaluated on ``--eval-data``.

Phases that would start after the budget are recorded as skipped. ``--dry`` runs every phase at
tiny sizes on the CPU (the test suite runs it): the kernel self-check and the fused renderer run
only on CUDA, and ``torch.compile`` uses its ``eager`` backend.
"""

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks.run import CONFIGS, _commit, _step_or_oom, _table, bench_kernels
from marionette._io import atomic_write, write_json
from marionette.core import triton_unavailable_reason, typecheck
from marionette.core.renderers import self_check

__all__ = ["main"]

STEP_COLUMNS = ["config", "variant", "renderer", "batch", "precision", "T", "consistency",
                "step_ms", "frames_per_s", "peak_mib"]  # fmt: skip
KERNEL_COLUMNS = ["config", "dtype", "kernel", "batch", "forward_ms", "forward_backward_ms",
                  "achieved_gbps", "floor_ms", "x_floor"]  # fmt: skip


def _environment(device: torch.device, dry: bool) -> dict:
    packages = {}
    for name in ("einops", "jaxtyping", "beartype", "sklearn", "scipy", "triton", "tensorboard"):
        try:
            packages[name] = getattr(importlib.import_module(name), "__version__", "present")
        except ImportError as error:
            packages[name] = f"missing ({error})"
    cuda = device.type == "cuda"
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": _commit(),
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "cuda": torch.version.cuda,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else 0,
        "triton": triton_unavailable_reason(device) or "usable",
        "packages": packages,
        "dry": dry,
    }


def _self_check(device: torch.device, dry: bool) -> dict:
    if dry or device.type != "cuda":  # the suite checks the kernel under Triton's interpreter
        return {"result": "skipped off CUDA (tests/core/test_fused.py runs it interpreted)"}
    failure = self_check(device)
    return {"result": "frames and gradients agree to 1e-3" if failure is None else failure}


def _kernels(device: torch.device, dry: bool) -> dict:
    config, batch, repeats, warmup = ("small", 2, 1, 1) if dry else ("default", 64, 10, 3)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for row in bench_kernels(CONFIGS[config], batch, device, dtype, repeats, warmup, 3350.0):
            rows.append({"config": config, "dtype": str(dtype).split(".")[-1], **row})
    return {"rows": rows}


def _steps(device: torch.device, dry: bool) -> dict:
    config, batches, repeats, warmup = (
        ("small", (4,), 1, 1) if dry else ("default", (8, 32, 64), 5, 2)
    )
    fused = not dry and triton_unavailable_reason(device) is None  # dry: not the interpreter
    renderers = ["torch"] + (["triton"] if fused else [])
    rows = []
    for variant in ("faithful", "match"):
        for batch in batches:
            for renderer in renderers:
                for precision in ("bf16", "fp32"):
                    common = (config, variant, batch, device, precision, repeats, warmup)
                    rows.append(_step_or_oom(*common, renderer=renderer))
    for aow in (0.0, 1e-2):  # the consistency term's cost, stacks of T = 4
        common = (config, "match", batches[-1] if dry else 32, device, "bf16", repeats, warmup)
        rows.append(_step_or_oom(*common, aow=aow, frames_per_item=4, renderer=renderers[-1]))
    return {"rows": rows}


def _compile(device: torch.device, dry: bool) -> dict:
    config, batch, repeats, warmup = ("small", 4, 1, 1) if dry else ("default", 32, 5, 3)
    backend = "eager" if dry else "inductor"
    rows = []
    for compiled in (False, True):
        common = (config, "match", batch, device, "bf16", repeats, warmup)
        started = time.perf_counter()
        row = _step_or_oom(*common, renderer="torch", compile_backend=backend if compiled else None)
        rows.append({**row, "compiled": compiled, "seconds": time.perf_counter() - started})
    return {"backend": backend, "rows": rows}


def _training(device: torch.device, dry: bool, args: argparse.Namespace) -> dict:
    from marionette.build import build_eval_data
    from marionette.eval import evaluate, summary
    from marionette.presets import preset_config
    from marionette.trainer import train

    if dry:
        config = preset_config("demo").replace(
            synthetic="tiny", synthetic_clips=8, height=32, width=32, layer_size=4,
            num_sprites=8, dim_z=16, bs=2, num_steps=3, eval_frames=16,
        )  # fmt: skip
    elif args.data:
        config = preset_config("space_invaders").replace(
            data=args.data, eval_data=args.eval_data, num_steps=args.steps
        )
    else:
        config = preset_config("demo").replace(num_steps=args.steps)
    config = config.replace(
        device=str(device), log_every=max(config.train.num_steps // 10, 1), image_every=0,
        checkpoint_every=config.train.num_steps,
    )  # fmt: skip
    started = time.perf_counter()
    result = train(config, Path(args.out) / "run", progress=False, tensorboard=False)
    seconds = time.perf_counter() - started
    record = {
        "preset": config.preset,
        "data": config.data.data or f"synthetic {config.data.synthetic}",
        "steps": result.step,
        "seconds": seconds,
        "steps_per_s": result.step / seconds,
        "psnr": result.metrics.get("psnr"),
        "psnr_hard": result.metrics.get("psnr_hard"),
    }
    data = build_eval_data(config)
    if data is not None:
        from marionette.eval.evaluation import first_frames

        metrics = evaluate(result.model, first_frames(data, config.data.eval_frames),
                           device=device)  # fmt: skip
        record["evaluation"] = summary(metrics)
    return record


PHASES = {
    "environment": _environment,
    "self_check": _self_check,
    "kernels": _kernels,
    "steps": _steps,
    "compile": _compile,
}


def _markdown(record: dict) -> str:
    env = record.get("environment", {})
    title = (
        f"# GPU benchmark: {env.get('device')}, torch {env.get('torch')}, CUDA {env.get('cuda')}"
    )
    title += f", commit {env.get('commit')}" + (" (dry run)" if env.get("dry") else "")
    lines = [title, ""]
    for name, phase in record.items():
        if name == "environment":
            lines += ["## environment", "", "```", json.dumps(phase, indent=2), "```", ""]
            continue
        lines += [f"## {name} ({phase.get('phase_seconds', 0):.0f} s)", ""]
        if "error" in phase or "skipped" in phase:
            lines += [phase.get("error") or phase["skipped"], ""]
        elif name == "kernels":
            lines += [_table(phase["rows"], KERNEL_COLUMNS), ""]
        elif name in ("steps", "compile"):
            columns = STEP_COLUMNS + (["compiled", "seconds"] if name == "compile" else [])
            lines += [_table(phase["rows"], columns), ""]
        else:
            lines += ["```", json.dumps(phase, indent=2), "```", ""]
    return "\n".join(lines)


def _write(out: Path, record: dict) -> None:
    write_json(out / "gpu.json", record)
    with atomic_write(out / "gpu.md", "w") as handle:
        handle.write(_markdown(record))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu.json, gpu.md and the run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data", help="Space Invaders frames (marionette data atari)")
    parser.add_argument("--eval-data", help="held-out frames with ground truth")
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for every phase")
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.dry else args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phases = {**PHASES, "training": lambda device, dry: _training(device, dry, args)}
    record: dict = {}
    started = time.perf_counter()
    with typecheck(False):
        for name, phase in phases.items():
            spent = time.perf_counter() - started
            if spent > args.budget:
                record[name] = {"skipped": f"skipped: {spent:.0f} s of the {args.budget:.0f} s "
                                           f"budget spent before it"}  # fmt: skip
            else:
                begun = time.perf_counter()
                try:
                    record[name] = phase(device, args.dry)
                except Exception as error:  # recorded; the next phase still runs
                    record[name] = {"error": f"{type(error).__name__}: {error}",
                                    "traceback": traceback.format_exc()}  # fmt: skip
                record[name]["phase_seconds"] = time.perf_counter() - begun
            state = record[name].get("error") or record[name].get("skipped") or "done"
            elapsed = time.perf_counter() - started
            print(f"{name}: {state} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
            _write(out, record)
    print(_markdown(record))
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
