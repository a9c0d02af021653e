import numpy as np
import pytest
import torch

from marionette.data import (
    GroundTruth,
    SpriteWorldConfig,
    TetrominoesConfig,
    generate,
    generate_sprite_world,
    generate_tetrominoes,
    load_dataset,
    write_dataset,
)
from marionette.data.synthetic import make_sprite_classes

SMALL = SpriteWorldConfig(
    height=32,
    width=48,
    num_classes=3,
    sprite_size=(4, 8),
    objects=(2, 4),
    frames_per_clip=5,
    num_clips=6,
)


class TestSpriteWorld:
    def test_deterministic(self):
        a, b = generate_sprite_world(SMALL), generate_sprite_world(SMALL)
        assert torch.equal(a.frames.data, b.frames.data)
        np.testing.assert_array_equal(a.groundtruth.boxes, b.groundtruth.boxes)
        c = generate_sprite_world(SpriteWorldConfig(**{**SMALL.__dict__, "seed": 1}))
        assert not torch.equal(a.frames.data, c.frames.data)

    def test_shapes_and_clips(self):
        data = generate_sprite_world(SMALL)
        assert data.frames.data.shape == (30, 3, 32, 48)
        assert data.masks.shape == (30, 32, 48)
        assert data.frames.clips.tolist() == sorted(data.frames.clips.tolist())
        assert data.frames.times.tolist() == list(range(5)) * 6

    def test_boxes_match_the_drawn_pixels_exactly(self):
        data = generate_sprite_world(SMALL)
        sprites = make_sprite_classes(SMALL.num_classes, SMALL.sprite_size, SMALL.class_seed)
        gt = data.groundtruth
        for row in range(len(gt)):
            frame = int(gt.frame[row].split(".")[0])
            x0, y0, x1, y1 = gt.boxes[row].astype(int)
            cls = int(gt.label[row].split("_")[1])
            h, w = sprites[cls].shape[:2]
            assert (x1 - x0, y1 - y0) == (w, h)
            mask = data.masks[frame] == gt.instance[row]
            ys, xs = mask.nonzero()
            # visible pixels lie inside the box; unoccluded objects span it exactly
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
            image = data.frames.data[frame].permute(1, 2, 0).numpy()
            drawn = image[mask]
            colors = sprites[cls][..., :3][sprites[cls][..., 3] > 0]
            assert all((colors == pixel).all(-1).any() for pixel in drawn)
            own = sprites[cls][..., 3] > 0
            covered = mask[y0:y1, x0:x1]
            assert (covered <= own).all()
            if covered.sum() == own.sum():
                assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)

    def test_instances_are_stable_across_a_clip(self):
        data = generate_sprite_world(SMALL)
        gt = data.groundtruth
        for clip in range(SMALL.num_clips):
            rows = gt.clip == clip
            pairs = {
                (int(i), str(c)) for i, c in zip(gt.instance[rows], gt.label[rows], strict=True)
            }
            assert len(pairs) == len({i for i, _ in pairs})  # one class per instance

    def test_objects_move_and_static_ones_stay(self):
        data = generate_sprite_world(
            SpriteWorldConfig(**{**SMALL.__dict__, "static_fraction": 0.5, "num_clips": 20})
        )
        gt = data.groundtruth
        for flag in (True, False):
            rows = (gt.moving == flag) & (gt.clip == gt.clip[gt.moving == flag][0])
            inst = gt.instance[rows][0]
            boxes = gt.boxes[rows & (gt.instance == inst)]
            moved = np.abs(np.diff(boxes, axis=0)).sum() > 0
            assert moved == flag

    @pytest.mark.parametrize("background", ["stars", "checker"])
    def test_textured_backgrounds(self, background):
        data = generate_sprite_world(
            SpriteWorldConfig(**{**SMALL.__dict__, "background": background})
        )
        empty = data.frames.data[0][:, torch.from_numpy(data.masks[0] < 0)]
        assert len(torch.unique(empty, dim=1).T) > 1

    def test_config_errors(self):
        with pytest.raises(ValueError, match="sprite_size must be"):
            SpriteWorldConfig(sprite_size=(8, 4))
        with pytest.raises(ValueError, match="background must be one of"):
            SpriteWorldConfig(background="sky")


