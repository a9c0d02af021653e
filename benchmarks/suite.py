"""The automatic settings on a suite of sprite games: for each dataset, generate its training and
held-out frames, train with the settings chosen from the training frames for the same
wall-clock budget, evaluate on the held-out frames, and add a row to the table.

    python -m benchmarks.suite --out suite                     # every dataset, 10 min each
    python -m benchmarks.suite --out suite --only Pong Boxing --budget 1200
    python -m benchmarks.suite --out suite --atari Freeway     # a game outside the suite
    python -m benchmarks.suite --out suite --dry               # tiny sizes, seconds (CI)

The same rule for every dataset: frames as the generators write them (the Atari and Mario
screens at MOC's 128 x 128, the synthetic worlds at their own size), the settings of
``marionette train --data DIR`` without a preset except a batch of 2 stacks (the CPU's scale),
seed 0, and training stopped at the first step boundary after ``--budget`` seconds. A run's
row records the steps it reached; ``marionette train --data DIR --bs 2 --seed 0 --num_steps
STEPS`` trains as many steps with the same settings anywhere (no setting of the training
depends on the total number of steps). The
datasets and runs live under ``--out``. Run again, the suite continues where it stopped: data
already generated and runs already evaluated are read back, a finished training whose record
(``RUN/suite.json``) was removed is evaluated again without more training, and a training that
was interrupted starts again from scratch (its budget would be unknown). ``suite.json`` and
``suite.md`` are rewritten (atomically) after every dataset.
"""

import argparse
import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from marionette import Callback, StopTraining
from marionette._io import atomic_write, write_json
from marionette.autoconfig import auto_config
from marionette.cli import main as marionette
from marionette.config import Config
from marionette.data.dataset import DATASET_FILE
from marionette.rundir import CONFIG_FILE
from marionette.trainer import train

#: Written into a run when its training ends: steps reached, seconds, the last batch's PSNR.
TRAINED = "suite-train.json"


@dataclass(frozen=True)
class Entry:
    """One dataset of the suite: what it tests and the ``marionette data`` arguments (without
    ``--out``) of its training and held-out frames."""

    kind: str
    train: tuple[str, ...]
    test: tuple[str, ...]


def _atari(game: str, kind: str) -> Entry:
    clips = ("--frames-per-clip", "8", "--no-progress")
    return Entry(
        kind,
        ("atari", "--game", game, "--clips", "625", *clips),
        ("atari", "--game", game, "--split", "test", "--clips", "64", *clips),
    )


def _mario(kind: str, *stages: str) -> Entry:
    tail = (*stages, "--no-progress")
    return Entry(
        f"{kind} (ground truth: Mario only)",
        ("mario", "--frames", "2000", "--size", "128", *tail),
        ("mario", "--frames", "512", "--size", "128", "--seed", "1", *tail),
    )


#: The suite, in the order it runs.
SUITE = {
    "demo": Entry(
        "synthetic world: uniform background, 5 looks of 7-12 px, known sprites",
        ("synthetic", "--world", "demo", "--split", "train"),
        ("synthetic", "--world", "demo", "--split", "test", "--clips", "64"),
    ),
    "SpaceInvaders": _atari("SpaceInvaders", "many small sprites in rows, a HUD"),
    "MsPacman": _atari("MsPacman", "a maze: a static playfield that is background"),
    "Boxing": _atari("Boxing", "a playfield with two large sprites (about 28 px at 128)"),
    "Pong": _atari("Pong", "tiny sprites: the ball (2 x 4 px native), thin paddles"),
    "Carnival": _atari("Carnival", "many small targets moving in rows"),
    "Riverraid": _atari("Riverraid", "a vertically scrolling screen"),
    "SuperMarioBros": _mario("horizontally scrolling screens of all 32 stages"),
    "SuperMarioBros-1-1": _mario("one horizontally scrolling level, 1-1", "--stages", "1-1"),
}

