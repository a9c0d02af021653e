"""Trainer callbacks: user objects that :func:`marionette.train` calls on named events.

A callback is any object with some of the methods below (subclass :class:`Callback` to get
no-op defaults). They are called in this order, with these arguments:

=================================================  =============================================
``on_start(run: RunInfo)``                         once, before the first step of this session
``on_step(step: int, scalars: dict)``              after every update: ``loss``, and the latest
                                                   logged ``psnr`` / ``psnr_hard``
``on_log(step: int, scalars: dict)``               every ``log_every`` steps: the full row that
                                                   ``metrics.csv`` gets (losses, PSNR, usage, ...)
``on_images(step: int, images: dict)``             every ``image_every`` steps: name -> uint8
                                                   ``[H, W, 3]`` panel
``on_evaluation(step: int, scalars: dict)``        every ``eval_every`` steps: ``eval/...``
``on_checkpoint(step: int, path: Path, final)``    after a checkpoint is written
``on_interrupt(step: int, signal: str, path)``     Ctrl-C or SIGTERM: stopped at a step boundary,
                                                   checkpoint ``path`` written
``on_end(step: int, metrics: dict, status: str)``  last; ``status`` is ``finished``, ``stopped``
                                                   (a callback raised :class:`StopTraining`),
                                                   ``interrupted`` or ``failed``
=================================================  =============================================

Steps are the run's own: a resumed run continues the numbers. Raising :class:`StopTraining`
from any event ends the run after the current step with a final checkpoint (the same command
continues it to ``num_steps``). Any other exception stops the run like any error in a step: a
checkpoint of the last finished step, and a message that names the callback and the event.

The built-in monitors (``metrics.csv``, TensorBoard, the progress bar, the process title) are
callbacks too: :mod:`marionette.monitor`.
"""

from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .core import MarioNette

__all__ = ["EVENTS", "Callback", "CallbackError", "Callbacks", "RunInfo", "StopTraining"]

#: The events, in the order a run emits them.
EVENTS = (
    "on_start",
    "on_step",
    "on_log",
    "on_images",
    "on_evaluation",
    "on_checkpoint",
    "on_interrupt",
    "on_end",
)


class StopTraining(Exception):
    """Raise from a callback to end the run after the current step (the message says why)."""


class CallbackError(RuntimeError):
    """A callback raised; the message names it, the event and the step."""


@dataclass(frozen=True)
class RunInfo:
    """What ``on_start`` receives.

    Attributes:
        run_dir: the run directory.
        config: the run's settings (as recorded in ``config.json``).
        model: the model being trained (its weights change in place).
        step: the step this session starts from (0, or the checkpoint's when resumed).
        num_steps: the step the run ends at.
    """

    run_dir: Path
    config: Config
    model: MarioNette
    step: int
    num_steps: int


class Callback:
    """No-op defaults for every event; override the ones you need (see the module)."""

    def on_start(self, run: RunInfo) -> None:
        pass

    def on_step(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def on_log(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def on_images(self, step: int, images: dict) -> None:
        pass

    def on_evaluation(self, step: int, scalars: dict[str, float]) -> None:
        pass

    def on_checkpoint(self, step: int, path: Path, final: bool) -> None:
        pass

    def on_interrupt(self, step: int, signal: str, path: Path) -> None:
        pass

    def on_end(self, step: int, metrics: dict[str, float], status: str) -> None:
        pass


def _check(callback: object) -> object:
    """A callback must be an object (not a class or function) whose ``on_*`` names are events."""
    if isinstance(callback, type) or callable(callback):
        raise TypeError(
            f"callbacks must be objects with on_<event> methods (see marionette.callbacks), got "
            f"{callback!r}; pass an instance"
        )
    unknown = [name for name in dir(callback) if name.startswith("on_") and name not in EVENTS]
    if unknown:
        raise TypeError(
            f"callback {type(callback).__name__} has methods for unknown events {unknown}; the "
            f"events are {', '.join(EVENTS)}"
        )
    return callback


class Callbacks:
    """Calls every callback's method for an event, in the order given.

    A :class:`StopTraining` is remembered (``stop``, with the callback's name) and the other
    callbacks still hear the event; any other exception becomes a :class:`CallbackError`.
    """

    def __init__(self, callbacks) -> None:
        self.callbacks = [_check(callback) for callback in callbacks]
        self.stop: str | None = None

    def emit(self, event: str, *args) -> None:
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is None:
                continue
            try:
                method(*args)
            except StopTraining as request:
                if self.stop is None:
                    self.stop = f"{type(callback).__name__}: {request}"
            except Exception as error:
                step = f" at step {args[0]}" if args and isinstance(args[0], int) else ""
                raise CallbackError(
                    f"callback {type(callback).__name__}.{event}{step} raised "
                    f"{type(error).__name__}: {error}"
                ) from error
