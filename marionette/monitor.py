"""What a user sees while training: a progress bar, TensorBoard scalars and images, a process title.

Each piece is optional: without tqdm a line is printed every log interval, without tensorboard
the scalars go to ``metrics.csv`` only (written by :class:`marionette.rundir.MetricsLog`),
without setproctitle the title is left.
"""

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["Monitor", "format_duration"]


def format_duration(seconds: float) -> str:
    """``3725`` -> ``"1h02m"``; ``65`` -> ``"1m05s"``."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Monitor:
    """Progress bar, TensorBoard and process title for one run.

    Args:
        run_dir: where the TensorBoard events go (``RUN/tensorboard``).
        start, total: first and last step.
        name: run name shown in the process title.
        progress: show a progress bar (tqdm if installed, else a line per log interval).
        tensorboard: write TensorBoard events (needs the ``tensorboard`` package).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        start: int,
        total: int,
        name: str,
        progress: bool = True,
        tensorboard: bool = True,
    ) -> None:
        self.run_dir, self.total, self.name = Path(run_dir), total, name
        self.start_step, self.start_time = start, time.monotonic()
        self.bar = None
        if progress:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=total, initial=start, dynamic_ncols=True, unit="step", desc=name
                )
            except ImportError:
                self.bar = None
        self.progress = progress
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start)
            except ImportError:
                warnings.warn(
                    "tensorboard is not installed: scalars go to metrics.csv only "
                    "(pip install 'marionette[monitor]')",
                    stacklevel=2,
                )
        try:
            import setproctitle

            self._title = setproctitle.setproctitle
        except ImportError:
            self._title = None

    def eta(self, step: int) -> float:
        """Seconds left, from the speed since this monitor started."""
        done = step - self.start_step
        elapsed = time.monotonic() - self.start_time
        return (self.total - step) * elapsed / done if done > 0 else float("nan")

    def step(self, step: int, postfix: dict[str, float]) -> None:
        """Advance the bar to ``step`` and show ``postfix`` values."""
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.refresh()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Log scalars to TensorBoard and (without tqdm) the console; update the title."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        if self.progress and self.bar is None:
            text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            print(
                f"[{self.name}] step {step}/{self.total} {text} eta "
                f"{format_duration(self.eta(step))}",
                file=sys.stderr,
                flush=True,
            )
        if self._title is not None:
            self._title(
                f"marionette:{self.name} {step}/{self.total} eta {format_duration(self.eta(step))}"
            )

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """Log [H, W, 3] uint8 images to TensorBoard."""
        if self.writer is not None:
            for key, image in images.items():
                self.writer.add_image(key, image, step, dataformats="HWC")

    def write(self, message: str) -> None:
        """Print a message without breaking the progress bar."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
