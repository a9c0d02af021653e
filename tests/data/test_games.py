"""Atari and Super Mario Bros generators: pure helpers always, the emulators with the extras."""

import csv
import dataclasses
import json

import numpy as np
import pytest

from marionette.data import atari, load_dataset
from marionette.data._screen import fit_screen, scale_boxes
from marionette.data.atari import (
    BULLET_RGB,
    AtariConfig,
    _is_hud,
    _Object,
    _rows,
    background_screen,
    drawn_boxes,
    moc_labels,
    visible,
)
from marionette.data.mario import MarioConfig, mario_box


class TestScreens:
    def test_scale_boxes_maps_crop_and_resize(self):
        # Native 210 x 160, rows 20..200 cropped, resized to 90 x 80: x halves, y halves.
        boxes = np.array([[10, 30, 20, 50], [0, 0, 4, 10], [150, 190, 170, 230]])
        out, keep = scale_boxes(boxes, (210, 160), (90, 80), (20, 200))
        np.testing.assert_allclose(out[0], [5, 5, 10, 15])
        assert not keep[1]  # entirely above the crop: clipped to zero height
        np.testing.assert_allclose(out[2], [75, 85, 80, 90])  # clipped to the frame
        assert keep[0] and keep[2]

    def test_scale_boxes_native_is_identity(self):
        boxes = np.array([[3.0, 4.0, 9.0, 12.0]])
        out, keep = scale_boxes(boxes, (210, 160), None, None)
        np.testing.assert_array_equal(out, boxes)
        assert keep.all()

    def test_fit_screen_area_average(self):
        screen = np.zeros((4, 4, 3), np.uint8)
        screen[0, 0] = 200
        small = fit_screen(screen, (2, 2), None)
        assert small.shape == (2, 2, 3)
        assert small[0, 0, 0] == 50  # mean of the 2 x 2 block
        assert fit_screen(screen, None, (1, 3)).shape == (2, 4, 3)


def _object(category, y, x=10, hud=False, rgb=(0, 0, 0)):
    return _Object(category, (x, y, x + 8, y + 10), hud, 0, rgb)


