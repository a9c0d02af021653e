"""One optimization step: the objective's loss under the chosen precision, checked, then
backpropagated and applied by the optimizers."""

from contextlib import nullcontext
from dataclasses import fields

import torch

from .config import Config, TrainConfig
from .core import MarioNette, Objective, ObjectiveWeights, training_objective

__all__ = ["TrainingDiverged", "TrainingStep", "build_optimizers", "objective_weights"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def objective_weights(train: TrainConfig) -> ObjectiveWeights:
    """The loss weights of a training configuration (the settings of the same names)."""
    return ObjectiveWeights(**{f.name: getattr(train, f.name) for f in fields(ObjectiveWeights)})


def build_optimizers(model: MarioNette, config: Config) -> list[torch.optim.Optimizer]:
    """AdamW for the model (the dictionary in its own parameter group when ``lr_dict`` is set),
    and a second AdamW at ``lr_bg`` for a background that asks for its own learning rate (the
    original's learned strip)."""
    t = config.train
    background = list(model.background.parameters()) if model.background.own_learning_rate else []
    dictionary = list(model.dictionary.parameters()) if t.lr_dict else []
    special = {id(p) for p in background + dictionary}
    groups = [{"params": [p for p in model.parameters() if id(p) not in special], "lr": t.lr}]
    if dictionary:
        groups.append({"params": dictionary, "lr": t.lr_dict})
    optimizers = [torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)]
    if background:
        optimizers.append(torch.optim.AdamW(background, lr=t.lr_bg, weight_decay=t.weight_decay))
    return optimizers


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` is bf16 autocast on CUDA and fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


class TrainingStep:
    """Computes :func:`marionette.core.training_objective` and applies one AdamW update.

    Args:
        model: the model being trained (in train mode).
        config: the run's configuration (optimizers, loss weights, precision).
        device: where the model lives.
    """

    def __init__(self, model: MarioNette, config: Config, device: torch.device) -> None:
        self.model, self.device = model, device
        self.weights = objective_weights(config.train)
        self.optimizers = build_optimizers(model, config)
        self.precision = resolve_precision(config.train.precision, device)

    def autocast(self):
        """The precision context of the forward pass."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def __call__(self, frames: torch.Tensor, step: int) -> Objective:
        """Forward, check, backward and update on a batch of stacks ``[B, T, 3, H, W]``.

        Raises:
            TrainingDiverged: the loss is NaN or infinite (nothing was updated).
        """
        with self.autocast():
            objective = training_objective(self.model, frames, self.weights, step)
        if not torch.isfinite(objective.loss):
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in objective.terms.items())
            raise TrainingDiverged(f"loss became {objective.loss.item()} at step {step} ({terms})")
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        objective.loss.backward()
        for optimizer in self.optimizers:
            optimizer.step()
        return objective

    def state_dict(self) -> list[dict]:
        """The optimizers' states."""
        return [optimizer.state_dict() for optimizer in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for optimizer, state in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(state)
