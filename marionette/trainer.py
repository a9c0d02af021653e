"""The trainer: builds a run's data, model and step from a :class:`marionette.config.Config`,
then trains, logs and checkpoints.

Thin on purpose: the tensor maths is :func:`marionette.core.training_objective`, one update is a
:class:`marionette.step.TrainingStep`, the files are a :class:`marionette.rundir.RunDirectory`
and what a run reports is :mod:`marionette.diagnostics`. Training the same configuration in the
same directory resumes it up to the same total number of steps.
"""

import os
import random
import signal
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .build import build_data, build_eval_data, build_model, resolve_device
from .config import Config
from .core import MarioNette, Objective, resolve_renderer, set_typecheck, typecheck_enabled
from .data import FrameStacks, batch_indices
from .diagnostics import diagnose, evaluate_during_training, measure, panels, sprite_usage
from .eval import first_frames
from .monitor import Monitor
from .rundir import ConfigMismatch, RunDirectory, RunInUse
from .step import TrainingDiverged, TrainingStep

__all__ = ["ConfigMismatch", "RunInUse", "TrainResult", "TrainingDiverged", "train"]


@dataclass
class TrainResult:
    """What a finished (or interrupted) run reached."""

    run_dir: Path
    step: int
    metrics: dict[str, float]
    model: MarioNette
    config: Config


def train(
    config: Config,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
) -> TrainResult:
    """Train (or resume) a run. See :class:`marionette.config.TrainConfig` for the settings.

    Raises:
        ConfigMismatch: ``run_dir`` holds another configuration (and ``resume`` cannot bridge it).
        RunInUse: another process is training in ``run_dir``.
        TrainingDiverged: the loss became NaN or infinite (the last good checkpoint is named).
    """
    run, threads = RunDirectory(run_dir), torch.get_num_threads()
    try:
        with run.lock():
            config = run.prepare(config, resume)
            return _Training(config, run, progress, tensorboard).run()
    finally:
        torch.set_num_threads(threads)  # ``threads`` is the run's setting, not the process's


@contextmanager
def _typecheck_policy(policy: str):
    previous = typecheck_enabled()
    set_typecheck(policy != "off")
    try:
        yield
    finally:
        set_typecheck(previous)


