"""The built-in monitors, each a callback (:mod:`marionette.callbacks`): ``metrics.csv``,
TensorBoard scalars and images, a progress bar and the process title.

Each is optional: without tqdm the progress bar is a line per log interval, without tensorboard
the scalars go to ``metrics.csv`` only, without setproctitle the title is left.
"""

import sys
import time
import warnings

from .callbacks import Callback, RunInfo
from .rundir import METRICS_FILE, MetricsLog

__all__ = [
    "MetricsFile",
    "ProcessTitle",
    "ProgressBar",
    "TensorBoard",
    "default_callbacks",
    "format_duration",
    "say",
]


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1h02m"``; ``65`` -> ``"1m05s"``."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def say(message: str) -> None:
    """Print a message to stderr without breaking a progress bar."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(message, file=sys.stderr, flush=True)
    else:
        tqdm.write(message, file=sys.stderr)


class _Clock(Callback):
    """Steps per second since this session started, for the time left."""

    def on_start(self, run: RunInfo) -> None:
        self.name, self.first, self.total = run.run_dir.name, run.step, run.num_steps
        self.started = time.monotonic()

    def eta(self, step: int) -> str:
        done = step - self.first
        left = (self.total - step) * (time.monotonic() - self.started) / done if done else 0
        return format_duration(left) if done else "?"


class MetricsFile(Callback):
    """``RUN/metrics.csv``: a row per log interval and per evaluation. Rows a crashed or killed
    session wrote past the checkpoint a run resumes from are cut first."""

    def on_start(self, run: RunInfo) -> None:
        self.log = MetricsLog(run.run_dir / METRICS_FILE)
        self.log.truncate(run.step)

    def on_log(self, step: int, scalars: dict[str, float]) -> None:
        self.log.append(step, scalars)

    on_evaluation = on_log


class TensorBoard(Callback):
    """Scalars and image panels in ``RUN/tensorboard`` (events past the resumed step purged)."""

    def on_start(self, run: RunInfo) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn(
                "tensorboard is not installed: scalars go to metrics.csv only "
                "(pip install 'marionette[monitor]')",
                stacklevel=2,
            )
            return
        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"), purge_step=run.step)

    def on_log(self, step: int, scalars: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)

    on_evaluation = on_log

    def on_images(self, step: int, images: dict) -> None:
        if self.writer is not None:
            for key, image in images.items():
                self.writer.add_image(key, image, step, dataformats="HWC")

    def on_end(self, step: int, metrics: dict[str, float], status: str) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar(_Clock):
    """A tqdm bar with the loss and PSNR; without tqdm, a line per log interval."""

    def on_start(self, run: RunInfo) -> None:
        super().on_start(run)
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(
                total=run.num_steps, initial=run.step, dynamic_ncols=True, unit="step",
                desc=self.name,
            )  # fmt: skip

    def on_step(self, step: int, scalars: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=False)
            self.bar.refresh()

    def on_log(self, step: int, scalars: dict[str, float]) -> None:
        if self.bar is None:
            text = " ".join(f"{k}={v:.4g}" for k, v in scalars.items())
            print(
                f"[{self.name}] step {step}/{self.total} {text} eta {self.eta(step)}",
                file=sys.stderr,
                flush=True,
            )

    def on_end(self, step: int, metrics: dict[str, float], status: str) -> None:
        if self.bar is not None:
            self.bar.close()


class ProcessTitle(_Clock):
    """``marionette:<run> <step>/<total> eta <time>`` as the process title (``ps``, ``top``),
    updated every log interval, where setproctitle is installed."""

    def on_start(self, run: RunInfo) -> None:
        super().on_start(run)
        try:
            import setproctitle
        except ImportError:
            self.title = None
        else:
            self.title = setproctitle.setproctitle

    def on_log(self, step: int, scalars: dict[str, float]) -> None:
        if self.title is not None:
            self.title(f"marionette:{self.name} {step}/{self.total} eta {self.eta(step)}")


def default_callbacks(progress: bool = True, tensorboard: bool = True) -> list[Callback]:
    """The monitors :func:`marionette.train` runs unless told otherwise."""
    return [
        MetricsFile(),
        *([ProgressBar()] if progress else []),
        *([TensorBoard()] if tensorboard else []),
        ProcessTitle(),
    ]