class TestVisible:
    """Which RAM objects the screen shows: a 30 x 30 black playfield with an orange wall."""

    WALL, SPRITE = (181, 83, 40), (200, 72, 72)

    def scene(self):
        background = np.zeros((30, 30, 3), np.uint8)
        background[20:24, 0:12] = self.WALL
        screen = background.copy()
        screen[2:8, 2:8] = self.SPRITE
        return screen, background

    def test_drawn_static_flickered_and_hud(self):
        screen, background = self.scene()
        objects = [
            _Object("Ghost", (2, 2, 8, 8), False, 0, self.SPRITE),  # drawn over the playfield
            _Object("Ghost", (15, 2, 21, 8), False, 1, (84, 184, 153)),  # not drawn: flicker
            _Object("Shield", (0, 20, 12, 24), False, 2, self.WALL),  # static: in the background
            _Object("Shield", (0, 20, 12, 24), False, 3, (1, 2, 3)),  # ... in another colour
            _Object("Score", (20, 25, 28, 29), True, 4, (9, 9, 9)),  # HUD: always kept
        ]
        assert visible(screen, background, objects) == [True, False, True, False, True]

    def test_a_faint_difference_is_background(self):
        screen, background = self.scene()
        screen[12:16, 12:16] += 30  # within the tolerance
        ghost = _Object("Ghost", (12, 12, 16, 16), False, 0, (84, 184, 153))
        assert visible(screen, background, [ghost]) == [False]
        screen[13, 13] += 1
        assert visible(screen, background, [ghost]) == [True]

    def test_stacked_objects_keep_the_one_whose_colour_shows(self):
        screen, background = self.scene()
        box = (2, 2, 8, 8)
        below = _Object("Ghost", box, False, 0, (84, 184, 153))
        top = _Object("Ghost", box, False, 1, self.SPRITE)
        same = _Object("Ghost", box, False, 2, (84, 184, 153))
        assert visible(screen, background, [below, top, same]) == [False, True, False]
        assert visible(screen, background, [below, same]) == [True, False]  # neither: the first

    def test_off_screen_is_hidden(self):
        screen, background = self.scene()
        objects = [_Object("Ghost", (-9, 2, -1, 8), False, 0, self.SPRITE)]
        assert visible(screen, background, objects) == [False]

    def test_boxes_the_drawn_pixels_fill_less_than_half_of_shrink_to_them(self):
        screen, background = self.scene()
        screen[12:16, 20] = self.SPRITE  # a 1 x 4 line in a 6 x 8 RAM box (Carnival's missile)
        objects = [
            _Object("Missile", (17, 10, 23, 18), False, 0, (1, 2, 3)),
            _Object("Shield", (0, 18, 14, 26), False, 1, self.WALL),  # static: its own colour
            _Object("Ghost", (-4, 1, 8, 9), False, 2, (1, 2, 3)),  # 36 of 64 on-screen pixels
            _Object("Ghost", (12, 24, 16, 28), False, 3, (1, 2, 3)),  # nothing drawn
            _Object("Score", (0, 0, 12, 12), True, 4, (9, 9, 9)),  # HUD: as the RAM gives it
        ]
        shrunk = drawn_boxes(screen, background, objects)
        assert [obj.box for obj in shrunk] == [
            (20, 12, 21, 16),
            (0, 20, 12, 24),
            (-4, 1, 8, 9),
            (12, 24, 16, 28),
            (0, 0, 12, 12),
        ]
        assert [(o.category, o.slot, o.rgb) for o in shrunk] == [
            (o.category, o.slot, o.rgb) for o in objects
        ]

    def test_background_is_the_median_colour_of_each_pixel(self):
        screens = np.zeros((4, 2, 2, 3), np.uint8)
        screens[:, 0, 0] = [[9, 9, 9], [9, 9, 9], [9, 9, 9], [200, 0, 0]]  # a sprite passes once
        screens[:, 1, 1] = [[1, 1, 1], [1, 1, 1], [5, 5, 5], [5, 5, 5]]  # even split: the lower
        background = background_screen(screens)
        assert background.dtype == np.uint8
        np.testing.assert_array_equal(background[0, 0], [9, 9, 9])
        np.testing.assert_array_equal(background[1, 1], [1, 1, 1])
        np.testing.assert_array_equal(background[0, 1], [0, 0, 0])


class TestMocLabels:
    def test_alien_rows_by_rank_of_the_rows_present(self):
        objects = [_object("Alien", 49), _object("Alien", 31), _object("Alien", 85)]
        objects += [_object("Shield", 157), _object("P1Score", 10, hud=True)]
        labels = moc_labels("SpaceInvaders", objects)
        assert labels == ["enemy_1", "enemy_0", "enemy_2", "block", "left_score"]

    def test_mspacman_ghosts_by_color_and_pills_dropped(self):
        objects = [
            _object("Ghost", 50, rgb=(200, 72, 72)),
            _object("Pill", 60),
            _object("Fruit", 173),
        ]
        assert moc_labels("MsPacman", objects) == ["blinky", None, "save_fruit"]

    def test_objects_moc_never_labelled_are_not_moving(self):
        objects = [_object("Player", 50), _object("Pill", 60), _object("PowerPill", 70),
                   _object("Score", 180, hud=True)]  # fmt: skip
        config = AtariConfig(game="MsPacman", size=None)
        rows = _rows("0.png", 0, 0, objects, (210, 160), config)
        assert [(r["class"], r["moving"]) for r in rows] == [
            ("Player", True),
            ("Pill", False),
            ("PowerPill", False),
            ("Score", False),
        ]

    def test_hud_objects_ocatari_lists_as_game_objects(self):
        # MsPacman's fruit is a game object in the maze and the level indicator below it
        # (MOC: fruit M if y < 171, save_fruit S); Carnival's wheel is always a fixed decoration.
        assert not _is_hud("MsPacman", "Fruit", (60, 170, 68, 180), False)
        assert _is_hud("MsPacman", "Fruit", (128, 171, 136, 181), False)
        assert _is_hud("Carnival", "Wheel", (70, 15, 98, 27), False)
        assert not _is_hud("Carnival", "Owl", (70, 15, 78, 27), False)
        assert not _is_hud("Pong", "Fruit", (0, 200, 8, 210), False)  # rules are per game
        assert _is_hud("Pong", "PlayerScore", (0, 0, 8, 8), True)  # OCAtari's flag stands
        config = AtariConfig(game="MsPacman", size=None)
        fruit = _object("Fruit", 173, hud=_is_hud("MsPacman", "Fruit", (10, 173, 18, 183), False))
        (row,) = _rows("0.png", 0, 0, [fruit], (210, 160), config)
        assert not row["moving"]


