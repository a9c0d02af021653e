"""Run configuration: model, training and data settings, saved as readable JSON in a run.

Every setting has one unique name (the original's flag names where they exist), so a setting can
be read or changed by its flat name (``layer_size``, ``lr``, ``aow``) from the command line, a
sweep grid or Python: ``config.replace(layer_size=16, lr=3e-4)``.
"""

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ._io import write_json
from .core import (
    BACKGROUNDS,
    CODE_KINDS,
    CONTRASTS,
    DECODERS,
    GATING_MODES,
    OFFSET_PREDICTORS,
    PRESENCES,
    RENDERER_CHOICES,
    SELECTIONS,
    ModelConfig,
)
from .data.frames import RESIZE_POLICIES

__all__ = ["ALIASES", "CHOICES", "Config", "DataConfig", "TrainConfig"]


#: Allowed values of every setting that names one of a few choices: the configs check them and
#: the command line offers them.
CHOICES: dict[str, tuple[str, ...]] = {
    "background": tuple(BACKGROUNDS),
    "gating": GATING_MODES,
    "transform_encoder": tuple(OFFSET_PREDICTORS),
    "dictionary": DECODERS,
    "selection": tuple(SELECTIONS),
    "presence": tuple(PRESENCES),
    "resize": RESIZE_POLICIES,
    "precision": ("auto", "fp32", "bf16", "bf16_encoder"),
    "renderer": RENDERER_CHOICES,
    "typecheck": ("first", "on", "off"),
    "consistency_code": CODE_KINDS,
    "consistency_contrast": CONTRASTS,
    "sprite_init": ("random", "data", "objects"),
}


