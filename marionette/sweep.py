"""Grids of runs over configuration keys and seeds, and their mean +- std table.

The replacement for the fork's ``multi_train.py``: every run gets its own directory named by its
settings, the seed is really applied (MOC's sweep only renamed runs), finished runs are skipped,
interrupted ones resume, and the table groups runs that differ only in their seed. With
``jobs > 1`` several runs train at once, each in a process of its own (``python -m
marionette.sweep``) on its own device or share of the CPU cores; a run that fails is reported
and the others go on.
"""

import csv
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ._io import atomic_write
from .api import load
from .build import build_eval_data, resolve_device
from .checkpoint import CHECKPOINT_DIR, FINAL
from .config import Config
from .eval import evaluate, first_frames, flatten_metrics, summary_keys, write_metrics
from .rundir import HARDWARE, RunDirectory
from .trainer import train

__all__ = [
    "TRAINING_METRICS",
    "SweepFailed",
    "parse_grid",
    "run_name",
    "run_sweep",
    "summarise",
    "summary_metrics",
]

#: Training scalars of the summary table (from ``metrics.csv``), after the evaluation's
#: summary results (:func:`marionette.eval.summary_keys`).
TRAINING_METRICS = ("psnr", "psnr_hard")


class SweepFailed(RuntimeError):
    """Some runs of a sweep failed (the others finished); the message names each and its log,
    ``runs`` lists every point as :func:`run_sweep` returns them."""

    def __init__(self, message: str, runs: list) -> None:
        super().__init__(message)
        self.runs = runs


def summary_metrics() -> list[str]:
    """The columns of the summary table: evaluation summary results, then training scalars."""
    return [*summary_keys(), *TRAINING_METRICS]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["seed=0,1,2", "aow=0,10"]`` -> ``{"seed": ["0", "1", "2"], "aow": ["0", "10"]}``;
    values are converted by the configuration, which also rejects unknown keys."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not options:
            raise ValueError(f"grid entries must look like key=v1,v2,..., got {item!r}")
        if key in grid:
            raise ValueError(f"grid key {key!r} is given twice")
        grid[key] = options
    Config().replace(**{k: v[0] for k, v in grid.items()})  # unknown keys fail here
    return grid


def run_name(settings: dict[str, str]) -> str:
    """Directory name of one grid point: ``aow=10,seed=2`` (keys sorted)."""
    return ",".join(f"{k}={settings[k]}" for k in sorted(settings))


def _finished(run_dir: Path, config: Config) -> bool:
    """A final checkpoint and an evaluation exist, and the stored configuration is the one asked
    for (up to hardware settings): a run of other settings is not done, it is resumed."""
    stored = RunDirectory(run_dir).stored_config()
    done = (run_dir / CHECKPOINT_DIR / FINAL).exists() and (
        run_dir / "eval" / "metrics.json"
    ).exists()
    return done and stored is not None and set(stored.diff(config)) <= HARDWARE


def run_sweep(
    base: Config,
    grid: dict[str, list[str]],
    out: str | os.PathLike,
    *,
    evaluate_runs: bool = True,
    progress: bool = True,
    log=print,
    jobs: int = 1,
    devices: list[str] | None = None,
) -> list[tuple[dict[str, str], Path]]:
    """Train (and evaluate) every point of ``grid`` on top of ``base``, into ``out/<name>``.

    Finished runs (final checkpoint and evaluation present, same settings) are skipped; a run
    that stopped part-way resumes, one asked for with a longer run (``num_steps``) or other
    logging settings is extended and evaluated again. With ``jobs > 1``, that many runs train at
    once, each in its own process: on ``devices`` in turn when given, and on the CPU with the
    cores split between the jobs (``threads`` unless set); each one's output goes to
    ``RUN/sweep.log``. Returns each point's settings and run directory, in grid order.

    Raises:
        SweepFailed: some runs failed (after all the others ran); each is named with its cause.
    """
    out = Path(out)
    keys = list(grid)
    runs, pending = [], []
    for values in itertools.product(*(grid[k] for k in keys)):
        settings = dict(zip(keys, values, strict=True))
        run_dir = out / run_name(settings)
        runs.append((settings, run_dir))
        config = base.replace(**settings)
        if _finished(run_dir, config):
            log(f"skip {run_dir.name} (done)")
        else:
            pending.append((config, run_dir))
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1:
        failures = [_serial(*point, evaluate_runs, progress, log) for point in pending]
    else:
        failures = _parallel(pending, jobs, devices, evaluate_runs, log)
    failures = [f for f in failures if f]
    if failures:
        lines = "\n  ".join(failures)
        raise SweepFailed(f"{len(failures)} of {len(pending)} runs failed:\n  {lines}", runs)
    return runs


def _train_and_evaluate(config: Config, run_dir: Path, evaluate_runs: bool, progress: bool) -> None:
    """One grid point: train (or resume) it, then evaluate it on its ground truth if any."""
    result = train(config, run_dir, resume=True, progress=progress, tensorboard=True)
    if not evaluate_runs:
        return
    data = build_eval_data(result.config)
    if data is None:
        warnings.warn(f"no ground truth to evaluate {run_dir.name}", stacklevel=2)
        return
    model, _ = load(run_dir)
    device = resolve_device(result.config.train.device)
    metrics = evaluate(model, first_frames(data, result.config.data.eval_frames), device=device)
    write_metrics(run_dir / "eval", metrics, result.step)