class _NoopSpace:
    def seed(self, seed):
        pass

    def sample(self):
        return 0


class _SteppedEnv:
    """An OCAtari stand-in whose RAM holds the number of steps taken (the ALE env underneath is
    ``_env``, as in OCAtari)."""

    game_name, hud, objects = "Stepped", False, []

    def __init__(self):
        self.steps, self._env, self.action_space = 0, self, _NoopSpace()

    def reset(self, seed):
        self.steps = 0

    def step(self, action):  # both the ALE env's (terminated, truncated) and OCAtari's
        self.steps += 1
        return None, 0.0, False, False, {}

    def get_ram(self):
        return np.full(128, self.steps, np.uint8)

    def getScreenRGB(self):
        return np.zeros((210, 160, 3), np.uint8)


def test_ram_detection_sees_every_step_recorded_or_not(monkeypatch):
    # OCAtari's RAM rules for some games track objects from step to step (Riverraid adds an object
    # when it enters at the top): a step the detection misses leaves it labelling the wrong ones.
    seen = []
    env = _SteppedEnv()
    monkeypatch.setattr(
        atari, "_make_env", lambda config: (env, lambda objects, ram, *_: seen.append(ram))
    )
    config = AtariConfig(game="Stepped", frames_per_clip=3, burn_in=4, gap=(5, 9))
    recorder = atari._Recorder(config, 0)
    recorder.reset()
    assert len(recorder.clip()) == 3
    assert env.steps >= 4 + 5 + 3
    assert sorted({int(ram[0]) for ram in seen}) == list(range(1, env.steps + 1))
    assert all(ram.dtype == np.int64 for ram in seen)


class TestMarioBox:
    def test_small_and_big(self):
        ram = np.zeros(2048, np.uint8)
        ram[0xB5], ram[0x86], ram[0x71C], ram[0x3B8] = 1, 100, 40, 176
        assert mario_box(ram, "small") == (60, 192, 76, 208)
        assert mario_box(ram, "tall") == (60, 176, 76, 208)

    def test_off_screen(self):
        ram = np.zeros(2048, np.uint8)
        ram[0xB5] = 2  # falling out of the bottom
        assert mario_box(ram, "small") is None

    def test_screen_wraps(self):
        ram = np.zeros(2048, np.uint8)
        ram[0xB5], ram[0x86], ram[0x71C] = 1, 10, 250
        assert mario_box(ram, "small")[0] == 16