def _raise_interrupt(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise KeyboardInterrupt


class _Training:
    """The state of one training session in a run directory."""

    def __init__(self, config: Config, run: RunDirectory, progress: bool, tensorboard: bool):
        t = config.train
        self.config, self.run_dir = config, run
        self.device = resolve_device(t.device)
        if t.threads:
            torch.set_num_threads(t.threads)
        random.seed(t.seed)
        torch.manual_seed(t.seed)  # NumPy randomness always uses explicit, seeded generators
        source = build_data(config)
        self.stacks = FrameStacks(source, config.data.frames_per_item)
        self.model = build_model(config, source).to(self.device)
        resolve_renderer(t.renderer, self.device)  # fails now, not at the first step
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.update = TrainingStep(self.model, config, self.device)
        self.step = self._resume()
        self.monitor = Monitor(run.path, self.step, t.num_steps, run.name, progress, tensorboard)
        self.log = run.metrics()
        self.usage = torch.zeros(config.model.num_sprites, dtype=torch.long)
        self.reseed_generator = torch.Generator().manual_seed(t.seed + 7)
        self.last_good: Path | None = None
        self.metrics: dict[str, float] = {}
        self.warned: set[str] = set()
        self.eval_data = None  # built at the first evaluation

    def _resume(self) -> int:
        state = self.run_dir.resume_state(self.config.train.num_steps, self.device)
        if state is None:
            return 0
        self.model.load_state_dict(state["model"])
        self.update.load_state_dict(state["optimizers"])
        torch.set_rng_state(state["rng"].cpu())
        return int(state["step"])

    def checkpoint(self, final: bool = False) -> Path:
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizers": self.update.state_dict(),
            "rng": torch.get_rng_state(),
            "config": self.config.to_dict(),
        }
        self.last_good = self.run_dir.save(state, self.config.train.keep_checkpoints, final)
        return self.last_good

    def run(self) -> TrainResult:
        t = self.config.train
        started, interrupted = time.monotonic(), False
        previous_handler = None
        if hasattr(signal, "SIGTERM"):  # a scheduler's stop becomes a clean interrupt too
            previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
        self.model.train()
        try:
            with _typecheck_policy(t.typecheck):
                while self.step < t.num_steps:
                    if t.typecheck == "first" and self.step > 0:
                        set_typecheck(False)
                    self._one_step()
        except KeyboardInterrupt:
            interrupted = True
            path = self.checkpoint()
            self.monitor.write(
                f"interrupted at step {self.step}; checkpoint {path} written. Run the same "
                f"command again to resume."
            )
        finally:
            self.monitor.close()
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        if interrupted:
            raise KeyboardInterrupt(f"training interrupted at step {self.step}")
        self.checkpoint(final=True)
        self.metrics["train_seconds"] = time.monotonic() - started
        return TrainResult(self.run_dir.path, self.step, self.metrics, self.model, self.config)

    def _one_step(self) -> None:
        t = self.config.train
        items = batch_indices(len(self.stacks), t.bs, t.seed, self.step)
        frames = torch.stack([self.stacks[int(i)] for i in items])
        frames = frames.to(self.device, non_blocking=True)
        try:
            objective = self.update(frames, self.step)
        except TrainingDiverged as error:
            where = (
                f"the last good checkpoint is {self.last_good}"
                if self.last_good
                else "no checkpoint was written yet"
            )
            raise TrainingDiverged(
                f"{error}; {where}. Lower --lr or check the data for bad frames."
            ) from None
        self.step += 1
        self._track_usage(objective)
        if self.step % t.log_every == 0 or self.step == t.num_steps:
            self._log_scalars(objective, frames)
        postfix = {k: self.metrics[k] for k in ("psnr", "psnr_hard") if k in self.metrics}
        self.monitor.step(self.step, {"loss": objective.loss.item(), **postfix})
        if t.image_every and self.step % t.image_every == 0:
            self.monitor.images(self.step, panels(self.model, objective.output, frames))
        if t.eval_every and self.step % t.eval_every == 0:
            self._evaluate()
        if self.step % t.checkpoint_every == 0 and self.step < t.num_steps:
            self.checkpoint()

    def _track_usage(self, objective: Objective) -> None:
        """Count sprite use; every ``reinit_unused`` steps re-seed the unused sprites."""
        with torch.no_grad():
            self.usage += sprite_usage(objective.output).cpu()
        every = self.config.train.reinit_unused
        if every and self.step % every == 0:
            count = self.model.dictionary.reseed_unused(self.usage, self.reseed_generator)
            self.metrics["reinit_sprites"] = float(count)
            self.usage.zero_()

    def _log_scalars(self, objective: Objective, frames: torch.Tensor) -> None:
        self.metrics.update(measure(self.model, objective.output, frames, objective.terms))
        self._scalars(self.metrics)
        for kind, message in diagnose(self.metrics, self.step, self.config).items():
            if kind not in self.warned:
                self.warned.add(kind)
                warnings.warn(message, stacklevel=2)
                self.monitor.write(message)

    def _scalars(self, values: dict[str, float]) -> None:
        self.log.append(self.step, values)
        self.monitor.scalars(self.step, values)

    def _evaluate(self) -> None:
        if self.eval_data is None:
            data = build_eval_data(self.config)
            if data is None:
                warnings.warn(
                    "eval_every is set but there is no ground truth to evaluate on; set "
                    "eval_data to a dataset folder with groundtruth.csv",
                    stacklevel=3,
                )
            self.eval_data = (
                False if data is None else first_frames(data, self.config.data.eval_frames)
            )
        if self.eval_data is not False:
            scalars = evaluate_during_training(
                self.model, self.eval_data, self.run_dir.path, self.step, self.device
            )
            self._scalars(scalars)