def _serial(config: Config, run_dir: Path, evaluate_runs: bool, progress: bool, log) -> str:
    """Run one point in this process; its failure as a line ('' when it finished)."""
    log(f"run {run_dir.name}")
    try:
        _train_and_evaluate(config, run_dir, evaluate_runs, progress)
    except Exception as error:  # one run's failure does not stop the sweep
        log(f"  {run_dir.name} failed: {error}")
        return f"{run_dir.name}: {error}"
    return ""


def _parallel(pending, jobs: int, devices: list[str] | None, evaluate_runs: bool, log) -> list:
    """Run the points ``jobs`` at a time in child processes, each on its own slot."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // jobs)
    free = list(range(jobs))
    lock = threading.Condition()

    def one(config: Config, run_dir: Path) -> str:
        with lock:
            lock.wait_for(lambda: free)
            slot = free.pop(0)
        try:
            settings = {} if config.train.threads else {"threads": threads}
            if devices:
                settings["device"] = devices[slot % len(devices)]
            return _child(config.replace(**settings), run_dir, evaluate_runs, log)
        finally:
            with lock:
                free.append(slot)
                lock.notify()

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda point: one(*point), pending))


def _child(config: Config, run_dir: Path, evaluate_runs: bool, log) -> str:
    """Run one point in a child process (``python -m marionette.sweep``), its output in
    ``RUN/sweep.log``; its failure as a line ('' when it finished)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    where = f"device {config.train.device}, {config.train.threads} thread(s)"
    log(f"run {run_dir.name} ({where})")
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=run_dir, delete=False) as handle:
        request = Path(handle.name)
    config.save(request)
    command = [sys.executable, "-m", "marionette.sweep", str(request), str(run_dir)]
    command += [] if evaluate_runs else ["--no-eval"]
    env = {**os.environ, "OMP_NUM_THREADS": str(config.train.threads)}
    try:
        with open(run_dir / "sweep.log", "a") as output:
            done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    finally:
        request.unlink(missing_ok=True)
    if done.returncode:
        lines = (run_dir / "sweep.log").read_text().strip().splitlines()
        last = lines[-1] if lines else f"exit status {done.returncode}"
        log(f"  {run_dir.name} failed: {last}")
        return f"{run_dir.name}: {last} (log: {run_dir / 'sweep.log'})"
    log(f"  {run_dir.name} done")
    return ""


def _flat_metrics(run_dir: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    path = run_dir / "eval" / "metrics.json"
    if path.exists():
        values.update(flatten_metrics(json.loads(path.read_text())))
    csv_path = run_dir / "metrics.csv"
    if csv_path.exists():
        with open(csv_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            for key in TRAINING_METRICS:
                if rows[-1].get(key):
                    values[key] = float(rows[-1][key])
    return values


def summarise(
    out: str | os.PathLike, runs: list[tuple[dict[str, str], Path]], grid: dict[str, list[str]]
) -> list[dict]:
    """Mean +- std over seeds per configuration; writes ``out/summary.csv`` and ``summary.md``."""
    out = Path(out)
    groups: dict[tuple, list[dict]] = {}
    for settings, run_dir in runs:
        key = tuple((k, settings[k]) for k in grid if k != "seed")
        groups.setdefault(key, []).append(_flat_metrics(run_dir))
    rows, columns_of_metrics = [], summary_metrics()
    for key, members in groups.items():
        collapsed = sum(1 for m in members if not m.get("objects"))
        row: dict = dict(key) | {"runs": len(members), "collapsed": collapsed}
        for metric in columns_of_metrics:
            values = [m[metric] for m in members if isinstance(m.get(metric), int | float)]
            if values:
                row[metric] = (float(np.mean(values)), float(np.std(values)), len(values))
        rows.append(row)
    columns = [k for k in grid if k != "seed"] + ["runs", "collapsed"]
    metrics = [m for m in columns_of_metrics if any(m in r for r in rows)]
    missing = (math.nan, math.nan, 0)
    with atomic_write(out / "summary.csv", "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns + [f"{m} {s}" for m in metrics for s in ("mean", "std", "n")])
        for row in rows:
            cells = [row.get(c, "") for c in columns]
            for m in metrics:
                mean, std, n = row.get(m, missing)
                cells += [f"{mean:.4f}", f"{std:.4f}", n]
            writer.writerow(cells)
    with atomic_write(out / "summary.md", "w") as handle:
        handle.write("| " + " | ".join(columns + metrics) + " |\n")
        handle.write("|" + "---|" * (len(columns) + len(metrics)) + "\n")
        for row in rows:
            cells = [str(row.get(c, "")) for c in columns]
            for m in metrics:
                mean, std, n = row.get(m, missing)
                shown = f"{mean:.3f} ± {std:.3f}" if n else "-"
                cells.append(shown if n == row["runs"] else f"{shown} (n={n})")
            handle.write("| " + " | ".join(cells) + " |\n")
        if any(row["collapsed"] for row in rows):
            handle.write(
                "\ncollapsed: runs whose evaluation found no object (their detection metrics are "
                "zero; metrics that need objects leave them out, see n)\n"
            )
    return rows


def _main(argv: list[str]) -> int:
    """A child of a parallel sweep: ``python -m marionette.sweep CONFIG RUN [--no-eval]``."""
    config, run_dir = Config.load(argv[0]), Path(argv[1])
    try:
        _train_and_evaluate(config, run_dir, "--no-eval" not in argv, progress=False)
    except Exception as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
