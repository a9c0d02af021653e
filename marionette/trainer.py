"""The trainer: build a model and its data from a :class:`Config`, optimise, log, checkpoint.

Thin on purpose: every tensor operation lives in :mod:`marionette.core`. A run directory holds
``config.json``, ``checkpoints/``, ``metrics.csv`` and ``tensorboard/``. Training the same
configuration in the same directory resumes it up to the same total number of steps.
"""

import os
import random
import signal
import socket
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import FINAL, latest_checkpoint, prune_checkpoints, save_checkpoint
from .config import Config
from .core import (
    MarioNette,
    beta_prior_loss,
    encoding_consistency,
    estimate_background_color,
    foreground_patches,
    presence_loss,
    psnr,
    reconstruction_loss,
    set_typecheck,
    typecheck_enabled,
)
from .core.fused import resolve_renderer
from .data import Dataset, FrameFolder, FrameSource, FrameStacks, generate, load_dataset
from .data.frames import adapt_frames
from .data.synthetic import GeneratedData
from .eval import evaluate, first_frames, flatten_metrics, write_metrics
from .monitor import Monitor
from .viz import panel, sprite_sheet

__all__ = [
    "ConfigMismatch",
    "RunInUse",
    "TrainResult",
    "TrainingDiverged",
    "build_data",
    "build_model",
    "train",
]

CONFIG_FILE = "config.json"
#: Settings that may change when a run is resumed (length, logging and hardware only).
RESUMABLE = {
    "num_steps",
    "log_every",
    "image_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_every",
    "eval_data",
    "eval_frames",
    "device",
    "precision",
    "renderer",
    "threads",
    "typecheck",
}


class ConfigMismatch(ValueError):
    """The run directory holds a different configuration than the one asked for."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class RunInUse(RuntimeError):
    """Another process is training in the run directory."""


@dataclass
class TrainResult:
    """What a finished (or interrupted) run reached."""

    run_dir: Path
    step: int
    metrics: dict[str, float]
    model: MarioNette
    config: Config


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for but CUDA is not available; use --device cpu or auto"
        )
    return device


def _synthetic(config: Config, split: str) -> GeneratedData:
    model, data = config.model, config.data
    overrides = {}
    if data.synthetic_clips and split == "train":
        key = "num_images" if data.synthetic == "tetrominoes" else "num_clips"
        overrides[key] = data.synthetic_clips
    if data.synthetic != "tetrominoes":  # sprite worlds are drawn at the canvas size
        overrides.update(height=model.height, width=model.width)
    return generate(data.synthetic, split, **overrides)


def build_data(config: Config, split: str = "train") -> FrameSource:
    """The frames a configuration trains on (``split="test"``: held-out synthetic clips)."""
    model, data = config.model, config.data
    size = (model.height, model.width)
    if data.data is not None:
        return FrameFolder(data.data, size, data.resize)
    frames = _synthetic(config, split).frames
    if (frames.height, frames.width) != size:
        frames = adapt_frames(frames, size, data.resize, what=f"synthetic world {data.synthetic!r}")
    return frames


def build_eval_data(config: Config) -> Dataset | None:
    """Frames with ground truth to evaluate on: ``eval_data``, else the training folder if it
    has a ``groundtruth.csv``, else the synthetic world's held-out clips (None: nothing)."""
    model, data = config.model, config.data
    size = (model.height, model.width)
    folder = data.eval_data or data.data
    if folder is not None:
        dataset = load_dataset(folder, size, data.resize)
        return dataset if dataset.groundtruth is not None else None
    generated = _synthetic(config, "test")
    frames, masks = generated.frames, generated.masks
    if (frames.height, frames.width) != size:
        if data.resize != "pad":
            raise ValueError(
                f"synthetic world {data.synthetic!r} is {frames.height} x {frames.width}; its "
                f"ground truth matches the canvas only with resize 'pad' (extends right/bottom)"
            )
        frames = adapt_frames(frames, size, "pad")
        masks = np.pad(
            masks[:, : size[0], : size[1]],
            (
                (0, 0),
                (0, size[0] - min(size[0], masks.shape[1])),
                (0, size[1] - min(size[1], masks.shape[2])),
            ),
            constant_values=-1,
        )
    return Dataset(frames, generated.groundtruth, masks, {"settings": generated.settings})