#: The dry run's only dataset: the same code at tiny sizes.
DRY = {
    "tiny": Entry(
        "synthetic world, 32 px",
        ("synthetic", "--world", "tiny", "--split", "train", "--clips", "8"),
        ("synthetic", "--world", "tiny", "--split", "test", "--clips", "2"),
    )
}


class Budget(Callback):
    """Stop the run at the first step boundary after ``seconds`` of training."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_start(self, run):
        self.started = time.perf_counter()

    def on_step(self, step, scalars):
        if time.perf_counter() - self.started > self.seconds:
            raise StopTraining(f"the suite's budget of {self.seconds:.0f} s is spent")


def _generate(args: tuple[str, ...], out: Path) -> str:
    command = ["data", *args, "--out", str(out)]
    if not (out / DATASET_FILE).exists():  # the generators write it last
        code = marionette(command)
        if code != 0:
            raise RuntimeError(f"marionette {' '.join(command)} exited with {code}")
    return "marionette " + " ".join(command)


def _train(train_dir: Path, run: Path, args: argparse.Namespace) -> tuple[Config, dict]:
    """Train ``run`` on ``train_dir`` for the budget, once: a finished training is read back
    from ``TRAINED``; one that was interrupted starts again (its budget would be unknown)."""
    done = run / TRAINED
    if done.exists():
        return Config.load(run / CONFIG_FILE), json.loads(done.read_text())
    if (run / CONFIG_FILE).exists():  # an interrupted training of the suite's
        shutil.rmtree(run)
    given = dict(data=str(train_dir), bs=2, seed=0, num_steps=args.max_steps,
                 threads=args.threads, log_every=25, image_every=0)  # fmt: skip
    config = auto_config(given).replace(checkpoint_every=args.max_steps)
    started = time.perf_counter()
    result = train(config, run, progress=False, tensorboard=False,
                   callbacks=[Budget(args.budget)])  # fmt: skip
    trained = {
        "steps": result.step,
        "train_seconds": time.perf_counter() - started,
        "last_batch": {k: result.metrics.get(k) for k in ("psnr", "psnr_hard", "psnr_background")},
    }
    write_json(done, trained)
    return config, trained


def run_entry(name: str, entry: Entry, out: Path, args: argparse.Namespace) -> dict:
    """Generate, train and evaluate one dataset; returns its record (also in RUN/suite.json)."""
    train_dir, test_dir, run = out / "data" / name, out / "data" / f"{name}-test", out / name
    commands = [_generate(entry.train, train_dir), _generate(entry.test, test_dir)]
    config, trained = _train(train_dir, run, args)
    commands.append(f"marionette train --data {train_dir} --bs 2 --seed 0 "
                    f"--num_steps {trained['steps']} --out {run}")  # fmt: skip
    evaluation = ["eval", "--run", str(run), "--data", str(test_dir), "--frames", "512",
                  "--out", str(run / "eval"), "--no-tensorboard"]  # fmt: skip
    if marionette(evaluation) != 0:
        raise RuntimeError(f"marionette {' '.join(evaluation)} failed")
    commands.append("marionette " + " ".join(evaluation))
    model, grid = config.model, config.model.grid
    record = {
        "dataset": name,
        "kind": entry.kind,
        "settings": {
            "canvas": [grid.height, grid.width],
            "cell": grid.cell,
            "grid": [grid.rows, grid.cols],
            "num_sprites": model.num_sprites,
            "num_layers": model.num_layers,
            "background": model.background,
            "sprite_init": config.train.sprite_init,
        },
        "reasons": dict(config.reasons),
        **trained,
        "evaluation": json.loads((run / "eval" / "metrics.json").read_text()),
        "commands": commands,
    }
    write_json(run / "suite.json", record)
    return record


def _cell(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(record: dict) -> str:
    """The Markdown table row of one dataset's record."""
    if "error" in record:
        return f"| {record['dataset']} | failed: {record['error']} |" + " |" * 8
    s, m = record["settings"], record["evaluation"]
    relevant, psnr = m.get("relevant", {}), m.get("psnr", {})
    shots = relevant.get("few_shot", {}).get("ordered", {})
    used = relevant.get("sprites_per_class", {}).get("used")
    recovery = m.get("sprite_recovery", {}).get("min")
    return " | ".join([
        f"| {record['dataset']}",
        f"P {s['cell']}, {s['grid'][0]} x {s['grid'][1]}, K {s['num_sprites']}, "
        f"{s['num_layers']} layers, {s['background']}, {s.get('sprite_init', '-')} init",
        f"{record['steps']} ({record['train_seconds'] / 60:.1f} min)",
        f"{_cell(psnr.get('soft'), 1)} / {_cell(psnr.get('hard'), 1)} / "
        f"{_cell(psnr.get('background'), 1)}",
        f"{_cell(relevant.get('precision'))} / {_cell(relevant.get('recall'))} / "
        f"{_cell(relevant.get('f_score'))}",
        f"{used if used is not None else '-'} / {relevant.get('classes', '-')}",
        _cell(relevant.get("ami")),
        " / ".join(_cell(shots.get(k)) for k in ("1", "4", "16", "64")),
        f"{_cell(m.get('objects_per_frame'), 1)}",
        f"{_cell(recovery)} |",
    ])  # fmt: skip


