"""MOC's on-disk layout read as it lies: frames BGR -> RGB, boxes y-first fractions -> pixels,
clips from names, identities linked, half-MOC folders named; the round trip through
``marionette data atari --layout moc``."""

import json

import numpy as np
import pytest
from PIL import Image

from marionette.cli import main
from marionette.data import GroundTruth, find_moc, load_dataset, open_frames
from marionette.data.frames import resize_boxes
from marionette.data.moc import link_instances
from marionette.eval import flatten_metrics

RED, BLUE = (200, 30, 10), (10, 40, 220)


def _write_game(root, splits=("train", "test"), boxes=True, clips=2, frames=3):
    """A MOC game folder: in clip c, frame t, a red 4 x 6 (h x w) box at x = 10 + 5t, y = 20 + c
    on a 32 x 48 (H x W) canvas, stored BGR, plus a blue HUD box in the top row."""
    game = root / "Pong-v0"
    for split in splits:
        (game / "space_like" / split).mkdir(parents=True)
        if boxes:
            (game / "bb" / split).mkdir(parents=True)
        for clip in range(clips):
            for t in range(frames):
                image = np.zeros((32, 48, 3), np.uint8)
                x, y = 10 + 5 * t, 20 + clip
                image[y : y + 4, x : x + 6] = RED
                image[0:2, 0:8] = BLUE
                stem = f"{clip:05d}_{t}"
                bgr = Image.fromarray(image[..., ::-1].copy())
                bgr.save(game / "space_like" / split / f"{stem}.png")
                if boxes:
                    rows = [
                        f"{y / 32},{(y + 4) / 32},{x / 48},{(x + 6) / 48},M,player",
                        f"0,{2 / 32},0,{8 / 48},S,player_score",
                    ]
                    (game / "bb" / split / f"{stem}.csv").write_text("\n".join(rows) + "\n")
    return game


class TestLayout:
    def test_frames_are_rgb_and_clips_come_from_names(self, tmp_path):
        game = _write_game(tmp_path)
        data = load_dataset(game)  # a game folder: its test split
        assert data.info["split"] == "test" and data.info["game"] == "Pong"
        frames = data.frames
        assert (frames.height, frames.width) == (32, 48)
        assert frames.clips.tolist() == [0, 0, 0, 1, 1, 1]
        assert frames.times.tolist() == [0, 1, 2, 0, 1, 2]
        first = frames.frame(0).numpy()
        assert tuple(first[:, 20, 10]) == RED and tuple(first[:, 0, 0]) == BLUE

    def test_boxes_become_x_first_pixels(self, tmp_path):
        data = load_dataset(_write_game(tmp_path))
        gt = data.groundtruth
        rows = gt.rows_of("00001_2.png")
        player = rows[gt.label[rows] == "player"][0]
        np.testing.assert_allclose(gt.boxes[player], [20, 21, 26, 25])  # x0, y0, x1, y1
        assert gt.moving[player] and not gt.moving[rows[gt.label[rows] == "player_score"][0]]
        # each box covers exactly the red pixels of its frame
        for index, name in enumerate(data.frames.names):
            frame = data.frames.frame(index).numpy()
            red = np.argwhere((frame.transpose(1, 2, 0) == RED).all(-1))
            row = gt.rows_of(name)[gt.label[gt.rows_of(name)] == "player"][0]
            (y0, x0), (y1, x1) = red.min(0), red.max(0) + 1
            np.testing.assert_allclose(gt.boxes[row], [x0, y0, x1, y1])

    def test_train_reads_the_train_split_and_split_folders_work(self, tmp_path):
        game = _write_game(tmp_path, splits=("train", "validation"))
        assert open_frames(game).folder == game / "space_like" / "train"
        split = load_dataset(game / "space_like" / "validation")
        assert split.info["split"] == "validation" and len(split.groundtruth) == 12
        assert load_dataset(game / "bb" / "validation").frames.folder == split.frames.folder
        assert find_moc(tmp_path).root == game  # a folder holding one game

    def test_resize_policy_moves_the_boxes(self, tmp_path):
        data = load_dataset(_write_game(tmp_path), (64, 64), "resize")
        for index, name in enumerate(data.frames.names[:3]):
            frame = data.frames.frame(index).numpy().astype(int)
            reddish = np.argwhere((frame[0] > 100) & (frame[2] < 60))
            row = data.groundtruth.rows_of(name)[0]
            (y0, x0), (y1, x1) = reddish.min(0), reddish.max(0) + 1
            np.testing.assert_allclose(data.groundtruth.boxes[row], [x0, y0, x1, y1], atol=1.5)

    def test_identities_follow_each_object(self):
        # two objects of one label moving apart, a third appearing late, one far jump
        rows = []
        for t in range(4):
            rows.append(dict(frame=f"{t}", clip=0, t=t, x0=10 + t, y0=10, x1=14 + t, y1=14))
            rows.append(dict(frame=f"{t}", clip=0, t=t, x0=40 - t, y0=30, x1=44 - t, y1=34))
            if t >= 2:
                rows.append(dict(frame=f"{t}", clip=0, t=t, x0=80, y0=80, x1=84, y1=84))
        rows.append(dict(frame="4", clip=0, t=4, x0=10, y0=190, x1=14, y1=194))  # 180 px away
        for row in rows:
            row.update({"class": "p", "moving": True, "instance": -1})
        rows.append(dict(frame="0", clip=1, t=0, x0=10, y0=10, x1=14, y1=14, moving=True,
                         instance=-1, **{"class": "p"}))  # fmt: skip
        gt = GroundTruth.from_rows(rows)
        ids = link_instances(gt, (200, 200))  # reach: a quarter of the diagonal, 70.7 px
        first = ids[(gt.boxes[:, 1] == 10) & (gt.clip == 0)]
        second = ids[gt.boxes[:, 1] == 30]
        late = ids[gt.boxes[:, 1] == 80]
        jumped = ids[gt.boxes[:, 1] == 190]
        assert len(set(first)) == len(set(second)) == len(set(late)) == 1
        assert len({first[0], second[0], late[0], jumped[0]}) == 4
        assert ids[gt.clip == 1].tolist() == [0]  # unique within a clip, not across