def build_model(config: Config, frames: FrameSource | None = None) -> MarioNette:
    """A model for ``config``. Given frames, its background colour is estimated from up to 100
    of them, and with ``sprite_init="data"`` its dictionary starts from their foreground."""
    if frames is None:
        return MarioNette(config.model)
    seed = config.train.seed
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(frames), size=min(100, len(frames)), replace=False))
    sample = frames.frames(picks)
    color = estimate_background_color(sample)
    model = MarioNette(config.model, color)
    if config.train.sprite_init == "data":
        patches = foreground_patches(
            sample.float() / 255,
            color,
            model.grid.cell,
            config.model.num_classes,
            torch.Generator().manual_seed(seed),
        )
        model.dictionary.fit(patches)
    return model


def build_optimisers(model: MarioNette, config: Config) -> list[torch.optim.Optimizer]:
    """AdamW for the model (the dictionary in its own parameter group when ``lr_dict`` is set),
    and a second AdamW at ``lr_bg`` for a learned background strip, as the original."""
    t = config.train
    strip = list(model.background.parameters()) if config.model.background != "color" else []
    dictionary = list(model.dictionary.parameters()) if t.lr_dict else []
    special = {id(p) for p in strip + dictionary}
    groups = [{"params": [p for p in model.parameters() if id(p) not in special], "lr": t.lr}]
    if dictionary:
        groups.append({"params": dictionary, "lr": t.lr_dict})
    optimisers = [torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)]
    if strip:
        optimisers.append(torch.optim.AdamW(strip, lr=t.lr_bg, weight_decay=t.weight_decay))
    return optimisers


