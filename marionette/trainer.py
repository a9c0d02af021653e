"""The trainer: builds a run's data, model and step from a :class:`marionette.config.Config`,
then trains, logs and checkpoints.

Thin on purpose: the tensor maths is :func:`marionette.core.training_objective`, one update is a
:class:`marionette.step.TrainingStep`, the files are a :class:`marionette.rundir.RunDirectory`
and what a run reports is :mod:`marionette.diagnostics`. Training the same configuration in the
same directory resumes it up to the same total number of steps.
"""

import errno
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from einops import rearrange

from . import distributed
from .build import build_data, build_eval_data, build_model, resolve_device
from .callbacks import CallbackError, Callbacks, RunInfo
from .checkpoint import list_checkpoints, nonfinite_tensors
from .config import Config
from .core import (
    MarioNette,
    duplicate_entries,
    foreground_patches,
    resolve_renderer,
    set_typecheck,
    typecheck_enabled,
)
from .data import FrameFolder, FrameStacks, batch_indices
from .diagnostics import diagnose, evaluate_during_training, measure, panels, sprite_usage
from .eval import first_frames
from .monitor import default_callbacks, say
from .rundir import ConfigMismatch, RunDirectory, RunInUse
from .step import (
    OutOfMemory,
    TrainingDiverged,
    TrainingStep,
    check_memory,
    prepare_training,
)

__all__ = [
    "ConfigMismatch",
    "OutOfMemory",
    "RunInUse",
    "TrainResult",
    "TrainingDiverged",
    "TrainingFailed",
    "train",
]

Result = TypeVar("Result")


class TrainingFailed(RuntimeError):
    """Training stopped on an error; the message names the cause and the checkpoint kept."""


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
    callbacks: Sequence[object] = (),
) -> TrainResult:
    """Train (or resume) a run. See :class:`marionette.config.TrainConfig` for the settings.

    ``callbacks`` are called on the run's events after the built-in monitors
    (:func:`marionette.monitor.default_callbacks`: ``metrics.csv``, the progress bar unless
    ``progress=False``, TensorBoard unless ``tensorboard=False``, the process title); see
    :mod:`marionette.callbacks` for the events and their arguments.

    The data, model and renderer are built and checked before anything is written, so a start
    that fails leaves no configuration behind. Ctrl-C (or SIGTERM) stops at the end of the
    current step with a checkpoint; the same signal again stops at once.

    Under torchrun (``torchrun --nproc_per_node N -m marionette train ...``) the processes
    train one run together with DistributedDataParallel (:mod:`marionette.distributed`):
    ``bs`` is each process's batch, rank 0 alone writes and calls the callbacks.

    Raises:
        ConfigMismatch: ``run_dir`` holds another configuration (and ``resume`` cannot bridge it).
        RunInUse: another process is training in ``run_dir``.
        TrainingDiverged: the loss became NaN or infinite (the last good checkpoint is named).
        OutOfMemory: a step cannot fit in the device's memory (refused before it starts).
        TrainingFailed: any other error during training, a callback's included (a checkpoint
            of the last finished step is written where possible; the message names the cause).
        KeyboardInterrupt: after Ctrl-C or SIGTERM, once the checkpoint is written.
    """
    events = Callbacks([*default_callbacks(progress, tensorboard), *callbacks])
    run, threads = RunDirectory(run_dir), torch.get_num_threads()
    config = _absolute_paths(config)
    try:
        with distributed.join(config.train.device) as group:
            config = config.replace(world_size=group.world if group is not None else 1)
            if group is not None and not group.main:
                events = Callbacks([])  # rank 0 reports for the group
            with _group_lock(run, group):
                config = run.resolve(config, resume)
                training = _Training(config, run, events, group)
                if group is None or group.main:
                    run.record(config)
                return training.run()
    finally:
        torch.set_num_threads(threads)  # ``threads`` is the run's setting, not the process's


@contextmanager
def _group_lock(run: RunDirectory, group: distributed.Group | None):
    """The run directory's lock, held by rank 0 for the whole group: when rank 0 cannot take
    it, every process stops."""
    if group is None:
        with run.lock():
            yield
        return
    with ExitStack() as stack:
        refused = None
        if group.main:
            try:
                stack.enter_context(run.lock())
            except RunInUse as error:
                refused = error
        if group.agree(refused is not None)[0]:
            raise refused or RunInUse(f"{run.path} is in use (rank 0 says by whom)")
        yield


