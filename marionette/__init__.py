"""marionette: self-supervised sprite learning (MarioNette) with temporal object consistency."""

from .api import load
from .callbacks import Callback, StopTraining
from .config import Config, DataConfig, TrainConfig
from .core import Decomposition, MarioNette, MarioNetteOutput, ModelConfig, render
from .presets import PRESETS, preset_config
from .trainer import train

__all__ = [
    "PRESETS",
    "Callback",
    "Config",
    "DataConfig",
    "Decomposition",
    "MarioNette",
    "MarioNetteOutput",
    "ModelConfig",
    "TrainConfig",
    "load",
    "preset_config",
    "StopTraining",
    "render",
    "train",
]
__version__ = "0.1.0"