def batch_indices(num_items: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Items of step ``step``: a function of (seed, step) only, so a resumed run sees the same
    batches as an uninterrupted one. Without replacement inside a batch when possible."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if batch <= num_items:
        return torch.randperm(num_items, generator=g)[:batch]
    return torch.randint(num_items, (batch,), generator=g)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # NumPy randomness always uses explicit, seeded generators


def ramp(step: int, warmup: int) -> float:
    """Linear warm-up factor in [0, 1]: min(1, step / warmup), 1 without warm-up."""
    return 1.0 if warmup <= 0 else min(1.0, step / warmup)


def _prepare_run(config: Config, run_dir: Path, resume: bool) -> Config:
    stored_path = run_dir / CONFIG_FILE
    if not stored_path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(stored_path)
        return config
    stored = Config.load(stored_path)
    difference = stored.diff(config)
    if not difference:
        return stored
    blocking = {k: v for k, v in difference.items() if not (resume and k in RESUMABLE)}
    if blocking:
        lines = "\n".join(
            f"  {k}: run has {a!r}, asked for {b!r}" for k, (a, b) in blocking.items()
        )
        raise ConfigMismatch(
            f"{run_dir} holds a run with a different configuration:\n{lines}\n"
            f"Continue that run as it is with --resume (only run length, logging and hardware "
            f"settings may change), or train into a new --out directory."
        )
    config.save(stored_path)
    return config


@contextmanager
def _typecheck_policy(policy: str):
    previous = typecheck_enabled()
    set_typecheck(policy != "off")
    try:
        yield
    finally:
        set_typecheck(previous)


def _loss_terms(model: MarioNette, frames: torch.Tensor, config: Config, step: int):
    t = config.train
    encoding = model.encode(frames)
    out = model.render(encoding, frames.shape[0])
    terms = {
        "rec_loss": reconstruction_loss(out.reconstruction.float(), frames.float()),
        "beta_loss": beta_prior_loss(out.weights.float(), out.presence.float()),
        "probs_loss": presence_loss(out.presence.float(), t.w_probs),
    }
    presence_on = 0.0 if step < t.presence_warmup else 1.0
    total = terms["rec_loss"] + t.w_beta * terms["beta_loss"] + presence_on * terms["probs_loss"]
    if t.hard_mix > 0:
        mix = t.hard_mix * ramp(step, t.hard_warmup)
        hard = model.render(encoding, frames.shape[0], hard=True, straight_through=True)
        terms["hard_rec_loss"] = reconstruction_loss(hard.reconstruction.float(), frames.float())
        total = total + mix * terms["hard_rec_loss"]
    if t.aow > 0 and frames.shape[1] > 1:
        consistency = encoding_consistency(
            encoding, frames.shape[0], model.grid, t.consistency_code, t.consistency_radius
        )
        terms["consistency_loss"] = consistency.loss
        terms["matched_objects"] = consistency.matched.float()
        total = total + t.aow * ramp(step, t.aow_warmup) * consistency.loss
    terms["loss"] = total
    return terms, encoding, out


def _usage(out) -> torch.Tensor:
    """How many present slots select each sprite (hard assignment)."""
    k = out.weights.shape[-1]
    present = out.presence > 0.5
    return torch.bincount(out.sprite_ids[present].flatten(), minlength=k)


def _reinit_unused(model: MarioNette, usage: torch.Tensor, generator: torch.Generator) -> int:
    """Give unused dictionary entries a perturbed copy of a frequently used entry's latent."""
    unused = (usage == 0).nonzero().flatten()
    used = (usage > 0).nonzero().flatten()
    if len(unused) == 0 or len(used) == 0:
        return 0
    probabilities = usage[used].float() / usage[used].sum()
    donors = used[
        torch.multinomial(probabilities, len(unused), replacement=True, generator=generator)
    ]
    latents = model.dictionary.latents
    with torch.no_grad():
        noise = torch.randn(len(unused), latents.shape[1], generator=generator).to(latents)
        latents[unused.to(latents.device)] = latents[donors.to(latents.device)] + 0.5 * noise
    return len(unused)


def train(
    config: Config,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
) -> TrainResult:
    """Train (or resume) a run. See :class:`marionette.config.TrainConfig` for the settings.

    Raises:
        ConfigMismatch: ``run_dir`` holds another configuration (and ``resume`` cannot bridge it).
        RunInUse: another process is training in ``run_dir``.
        TrainingDiverged: the loss became NaN or infinite (the last good checkpoint is named).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir):
        return _train(config, run_dir, resume, progress, tensorboard)


@contextmanager
def _run_lock(run_dir: Path):
    """Hold an exclusive lock on ``run_dir/.lock`` while training, so that a second trainer
    started in the same directory fails instead of interleaving checkpoints and logs. The
    operating system releases the lock when the process ends, however it ends."""
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): train without one
        yield
        return
    with open(run_dir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise RunInUse(
                f"{run_dir} is being trained by {owner}; wait for it, stop it (Ctrl-C writes a "
                f"checkpoint), or train into another --out directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train(config: Config, run_dir: Path, resume: bool, progress: bool, tensorboard: bool):
    config = _prepare_run(config, run_dir, resume)
    t = config.train
    device = resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    precision = (
        t.precision if t.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    )
    _seed_everything(t.seed)
    source = build_data(config)
    eval_data = None  # built at the first evaluation
    stacks = FrameStacks(source, config.data.frames_per_item)
    model = build_model(config, source).to(device)
    model.renderer = t.renderer
    resolve_renderer(t.renderer, device)  # fails now, not at the first step
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimisers = build_optimisers(model, config)

    step = 0
    found = latest_checkpoint(run_dir, map_location=device)
    if found is not None:
        state, path = found
        model.load_state_dict(state["model"])
        for optimiser, saved in zip(optimisers, state["optimizers"], strict=True):
            optimiser.load_state_dict(saved)
        step = int(state["step"])
        torch.set_rng_state(state["rng"].cpu())
        if path.name == FINAL and step < t.num_steps:  # extending a finished run
            os.replace(path, path.with_name(f"step_{step:09d}.pt"))
    name = run_dir.resolve().name
    monitor = Monitor(run_dir, step, t.num_steps, name, progress, tensorboard)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    )
    usage = torch.zeros(config.model.num_classes, dtype=torch.long)
    reinit_generator = torch.Generator().manual_seed(t.seed + 7)
    last_good = None
    metrics: dict[str, float] = {}
    warned: set[str] = set()

    def checkpoint(final: bool = False):
        nonlocal last_good
        state = {
            "step": step,
            "model": model.state_dict(),
            "optimizers": [o.state_dict() for o in optimisers],
            "rng": torch.get_rng_state(),
            "config": config.to_dict(),
        }
        path = save_checkpoint(run_dir, state, FINAL if final else None)
        prune_checkpoints(run_dir, t.keep_checkpoints)
        last_good = path
        return path

    started = time.monotonic()
    interrupted = False
    previous_handler = None
    if hasattr(signal, "SIGTERM"):  # a scheduler's stop becomes a clean interrupt too
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    model.train()
    try:
        with _typecheck_policy(t.typecheck):
            while step < t.num_steps:
                if t.typecheck == "first" and step > 0:
                    set_typecheck(False)
                items = batch_indices(len(stacks), t.bs, t.seed, step)
                frames = torch.stack([stacks[int(i)] for i in items]).to(device, non_blocking=True)
                with autocast:
                    terms, encoding, out = _loss_terms(model, frames, config, step)
                loss = terms["loss"]
                if not torch.isfinite(loss):
                    where = (
                        f"the last good checkpoint is {last_good}"
                        if last_good
                        else ("no checkpoint was written yet")
                    )
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at step {step} ({_describe(terms)}); "
                        f"{where}. Lower --lr or check the data for bad frames."
                    )
                for optimiser in optimisers:
                    optimiser.zero_grad(set_to_none=True)
                loss.backward()
                for optimiser in optimisers:
                    optimiser.step()
                step += 1
                with torch.no_grad():
                    usage += _usage(out).cpu()
                if t.reinit_unused and step % t.reinit_unused == 0:
                    count = _reinit_unused(model, usage, reinit_generator)
                    metrics["reinit_sprites"] = float(count)
                    usage.zero_()
                if step % t.log_every == 0 or step == t.num_steps:
                    metrics.update(_measure(model, encoding, out, frames, terms, precision))
                    monitor.scalars(step, metrics)
                    for kind, message in _diagnose(metrics, step, config).items():
                        if kind not in warned:
                            warned.add(kind)
                            warnings.warn(message, stacklevel=2)
                            monitor.write(message)
                monitor.step(
                    step,
                    {
                        "loss": loss.item(),
                        **{k: metrics[k] for k in ("psnr", "psnr_hard") if k in metrics},
                    },
                )
                if t.image_every and step % t.image_every == 0:
                    monitor.images(step, _panels(model, encoding, out, frames))
                if t.eval_every and step % t.eval_every == 0:
                    if eval_data is None:
                        eval_data = _eval_data_or_warn(config)
                    if eval_data is not False:
                        monitor.scalars(
                            step, _evaluate_during_training(model, eval_data, run_dir, step, device)
                        )
                if step % t.checkpoint_every == 0 and step < t.num_steps:
                    checkpoint()
    except KeyboardInterrupt:
        interrupted = True
        path = checkpoint()
        monitor.write(
            f"interrupted at step {step}; checkpoint {path} written. Run the same "
            f"command again to resume."
        )
    finally:
        monitor.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    if not interrupted:
        checkpoint(final=True)
    metrics["train_seconds"] = time.monotonic() - started
    if interrupted:
        raise KeyboardInterrupt(f"training interrupted at step {step}")
    return TrainResult(run_dir, step, metrics, model, config)


def _eval_data_or_warn(config: Config):
    data = build_eval_data(config)
    if data is None:
        warnings.warn(
            "eval_every is set but there is no ground truth to evaluate on; set eval_data to a "
            "dataset folder with groundtruth.csv",
            stacklevel=3,
        )
        return False
    return first_frames(data, config.data.eval_frames)


def _evaluate_during_training(model, data, run_dir: Path, step: int, device) -> dict[str, float]:
    """Evaluate, write ``RUN/eval/metrics.json`` and a CSV row; scalars for the monitor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few classes early on is expected
        metrics = evaluate(model, data, device=device)
    model.train()
    write_metrics(run_dir / "eval", metrics, step)
    flat = flatten_metrics(metrics)
    keep = (
        "objects_per_frame",
        "f_score",
        "ami",
        "ari",
        "few_shot/mean",
        "sprite_purity",
        "temporal",
        "foreground_ari",
        "ap/mean",
    )
    return {
        f"eval/{k}": float(v)
        for k, v in flat.items()
        if isinstance(v, int | float) and any(part in k for part in keep) and "/std/" not in k
    }


def _raise_interrupt(signum, frame):  # pragma: no cover - exercised through a subprocess
    raise KeyboardInterrupt


def _describe(terms: dict) -> str:
    return ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())


