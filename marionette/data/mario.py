"""Super Mario Bros frames from the ROM bundled with gym-super-mario-bros (nes-py emulator).

The raw ``SuperMarioBrosEnv`` inside nes-py's ``JoypadSpace`` is used directly: gym 0.26's
wrappers expect a 5-tuple step that this env does not return. nes-py 8.2 needs numpy < 2.
Mario's screen box comes from RAM: x = RAM 0x86 - RAM 0x71c (left of the screen), y from the
pixel row at RAM 0x3b8; 16 px tall when small, 32 px otherwise.
"""

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ._screen import fit_screen, import_extra, scale_boxes
from .dataset import DatasetWriter, package_versions
from .groundtruth import GroundTruth

__all__ = ["MARIO_POLICY", "MarioConfig", "generate_mario", "mario_box"]

#: Random policy over SIMPLE_MOVEMENT (NOOP, right, right+A, right+B, right+A+B, A, left):
#: mostly running right and jumping, so that the agent moves through the level.
MARIO_POLICY = (0.05, 0.35, 0.25, 0.10, 0.25, 0.0, 0.0)
ALL_STAGES = tuple((world, stage) for world in range(1, 9) for stage in range(1, 5))
NATIVE = (240, 256)


@dataclass(frozen=True)
class MarioConfig:
    """How to record a Super Mario Bros frame folder.

    Attributes:
        frames: number of frames to save.
        every: save every n-th emulator frame (consecutive NES frames barely differ).
        size: saved frame size (H, W); None keeps the native 240 x 256.
        seed: seeds the stage choice and the policy (the emulator itself is deterministic).
        stages: (world, stage) pairs to draw from; default all 32.
        max_steps: steps per stage before moving on to another one.
        action_every: steps each sampled action is held (a jump needs A held, then released).
        stuck_steps: if Mario's level position has not advanced for this many steps, the
            policy holds right+A+B and then right to get over the obstacle.
    """

    frames: int = 2000
    every: int = 4
    size: tuple[int, int] | None = None
    seed: int = 0
    stages: tuple[tuple[int, int], ...] = ALL_STAGES
    max_steps: int = 3000
    action_every: int = 8
    stuck_steps: int = 96

    def __post_init__(self) -> None:
        for name in ("frames", "every", "max_steps", "action_every", "stuck_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        bad = [s for s in self.stages if tuple(s) not in ALL_STAGES]
        if bad or not self.stages:
            raise ValueError(f"stages must be (world 1-8, stage 1-4) pairs, got {bad or '()'}")
        if self.size is not None and min(self.size) < 8:
            raise ValueError(f"size must be at least 8 x 8 pixels, got {self.size}")


def mario_box(ram: np.ndarray, status: str) -> tuple[int, int, int, int] | None:
    """Mario's native screen box (x0, y0, x1, y1), or None when he is not on screen.

    x = RAM[0x86] - RAM[0x71c] (mod 256), the bottom is RAM[0x3b8] + 32; the height is 16 px for
    small Mario and 32 px otherwise (checked by eye on 6 stages for small Mario).
    """
    if int(ram[0xB5]) != 1:  # the vertical viewport: 0 above the screen, > 1 falling out
        return None
    x = (int(ram[0x86]) - int(ram[0x71C])) % 256
    height = 16 if status == "small" else 32
    bottom = int(ram[0x3B8]) + 32
    return x, bottom - height, x + 16, bottom


def _play(env, rng: np.random.Generator, policy: np.ndarray, config: "MarioConfig", reached: dict):
    """Play one stage visit with the mostly-right-and-jump policy; yield every ``every``-th
    screen and Mario's native box (None when off screen) until death, the flag or
    ``max_steps``. ``reached["x"]`` follows the furthest x position."""
    best_step, action = 0, 0
    for step in range(config.max_steps):
        if step - best_step > config.stuck_steps:
            action = 4 if (step - best_step) % 32 < 24 else 1  # jump run, then release
        elif step % config.action_every == 0:
            action = int(rng.choice(len(policy), p=policy))
        screen, _, done, info = env.step(action)
        if info["x_pos"] > reached["x"]:
            reached["x"], best_step = int(info["x_pos"]), step
        if done:
            return
        if step % config.every == 0:
            yield np.asarray(screen), mario_box(env.unwrapped.ram, info["status"])


def _mario_rows(name: str, clip: int, t: int, box, config: "MarioConfig") -> list[dict]:
    """The ground-truth row of Mario in one saved frame (none when he is off screen)."""
    if box is None:
        return []
    scaled, keep = scale_boxes(np.array([box]), NATIVE, config.size, None)
    if not keep[0]:
        return []
    x0, y0, x1, y1 = scaled[0]
    row = dict(frame=name, clip=clip, t=t, x0=x0, y0=y0, x1=x1, y1=y1)
    return [row | {"class": "mario", "moving": True, "instance": 0}]


def generate_mario(
    out: str | os.PathLike,
    config: MarioConfig,
    overwrite: bool = False,
    progress: Callable | None = None,
) -> Path:
    """Play random stages with a mostly-right-and-jump policy and save every ``every``-th frame.

    Each stage visit is a clip (it ends at death, at the flag or after ``max_steps``); the
    ground truth holds Mario's box in pixels of the saved frames (class ``mario``, instance 0).
    """
    smb_env = import_extra("gym_super_mario_bros.smb_env", "mario")
    actions = import_extra("gym_super_mario_bros.actions", "mario")
    joypad = import_extra("nes_py.wrappers", "mario")
    rng = np.random.default_rng(config.seed)
    policy = np.asarray(MARIO_POLICY) / sum(MARIO_POLICY)
    rows, visits, progress_x = [], [], []
    bar = progress(total=config.frames, desc="Super Mario Bros") if progress else None
    with DatasetWriter(out, overwrite) as writer:
        saved, clip = 0, 0
        while saved < config.frames:
            world, stage = config.stages[int(rng.integers(len(config.stages)))]
            env = joypad.JoypadSpace(
                smb_env.SuperMarioBrosEnv(rom_mode="vanilla", target=(world, stage)),
                actions.SIMPLE_MOVEMENT,
            )
            env.reset()
            t, reached = 0, {"x": 0}
            for screen, box in _play(env, rng, policy, config, reached):
                name = f"{saved}.png"
                writer.add(name, fit_screen(screen, config.size, None), clip, t)
                rows += _mario_rows(name, clip, t, box, config)
                saved, t = saved + 1, t + 1
                if bar is not None:
                    bar.update()
                if saved == config.frames:
                    break
            env.close()
            if t:
                visits.append(f"{world}-{stage}")
                progress_x.append(reached["x"])
                clip += 1
        writer.finish(
            {
                "generator": "mario",
                "native_size": list(NATIVE),
                "stages_visited": visits,
                "furthest_x_per_clip": progress_x,
                "class_names": ["mario"],
                "settings": asdict(config),
                "versions": package_versions("gym-super-mario-bros", "nes-py"),
            },
            GroundTruth.from_rows(rows),
        )
    if bar is not None:
        bar.close()
    return Path(out)
