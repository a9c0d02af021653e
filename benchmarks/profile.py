"""Where a training step's time goes: torch.profiler over a few steps, by part of the model.

    python -m benchmarks.profile                      # space_invaders, demo and default, CPU
    python -m benchmarks.profile --configs demo --steps 3

Each forward part is a ``record_function`` scope put around one call the step makes (the image
encoder, presence head, dictionary decoder, background, selection, sprite mixing, offsets, the
slot struct and the render); the backward is autograd's total (per-part backward is not
separable in the profile), then the optimiser and data loading, timed around their own calls.
What no part covers (the loss terms, glue) is the rest. Printed as Markdown; ``--out`` writes
JSON.
"""

import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import marionette.core.model as model_module
from marionette._io import write_json
from marionette.build import build_data, build_model
from marionette.config import Config
from marionette.core import SELECTIONS, typecheck
from marionette.data import FrameStacks, batch_indices
from marionette.presets import preset_config
from marionette.step import TrainingStep, prepare_training

from .run import CONFIGS, VARIANTS

#: Forward parts: modules of the model, by attribute.
MODULES = {
    "image encoder": "image_encoder",
    "presence head": "presence_head",
    "dictionary decoder": "dictionary",
    "background": "background",
    "offsets": "offsets",
}
#: Forward parts: functions the model module calls by name.
FUNCTIONS = {
    "sprite mixing": "mix_sprites",
    "slot struct (decompose_encoding)": "decompose_encoding",
    "render": "render_decomposition",
}


def _configuration(name: str, batch: int, frames: int) -> Config:
    if name == "demo":
        return preset_config("demo").replace(bs=batch, image_every=0)
    settings = {**CONFIGS[name], **VARIANTS["match"]}
    return Config().replace(**settings, bs=batch, frames_per_item=frames, sprite_init="data",
                            synthetic="demo", image_every=0)  # fmt: skip


def _scope(label: str, call):
    def scoped(*args, **kwargs):
        with record_function(label):
            return call(*args, **kwargs)

    return scoped


@contextmanager
def _scoped(model: torch.nn.Module):
    """Wrap each part in a record_function scope of its name, for the block."""
    saved = []
    for label, path in MODULES.items():
        module = getattr(model, path)
        saved.append((module, "forward", module.forward))
        module.forward = _scope(label, module.forward)
    for label, name in FUNCTIONS.items():
        saved.append((model_module, name, getattr(model_module, name)))
        setattr(model_module, name, _scope(label, getattr(model_module, name)))
    selection = model.config.selection
    saved.append((SELECTIONS, selection, SELECTIONS[selection]))
    SELECTIONS[selection] = _scope("selection", SELECTIONS[selection])
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            if isinstance(owner, dict):
                owner[name] = original
            else:
                setattr(owner, name, original)


def profile_step(name: str, batch: int, frames: int, steps: int) -> dict:
    config = _configuration(name, batch, frames)
    source = build_data(config)
    stacks = FrameStacks(source, config.data.frames_per_item)
    model = prepare_training(build_model(config, source), torch.device("cpu"))
    update = TrainingStep(model, config, torch.device("cpu"))
    timings = {"data loading": 0.0, "optimiser": 0.0}
    original_step = [o.step for o in update.optimizers]

    def timed_step(optimizer_step):
        def run(*args, **kwargs):
            started = time.perf_counter()
            with record_function("optimiser"):
                result = optimizer_step(*args, **kwargs)
            timings["optimiser"] += time.perf_counter() - started
            return result

        return run

    for optimizer, step in zip(update.optimizers, original_step, strict=True):
        optimizer.step = timed_step(step)

    def load(step: int) -> torch.Tensor:
        started = time.perf_counter()
        items = batch_indices(len(stacks), config.train.bs, 0, step)
        batch_frames = torch.stack([stacks[int(i)] for i in items])
        timings["data loading"] += time.perf_counter() - started
        return batch_frames

    with typecheck(False):
        update(load(0), 0)  # warm-up
        timings = dict.fromkeys(timings, 0.0)
        with _scoped(model), profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            for step in range(1, steps + 1):
                with record_function("forward and backward"):
                    update(load(step), step)
            wall = (time.perf_counter() - started) / steps
    averages = prof.key_averages()
    events = {e.key: e for e in averages}
    labels = [*MODULES, *FUNCTIONS, "selection"]
    parts = {k: events[k].cpu_time_total / 1e6 / steps for k in labels if k in events}
    parts["backward (autograd, all parts)"] = sum(
        e.cpu_time_total for e in averages if e.key.startswith("autograd::engine::evaluate")
    ) / 1e6 / steps  # fmt: skip
    parts["optimiser"] = timings["optimiser"] / steps
    parts["data loading"] = timings["data loading"] / steps
    parts["rest (loss terms, glue)"] = wall - sum(parts.values())
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
    return {
        "config": name,
        "batch": batch,
        "frames_per_item": config.data.frames_per_item,
        "step_s": wall,
        "parts_s": parts,
        "top_ops": [(e.key, e.self_cpu_time_total / 1e6 / steps) for e in top],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["space_invaders", "demo", "default"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=1, help="T of the non-demo configs")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    records = [profile_step(name, args.batch, args.frames, args.steps) for name in args.configs]
    for record in records:
        step = record["step_s"]
        print(f"\n### {record['config']}, batch {record['batch']} x T {record['frames_per_item']}: "
              f"step {step:.3f} s\n")  # fmt: skip
        print("| part | s | share |\n|---|---|---|")
        for part, seconds in record["parts_s"].items():
            print(f"| {part} | {seconds:.3f} | {seconds / step:.0%} |")
        print("\n| op (self time) | s |\n|---|---|")
        for op, seconds in record["top_ops"]:
            print(f"| `{op}` | {seconds:.3f} |")
    if args.out:
        write_json(args.out, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
