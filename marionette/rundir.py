"""A run directory: its configuration, its lock, its checkpoints and its metrics table.

RUN/config.json         every setting (checked against the one asked for on every start;
                        written only once the run's data and model have been built)
RUN/checkpoints/        step_<N>.pt (the newest few) and final.pt, written atomically
RUN/metrics.csv         one row per logged step
RUN/.lock               held while a trainer runs there
"""

import contextlib
import csv
import importlib.util
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._io import atomic_write
from .checkpoint import (
    CHECKPOINT_DIR,
    FINAL,
    latest_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from .config import Config

__all__ = [
    "CONFIG_FILE",
    "HARDWARE",
    "METRICS_FILE",
    "RESUMABLE",
    "ConfigMismatch",
    "MetricsLog",
    "RunDirectory",
    "RunInUse",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
#: Settings that may change when a run is resumed (length, logging and hardware only).
RESUMABLE = frozenset(
    {
        "num_steps", "log_every", "image_every", "checkpoint_every", "keep_checkpoints",
        "eval_every", "eval_data", "eval_frames", "device", "precision", "renderer", "threads",
        "typecheck", "world_size",
    }
)  # fmt: skip
#: Settings that only say where and how fast a run computes: they may change on any restart.
HARDWARE = frozenset({"device", "renderer", "threads", "typecheck", "world_size"})


class ConfigMismatch(ValueError):
    """The run directory holds a different configuration than the one asked for."""


class RunInUse(RuntimeError):
    """Another process is training in the run directory."""


class RunDirectory:
    """The files of one run (see the module).

    Args:
        path: the directory (created when a run starts in it).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def name(self) -> str:
        """The run's name (its folder's)."""
        return self.path.resolve().name

    def stored_config(self) -> Config | None:
        """The configuration the run was started with (None for a new run)."""
        return Config.load(self.config_path) if self.config_path.exists() else None

    def resolve(self, config: Config, resume: bool) -> Config:
        """The configuration to train with; nothing is written (see :meth:`record`).

        That is ``config`` for a new run, else the stored one updated by ``config``'s
        :data:`HARDWARE` settings and, with ``resume``, its :data:`RESUMABLE` ones.

        Raises:
            ConfigMismatch: other settings differ; the message lists them.
        """
        stored = self.stored_config()
        if stored is None:
            return config
        difference = stored.diff(config)
        allowed = RESUMABLE if resume else HARDWARE
        blocking = {k: v for k, v in difference.items() if k not in allowed}
        if blocking:
            lines = "\n".join(
                f"  {k}: run has {a!r}, asked for {b!r}" for k, (a, b) in blocking.items()
            )
            raise ConfigMismatch(
                f"{self.path} holds a run with a different configuration:\n{lines}\nContinue "
                f"that run as it is with --resume (only run length, logging and hardware "
                f"settings may change), or train into a new --out directory."
            )
        return stored.replace(**{k: b for k, (_, b) in difference.items()})

    def record(self, config: Config) -> None:
        """Store ``config`` as the run's (atomically)."""
        self.path.mkdir(parents=True, exist_ok=True)
        config.save(self.config_path)

    def refuse_checkpoint(self, config: Config):
        """A ``refuse`` test for :func:`marionette.checkpoint.latest_checkpoint`: a checkpoint
        written under other settings than ``config`` (beyond :data:`RESUMABLE` ones) is named
        with the settings that differ."""

        def refuse(state: dict) -> str | None:
            if "config" not in state:
                return None
            difference = {
                k: v
                for k, v in Config.from_dict(state["config"]).diff(config).items()
                if k not in RESUMABLE
            }
            if not difference:
                return None
            listed = ", ".join(f"{k} {a!r} (run: {b!r})" for k, (a, b) in difference.items())
            return f"checkpoint of step {state['step']} was written with {listed}"

        return refuse

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on ``RUN/.lock``, so that a second trainer started in the same
        directory fails instead of interleaving checkpoints and logs. The operating system
        releases the lock when the process ends, however it ends.

        Raises:
            RunInUse: another process holds it; the message names that process.
        """
        if importlib.util.find_spec("fcntl") is None:  # no advisory locks (Windows)
            yield
            return
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            with self._locked():
                yield
        finally:
            if created and not self.config_path.exists():  # a start that failed: no trace
                (self.path / ".lock").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.path.rmdir()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        with open(self.path / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "another process"
                raise RunInUse(
                    f"{self.path} is being trained by {owner}; wait for it, stop it (Ctrl-C "
                    f"writes a checkpoint), or train into another --out directory"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def save(self, state: dict, final: bool = False) -> Path:
        """Write a checkpoint of ``state`` atomically (``checkpoints/step_<N>.pt`` or
        ``final.pt``)."""
        return save_checkpoint(self.path, state, FINAL if final else None)

    def prune(self, keep: int) -> None:
        """Keep only the ``keep`` newest step checkpoints (and the final one)."""
        prune_checkpoints(self.path, keep)

    def resume_state(self, config: Config, map_location, reopen: bool = True) -> dict | None:
        """The newest usable checkpoint's state (None for a fresh run): readable, with finite
        weights and written under ``config``'s settings. With ``reopen``, :meth:`reopen` it.

        Raises:
            CheckpointError: there are checkpoints, but none is usable (each is named).
        """
        found = latest_checkpoint(self.path, map_location, refuse=self.refuse_checkpoint(config))
        if found is None:
            return None
        if reopen:
            self.reopen(found[0], config)
        return found[0]

    def reopen(self, state: dict, config: Config) -> None:
        """A finished run that is extended beyond its steps gets the final checkpoint of
        ``state``'s step renamed to a step one (processes of a group: once all have read it)."""
        step, final = int(state["step"]), self.path / CHECKPOINT_DIR / FINAL
        if step < config.train.num_steps and final.exists():
            os.replace(final, final.with_name(f"step_{step:09d}.pt"))


class MetricsLog:
    """``metrics.csv``: one row per logged step; a row with new columns rewrites the header
    (the union of the columns, old rows kept)."""

    def __init__(self, path: Path) -> None:
        self.path, self.started = path, time.monotonic()
        self._keys: list[str] | None = None
        if path.exists():
            with open(path, newline="") as handle:
                self._keys = next(csv.reader(handle), None)

    def truncate(self, step: int) -> None:
        """Drop the rows after ``step`` (those of a session that ended past the checkpoint a
        run resumes from), so that every step appears once."""
        if self.path.exists() and self._keys is not None:
            with open(self.path, newline="") as handle:
                rows = list(csv.DictReader(handle))
            kept = [row for row in rows if float(row["step"]) <= step]
            if len(kept) < len(rows):
                self._write(kept)

    def append(self, step: int, values: dict[str, float]) -> None:
        """Add a row (with the seconds since this log was opened)."""
        row = {"step": step, "time": round(time.monotonic() - self.started, 3), **values}
        if self._keys is None or not set(row) <= set(self._keys):
            self._keys = list(dict.fromkeys((self._keys or []) + list(row)))
            self._rewrite()
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, self._keys).writerow(row)

    def _rewrite(self) -> None:
        rows = []
        if self.path.exists():
            with open(self.path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        self._write(rows)

    def _write(self, rows: list[dict]) -> None:
        with atomic_write(self.path, "w") as handle:
            writer = csv.DictWriter(handle, self._keys, lineterminator="\r\n")
            writer.writeheader()
            writer.writerows(rows)
