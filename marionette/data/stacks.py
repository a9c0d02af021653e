"""Training items of T consecutive frames that never cross a clip boundary."""

import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from .frames import FrameSource

__all__ = ["FrameStacks", "batch_indices", "stack_starts"]


def stack_starts(clips: np.ndarray, times: np.ndarray, length: int) -> np.ndarray:
    """Indices i such that frames i .. i + length - 1 are consecutive frames of one clip.

    A run of consecutive frames needs adjacent positions, the same clip and times increasing by
    one; a gap in time or a clip change ends it.

    Example:
        >>> stack_starts(np.array([0, 0, 0, 1, 1]), np.array([0, 1, 2, 0, 1]), 2).tolist()
        [0, 1, 3]
    """
    if length < 1:
        raise ValueError(f"frames_per_item must be >= 1, got {length}")
    n = len(clips)
    if n == 0:
        return np.zeros(0, np.int64)
    continues = np.zeros(n, bool)  # frame i continues frame i - 1
    continues[1:] = (clips[1:] == clips[:-1]) & (times[1:] == times[:-1] + 1)
    run_start = np.maximum.accumulate(np.where(~continues, np.arange(n), 0))
    position = np.arange(n) - run_start  # position of frame i inside its run
    ends = np.arange(n)[position >= length - 1]  # last frame of a full stack
    return ends - (length - 1)


class FrameStacks(Dataset):
    """Items ``[T, 3, H, W]`` (float in [0, 1]) of T consecutive frames of one clip.

    Every start position that keeps the stack inside one clip is an item, so for a clip of n
    frames there are n - T + 1 items. Items are built explicitly by index (the public fork relied
    on the DataLoader's call order and broke for batch sizes not divisible by 4).

    Args:
        source: the frames (a folder, or generated frames in memory).
        frames_per_item: T.
    """

    def __init__(self, source: FrameSource, frames_per_item: int = 1) -> None:
        self.source, self.frames_per_item = source, frames_per_item
        self.starts = stack_starts(source.clips, source.times, frames_per_item)
        if len(self.starts) == 0:
            longest = _longest_run(source.clips, source.times)
            raise ValueError(
                f"frames_per_item={frames_per_item} is larger than every clip (the longest has "
                f"{longest} consecutive frames); use frames_per_item <= {longest}"
            )
        clips_total = len(np.unique(source.clips))
        clips_used = len(np.unique(source.clips[self.starts]))
        if clips_used < clips_total:
            warnings.warn(
                f"{clips_total - clips_used} of {clips_total} clips are shorter than "
                f"frames_per_item={frames_per_item} and are skipped",
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self.starts)

    def indices(self, item: int) -> np.ndarray:
        """Frame indices of item ``item``."""
        return self.starts[item] + np.arange(self.frames_per_item)

    def __getitem__(self, item: int) -> torch.Tensor:
        if not 0 <= item < len(self):
            raise IndexError(f"item {item} out of range for {len(self)} stacks")
        return self.source.frames(self.indices(item)).float() / 255.0


def _longest_run(clips: np.ndarray, times: np.ndarray) -> int:
    length = 1
    while len(stack_starts(clips, times, length + 1)):
        length += 1
    return length


def batch_indices(num_items: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Items of step ``step``: a function of (seed, step) only, so a resumed run sees the same
    batches as an uninterrupted one. Without replacement inside a batch when possible."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if batch <= num_items:
        return torch.randperm(num_items, generator=g)[:batch]
    return torch.randint(num_items, (batch,), generator=g)
