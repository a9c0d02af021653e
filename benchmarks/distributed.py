"""Several processes on one machine: a run under torchrun against one process, and a sweep with
``--jobs`` against one run at a time. Prints Markdown tables and writes a JSON record.

    python -m benchmarks.distributed                       # the demo preset, CPU
    python -m benchmarks.distributed --steps 20 --sweep-steps 20 --out /tmp/bench   # quicker

Training speed is read from ``metrics.csv`` (the seconds column, from the first logged step to
the last, so start-up is left out); a sweep's time is its wall time, start-up and evaluation
included. Both settings of each comparison train the same global batch.
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from marionette._io import write_json
from marionette.presets import preset_config

ROOT = Path(__file__).resolve().parents[1]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _steps_per_second(run: Path) -> float:
    with open(run / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("loss")]
    steps = int(rows[-1]["step"]) - int(rows[0]["step"])
    return steps / (float(rows[-1]["time"]) - float(rows[0]["time"]))


def _train(nproc: int, out: Path, flags: list[str]) -> None:
    head = [sys.executable, "-m"]
    if nproc > 1:
        head += ["torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, _cores() // nproc))}
    command = [*head, "marionette", "train", *flags, "--out", str(out)]
    subprocess.run(command, check=True, env=env, cwd=ROOT, capture_output=True)


def training(steps: int, batch: int, work: Path) -> list[dict]:
    """The demo preset for ``steps`` steps of a global batch ``batch``: 1 process with every
    core, and 2 processes under torchrun with half the batch and half the cores each."""
    rows = []
    frames = preset_config("demo").data.frames_per_item
    for nproc in (1, 2):
        threads = max(1, _cores() // nproc)
        flags = ["--preset", "demo", "--num_steps", str(steps), "--log_every", "1",
                 "--image_every", "0", "--bs", str(batch // nproc), "--threads", str(threads),
                 "--no-progress", "--no-tensorboard"]  # fmt: skip
        run = work / f"train-{nproc}"
        _train(nproc, run, flags)
        rate = _steps_per_second(run)
        rows.append(
            dict(processes=nproc, threads_each=threads, batch_each=batch // nproc,
                 steps_per_s=rate, frames_per_s=rate * batch * frames)
        )  # fmt: skip
    return rows


def sweep(steps: int, work: Path) -> list[dict]:
    """A 4-run grid (seeds 0-3 of the demo preset, evaluated) with --jobs 1 and --jobs 2."""
    rows, metrics = [], {}
    for jobs in (1, 2):
        out = work / f"sweep-{jobs}"
        command = [sys.executable, "-m", "marionette", "sweep", "--preset", "demo", "--grid",
                   "seed=0,1,2,3", "--set", f"num_steps={steps}", "image_every=0",
                   "eval_frames=128", "--out", str(out), "--jobs", str(jobs),
                   "--no-progress"]  # fmt: skip
        started = time.monotonic()
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
        wall = time.monotonic() - started
        metrics[jobs] = {
            seed: json.loads((out / f"seed={seed}" / "eval" / "metrics.json").read_text())
            for seed in range(4)
        }
        rows.append(dict(jobs=jobs, runs=4, steps=steps, wall_s=wall))
    f_score = {
        jobs: [m[s]["relevant"].get("f_score", 0.0) for s in m] for jobs, m in metrics.items()
    }
    largest = max(abs(a - b) for a, b in zip(f_score[1], f_score[2], strict=True))
    for row in rows:
        row["largest_relevant_f_difference"] = largest
    return rows


def _table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per process count")
    parser.add_argument("--batch", type=int, default=8, help="global batch (items)")
    parser.add_argument("--sweep-steps", type=int, default=60, help="steps of each sweep run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        record = {
            "machine": f"{platform.machine()}, {_cores()} cores, torch {torch.__version__}",
            "training": training(args.steps, args.batch, Path(work)),
            "sweep": sweep(args.sweep_steps, Path(work)),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "distributed.json", record)
    print(record["machine"])
    print(_table(record["training"]))
    print()
    print(_table(record["sweep"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