def _check_choices(config) -> None:
    """Raise unless every choice setting of ``config`` is one of :data:`CHOICES`."""
    for f in fields(config):
        allowed = CHOICES.get(f.name)
        if allowed is not None and getattr(config, f.name) not in allowed:
            raise ValueError(f"{f.name} must be one of {allowed}, got {getattr(config, f.name)!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimization, logging and checkpointing. Defaults are the original's where it had them.

    Attributes:
        bs: batch size (items of T frames).
        lr: AdamW learning rate of the model.
        lr_bg: AdamW learning rate of a learned background strip.
        lr_dict: AdamW learning rate of the sprite dictionary (0: the same as ``lr``).
        weight_decay: AdamW weight decay (PyTorch's default, as the original).
        num_steps: total optimization steps; a resumed run continues to this total.
        w_beta: weight of the Beta(2, 2) prior on selection weights and presence.
        w_probs: L1 presence weight, one value or one per layer.
        sprite_init: ``"random"`` (the original: sprites decoded from random codes),
            ``"data"`` (the dictionary starts from sprite-sized windows of training frames around
            foreground blobs, each cut to its cell, chosen for diversity; see
            :func:`marionette.core.foreground_patches`) or ``"objects"`` (the same with each
            blob whole where it fits the S = 2P sprite: objects larger than the cell start as
            one sprite; on Boxing relevant F 0.88 against 0.75, on Carnival 0.58 against 0.66,
            docs/results.md). The automatic settings choose between ``"data"`` and
            ``"objects"`` from the frames (:data:`marionette.autoconfig.RULES`).
        presence_warmup: steps at the start with the presence penalty off.
        hard_mix: weight of a straight-through hard reconstruction loss (arg-max sprite and
            rounded presence in the forward pass, soft gradients), ramped in over
            ``hard_warmup`` steps; 0 trains on the soft reconstruction only (the original).
        hard_warmup: steps over which ``hard_mix`` ramps from 0 to its value.
        reinit_unused: every this many steps, re-initialise dictionary sprites no slot selected
            since the last check (0: never).
        merge_every: every this many steps, free the dictionary entries that repeat a more
            used one (same alpha mask after the best integer shift, IoU >= 0.9, and mean
            colour within 0.1: :func:`marionette.core.duplicate_entries`) or that no slot used
            since the last merge, and re-seed them from the worst reconstructed regions of the
            next step's frames (0: never). Both levers act before the next step's update,
            never after the last step: checkpoints, evaluations and the final weights hold no
            entry that no step has trained.
        w_select: weight of the selection-prediction term: the presence-weighted cross-entropy
            of the anchor code's own logits q . z / sqrt(D) against the selection weights used
            (:func:`marionette.core.selection_prediction_loss`). With matched selection it makes
            the codes say which sprite their slot draws, which the matching otherwise decides
            alone (docs/results.md); with the learned selection the target is the logits' own
            softmax and the term has no gradient (0: off).
        aow: weight of the object-consistency loss (0: off).
        aow_warmup: steps over which the consistency weight ramps in linearly.
        consistency_code: which vector is an object's code for the consistency loss:
            ``"codes"`` (anchor code), ``"queries"`` (projected code) or ``"weights"``.
        consistency_radius: candidate radius in pixels (0: one cell size P).
        consistency_contrast: what a matched object's code is contrasted with: ``"objects"``
            (every object of the next frame) or ``"looks"`` (every slot of the next frame but
            the objects drawing the match's sprite; see :func:`marionette.core.consistency_loss`).
        seed: seeds Python, NumPy and torch before anything random happens.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"fp32"``, ``"bf16"`` (autocast of the forward), ``"bf16_encoder"`` (the
            image encoder's convolutions in bf16, the rest in fp32) or ``"auto"``: ``bf16`` on
            CUDA, ``bf16_encoder`` on a CPU with native bf16, else ``fp32``.
        renderer: ``"auto"`` (the fused Triton renderer on CUDA, PyTorch elsewhere),
            ``"torch"`` or ``"triton"`` (see :func:`marionette.core.render_decomposition`).
        threads: CPU threads for torch (0: torch's default).
        log_every: steps between scalar logs and hard-PSNR measurements.
        image_every: steps between TensorBoard image panels (0: never).
        checkpoint_every: steps between checkpoints.
        keep_checkpoints: how many recent checkpoints to keep (plus the final one).
        eval_every: steps between object evaluations against ground truth (0: never).
        typecheck: ``"first"`` (check shapes on the first step, then off), ``"on"``, ``"off"``.
        world_size: processes the run trains in (recorded from torchrun, not a flag): ``bs`` is
            each one's batch, the global batch is ``bs * world_size``.
    """

    bs: int = 8
    lr: float = 1e-4
    lr_bg: float = 1e-3
    lr_dict: float = 0.0
    weight_decay: float = 0.01
    num_steps: int = 200_000
    w_beta: float = 0.002
    w_probs: tuple[float, ...] = (0.005,)
    sprite_init: str = "random"
    presence_warmup: int = 0
    hard_mix: float = 0.0
    hard_warmup: int = 0
    reinit_unused: int = 0
    merge_every: int = 0
    w_select: float = 0.0
    aow: float = 0.0
    aow_warmup: int = 0
    consistency_code: str = "codes"
    consistency_radius: float = 0.0
    consistency_contrast: str = "objects"
    seed: int = 2
    device: str = "auto"
    precision: str = "auto"
    renderer: str = "auto"
    threads: int = 0
    log_every: int = 100
    image_every: int = 2000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 0
    typecheck: str = "first"
    world_size: int = 1

    def __post_init__(self) -> None:
        positive = ("bs", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints")
        positive += ("world_size",)
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.lr_bg <= 0:
            raise ValueError(f"learning rates must be > 0, got lr={self.lr}, lr_bg={self.lr_bg}")
        _check_choices(self)


@dataclass(frozen=True)
class DataConfig:
    """Where training frames come from.

    Attributes:
        data: a frame folder, or a MOC dataset (a ``<Game>-v0`` folder, whose train split is
            read, or one split's folder); ``None`` uses the synthetic world ``synthetic``.
        synthetic: name of a built-in world (see :data:`marionette.data.SYNTHETIC_WORLDS`).
        synthetic_clips: clips to generate for training (0: the world's default).
        frames_per_item: T, consecutive frames per training item (the consistency loss needs
            T >= 2).
        resize: how frames of another size reach the canvas: ``keep``, ``crop``, ``resize``,
            ``pad``.
        eval_data: a dataset folder with ``groundtruth.csv`` (or a MOC dataset: its test split)
            for evaluations during training (default: the synthetic world's held-out clips, or
            ``data`` if it has ground truth).
        eval_frames: frames evaluated during training (the first N; 0: all).
    """

    data: str | None = None
    synthetic: str = "demo"
    synthetic_clips: int = 0
    frames_per_item: int = 1
    resize: str = "keep"
    eval_data: str | None = None
    eval_frames: int = 512

    def __post_init__(self) -> None:
        if self.frames_per_item < 1:
            raise ValueError(f"frames_per_item must be >= 1, got {self.frames_per_item}")
        _check_choices(self)


_SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


def _field_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for section, cls in _SECTIONS.items():
        for f in fields(cls):
            if f.name in index:  # pragma: no cover - guarded by a test
                raise RuntimeError(f"setting {f.name} appears in two sections")
            index[f.name] = section
    return index


_FIELDS = _field_index()
#: Other names of settings: the original's flag names where ours differ.
ALIASES = {"num_classes": "num_sprites"}


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert ``value`` (from JSON or a command line string) to the field's type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, options[0], name)
    if origin is tuple:
        inner = typing.get_args(annotation)[0]
        if isinstance(value, str):
            value = [v for v in value.replace(";", ",").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            value = [value]
        return tuple(_coerce(v, inner, name) for v in value)
    try:
        if annotation is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return lowered in ("1", "true", "yes", "on")
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be {getattr(annotation, '__name__', annotation)}, got {value!r}"
        ) from None
    return value


@dataclass(frozen=True)
class Config:
    """A full run configuration: ``model``, ``train`` and ``data`` sections plus the preset name
    (``"auto"``: chosen from the data, :func:`marionette.autoconfig.auto_config`) and, for
    settings chosen from the data, the reason for each (``reasons``: setting -> text; a setting
    changed afterwards loses its reason)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preset: str | None = None
    reasons: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.train.aow > 0 and self.data.frames_per_item < 2:
            raise ValueError(
                f"the consistency loss (aow = {self.train.aow}) compares consecutive frames: "
                f"frames_per_item must be at least 2, got {self.data.frames_per_item} "
                f"(e.g. --frames-per-item 4)"
            )

    @staticmethod
    def canonical(name: str) -> str:
        """The setting's own name for ``name`` (one of :data:`ALIASES` or itself)."""
        return ALIASES.get(name, name)

    def with_reasons(self, reasons: dict[str, str]) -> "Config":
        """A copy that records why its settings were chosen (added to any reasons it has)."""
        return dataclasses.replace(self, reasons={**self.reasons, **reasons})

    @staticmethod
    def names() -> list[str]:
        """Every setting's flat name."""
        return list(_FIELDS)

    @staticmethod
    def fields() -> list[dataclasses.Field]:
        """Every setting's dataclass field (name, type, default), section by section."""
        return [f for cls in _SECTIONS.values() for f in fields(cls)]

    def get(self, name: str) -> Any:
        """A setting by flat name (or one of its :data:`ALIASES`)."""
        name = ALIASES.get(name, name)
        if name not in _FIELDS:
            raise KeyError(_unknown(name))
        return getattr(getattr(self, _FIELDS[name]), name)

    def replace(self, **changes: Any) -> "Config":
        """A copy with settings changed by flat name; values are converted to the field types.

        ``canvas_size`` sets height and width together; :data:`ALIASES` name their settings.
        """
        changes = {ALIASES.get(name, name): value for name, value in changes.items()}
        if "canvas_size" in changes:
            size = changes.pop("canvas_size")
            changes.setdefault("height", size)
            changes.setdefault("width", size)
        per_section: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
        for name, value in changes.items():
            if name == "preset":
                continue
            if name not in _FIELDS:
                raise KeyError(_unknown(name))
            section = _FIELDS[name]
            types_ = {f.name: f.type for f in fields(_SECTIONS[section])}
            per_section[section][name] = _coerce(value, types_[name], name)
        updated = {s: dataclasses.replace(getattr(self, s), **c) for s, c in per_section.items()}
        changed = {
            name
            for section, values in per_section.items()
            for name, value in values.items()
            if value != getattr(getattr(self, section), name)
        }
        reasons = {k: v for k, v in self.reasons.items() if k not in changed}
        return Config(**updated, preset=changes.get("preset", self.preset), reasons=reasons)

    def to_dict(self) -> dict:
        """Nested plain-data form."""
        return {
            "preset": self.preset,
            **{s: dataclasses.asdict(getattr(self, s)) for s in _SECTIONS},
            **({"reasons": dict(self.reasons)} if self.reasons else {}),
        }

    def flat(self) -> dict[str, Any]:
        """Every setting by flat name."""
        return {name: self.get(name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        unknown = set(data) - {"preset", "reasons", *_SECTIONS}
        if unknown:
            raise ValueError(f"unknown configuration sections {sorted(unknown)}")
        flat: dict[str, Any] = {}
        for section in _SECTIONS:
            values = data.get(section, {})
            for name, value in values.items():
                name = ALIASES.get(name, name)  # files written before a setting was renamed
                if _FIELDS.get(name) != section:
                    raise ValueError(f"unknown setting {section}.{name}")
                flat[name] = value
        reasons = data.get("reasons", {})
        if not isinstance(reasons, dict) or not all(isinstance(v, str) for v in reasons.values()):
            raise ValueError(f"reasons must map settings to text, got {reasons!r}")
        return cls(preset=data.get("preset")).replace(**flat).with_reasons(reasons)

    def save(self, path: str | os.PathLike) -> None:
        """Write the configuration as JSON (atomically)."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Config":
        """Read a configuration written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from error
        return cls.from_dict(data)

    def diff(self, other: "Config") -> dict[str, tuple[Any, Any]]:
        """Settings that differ: name -> (self's value, other's value)."""
        a, b = self.flat(), other.flat()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def _unknown(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(_FIELDS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown setting {name!r}{hint}"