def _absolute_paths(config: Config) -> Config:
    """``data`` and ``eval_data`` resolved, so the run can be used from any directory."""
    paths = {k: config.get(k) for k in ("data", "eval_data")}
    return config.replace(**{k: str(Path(v).resolve()) for k, v in paths.items() if v})


@contextmanager
def _typecheck_policy(policy: str):
    previous = typecheck_enabled()
    set_typecheck(policy != "off")
    try:
        yield
    finally:
        set_typecheck(previous)


class _StopRequest:
    """SIGINT and SIGTERM while training: the first asks to stop at the next step boundary
    (``signal`` is set), the same one again raises KeyboardInterrupt at once. The other kind
    after the first changes nothing: torchrun answers a Ctrl-C (which reached the processes
    already) with a SIGTERM to each of them. Off the main thread, where handlers cannot be
    installed, signals keep their default behaviour."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._seen: set[int] = set()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            for name in ("SIGINT", "SIGTERM"):
                if hasattr(signal, name):
                    number = getattr(signal, name)
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum in self._seen:
            raise KeyboardInterrupt
        self._seen.add(signum)
        if self.signal is None:
            self.signal = signum

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def _cause(error: BaseException, config: Config, folder: Path) -> str:
    """What went wrong, in the user's terms (the file, the disk, the setting to lower)."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = error.filename or folder
        return f"no space left on device while writing {where}; free space there or use --out"
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, dist.DistError) or "gloo" in text.lower() or "nccl" in text.lower():
        return (
            f"the process group broke ({type(error).__name__}): another process failed or was "
            f"stopped, and its message says why"
        )
    if isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in text:
        m = config.model
        return (
            f"out of memory ({text}); lower --bs (now {config.train.bs}), --num_sprites "
            f"({m.num_sprites}), --num_layers ({m.num_layers}) or the canvas "
            f"({m.height} x {m.width})"
        )
    return f"{type(error).__name__}: {text}"


