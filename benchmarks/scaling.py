"""How the training step's cost grows: step time and peak memory against one setting at a time.

    python -m benchmarks.scaling                       # CPU: the Space Invaders settings
    python -m benchmarks.scaling --device cuda --batch 32
    python -m benchmarks.scaling --dry                 # tiny sizes, in one process (the tests)

From a base point (a configuration of ``benchmarks.run``, the ``match`` variant, fp32), one
setting varies at a time: the dictionary size K, the anchor grid (rows and columns at a fixed
canvas, so the cell and the sprites shrink as it grows), the depth layers, the canvas (at a
fixed cell, so the grid grows with it), the frames per stack T (at a fixed number of frames)
and the batch. Every point runs in a fresh process, so that its peak memory is its own: the
CUDA allocator's peak, or on the CPU the growth of the process's peak resident set from before
the first step (the step's activations, gradients and optimiser state; the model is built
before it).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from marionette._io import write_json
from marionette.core import typecheck

from .run import CONFIGS, _commit, _device_name, _table, bench_step

#: The settings varied, each with the values measured (the base value among them): model
#: settings, or ``canvas`` (height and width, the grid following at the base cell size), ``T``
#: (frames per stack, the batch of frames kept) and ``batch`` (frames per step).
SCALES: dict[str, list[int]] = {
    "num_sprites": [27, 54, 108, 216],
    "layer_size": [8, 16, 32],
    "num_layers": [1, 2, 4],
    "canvas": [64, 128, 256],
    "T": [1, 2, 4, 8],
    "batch": [2, 4, 8, 16],
}
DRY_SCALES: dict[str, list[int]] = {
    "num_sprites": [4, 8],
    "layer_size": [2, 4],
    "num_layers": [1, 2],
    "canvas": [16, 32],
    "T": [1, 2],
    "batch": [2, 4],
}


def point(config: str, setting: str, value: int, batch: int) -> tuple[dict, int, int]:
    """The overrides, frames per stack and batch of one point."""
    base = CONFIGS[config]
    if setting == "canvas":
        cell = base["height"] // base["layer_size"]
        return {"height": value, "width": value, "layer_size": value // cell}, 1, batch
    if setting == "T":
        return {}, value, batch
    if setting == "batch":
        return {}, 1, value
    return {setting: value}, 1, batch


def measure_point(args: argparse.Namespace, setting: str, value: int) -> dict:
    """One point: :func:`benchmarks.run.bench_step` with the point's settings."""
    overrides, frames, batch = point(args.config, setting, value, args.batch)
    row = bench_step(
        args.config, "match", batch, torch.device(args.device), "fp32", args.repeats,
        args.warmup, frames_per_item=frames, overrides=overrides,
    )  # fmt: skip
    return {"setting": setting, "value": value, **row}


def _in_fresh_process(args: argparse.Namespace, setting: str, value: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.scaling", "--point", setting, str(value),
               "--config", args.config, "--device", args.device, "--batch", str(args.batch),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:  # out of memory, say: the row says so and the others still run
        _, frames, batch = point(args.config, setting, value, args.batch)
        missing = dict.fromkeys(["step_ms", "frames_per_s", "peak_mib"], float("nan"))
        error = done.stderr.strip()[-500:]
        return {"setting": setting, "value": value, "batch": batch, "T": frames, **missing,
                "error": error}  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default="space_invaders", choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=8, help="frames per step at the base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=list(SCALES), help="these settings only")
    parser.add_argument("--dry", action="store_true", help="tiny sizes, one process, 1 repeat")
    parser.add_argument("--point", nargs=2, metavar=("SETTING", "VALUE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help="JSON (default: benchmarks/results/scaling-<device>.json)")
    args = parser.parse_args(argv)
    with typecheck(False):
        if args.point:  # a child: one point, its JSON row on the last line of stdout
            row = measure_point(args, args.point[0], int(args.point[1]))
            print(json.dumps(row))
            return row
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    scales = DRY_SCALES if args.dry else SCALES
    if args.dry:
        args.config, args.batch, args.repeats, args.warmup = "small", 4, 1, 1
    rows = []
    for setting in args.only or list(scales):
        for value in scales[setting]:
            measured = measure_point if args.dry else _in_fresh_process
            rows.append(measured(args, setting, value))
    device = torch.device(args.device)
    record = {
        "device": _device_name(device),
        "torch": torch.__version__,
        "commit": _commit(),
        "base": {"config": args.config, **CONFIGS[args.config], "batch": args.batch, "T": 1},
        "repeats": args.repeats,
        "warmup": args.warmup,
        "rows": rows,
    }
    name = f"scaling-{device.type}.json"
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    print(f"# {record['device']}, torch {record['torch']}, commit {record['commit']}, fp32; "
          f"base: {args.config}, batch {args.batch}, T 1\n")  # fmt: skip
    print(_table(rows, ["setting", "value", "batch", "T", "step_ms", "frames_per_s", "peak_mib"]))
    print(f"\nwrote {out}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