class TestHalfMoc:
    def test_missing_split_lists_the_ones_present(self, tmp_path):
        game = _write_game(tmp_path, splits=("train", "validation"))
        with pytest.raises(ValueError, match=r"no 'test' split.*train, validation"):
            load_dataset(game)

    def test_one_split_is_used_with_a_warning_unless_another_is_asked_for(self, tmp_path):
        game = _write_game(tmp_path, splits=("train",))
        with pytest.warns(UserWarning, match="using its only split 'train'"):
            assert load_dataset(game).info["split"] == "train"
        with pytest.raises(ValueError, match="no 'validation' split"):
            load_dataset(game, split="validation")

    def test_inputs_without_boxes_train_but_do_not_evaluate(self, tmp_path):
        game = _write_game(tmp_path, boxes=False)
        assert len(open_frames(game)) == 6
        data = load_dataset(game)
        assert data.groundtruth is None and "bb/test" in data.info["no_groundtruth"]

    def test_boxes_without_inputs(self, tmp_path):
        game = _write_game(tmp_path)
        for path in sorted((game / "space_like").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (game / "space_like").rmdir()
        with pytest.raises(ValueError, match="holds no frames: space_like/<split>/"):
            load_dataset(game)

    def test_frame_without_box_table(self, tmp_path):
        game = _write_game(tmp_path)
        (game / "bb" / "test" / "00001_1.csv").unlink()
        with pytest.raises(ValueError, match=r"1 of 6 frames .* no box table .*00001_1.csv"):
            load_dataset(game)

    def test_bad_rows_are_named(self, tmp_path):
        game = _write_game(tmp_path)
        table = game / "bb" / "test" / "00000_0.csv"
        table.write_text("12,16,3,9,M,player\n")  # pixels, not fractions
        with pytest.raises(ValueError, match=r"00000_0.csv:1: MOC boxes are .* fractions"):
            load_dataset(game)
        table.write_text("0.1,0.2,0.1,0.2,X,player\n")
        with pytest.raises(ValueError, match="flag must be M or S"):
            load_dataset(game)

    def test_several_games(self, tmp_path):
        _write_game(tmp_path)
        (tmp_path / "Boxing-v0" / "space_like" / "test").mkdir(parents=True)
        with pytest.raises(ValueError, match="several MOC games"):
            load_dataset(tmp_path)

    def test_our_layout_is_not_moc(self, tmp_path):
        (tmp_path / "index.csv").write_text("frame,clip,t\n")
        (tmp_path / "space_like").mkdir()
        assert find_moc(tmp_path) is None


@pytest.mark.parametrize("policy", ["resize", "crop", "pad"])
def test_resize_boxes_follow_the_pixels(policy):
    """A box drawn into a 30 x 50 image lands where resize_boxes puts it, under every policy."""
    from marionette.data.frames import _resize

    image = np.zeros((30, 50, 3), np.uint8)
    image[8:20, 12:31] = 255
    size = (40, 40)
    out = np.asarray(_resize(Image.fromarray(image), size, policy)).astype(int)
    bright = np.argwhere(out[..., 0] > 127)
    (y0, x0), (y1, x1) = bright.min(0), bright.max(0) + 1
    mapped = resize_boxes(np.array([[12, 8, 31, 20]]), (30, 50), size, policy)[0]
    np.testing.assert_allclose(mapped, [x0, y0, x1, y1], atol=1.0)


@pytest.fixture(scope="module")
def pong(tmp_path_factory):
    pytest.importorskip("ocatari")
    from marionette.data.atari import AtariConfig, generate_atari

    root = tmp_path_factory.mktemp("pong")
    generate_atari(root / "native", AtariConfig("Pong", clips=3, frames_per_clip=4), layout="moc")
    return root / "native", root / "native" / "moc" / "Pong-v0" / "space_like" / "train"


@pytest.mark.games
class TestRoundTrip:
    def test_same_frames_and_boxes(self, pong):
        native, moc = (load_dataset(path) for path in pong)
        assert len(native.frames) == len(moc.frames) == 12
        assert (native.frames.frames(range(12)) == moc.frames.frames(range(12))).all()
        assert (native.frames.clips == moc.frames.clips).all()
        a, b = native.groundtruth, moc.groundtruth
        assert len(a) == len(b) > 12
        names = {n: m for n, m in zip(native.frames.names, moc.frames.names, strict=True)}
        order_a = np.lexsort((a.boxes[:, 1], a.boxes[:, 0], [names[f] for f in a.frame]))
        order_b = np.lexsort((b.boxes[:, 1], b.boxes[:, 0], b.frame.astype(str)))
        # groundtruth.csv keeps 6 significant digits: a thousandth of a pixel
        np.testing.assert_allclose(a.boxes[order_a], b.boxes[order_b], atol=1e-3)
        assert (a.moving[order_a] == b.moving[order_b]).all()
        to_moc = {"Player": "player", "Enemy": "enemy", "Ball": "ball",
                  "PlayerScore": "player_score", "EnemyScore": "enemy_score"}  # fmt: skip
        assert [to_moc[label] for label in a.label[order_a]] == b.label[order_b].tolist()

    def test_eval_gives_the_same_metrics(self, pong, tmp_path):
        native, moc = pong
        run = tmp_path / "run"
        flags = ["--preset", "original", "--canvas_size", "128", "--layer_size", "16",
                 "--num_classes", "8",
                 "--dim_z", "16", "--bs", "2", "--num_steps", "2", "--image_every", "0",
                 "--transform_encoder", "match", "--selection", "match", "--sprite_init",
                 "data", "--no-progress", "--no-tensorboard"]  # fmt: skip
        assert main(["train", "--data", str(native), "--out", str(run), *flags]) == 0
        results = []
        for name, data in (("native", native), ("moc", moc)):
            out = tmp_path / name
            assert main(["eval", "--run", str(run), "--data", str(data), "--out", str(out),
                         "--no-tensorboard"]) == 0  # fmt: skip
            results.append(json.loads((out / "metrics.json").read_text()))
        native_metrics = results[0]
        assert native_metrics["game"] == results[1]["game"] == "Pong"
        assert native_metrics["relevant"]["objects"] > 0, "no labelled object to compare"
        assert "temporal" in native_metrics, "no consecutive explained objects to compare"
        for view in ("all", "moving", "relevant"):  # per class, under each layout's names
            by_class = [sorted(r[view].pop("recall_by_class").values()) for r in results]
            assert by_class[0] and by_class[0] == pytest.approx(by_class[1], rel=1e-9), view
        native_flat, moc_flat = (flatten_metrics(r) for r in results)
        assert native_flat.keys() == moc_flat.keys()
        for key, value in native_flat.items():  # label names differ: sums in another order
            expected = value if isinstance(value, str) else pytest.approx(value, rel=1e-9)
            assert moc_flat[key] == expected, key