class TestTetrominoes:
    def test_pieces(self):
        data = generate_tetrominoes(TetrominoesConfig(num_images=20))
        assert data.frames.data.shape == (20, 3, 35, 35)
        gt = data.groundtruth
        assert len(gt) == 60 and set(gt.label) <= set("IOTSZJL")
        for image in range(20):
            ids = set(np.unique(data.masks[image]).tolist()) - {-1}
            assert ids == {0, 1, 2}  # three non-overlapping pieces, each fully visible
            for piece in ids:
                assert (data.masks[image] == piece).sum() == 4 * 25
        background = data.frames.data.permute(0, 2, 3, 1)[torch.from_numpy(data.masks < 0)]
        assert background.max() == 0  # black

    def test_nineteen_orientations_and_six_colors(self):
        data = generate_tetrominoes(TetrominoesConfig(num_images=400))
        shapes = {
            tuple(map(int, b[2:] - b[:2])) + (str(c),)
            for b, c in zip(data.groundtruth.boxes, data.groundtruth.label, strict=True)
        }
        assert len({s[2] for s in shapes}) == 7
        colors = torch.unique(data.frames.data.permute(0, 2, 3, 1).reshape(-1, 3), dim=0)
        assert len(colors) == 7  # six colors and black


class TestGenerate:
    def test_named_worlds_and_splits(self):
        train, test = generate("tiny", num_clips=3), generate("tiny", "test", num_clips=3)
        assert not torch.equal(train.frames.data, test.frames.data)
        assert train.class_names == test.class_names
        with pytest.raises(ValueError, match="unknown synthetic world 'nope'; choose one of"):
            generate("nope")


class TestDatasetFolder:
    def test_round_trip(self, tmp_path):
        data = generate_sprite_world(SMALL)
        frames = data.frames.data.permute(0, 2, 3, 1).numpy()
        out = write_dataset(
            tmp_path / "world",
            frames,
            data.frames.names,
            data.frames.clips,
            data.frames.times,
            data.settings,
            data.groundtruth,
            data.masks,
        )
        loaded = load_dataset(out)
        assert torch.equal(loaded.frames.frames(range(30)), data.frames.data)
        assert loaded.frames.clips.tolist() == data.frames.clips.tolist()
        np.testing.assert_array_equal(loaded.groundtruth.boxes, data.groundtruth.boxes)
        assert loaded.groundtruth.label.tolist() == data.groundtruth.label.tolist()
        np.testing.assert_array_equal(loaded.masks, data.masks)
        assert loaded.info["generator"] == "sprite_world" and loaded.info["frames"] == 30

    def test_refuses_a_non_empty_target(self, tmp_path):
        (tmp_path / "world").mkdir()
        (tmp_path / "world" / "keep.txt").write_text("x")
        with pytest.raises(FileExistsError, match="already exists and is not empty"):
            write_dataset(tmp_path / "world", [], [], [], [], {})

    def test_failure_leaves_nothing_behind(self, tmp_path):
        def frames():
            yield np.zeros((4, 4, 3), np.uint8)
            raise RuntimeError("emulator crashed")

        with pytest.raises(RuntimeError, match="emulator crashed"):
            write_dataset(tmp_path / "world", frames(), ["0.png", "1.png"], [0, 0], [0, 1], {})
        assert list(tmp_path.iterdir()) == []

    def test_groundtruth_csv_errors(self, tmp_path):
        (tmp_path / "gt.csv").write_text("frame,clip\n0.png,0\n")
        with pytest.raises(ValueError, match="missing \\['class'"):
            GroundTruth.read_csv(tmp_path / "gt.csv")
        (tmp_path / "gt.csv").write_text(
            "frame,clip,t,class,x0,y0,x1,y1,moving,instance\n0.png,0,0,a,1,2,x,4,1,0\n"
        )
        with pytest.raises(ValueError, match="gt.csv:2: bad ground-truth row"):
            GroundTruth.read_csv(tmp_path / "gt.csv")
