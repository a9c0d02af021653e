"""Settings from the data: the statistics of known frames, the rules applied to them, bad input,
and the command line (``marionette data stats``, ``marionette train --data`` without a preset)."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from marionette.autoconfig import auto_config, choose_settings, data_stats
from marionette.cli import main
from marionette.config import Config
from marionette.data import InMemoryFrames, write_dataset
from marionette.presets import preset_config
from marionette.stats import NoSprites, measure

BACKGROUND = (20, 24, 40)


def save(frames: InMemoryFrames, out) -> str:
    """A frame folder of ``frames`` (one clip)."""
    n = len(frames)
    arrays = frames.data.permute(0, 2, 3, 1).numpy()
    write_dataset(out, arrays, frames.names, np.zeros(n, np.int64), np.arange(n), {})
    return str(out)


def sprite_frames(
    n=60, size=(64, 96), classes=3, extent=9, per_frame=3, seed=0, playfield=False, dark=False
):
    """Frames of ``classes`` solid sprite shapes (extent x extent boxes with a class-specific
    notch, one color each) at random places on a uniform background, optionally over a static
    playfield (a frame-wide grid of lines that never moves). Sprites lie in distinct slots of
    a grid of (extent + 4) px slots, so they never touch."""
    rng = np.random.default_rng(seed)
    height, width = size
    frames = np.empty((n, height, width, 3), np.uint8)
    frames[:] = BACKGROUND
    if playfield:
        frames[:, ::16, :] = (90, 90, 200)
        frames[:, :, ::16] = (90, 90, 200)
    colors = [(200, 60, 60), (60, 200, 60), (230, 230, 90)]
    if dark:  # dark sprites on the dark background: 14 levels above it in one channel
        colors = [(34, 24, 40), (20, 38, 40), (20, 24, 54)]
    slot = extent + 4
    rows, cols = (height - 2) // slot, (width - 2) // slot
    for i in range(n):
        for place in rng.choice(rows * cols, size=per_frame, replace=False):
            c = int(rng.integers(classes))
            y = 2 + (place // cols) * slot + int(rng.integers(0, 3))
            x = 2 + (place % cols) * slot + int(rng.integers(0, 3))
            frames[i, y : y + extent, x : x + extent] = colors[c]
            frames[i, y + c : y + c + 2, x : x + 2] = BACKGROUND  # a notch that names the class
    return InMemoryFrames(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous())


class TestStatistics:
    def test_sprites_on_a_uniform_background(self):
        stats = measure(sprite_frames())
        assert stats.background == "color"
        np.testing.assert_allclose(stats.color * 255, BACKGROUND, atol=0.5)
        recurring = np.bincount(stats.looks) >= 2
        assert recurring.sum() == 3
        assert (stats.extents == 9).all() and stats.specks == 0 and stats.per_frame == 3

    def test_a_playfield_that_never_moves_is_background(self):
        stats = measure(sprite_frames(playfield=True))
        assert stats.background == "image"
        assert stats.foreground_color - stats.foreground_image > 0.05
        assert (stats.extents == 9).all()  # the grid lines are not components

    def test_dark_sprites_on_a_dark_background(self):
        stats = measure(sprite_frames(dark=True))
        assert (stats.extents == 9).all() and (np.bincount(stats.looks) >= 2).sum() == 3

    def test_a_scrolling_screen(self):
        rng = np.random.default_rng(0)
        strip = rng.integers(0, 255, (48, 400, 3), dtype=np.uint8)
        frames = np.stack([strip[:, 3 * t : 3 * t + 64] for t in range(40)])
        source = InMemoryFrames(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous())
        with pytest.raises(NoSprites):  # texture everywhere: no sprites over a background
            measure(source)
        stats = measure(_frames(_walking_over_scenery()))
        assert stats.scroll_share > 0.9 and stats.background == "strip" and stats.scrolls
        assert stats.vertical_scroll_share < 0.2
        # what moves against the scenery is the sprite alone: the posts and the orange marks
        # scroll with it, and the place the sprite has just left matches the next frame
        # (the clip's first and last frames, with one neighbour each, are left out)
        walked = [[5 + 5 * t, 20, 11 + 5 * t, 26] for t in range(1, 9)]
        assert stats.boxes.tolist() == walked and stats.frame_index.tolist() == list(range(1, 9))
        assert stats.foreground == pytest.approx(8 * 36 / (10 * 48 * 64))

    def test_a_vertically_scrolling_screen(self):
        # the same screen with rows and columns swapped: a vertical shooter's
        stats = measure(_frames(_walking_over_scenery().transpose(0, 2, 1, 3)))
        assert stats.vertical_scroll_share > 0.9 and stats.scroll_share < 0.2
        assert stats.background == "strip_vertical" and stats.scrolls
        walked = [[20, 5 + 5 * t, 26, 11 + 5 * t] for t in range(1, 9)]
        assert stats.boxes.tolist() == walked and stats.frame_index.tolist() == list(range(1, 9))
        settings, reasons = choose_settings(stats, {})
        assert settings["background"] == "strip_vertical"
        assert "100% vertically" in reasons["background"]

    def test_frames_of_several_sceneries_keep_their_own_colors(self):
        # a second level in other colors: every other frame's background is dark red
        frames = sprite_frames()
        ground = (frames.data[1::2] == torch.tensor(BACKGROUND)[:, None, None]).all(1)
        frames.data[1::2] = torch.where(ground[:, None], torch.tensor([90, 20, 20])[:, None, None],
                                        frames.data[1::2])  # fmt: skip
        stats = measure(frames)
        assert stats.foreground_color > 0.45 and stats.foreground_image > 0.45
        assert stats.background == "frame_color" and stats.foreground < 0.1
        assert (stats.extents == 9).all() and (np.bincount(stats.looks) >= 2).sum() == 3
        assert len(stats.scenery_looks) == 0  # the components are the scenery the sprites draw
        # the same on a scrolling screen, a clip in each level: one strip holds one scenery,
        # the frames' colors both
        walking = _walking_over_scenery()
        other = walking.copy()
        other[(other == 30).all(-1)] = (90, 20, 20)
        frames = torch.from_numpy(np.concatenate([walking, other])).permute(0, 3, 1, 2)
        stats = measure(InMemoryFrames(frames.contiguous(), clips=np.arange(20) // 10))
        assert stats.scrolls and stats.background == "frame_color"
        walked = [[5 + 5 * t, 20, 11 + 5 * t, 26] for t in range(1, 9)]
        # what moves against the scenery, as for a strip
        assert stats.boxes.tolist() == walked * 2
        assert stats.frame_index.tolist() == [*range(1, 9), *range(11, 19)]
        settings, reasons = choose_settings(stats, {})
        assert settings["background"] == "frame_color"
        assert "against each frame's own mode color" in reasons["background"]
        # the sprites draw the scenery too (its posts and marks): the dictionary holds its looks
        # (the walker in all 20 frames, posts and marks: 3 recurring looks, the walker 1)
        assert len(stats.scenery_looks) > len(stats.looks)
        assert (
            "1 recurring looks + 3 of the scenery, which the sprites draw" in reasons["num_sprites"]
        )
        tiles = dataclasses.replace(stats, scenery_looks=np.arange(100) % 10)  # 10 tile looks
        assert choose_settings(tiles, {})[0]["num_sprites"] == 2 * (1 + 10)

    def test_a_screen_scrolled_by_half_pixels(self):
        # pixel-art scenery (8 px tiles) scrolling 3 px a frame, resized to half by averaging
        # as the game generators do: odd frames fall between pixels and blend neighbouring
        # columns, which no whole-pixel shift explains
        rng = np.random.default_rng(1)
        scenery = rng.integers(0, 256, (12, 40, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
        native = np.stack([scenery[:, 3 * t : 3 * t + 128].copy() for t in range(12)])
        for t, frame in enumerate(native):
            frame[40:48, 4 + 10 * t : 12 + 10 * t] = (250, 40, 200)
        frames = native.reshape(12, 48, 2, 64, 2, 3).mean((2, 4)).round().astype(np.uint8)
        stats = measure(InMemoryFrames(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()))
        assert stats.background == "strip"
        # the sprite alone, not the tiles' edges
        walked = [[2 + 5 * t, 20, 6 + 5 * t, 24] for t in range(1, 11)]
        assert stats.boxes.tolist() == walked and stats.frame_index.tolist() == list(range(1, 11))


def _walking_over_scenery() -> np.ndarray:
    """Ten 48 x 64 frames (N H W 3) of scenery scrolling 3 px a frame to the left, posts and
    marks on it, and a textured 6 px sprite walking right against the scroll, clear of the
    columns around where it was."""
    rng = np.random.default_rng(0)
    calm = np.full((48, 400, 3), 30, np.uint8)
    calm[30:, ::23] = (200, 200, 200)
    calm[10:14, 5::41] = (240, 120, 0)
    frames = np.stack([calm[:, 3 * t : 3 * t + 64] for t in range(10)])
    look = rng.integers(80, 255, (6, 6, 3), dtype=np.uint8)
    for t, frame in enumerate(frames):
        frame[20:26, 5 + 5 * t : 11 + 5 * t] = look
    return frames


def _frames(frames: np.ndarray) -> InMemoryFrames:
    return InMemoryFrames(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous())


class TestRules:
    def test_cell_fits_the_typical_sprite_and_divides_the_canvas(self):
        settings, reasons = choose_settings(measure(sprite_frames()), {})
        assert settings["height"] // settings["layer_size"] == 16  # 10, 12, 14 do not divide 96
        assert (settings["height"], settings["width"], settings["resize"]) == (64, 96, "keep")
        assert settings["num_sprites"] == 16 and settings["num_layers"] == 2  # max(16, 2 x 3)
        assert settings["background"] == "color" and "9 px" in reasons["layer_size"]

    def test_a_canvas_that_no_cell_divides_is_padded(self):
        settings, reasons = choose_settings(measure(sprite_frames(size=(61, 90), extent=7)), {})
        cell = settings["height"] // settings["layer_size"]
        assert settings["height"] % cell == 0 and settings["width"] % cell == 0
        assert settings["height"] >= 61 and settings["width"] >= 90 and settings["resize"] == "pad"
        assert "padded" in reasons["canvas"]

    def test_a_given_canvas_is_divided_not_padded(self):
        stats = measure(sprite_frames(size=(60, 90), extent=7))
        settings, _ = choose_settings(stats, {"height": 60, "width": 90})
        assert settings["layer_size"] == 6 and "height" not in settings  # 10 px cells
        with pytest.raises(ValueError, match="no even cell size >= 4 divides the given 61"):
            choose_settings(stats, {"height": 61, "width": 90})

    def test_given_settings_are_kept_and_the_rest_follows(self):
        stats = measure(sprite_frames())
        settings, reasons = choose_settings(stats, {"layer_size": 8, "num_layers": 3, "lr": 0.1})
        assert "layer_size" not in settings and reasons["layer_size"].startswith("given")
        assert "num_layers" not in settings and "lr" not in settings
        assert len(settings["w_probs"]) == 3
        back = 0.005 * (8 / (settings["height"] // 8)) ** 2
        np.testing.assert_allclose(settings["w_probs"], (back, back * 10**0.5, back * 10))

    @pytest.mark.parametrize("cell", [8, 16])
    def test_a_slot_costs_the_same_squared_error_at_any_cell(self, cell):
        """The presence loss is a mean over slots and the error a mean over pixels: a back
        layer slot of a P px cell costs w_probs[0] * 3 P^2 / layers of squared error, the
        presets' 0.005 * 3 * 8^2 / layers at every cell size."""
        stats = measure(sprite_frames())
        settings, reasons = choose_settings(stats, {"layer_size": 64 // cell, "num_layers": 2})
        assert settings["w_probs"][0] * 3 * cell**2 / 2 == pytest.approx(0.005 * 3 * 64 / 2)
        assert settings["w_probs"][1] == pytest.approx(10 * settings["w_probs"][0])
        assert f"cell {cell} px" in reasons["w_probs"]

    @pytest.mark.parametrize(("big", "init"), [(12, "objects"), (15, "data")])
    def test_objects_larger_than_the_cell_start_whole_where_they_fit(self, big, init):
        """Three 5 px looks set an 8 px cell (16 px sprites); a big x big block beside them in
        every frame holds most of the foreground: started whole where it fits the sprite with
        a pixel to spare (12 px), cut to the cell where it does not (15 px)."""
        small = sprite_frames(size=(64, 64), extent=5).data
        rng = np.random.default_rng(0)
        panel = torch.empty(len(small), 3, 64, 32, dtype=torch.uint8)
        panel[:] = torch.tensor(BACKGROUND)[:, None, None]
        for frame in panel:
            y, x = rng.integers(2, 64 - big - 2), rng.integers(2, 32 - big - 2)
            frame[:, y : y + big, x : x + big] = torch.tensor([240, 140, 20])[:, None, None]
        stats = measure(InMemoryFrames(torch.cat([panel, small], dim=3)))
        settings, reasons = choose_settings(stats, {})
        assert settings["height"] // settings["layer_size"] == 8
        assert settings["sprite_init"] == init
        share = 144 / (144 + 3 * 21) if init == "objects" else 0  # 5 x 5 less a 2 x 2 notch
        assert reasons["sprite_init"].startswith(f"{share:.0%} of the recurring looks'")
        assert settings["dictionary"] == ("mlp" if init == "objects" else "pixels")
        assert reasons["dictionary"].startswith(f"sprite_init {init} -> ")
        assert choose_settings(measure(sprite_frames()), {})[0]["sprite_init"] == "data"
        given = choose_settings(stats, {"sprite_init": "data"})[0]  # the rule follows a given one
        assert "sprite_init" not in given and given["dictionary"] == "pixels"

    def test_scenery_that_changes_between_frames_is_named(self):
        """Half the frames show other scenery (four 20 px blocks: 16 % of the pixels over
        all frames against the mode image): the image is still chosen, with a caution; a
        static playfield gets none."""
        settled = choose_settings(measure(sprite_frames(playfield=True)), {})[1]["background"]
        assert "Caution" not in settled
        frames, other = sprite_frames(playfield=True), torch.tensor([90, 160, 60])[:, None, None]
        for y in (8, 36):
            for x in (8, 60):
                frames.data[1::2, :, y : y + 20, x : x + 20] = other
        stats = measure(frames)
        settings, reasons = choose_settings(stats, {})
        assert settings["background"] == "image" and stats.foreground > 0.1
        assert f"Caution: {stats.foreground:.0%} of the pixels differ" in reasons["background"]
        assert "--stages 1-1" in reasons["background"]

    def test_bad_input_names_the_statistic_and_the_fix(self):
        flat = InMemoryFrames(torch.full((5, 3, 32, 32), 90, dtype=torch.uint8))
        with pytest.raises(NoSprites, match="no foreground.*--layer-size"):
            measure(flat)
        noise = torch.randint(0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(0))
        with pytest.raises(NoSprites, match="foreground covers .* of the pixels"):
            measure(InMemoryFrames(noise.to(torch.uint8)))
        specks = torch.full((8, 3, 32, 32), 90, dtype=torch.uint8)
        for i in range(8):
            specks[i, :, 3 * i, 2 * i] = 250
        with pytest.raises(NoSprites, match="only specks"):
            measure(InMemoryFrames(specks))
        huge = sprite_frames(size=(40, 40), extent=30, per_frame=1)
        with pytest.raises(NoSprites, match="more than half.*--layer-size"):
            choose_settings(measure(huge), {})


class TestConfig:
    def test_reasons_round_trip_and_leave_with_a_changed_setting(self, tmp_path):
        config = auto_config({"synthetic": "tiny", "synthetic_clips": 8})
        assert config.preset == "auto" and set(config.reasons) >= {"layer_size", "num_sprites"}
        config.save(tmp_path / "config.json")
        loaded = Config.load(tmp_path / "config.json")
        assert loaded.reasons == config.reasons and loaded.diff(config) == {}
        changed = loaded.replace(num_sprites=loaded.model.num_sprites + 1, lr=loaded.train.lr)
        assert "num_sprites" not in changed.reasons and "lr" in changed.reasons

    def test_original_preset_is_the_defaults(self):
        assert preset_config("original").diff(Config()) == {}

    def test_a_canvas_given_for_a_folder_resizes_frames_to_it(self, tmp_path):
        folder = save(sprite_frames(n=20, size=(64, 96)), tmp_path / "d")
        config = auto_config({"data": folder, "canvas_size": 32})
        assert (config.model.height, config.model.width, config.data.resize) == (32, 32, "resize")
        stats = data_stats({"data": folder, "canvas_size": 32})
        assert (stats.height, stats.width) == (32, 32)


def test_cli_stats_and_train_from_the_data(tmp_path, capsys):
    folder = save(sprite_frames(n=24, size=(32, 48), extent=6), tmp_path / "d")
    assert main(["data", "stats", folder]) == 0
    printed = capsys.readouterr().out
    assert "3 recurring" in printed and "layer_size = 4" in printed  # 8 px cells on 32 rows
    flags = ["--num_steps", "2", "--num_classes", "12", "--bs", "2", "--image_every", "0",
             "--no-progress", "--no-tensorboard", "--threads", "1"]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", "--data", folder, "--out", str(run), *flags]) == 0
    assert "settings from the data" in capsys.readouterr().out
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["preset"] == "auto" and recorded["model"]["layer_size"] == 4
    assert recorded["model"]["num_sprites"] == 12 and "num_sprites" not in recorded["reasons"]
    assert recorded["model"]["dim_z"] == 64  # follows from the 12 sprites given
    assert "3 recurring looks" in recorded["reasons"]["layer_size"]
    assert main(["data", "stats", str(tmp_path / "missing")]) == 2
