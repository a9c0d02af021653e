"""Frames from folders (ours or MOC's layout), generators and games; stacks of consecutive
frames; ground truth."""

from .dataset import Dataset, load_dataset, open_frames, package_versions, write_dataset
from .frames import (
    RESIZE_POLICIES,
    FrameFolder,
    FrameSource,
    InMemoryFrames,
    frame_sort_key,
    load_image,
)
from .groundtruth import GT_COLUMNS, GroundTruth
from .moc import MocSplit, find_moc
from .stacks import FrameStacks, batch_indices, stack_starts
from .synthetic import (
    SYNTHETIC_WORLDS,
    GeneratedData,
    SpriteWorldConfig,
    TetrominoesConfig,
    generate,
    generate_sprite_world,
    generate_tetrominoes,
)

__all__ = [
    "GT_COLUMNS",
    "RESIZE_POLICIES",
    "SYNTHETIC_WORLDS",
    "Dataset",
    "FrameFolder",
    "FrameSource",
    "FrameStacks",
    "GeneratedData",
    "GroundTruth",
    "InMemoryFrames",
    "MocSplit",
    "SpriteWorldConfig",
    "TetrominoesConfig",
    "batch_indices",
    "find_moc",
    "frame_sort_key",
    "generate",
    "generate_sprite_world",
    "generate_tetrominoes",
    "load_dataset",
    "load_image",
    "open_frames",
    "package_versions",
    "stack_starts",
    "write_dataset",
]
