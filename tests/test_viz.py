"""The sprite sheet: every entry, or each used look once."""

import numpy as np
import pytest
import torch

from marionette.core import sprite_looks
from marionette.viz import sprite_sheet


def sprites_with_a_repeat():
    """Entry 0 a red block, entry 2 the same block moved by one pixel, entry 1 a blue bar,
    entry 3 unused."""
    sprites = torch.zeros(4, 4, 8, 8)
    sprites[:, :3] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    sprites[0, 3, 2:6, 2:6] = 1.0
    sprites[2, 3, 3:7, 3:7] = 1.0
    sprites[1, :3] = torch.tensor([0.1, 0.1, 0.9])[:, None, None]
    sprites[1, 3, 1:7, 4] = 1.0
    sprites[3, 3, 0:2, 0:2] = 1.0
    return sprites, torch.tensor([5, 7, 4, 0])


CELL = 8 * 3 + 2  # the tile of an 8 px sprite at the default scale 3, with its border


def tile(sheet: np.ndarray, position: int, columns: int, label: int = 12) -> np.ndarray:
    row, col = divmod(position, columns)
    return sheet[row * (CELL + label) : row * (CELL + label) + CELL, col * CELL : (col + 1) * CELL]


def alone(sprite: torch.Tensor) -> np.ndarray:
    """The tile of one sprite drawn on its own, without a label."""
    return tile(sprite_sheet(sprite[None]), 0, 1, label=0)


def test_every_entry_most_used_first():
    sprites, usage = sprites_with_a_repeat()
    sheet = sprite_sheet(sprites, usage)
    assert sheet.shape == (2 * (CELL + 12), 2 * CELL, 3)  # 4 entries: 2 x 2
    for position, entry in enumerate([1, 0, 2, 3]):
        np.testing.assert_array_equal(tile(sheet, position, 2), alone(sprites[entry]))


def test_each_used_look_once_with_its_repeats_counted():
    sprites, usage = sprites_with_a_repeat()
    looks = sprite_looks(sprites, usage, reach=2)
    assert looks == [0, 1, 0, 3]
    sheet = sprite_sheet(sprites, usage, looks=looks)
    assert sheet.shape == (CELL + 12, 2 * CELL, 3)  # the two used looks, unused entry 3 left out
    # the red block's look is used 5 + 4 = 9 times, more than the blue bar's 7: it comes first
    np.testing.assert_array_equal(tile(sheet, 0, 2), alone(sprites[0]))
    np.testing.assert_array_equal(tile(sheet, 1, 2), alone(sprites[1]))


def test_looks_need_the_usage():
    sprites, _ = sprites_with_a_repeat()
    with pytest.raises(ValueError, match="looks need the usage"):
        sprite_sheet(sprites, looks=[0, 1, 0, 3])
