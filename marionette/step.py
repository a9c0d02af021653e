"""One optimization step: the objective's loss under the chosen precision, checked, then
backpropagated and applied by the optimizers."""

import ctypes
import functools
import os
import platform
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import Config, TrainConfig
from .core import MarioNette, Objective, ObjectiveWeights, training_objective
from .distributed import Group

__all__ = [
    "OutOfMemory",
    "PRECISIONS",
    "Precision",
    "TrainingDiverged",
    "TrainingStep",
    "available_memory",
    "build_optimizers",
    "check_memory",
    "cpu_has_native_bf16",
    "native_bf16_flag",
    "objective_weights",
    "prepare_training",
    "resolve_precision",
    "retain_freed_memory",
    "step_memory_lower_bound",
]

_GIB = 1 << 30


class OutOfMemory(MemoryError):
    """A training step cannot fit in the device's memory (found before the first step)."""


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


def step_memory_lower_bound(config: Config) -> dict[str, int]:
    """Bytes (fp32) that exist at once at the end of any training step's forward after the
    first, by tensor family: the parameters with the previous step's gradients and two AdamW
    moments (16 |theta|), and tensors the forward keeps for the backward: the decoder's hidden
    activations (2 K 8D, ``mlp`` dictionary), the decoded dictionary (K 4 S^2), the selection
    weights (N K) and soft sprites (N 4 S^2) of the N = B T NL Lh Lw slots, the rendered planes
    (B T NL 4 H W) and one full-resolution encoder activation (B T D H W). The real peak is
    higher (every other intermediate, the gradients of the backward); this bound is what
    :func:`check_memory` refuses on, so a refusal is never a false alarm."""
    with torch.device("meta"):  # the parameter count without allocating the parameters
        model = MarioNette(config.model)
    m, grid = model.config, model.grid
    images = config.train.bs * config.data.frames_per_item
    slots = images * m.num_layers * grid.rows * grid.cols
    sprite = 4 * grid.sprite**2
    parameters = sum(p.numel() for p in model.parameters())
    hidden = 2 * m.num_sprites * 8 * m.dim_z if m.dictionary == "mlp" else 0
    return {
        "parameters, gradients and AdamW state": 16 * parameters,
        f"dictionary decoder ({m.num_sprites} x {8 * m.dim_z}, twice)": 4 * hidden,
        f"dictionary ({m.num_sprites} sprites of 4 x {grid.sprite} x {grid.sprite})": (
            4 * m.num_sprites * sprite
        ),
        f"selection weights ({slots} slots x {m.num_sprites} sprites)": 4 * slots * m.num_sprites,
        "soft sprites of the slots": 4 * slots * sprite,
        "rendered planes": 4 * images * m.num_layers * 4 * m.height * m.width,
        "encoder activation": 4 * images * m.dim_z * m.height * m.width,
    }


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, else the host's MemAvailable (None when
    the platform does not say)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(config: Config, device: torch.device) -> None:
    """Refuse a configuration whose step cannot fit before it allocates anything large.

    Raises:
        OutOfMemory: the lower bound of :func:`step_memory_lower_bound` exceeds the free
            memory; the message gives both, the largest parts and the settings to lower.
    """
    free = available_memory(device)
    parts = step_memory_lower_bound(config)
    need = sum(parts.values())
    if free is None or need <= free:
        return
    largest = sorted(parts.items(), key=lambda item: -item[1])[:3]
    listed = ", ".join(f"{name} {size / _GIB:.1f} GiB" for name, size in largest)
    raise OutOfMemory(
        f"a training step needs at least {need / _GIB:.1f} GiB but {free / _GIB:.1f} GiB are "
        f"free on {device} ({listed}); lower --num_sprites, --bs, --frames_per_item, "
        f"--num_layers or the canvas"
    )


#: glibc's malloc settings (``mallopt``): the size from which a block is mapped on its own (and
#: unmapped when freed), and the free space at the top of the heap beyond which it is returned.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Environment variables by which a user sets those thresholds; where one is set, theirs win.
_MALLOC_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def retain_freed_memory(threshold: int = (1 << 31) - 1) -> bool:
    """Keep the memory that tensors free inside the process, for the next step's tensors.

    glibc maps every block above its mmap threshold (at most 32 MiB by default) on its own and
    returns it to the kernel when it is freed, so every step's large activations arrive as fresh
    pages that the kernel zeroes again: on the project's 2-core CPU that system time is about a
    quarter of a Space Invaders step (benchmarks/RESULTS.md). With both thresholds at
    ``threshold`` bytes, freed blocks stay in the heap and are reused; the process's resident
    memory then stays near its peak instead of falling between steps, and that peak is higher
    (measured: 10-70 %, as the heap fragments, then steady). It applies to the whole
    process, once set. Returns whether it applied: only under glibc, and not where the user
    set the thresholds in the environment.
    """
    if platform.libc_ver()[0] != "glibc" or any(os.environ.get(k) for k in _MALLOC_ENVIRONMENT):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(option, threshold) == 1 for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))


