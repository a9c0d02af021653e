"""What a run reports about itself while training: scalars, warnings about how learning goes,
image panels, and evaluations against ground truth."""

import warnings
from pathlib import Path

import torch

from .config import Config
from .core import MarioNette, MarioNetteOutput, psnr
from .data import Dataset
from .eval import evaluate, summary, write_metrics
from .viz import panel, sprite_sheet

__all__ = ["diagnose", "evaluate_during_training", "measure", "panels", "sprite_usage"]


def sprite_usage(out: MarioNetteOutput) -> torch.Tensor:
    """How many present slots select each sprite (hard assignment), ``[K]``."""
    present = out.presence > 0.5
    return torch.bincount(out.sprite_ids[present].flatten(), minlength=out.weights.shape[-1])


@torch.no_grad()
def measure(model: MarioNette, out: MarioNetteOutput, frames: torch.Tensor, terms: dict) -> dict:
    """The logged scalars of a step: its loss terms, soft / hard / background-only PSNR, mean
    presence, present slots per frame and sprites in use."""
    hard = model.render(out.encoding, "hard")
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


def diagnose(metrics: dict, step: int, config: Config) -> dict[str, str]:
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
    soft, hard, background = metrics["psnr"], metrics["psnr_hard"], metrics["psnr_background"]
    if metrics["presence"] < 0.02 and soft < background + 1.0:
        found["collapse"] = (
            f"foreground collapse: mean presence {metrics['presence']:.4f} while the soft PSNR "
            f"({soft:.1f} dB) is no better than the background alone ({background:.1f} dB). "
            f"Sprites are not being learned. Try a cell size close to the sprites' size (now "
            f"{config.model.grid.cell} px; --layer_size sets it), a presence warm-up "
            f"(--presence_warmup), or a lower --w_probs."
        )
    elif soft - hard > 6.0:
        lever = (
            "train with the straight-through hard reconstruction in the loss "
            "(--hard_mix 1 --hard_warmup 100)"
            if t.hard_mix == 0
            else f"raise --hard_mix (now {t.hard_mix})"
        )
        found["hard_gap"] = (
            f"the hard decomposition is {soft - hard:.1f} dB worse than the soft reconstruction "
            f"(hard PSNR {hard:.1f} dB, soft {soft:.1f} dB, background alone "
            f"{background:.1f} dB): partly present or blended sprites explain the frames, and "
            f"rounding them loses that. To make the decomposition itself explain the frames, "
            f"{lever}."
        )
    return found


@torch.no_grad()
def panels(model: MarioNette, out: MarioNetteOutput, frames: torch.Tensor) -> dict:
    """TensorBoard images: input / reconstruction / difference / layers of up to 4 frames, soft
    and hard, and the sprite sheet ordered by use."""
    hard = model.render(out.encoding, "hard", out.plane_order)
    first = slice(0, min(4, frames.shape[0]))
    images = {}
    for tag, result in (("soft", out), ("hard", hard)):
        images[f"panel_{tag}"] = panel(
            frames[first, 0].float(),
            result.reconstruction[first, 0].float(),
            result.layers()[first, 0].float(),
        )
    images["dictionary"] = sprite_sheet(out.sprites.float(), sprite_usage(hard).cpu())
    return images


def evaluate_during_training(
    model: MarioNette, data: Dataset, run_dir: Path, step: int, device: torch.device
) -> dict[str, float]:
    """Evaluate on ``data``, write ``RUN/eval/metrics.json`` and a CSV row, and return the
    summary results as ``eval/<name>`` scalars."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few classes early on is expected
        metrics = evaluate(model, data, device=device)
    model.train()
    write_metrics(run_dir / "eval", metrics, step)
    return {f"eval/{k}": v for k, v in summary(metrics).items()}