class _Training:
    """The state of one training session in a run directory. Building it writes nothing."""

    def __init__(
        self,
        config: Config,
        run: RunDirectory,
        events: Callbacks,
        group: distributed.Group | None = None,
    ):
        t = config.train
        self.config, self.run_dir, self.events, self.group = config, run, events, group
        self.main = group is None or group.main
        self.device = group.device if group is not None else resolve_device(t.device)
        if t.threads:
            torch.set_num_threads(t.threads)
        check_memory(config, self.device)  # before anything large is allocated
        random.seed(t.seed)
        torch.manual_seed(t.seed)  # NumPy randomness always uses explicit, seeded generators
        source = build_data(config)
        if isinstance(source, FrameFolder) and not list_checkpoints(run.path):
            source.check()  # a new run: every frame decodes, now rather than at step 11
        self.stacks = FrameStacks(source, config.data.frames_per_item)
        self.model = prepare_training(build_model(config, source), self.device)
        resolve_renderer(t.renderer, self.device)  # fails now, not at the first step
        self.update = TrainingStep(self.model, config, self.device, group)
        self.usage = torch.zeros(config.model.num_sprites, dtype=torch.long)
        self.reseed_generator = torch.Generator().manual_seed(t.seed + 7)
        self.maintained = False  # the dictionary was maintained in the step under way
        self.step = self._resume()
        self.last_good: Path | None = None  # a checkpoint whose weights gave a finite loss
        self.unconfirmed: Path | None = None  # written, its weights not yet through a forward
        self.last_frames: torch.Tensor | None = None
        self.metrics: dict[str, float] = {}
        self.warned: set[str] = set()
        self.eval_data = None  # built at the first evaluation

    def _resume(self) -> int:
        group = self.group
        state = self.run_dir.resume_state(self.config, self.device, reopen=group is None)
        if group is not None:
            group.agree(False)  # every process has read the checkpoint: rank 0 may rename it
            if group.main and state is not None:
                self.run_dir.reopen(state, self.config)
        if state is None:
            return 0
        self.model.load_state_dict(state["model"])
        self.update.load_state_dict(state["optimizers"])
        torch.set_rng_state(state["rng"].cpu())
        if "usage" in state:  # in a group, rank 0's counts (the others' since the last
            # maintenance are not kept: a resumed group's next merge counts a little less)
            if self.main:
                self.usage.copy_(state["usage"].cpu())
            self.reseed_generator.set_state(state["reseed_rng"].cpu())
        return int(state["step"])

    def checkpoint(self, final: bool = False, announce: bool = True) -> Path | None:
        """Write the state at the current step boundary (weights checked finite first) and, if
        ``announce``, tell the callbacks. Only rank 0 writes (None elsewhere)."""
        weights = self.model.state_dict()
        bad = nonfinite_tensors(weights)
        if bad:
            raise TrainingDiverged(f"weights became non-finite by step {self.step} ({bad[0]})")
        if not self.main:
            return None
        state = {
            "step": self.step,
            "model": weights,
            "optimizers": self.update.state_dict(),
            "rng": torch.get_rng_state(),
            "usage": self.usage.clone(),
            "reseed_rng": self.reseed_generator.get_state(),
            "config": self.config.to_dict(),
        }
        self.unconfirmed = self.run_dir.save(state, final)
        if announce:
            self.events.emit("on_checkpoint", self.step, self.unconfirmed, final)
        return self.unconfirmed

    def _confirm(self) -> None:
        """The unconfirmed checkpoint's weights just gave a finite loss: it is good, and the
        older step checkpoints beyond ``keep_checkpoints`` may go."""
        if self.unconfirmed is not None:
            self.last_good, self.unconfirmed = self.unconfirmed, None
            self.run_dir.prune(self.config.train.keep_checkpoints)  # rank 0 alone has one

    def run(self) -> TrainResult:
        t, started, status = self.config.train, time.monotonic(), "failed"
        info = RunInfo(self.run_dir.path, self.config, self.model, self.step, t.num_steps)
        self.model.train()
        try:
            self._start(info)
            with _typecheck_policy(t.typecheck), _StopRequest() as stop:
                interrupted = False
                while self.step < t.num_steps:
                    interrupted, stopped = self._guarded(self._stop_requested, stop)
                    if interrupted or stopped:
                        break
                    if t.typecheck == "first" and self.step > 0:
                        set_typecheck(False)
                    self._guarded(self._one_step)
                if interrupted:
                    status = "interrupted"
                    self._stop(stop.signal)
                self._finish()
            status = "stopped" if self.events.stop else "finished"
            if self.events.stop:
                say(
                    f"stopped after step {self.step} by {self.events.stop}; run the same command "
                    f"to continue to step {t.num_steps}"
                )
        except CallbackError as error:  # from a checkpoint's or an interruption's event
            newest = self.unconfirmed or self.last_good
            raise TrainingFailed(
                f"training stopped after step {self.step}: {error}; the newest checkpoint is "
                f"{newest}"
            ) from error
        finally:
            self.metrics["train_seconds"] = time.monotonic() - started
            self._end(status)
        return TrainResult(self.run_dir.path, self.step, self.metrics, self.model, self.config)

    def _stop_requested(self, stop: _StopRequest) -> tuple[bool, bool]:
        """(a signal, a callback's StopTraining) on this process or, in a group, on any."""
        flags = (stop.signal is not None, self.events.stop is not None)
        return tuple(self.group.agree(*flags)) if self.group is not None else flags

    def _start(self, info: RunInfo) -> None:
        try:
            self.events.emit("on_start", info)
        except CallbackError as error:
            raise TrainingFailed(f"training could not start: {error}") from error

    def _end(self, status: str) -> None:
        """``on_end`` for every status; after a failure its own errors only warn, so that the
        first error is the one reported."""
        try:
            self.events.emit("on_end", self.step, self.metrics, status)
        except CallbackError as error:
            if status in ("failed", "interrupted"):
                warnings.warn(str(error), stacklevel=2)
                return
            raise TrainingFailed(
                f"training finished at step {self.step} (checkpoint written), but {error}"
            ) from error

    def _stop(self, signum: int | None) -> None:
        """Checkpoint and stop after a signal (``None``: one that reached another process)."""
        name = signal.Signals(signum).name if signum else "a signal to another process"
        path = self.checkpoint()
        if self.main:
            self.events.emit("on_interrupt", self.step, name, path)
            say(
                f"stopped by {name} after step {self.step}; checkpoint {path} written. Run the "
                f"same command again to resume."
            )
        if self.group is not None:  # every process stopped here: they leave together
            self.group.meet()
        raise KeyboardInterrupt(f"training interrupted at step {self.step}")

    def _finish(self) -> None:
        if self.last_frames is not None:  # the final weights must give a finite loss too
            with self._rng_kept(), torch.no_grad(), self.update.autocast():
                loss = self.update.loss(self.last_frames, self.step)
            finite = bool(torch.isfinite(loss))
            if self.group is not None:  # every process's last batch, so that all agree
                finite = not self.group.agree(not finite)[0]
            if not finite:
                self._diverged(
                    TrainingDiverged(f"loss became {loss.item()} after step {self.step}")
                )
        self.checkpoint(final=True)
        self._confirm()

    def _guarded(self, part: Callable[..., Result], *args) -> Result:
        """A part of the loop (a step, or the group's agreement before it, where a broken group
        shows first); an error in it stops the run with a checkpoint of the last finished step."""
        try:
            return part(*args)
        except KeyboardInterrupt:  # a second Ctrl-C: the step is half done, so no checkpoint
            newest = self.last_good or self.unconfirmed or "none yet"
            say(f"stopped at once in step {self.step + 1}; newest checkpoint: {newest}")
            raise
        except TrainingDiverged:
            raise
        except Exception as error:
            cause = _cause(error, self.config, self.run_dir.path)
            raise TrainingFailed(
                f"training stopped after step {self.step}: {cause}; {self._keep()}"
            ) from error

    def _keep(self) -> str:
        """Checkpoint the last finished step after an error, and say what is on disk."""
        newest = self.last_good or self.unconfirmed
        if not self.main:
            return f"rank 0 keeps the checkpoints (process {self.group.rank} writes none)"
        if self.update.updating or self.maintained:  # the weights are no longer the step's
            return (
                f"no checkpoint written (the weights were part-way through step "
                f"{self.step + 1}); the newest is {newest}"
            )
        try:
            path = self.checkpoint(announce=False)  # the run is failing: no more events
        except Exception as error:
            cause = _cause(error, self.config, self.run_dir.path)
            return (
                f"the checkpoint of step {self.step} could not be written ({cause}); the newest "
                f"is {newest}"
            )
        return f"checkpoint {path} written; fix the cause and run the same command to resume"

    def _diverged(self, error: TrainingDiverged) -> None:
        """The weights of the unconfirmed checkpoint (if any) gave a non-finite loss: it is not
        good and is removed; the message names the last good one."""
        if self.unconfirmed is not None:
            self.unconfirmed.unlink(missing_ok=True)
            self.unconfirmed = None
        where = (
            f"the last good checkpoint is {self.last_good}"
            if self.last_good
            else "no good checkpoint was written"
        )
        raise TrainingDiverged(
            f"{error}; {where}. Lower --lr or check the data for bad frames."
        ) from None

    def _one_step(self) -> None:
        t = self.config.train
        items = self._items()
        frames = torch.stack([self.stacks[int(i)] for i in items])
        frames = frames.to(self.device, non_blocking=True)
        self._maintain(frames)
        try:
            objective = self.update(frames, self.step, on_finite_loss=self._confirm)
        except TrainingDiverged as error:
            self._diverged(error)
        self.step += 1
        self.maintained = False
        self.last_frames = frames
        with torch.no_grad():
            self.usage += sprite_usage(objective.output).cpu()
        logging = self.main and (self.step % t.log_every == 0 or self.step == t.num_steps)
        if logging:
            with self._rng_kept():
                measured = measure(self.model, objective.output, frames, objective.terms)
            self.metrics.update(measured)
        postfix = {k: self.metrics[k] for k in ("psnr", "psnr_hard") if k in self.metrics}
        self.events.emit("on_step", self.step, {"loss": objective.loss.item(), **postfix})
        if logging:
            self._log()
        if self.main and t.image_every and self.step % t.image_every == 0:
            with self._rng_kept():
                images = panels(self.model, objective.output, frames)
            self.events.emit("on_images", self.step, images)
        if self.main and t.eval_every and self.step % t.eval_every == 0:
            self._evaluate()
        if self.step % t.checkpoint_every == 0 and self.step < t.num_steps:
            self.checkpoint()

    def _rng_kept(self):
        """The random state is left as it was: what a run logs, draws or checks never changes
        its training (a random plane order in a hard render, say), so logging settings and
        rank 0's extra work leave the weights alone."""
        return torch.random.fork_rng([self.device] if self.device.type == "cuda" else [])

    def _items(self) -> torch.Tensor:
        """This step's items: a function of (seed, step) alone, so a resumed run sees the
        batches an uninterrupted one would. In a group of W processes, process r takes the
        r-th slice of bs of the step's global batch of W bs items."""
        t, group = self.config.train, self.group
        if group is None:
            return batch_indices(len(self.stacks), t.bs, t.seed, self.step)
        items = batch_indices(len(self.stacks), t.bs * group.world, t.seed, self.step)
        return items[group.rank * t.bs : (group.rank + 1) * t.bs]

    def _maintain(self, frames: torch.Tensor) -> None:
        """Before the update of the step after every ``merge_every``-th: free repeated and
        unused sprites and re-seed them from what the model draws worst in this step's
        ``frames``; after every ``reinit_unused``-th: re-seed the unused ones from used ones.
        Before the next update, not after the last one: the weights of every step boundary (a
        checkpoint, an evaluation, the end of a run) are trained ones, never freshly re-seeded
        entries that no step has trained yet."""
        t = self.config.train
        merge = t.merge_every and self.step and self.step % t.merge_every == 0
        reinit = t.reinit_unused and self.step and self.step % t.reinit_unused == 0
        if not (merge or reinit):
            return
        self.maintained = True
        usage = self.group.sum(self.usage) if self.group is not None else self.usage
        if merge:
            self._merge(frames, usage)
        else:
            count = self.model.dictionary.reseed_unused(usage, self.reseed_generator)
            self.metrics["reinit_sprites"] = float(count)
        self.usage.zero_()

    @torch.no_grad()
    def _merge(self, frames: torch.Tensor, usage: torch.Tensor) -> None:
        """One sprite per look: entries that repeat a more used one (:func:`duplicate_entries`)
        and entries no slot used since the last merge become foreground patches of ``frames``
        against the model's reconstruction of them, i.e. of what the model draws worst. In a
        group, rank 0 decides and its dictionary is shared."""
        dictionary, cell = self.model.dictionary, self.model.grid.cell
        sprites, _ = dictionary()
        repeated = duplicate_entries(sprites.float().cpu(), usage.long())
        entries = sorted(set(repeated) | set((usage == 0).nonzero().flatten().tolist()))
        if entries and (self.group is None or self.group.main):
            with self._rng_kept(), self.update.autocast():
                drawn = self.model(frames).reconstruction.float()
            images = rearrange(frames.float(), "B T C H W -> (B T) C H W").cpu()
            drawn = rearrange(drawn, "B T C H W -> (B T) C H W").cpu()
            patches = foreground_patches(images, drawn, cell, len(entries), self.reseed_generator)
            dictionary.replace(entries, patches)
        if self.group is not None:
            self.group.share(dictionary)
        self.metrics.update(
            merged_sprites=float(len(repeated)), reseeded_sprites=float(len(entries))
        )

    def _log(self) -> None:
        """The logged scalars to the callbacks; each diagnosis's warning once per session."""
        self.events.emit("on_log", self.step, dict(self.metrics))
        for kind, message in diagnose(self.metrics, self.step, self.config).items():
            if kind not in self.warned:
                self.warned.add(kind)
                warnings.warn(message, stacklevel=2)
                say(message)

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
            with self._rng_kept():
                scalars = evaluate_during_training(
                    self.model, self.eval_data, self.run_dir.path, self.step, self.device
                )
            self.events.emit("on_evaluation", self.step, scalars)