def prepare_training(model: MarioNette, device: torch.device) -> MarioNette:
    """The model on ``device`` as a training step runs it fastest there.

    Its parameters in channels-last memory format, so that the image encoder's convolutions run
    in NHWC (faster on CUDA and, measured, on the CPU: a stride-2 convolution's backward takes
    half the time); on the CPU, freed memory kept for reuse (:func:`retain_freed_memory`).
    Together they cut a Space Invaders step on the project's CPU by about a third
    (benchmarks/RESULTS.md). Values are the same up to float rounding.
    """
    if device.type == "cpu":
        retain_freed_memory()
    return model.to(device, memory_format=torch.channels_last)


def native_bf16_flag(cpuinfo: str) -> bool:
    """Whether Linux's ``/proc/cpuinfo`` text lists a native bf16 instruction set (AVX512-BF16
    or AMX-BF16) among the CPU's flags.

    Example:
        >>> native_bf16_flag("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni")
        True
        >>> native_bf16_flag("flags\t\t: fpu avx2 avx512f avx512_vnni")
        False
    """
    return re.search(r"^flags\s*:.*\b(avx512_bf16|amx_bf16)\b", cpuinfo, re.MULTILINE) is not None


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (:func:`native_bf16_flag`) and oneDNN runs bf16
    on it: there its bf16 convolutions take a third to a half of the fp32 time
    (benchmarks/RESULTS.md); elsewhere oneDNN would emulate them, or not run them at all."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return native_bf16_flag(cpuinfo) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Precision(NamedTuple):
    """What a precision setting runs in bf16."""

    forward: bool  # the whole forward pass under bf16 autocast
    encoder: torch.dtype | None  # the image encoder's own autocast dtype (None: the forward's)


#: The precision settings other than ``"auto"`` (:func:`resolve_precision`), by name.
PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(False, None),
    "bf16": Precision(True, None),
    "bf16_encoder": Precision(False, torch.bfloat16),
}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bf16 autocast on CUDA; on a CPU with native bf16 (:func:`cpu_has_native_bf16`)
    the image encoder's convolutions in bf16 and the rest in fp32 (``"bf16_encoder"``: the
    convolutions are most of a step there, and bf16 autocast of everything is no faster); fp32
    elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16_encoder" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


class _Objective(nn.Module):
    """The training objective as one module call, so that DistributedDataParallel sees it as
    the forward whose backward it synchronises."""

    def __init__(self, model: MarioNette, weights: ObjectiveWeights) -> None:
        super().__init__()
        self.model, self.weights = model, weights

    def forward(self, frames: torch.Tensor, step: int) -> Objective:
        return training_objective(self.model, frames, self.weights, step)


class TrainingStep:
    """Computes :func:`marionette.core.training_objective` and applies one AdamW update.

    Args:
        model: the model being trained (in train mode).
        config: the run's configuration (optimizers, loss weights, precision).
        device: where the model lives.
        group: the processes training together (None: this one alone). The objective is then
            wrapped in DistributedDataParallel (rank 0's weights are broadcast at construction,
            gradients are averaged in the backward) and the processes agree before every update
            whether the loss is finite.
    """

    def __init__(
        self, model: MarioNette, config: Config, device: torch.device, group: Group | None = None
    ) -> None:
        self.model, self.device, self.group = model, device, group
        self.weights = objective_weights(config.train)
        self.objective: nn.Module = _Objective(model, self.weights)
        if group is not None:
            self.objective = DistributedDataParallel(
                self.objective,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,  # a setting may leave some parameters out
            )
        self.optimizers = build_optimizers(model, config)
        self.precision = resolve_precision(config.train.precision, device)
        model.image_encoder.autocast_dtype = PRECISIONS[self.precision].encoder
        self.updating = False  # True while the optimizers write the weights

    def loss(self, frames: torch.Tensor, step: int) -> torch.Tensor:
        """The objective's loss alone (call under ``torch.no_grad()`` to check weights)."""
        return training_objective(self.model, frames, self.weights, step).loss

    def autocast(self):
        """The precision context of the forward pass."""
        if PRECISIONS[self.precision].forward:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def __call__(
        self, frames: torch.Tensor, step: int, on_finite_loss: Callable[[], None] | None = None
    ) -> Objective:
        """Forward, check, backward and update on a batch of stacks ``[B, T, 3, H, W]``.
        ``on_finite_loss`` is called once the loss of the current weights is known to be finite.

        Raises:
            TrainingDiverged: the loss is NaN or infinite (nothing was updated).
        """
        with self.autocast():
            objective = self.objective(frames, step)
        finite = bool(torch.isfinite(objective.loss))
        if self.group is not None:
            finite = not self.group.agree(not finite)[0]
        if not finite:
            if torch.isfinite(objective.loss):
                raise TrainingDiverged(f"loss became non-finite in another process at step {step}")
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in objective.terms.items())
            raise TrainingDiverged(f"loss became {objective.loss.item()} at step {step} ({terms})")
        if on_finite_loss is not None:
            on_finite_loss()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        objective.loss.backward()
        self.updating = True
        for optimizer in self.optimizers:
            optimizer.step()
        self.updating = False
        return objective

    def state_dict(self) -> list[dict]:
        """The optimizers' states."""
        return [optimizer.state_dict() for optimizer in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for optimizer, state in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(state)
