"""marionette: self-supervised sprite learning (MarioNette) with temporal object consistency."""

from .core import Decomposition, MarioNette, MarioNetteOutput, ModelConfig, render

__all__ = ["Decomposition", "MarioNette", "MarioNetteOutput", "ModelConfig", "render"]
__version__ = "0.1.0"
