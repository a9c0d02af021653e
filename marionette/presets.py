"""Named starting configurations, each with the reasons for its settings."""

from dataclasses import dataclass

from .config import Config

__all__ = ["PRESETS", "Preset", "preset_config"]


@dataclass(frozen=True)
class Preset:
    """A named set of overrides of the defaults, with where they come from."""

    name: str
    description: str
    overrides: dict


_SPACE_INVADERS = dict(
    height=128,
    width=128,
    layer_size=16,
    num_layers=2,
    num_sprites=54,
    dim_z=128,
    transform_encoder="match",
    selection="match",
    sprite_init="data",
    lr=1e-3,
    bs=4,
    frames_per_item=4,
    num_steps=20000,
    resize="resize",
    eval_frames=1024,
    hard_mix=1.0,
    hard_warmup=100,
    w_probs=(0.005, 0.05),
    w_select=0.01,
    encoder_base_width=32,
)

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "original",
            "The original MarioNette's defaults (128 x 128 canvas, 8 anchor rows of 16 px "
            "cells, 2 layers, 150 sprites from random codes, a learned selection, a CNN "
            "offset encoder, the soft loss only, lr 1e-4, batch 8), for comparisons; on "
            "sparse sprite worlds they learn only the background (docs/learning.md).",
            {},
        ),
        Preset(
            "demo",
            "The built-in 64 x 64 sprite world (5 classes of 7-12 px sprites, 2-5 objects per "
            "clip), sized to learn clean sprites on 2 CPU cores in 4-10 minutes (0.1-0.3 s per "
            "step, as busy as the machine is; about 30 dB hard PSNR on held-out clips after "
            "2,000 steps). A 16 px cell fits every sprite (the original's author: a cell "
            "should roughly fit one sprite). "
            "The per-slot CNN transform encoder is replaced by template matching (offsets from "
            "the correlation of each window with its soft sprite) and the dictionary starts "
            "from foreground patches of the data: with the original's random start and learned "
            "offsets the model collapses to the background on this world (measured; see "
            "docs/learning.md). The codes learn to predict the sprite their slot draws "
            "(w_select 0.01); without it they say almost nothing about the object (2,000 steps, "
            "held-out: AMI 0.01 -> 0.63, few-shot@64 0.26 -> 0.80, relevant F 0.89 -> 0.91; "
            "docs/results.md).",
            dict(
                synthetic="demo",
                height=64,
                width=64,
                layer_size=4,
                num_layers=2,
                num_sprites=16,
                dim_z=64,
                transform_encoder="match",
                selection="match",
                sprite_init="data",
                lr=1e-3,
                bs=8,
                num_steps=2000,
                w_select=0.01,
                log_every=100,
                image_every=500,
                checkpoint_every=500,
            ),
        ),
        Preset(
            "tetrominoes",
            "Tetrominoes-like images (35 x 35, padded to 36 so that 6 px cells divide it; the "
            "blocks are 5 px, pieces up to 20 px). One layer per piece is not needed: pieces "
            "never overlap.",
            dict(
                synthetic="tetrominoes",
                height=36,
                width=36,
                layer_size=3,
                resize="pad",
                num_layers=2,
                num_sprites=24,
                dim_z=64,
                transform_encoder="match",
                sprite_init="data",
                lr=1e-3,
                bs=16,
                num_steps=5000,
            ),
        ),
        Preset(
            "space_invaders",
            "Space Invaders frames from `marionette data atari` at 128 x 128. The original's "
            "users reported that its default 8 x 8 grid learns only the background "
            "(dmsm/MarioNette#2); its author advised 16 x 16 cells of 8 px so that each cell "
            "roughly fits one sprite, with 54 sprites (the fork's settings). Aliens are about "
            "6 x 6 px after resizing. Items are stacks of 4 consecutive frames (4 stacks, 16 "
            "frames per step) so that `space_invaders_moc` differs only by the consistency term. "
            "The straight-through hard reconstruction is in the loss (hard_mix 1, ramped in over "
            "100 steps): without it the soft model explains the olive aliens with bright "
            "sprites at partial presence and the hard decomposition is no better than the "
            "background (19.4 dB against 29.1 dB with it, CPU, 400 steps). The front layer's "
            "presence costs 10x more (w_probs 0.005 0.05), or both layers draw every alien "
            "(detection precision 0.57 against 0.89). The codes learn to predict the sprite "
            "their slot draws (w_select 0.01): with matched selection and the hard loss they "
            "otherwise say more about where an object sits in its cell than what it is (AMI "
            "against MOC's per-row classes 0.29 -> 0.80, few-shot@64 0.90 -> 0.97, CPU, 400 "
            "steps). The image encoder is a channel pyramid (32, 64 and 128 channels from the "
            "full resolution down, encoder_base_width 32): a step costs 27 % less, and over 5 "
            "seeds with and without the consistency term it learns as well as 128 channels "
            "everywhere at equal steps (CPU, 400 steps: relevant F 0.92-0.94, AMI against "
            "MOC's classes 0.69-0.73) and at least as well at equal time. See "
            "docs/results.md.",
            _SPACE_INVADERS,
        ),
        Preset(
            "space_invaders_moc",
            "`space_invaders` plus the object-consistency loss (aow = 0.01), ramped in over "
            "the first 2,000 steps once the sprites have formed, contrasted with the next "
            "frame's other looks and empty slots rather than with every other object: identical "
            "aliens can only be told apart by position, so contrasting them taught the codes "
            "where an object is (CPU, 400 steps: relevant F 0.922 -> 0.934, AMI against MOC's "
            "per-row classes 0.44 -> 0.80; docs/results.md). Not MOC's aow = 10: our term "
            "is a mean over slots added to a per-pixel *mean* squared error (about 3e-3), "
            "MOC's a sum added to a per-pixel *sum* of log-likelihoods. At 0.01 its gradient on "
            "the image encoder is 0.1-1x the reconstruction's, and on the synthetic world it "
            "makes an object's code pick out its own next-frame object more often (code_nn "
            "0.82-0.89 -> 0.89-0.94 over 5 seeds) with as many objects detected (see "
            "docs/learning.md).",
            {**_SPACE_INVADERS, "aow": 0.01, "aow_warmup": 2000, "consistency_contrast": "looks"},
        ),
        Preset(
            "mario",
            "Super Mario Bros frames from `marionette data mario` at 128 x 128. The paper uses "
            "16 px cells for Super Mario Bros; 8 px cells suit the 128 px canvas (tiles of 16 px "
            "become 8 px), with a learned scrolling background strip.",
            dict(
                height=128,
                width=128,
                layer_size=16,
                num_layers=2,
                num_sprites=96,
                dim_z=128,
                background="strip",
                transform_encoder="match",
                selection="match",
                sprite_init="data",
                lr=1e-3,
                bs=16,
                num_steps=20000,
                resize="resize",
            ),
        ),
    )
}


def preset_config(name: str) -> Config:
    """The configuration of a preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return Config(preset=name).replace(**PRESETS[name].overrides)