HEADER = (
    "| dataset | settings chosen | steps (time) | PSNR soft / hard / background (dB) "
    "| relevant P / R / F | used sprites / classes | AMI | few-shot 1 / 4 / 16 / 64 "
    "| objects per frame | true-sprite min IoU |\n" + "|---" * 10 + "|\n"
)


def _write(out: Path, records: list[dict], args: argparse.Namespace) -> None:
    write_json(out / "suite.json", {"budget_seconds": args.budget, "records": records})
    with atomic_write(out / "suite.md", "w") as handle:
        handle.write(HEADER + "".join(row(r) + "\n" for r in records))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the data, runs and the table")
    parser.add_argument("--only", nargs="+", help=f"datasets to run (of {', '.join(SUITE)}); "
                        "the table keeps those done earlier")  # fmt: skip
    parser.add_argument("--atari", nargs="+", default=[], metavar="GAME",
                        help="OCAtari games outside the suite, recorded and run as its Atari "
                        "entries are (the automatic settings on data they were not chosen on); "
                        "without --only, only these run")  # fmt: skip
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds each")
    parser.add_argument("--max-steps", type=int, default=100_000, help="at most this many steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--dry", action="store_true", help="a tiny dataset, 3 steps")
    args = parser.parse_args(argv)
    suite = DRY if args.dry else SUITE
    if args.dry:
        args.max_steps = min(args.max_steps, 3)
    taken = set(suite) & set(args.atari)
    if taken:
        parser.error(f"--atari must name games outside the suite, got {', '.join(sorted(taken))}"
                     " (run them with --only)")  # fmt: skip
    suite = {**suite, **{game: _atari(game, "outside the suite") for game in args.atari}}
    args.only = args.only or args.atari or None
    unknown = set(args.only or ()) - set(suite)
    if unknown:
        parser.error(f"--only must name datasets of the suite ({', '.join(suite)}), "
                     f"got {', '.join(sorted(unknown))}")  # fmt: skip
    out = Path(args.out)
    records = []
    for name, entry in suite.items():
        done = out / name / "suite.json"
        if args.only and name not in args.only and not done.exists():
            continue  # left out; one done earlier stays in the table
        try:
            record = json.loads(done.read_text()) if done.exists() else run_entry(
                name, entry, out, args)  # fmt: skip
        except Exception as error:  # recorded; the next dataset still runs
            record = {"dataset": name, "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc()}  # fmt: skip
        print(row(record), file=sys.stderr, flush=True)
        records.append(record)
        _write(out, records, args)
    print(HEADER + "".join(row(r) + "\n" for r in records))
    return records


if __name__ == "__main__":
    main()