class TestConfigs:
    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (dict(clips=0), "clips must be at least 1"),
            (dict(gap=(5, 5)), "gap must be"),
            (dict(size=(4, 128)), "size must be at least"),
            (dict(rows=(100, 50)), "rows must be"),
        ],
    )
    def test_atari_bad_settings(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            AtariConfig(**kwargs)

    def test_mario_bad_stage(self):
        with pytest.raises(ValueError, match="stages must be"):
            MarioConfig(stages=((9, 1),))


def _labels(gt):
    return {(f, i): tuple(b) for f, i, b in zip(gt.frame, gt.instance, gt.boxes, strict=True)}


@pytest.fixture(scope="class")
def recorded(tmp_path_factory):
    pytest.importorskip("ocatari")
    from marionette.data.atari import generate_atari

    root = tmp_path_factory.mktemp("atari")
    config = AtariConfig(clips=3, frames_per_clip=4, gap=(5, 20))
    generate_atari(root / "a", config, layout="moc")
    generate_atari(root / "b", config)
    generate_atari(root / "all", dataclasses.replace(config, hidden=True))
    return root, config


@pytest.mark.games
class TestAtari:
    def test_layout_and_ground_truth(self, recorded):
        root, config = recorded
        data = load_dataset(root / "a")
        assert len(data.frames) == 12 and (data.frames.height, data.frames.width) == (128, 128)
        assert data.frames.clips.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        gt = data.groundtruth
        assert {"Player", "Alien", "Shield"} <= set(gt.class_names)
        assert (gt.boxes >= 0).all() and (gt.boxes <= 128).all()
        assert (gt.boxes[:, 2] > gt.boxes[:, 0]).all() and (gt.boxes[:, 3] > gt.boxes[:, 1]).all()
        assert not gt.moving[np.isin(gt.label, ["P1Score", "P2Score"])].any()
        info = json.loads((root / "a" / "dataset.json").read_text())
        assert info["env"] == "ALE/SpaceInvaders-v5" and info["settings"]["frameskip"] == 2
        assert info["versions"]["ocatari"] == "2.2.1" and info["ram_detection"] == "every step"
        assert info["boxes"].endswith("shrunk to the drawn pixels where these fill < 1/2")

    def test_player_boxes_cover_player_pixels(self, recorded):
        root, _ = recorded
        data = load_dataset(root / "a")
        gt = data.groundtruth
        inside = total = 0
        for i, name in enumerate(data.frames.names):
            frame = data.frames.frame(i).numpy().astype(int)
            green = frame[1] > frame[0] + 40  # the player is green on black
            green[:100] = green[120:] = False  # his rows (the ground markers below are green too)
            for row in gt.rows_of(name)[gt.label[gt.rows_of(name)] == "Player"]:
                x0, y0, x1, y1 = gt.boxes[row].round().astype(int)
                inside += green[y0:y1, x0:x1].sum()
            total += green.sum()
        assert total > 100 and inside > 0.9 * total

    def test_bullets_are_drawn(self, recorded):
        root, _ = recorded
        native = root / "a" / "moc" / "SpaceInvaders-v0" / "rgb" / "train"
        from PIL import Image

        for table in sorted((root / "a" / "moc" / "SpaceInvaders-v0" / "bb" / "train").iterdir()):
            screen = np.asarray(Image.open(native / table.name.replace(".csv", ".png")))
            for row in csv.reader(table.open()):
                assert len(row) == 6 and row[4] in ("M", "S")
                y0, y1, x0, x1 = (float(v) for v in row[:4])
                assert 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
                if row[5] == "bullet":
                    patch = screen[
                        int(y0 * 210) : int(y1 * 210) + 1, int(x0 * 160) : int(x1 * 160) + 1
                    ]
                    assert (patch == BULLET_RGB).all(-1).any()

    def test_hidden_labels_are_left_out_and_counted(self, recorded):
        root, _ = recorded
        shown, every = load_dataset(root / "a"), load_dataset(root / "all")
        assert (shown.frames.frames(range(12)) == every.frames.frames(range(12))).all()
        shown_boxes, every_boxes = _labels(shown.groundtruth), _labels(every.groundtruth)
        assert shown_boxes.keys() <= every_boxes.keys()
        for key, (x0, y0, x1, y1) in shown_boxes.items():  # shrunk to what is drawn, or kept
            a0, b0, a1, b1 = every_boxes[key]
            assert a0 <= x0 < x1 <= a1 and b0 <= y0 < y1 <= b1
        hidden = json.loads((root / "a" / "dataset.json").read_text())["labels_hidden"]
        assert hidden == len(every.groundtruth) - len(shown.groundtruth)
        info = json.loads((root / "all" / "dataset.json").read_text())
        assert info["labels_hidden"] is None and info["boxes"] == "OCAtari's RAM boxes"

    def test_moc_layout_is_bgr(self, recorded):
        root, _ = recorded
        from PIL import Image

        moc = np.asarray(Image.open(root / "a/moc/SpaceInvaders-v0/space_like/train/00000_0.png"))
        rgb = Image.open(root / "a/moc/SpaceInvaders-v0/rgb/train/00000_0.png")
        assert moc.shape == (128, 128, 3) and rgb.size == (160, 210)
        ours = np.asarray(Image.open(root / "a/0.png"))  # the same 128 x 128 resize of the screen
        np.testing.assert_array_equal(moc, ours[..., ::-1])

    def test_same_seed_same_data(self, recorded):
        root, _ = recorded
        a, b = load_dataset(root / "a"), load_dataset(root / "b")
        assert (a.frames.frames(range(12)) == b.frames.frames(range(12))).all()
        np.testing.assert_array_equal(a.groundtruth.boxes, b.groundtruth.boxes)
        np.testing.assert_array_equal(a.groundtruth.instance, b.groundtruth.instance)


@pytest.mark.games
def test_riverraid_labels_lie_on_their_objects(tmp_path):
    # OCAtari tracks Riverraid's objects from step to step; with the steps between clips unseen,
    # 16-47 % of these labels showed their object's colour (40 clips), now 94-99 %.
    pytest.importorskip("ocatari")
    from marionette.data.atari import generate_atari

    config = AtariConfig(game="Riverraid", clips=12, size=None, hidden=True)
    data = load_dataset(generate_atari(tmp_path / "r", config))
    colours = {"FuelDepot": (210, 91, 94), "Helicopter": (0, 64, 48), "House": (232, 232, 232)}
    gt, shown = data.groundtruth, []
    for i, name in enumerate(data.frames.names):
        frame = data.frames.frame(i).numpy().astype(int)
        for row in gt.rows_of(name):
            if gt.label[row] in colours:
                x0, y0, x1, y1 = gt.boxes[row].astype(int)
                near = np.abs(
                    frame[:, y0:y1, x0:x1] - np.array(colours[gt.label[row]])[:, None, None]
                )
                shown.append(bool((near <= 24).all(0).any()))
    assert len(shown) > 50 and np.mean(shown) > 0.9


@pytest.mark.games
def test_mario(tmp_path):
    pytest.importorskip("nes_py")
    from marionette.data.mario import generate_mario

    config = MarioConfig(frames=40, size=(120, 128), stages=((1, 1),))
    generate_mario(tmp_path / "m", config)
    data = load_dataset(tmp_path / "m")
    assert len(data.frames) == 40 and (data.frames.height, data.frames.width) == (120, 128)
    gt = data.groundtruth
    assert set(gt.label) == {"mario"} and len(gt) >= 30
    # Mario is red/brown on the blue sky of 1-1: his box holds red pixels.
    for i in range(0, 40, 10):
        rows = gt.rows_of(f"{i}.png")
        if len(rows):
            x0, y0, x1, y1 = gt.boxes[rows[0]].round().astype(int)
            patch = data.frames.frame(i).numpy()[:, y0:y1, x0:x1].astype(int)
            assert ((patch[0] > 150) & (patch[2] < 100)).any()
    info = json.loads((tmp_path / "m" / "dataset.json").read_text())
    assert info["furthest_x_per_clip"][0] > 100  # the policy moves right
    generate_mario(tmp_path / "n", config)
    again = load_dataset(tmp_path / "n")
    np.testing.assert_array_equal(again.groundtruth.boxes, gt.boxes)