@torch.no_grad()
def _measure(model, encoding, out, frames, terms, precision) -> dict[str, float]:
    hard = model.render(encoding, frames.shape[0], hard=True)
    target = frames.float()
    values = {k: float(v) for k, v in terms.items()}
    values.update(
        psnr=float(psnr(out.reconstruction.float(), target)),
        psnr_hard=float(psnr(hard.reconstruction.float(), target)),
        psnr_background=float(psnr(out.background.float(), target)),
        presence=float(out.presence.float().mean()),
        present_slots=float((out.presence > 0.5).float().sum(dim=(2, 3, 4)).mean()),
        sprites_used=float(len(torch.unique(out.sprite_ids[out.presence > 0.5]))),
    )
    return values


def _diagnose(metrics: dict, step: int, config: Config) -> dict[str, str]:
    """Warnings about how training is going, by kind, once the model had time to settle.

    ``collapse``: presence near 0 while the soft reconstruction is no better than the
    background alone. ``hard_gap``: the hard decomposition (arg-max sprites, rounded presence)
    explains the frames more than 6 dB worse than the soft one, so the decomposition a user
    exports is poor even though the soft loss looks fine.
    """
    t = config.train
    if step < max(500, t.presence_warmup + 200, t.hard_warmup + 200, t.num_steps // 20):
        return {}
    found = {}
    psnr, hard, background = metrics["psnr"], metrics["psnr_hard"], metrics["psnr_background"]
    if metrics["presence"] < 0.02 and psnr < background + 1.0:
        found["collapse"] = (
            f"foreground collapse: mean presence {metrics['presence']:.4f} while the soft PSNR "
            f"({psnr:.1f} dB) is no better than the background alone ({background:.1f} dB). "
            f"Sprites are not being learned. Try a cell size close to the sprites' size (now "
            f"{config.model.grid.cell} px; --layer_size sets it), a presence warm-up "
            f"(--presence_warmup), or a lower --w_probs."
        )
    elif psnr - hard > 6.0:
        lever = (
            "train with the straight-through hard reconstruction in the loss "
            "(--hard_mix 1 --hard_warmup 100)"
            if t.hard_mix == 0
            else f"raise --hard_mix (now {t.hard_mix})"
        )
        found["hard_gap"] = (
            f"the hard decomposition is {psnr - hard:.1f} dB worse than the soft reconstruction "
            f"(hard PSNR {hard:.1f} dB, soft {psnr:.1f} dB, background alone "
            f"{background:.1f} dB): partly present or blended sprites explain the frames, and "
            f"rounding them loses that. To make the decomposition itself explain the frames, "
            f"{lever}."
        )
    return found


@torch.no_grad()
def _panels(model, encoding, out, frames) -> dict:
    b = frames.shape[0]
    hard = model.render(encoding, b, hard=True, plane_order=out.plane_order)
    first = slice(0, min(4, b))
    images = {}
    for tag, result in (("soft", out), ("hard", hard)):
        images[f"panel_{tag}"] = panel(
            frames[first, 0].float(),
            result.reconstruction[first, 0].float(),
            result.layers()[first, 0].float(),
        )
    images["dictionary"] = sprite_sheet(out.sprites.float(), _usage(hard).cpu())
    return images
