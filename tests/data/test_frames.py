import numpy as np
import pytest
import torch
from PIL import Image

from marionette.data import FrameFolder, FrameStacks, InMemoryFrames, frame_sort_key, load_image
from marionette.data.frames import adapt_frames


def write_frames(folder, names, size=(6, 8), mode="RGB", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for name in names:
        array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(array).convert(mode).save(folder / name)
        arrays[name] = array
    return arrays


class TestSorting:
    def test_numeric_not_lexical(self, tmp_path):
        write_frames(tmp_path, ["10.png", "2.png", "1.png", "100.jpg"])
        assert FrameFolder(tmp_path).names == ["1.png", "2.png", "10.png", "100.jpg"]

    def test_moc_names_sort_by_stack_then_time(self):
        names = ["00002_0.png", "00001_3.png", "00010_1.png", "00001_10.png"]
        assert sorted(names, key=frame_sort_key) == [
            "00001_3.png",
            "00001_10.png",
            "00002_0.png",
            "00010_1.png",
        ]

    def test_names_without_numbers(self, tmp_path):
        write_frames(tmp_path, ["a.png", "1.png"])
        with pytest.raises(ValueError, match="must contain a number .* got 'a.png'"):
            FrameFolder(tmp_path)

    def test_duplicate_numbers(self, tmp_path):
        write_frames(tmp_path, ["1.png", "1.jpg"])
        with pytest.raises(ValueError, match="have the same frame number"):
            FrameFolder(tmp_path)


class TestImageModes:
    @pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "CMYK"])
    def test_every_mode_becomes_rgb(self, tmp_path, mode):
        array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
        image = Image.fromarray(array)
        if mode == "I;16":
            image = Image.fromarray(array[..., 0].astype(np.uint16) * 257)
            image = image.convert("I;16") if image.mode != "I;16" else image
        else:
            image = image.convert(mode)
        path = tmp_path / "0.png" if mode != "CMYK" else tmp_path / "0.jpg"
        image.save(path)
        loaded = load_image(path)
        assert loaded.shape == (5, 7, 3) and loaded.dtype == np.uint8
        if mode == "RGB":
            np.testing.assert_array_equal(loaded, array)
        if mode in ("L", "I;16"):
            assert (loaded == loaded[..., :1]).all()
        if mode == "I;16":
            np.testing.assert_array_equal(loaded[..., 0], array[..., 0])

    def test_transparent_pixels_composite_over_black(self, tmp_path):
        rgba = np.zeros((2, 2, 4), np.uint8)
        rgba[..., :3] = 200
        rgba[0, 0, 3] = 255
        rgba[0, 1, 3] = 128
        Image.fromarray(rgba, "RGBA").save(tmp_path / "0.png")
        loaded = load_image(tmp_path / "0.png")
        assert loaded[0, 0].tolist() == [200, 200, 200]
        assert loaded[0, 1, 0] in (100, 101)
        assert loaded[1, 1].tolist() == [0, 0, 0]

    def test_truncated_image_is_named(self, tmp_path):
        write_frames(tmp_path, ["0.png", "1.png"], size=(32, 32))
        data = (tmp_path / "1.png").read_bytes()
        (tmp_path / "1.png").write_bytes(data[: len(data) // 2])
        folder = FrameFolder(tmp_path, cache=False)
        with pytest.raises(ValueError, match="1.png: unreadable or truncated image"):
            folder.frame(1)

    def test_not_an_image(self, tmp_path):
        (tmp_path / "0.png").write_text("hello")
        with pytest.raises(ValueError, match="0.png: unreadable or truncated image"):
            FrameFolder(tmp_path)


class TestResize:
    def test_keep_rejects_other_sizes(self, tmp_path):
        write_frames(tmp_path, ["0.png"], size=(6, 8))
        write_frames(tmp_path, ["1.png"], size=(8, 8), seed=1)
        folder = FrameFolder(tmp_path)
        assert (folder.height, folder.width) == (6, 8)
        with pytest.raises(ValueError, match="1.png is 8 x 8 .* unlike the other frames"):
            folder.frame(1)

    def test_keep_with_canvas_mismatch(self, tmp_path):
        write_frames(tmp_path, ["0.png"], size=(6, 8))
        with pytest.raises(ValueError, match="0.png is 6 x 8 .* but the canvas is 16 x 16; pass"):
            FrameFolder(tmp_path, size=(16, 16))

    @pytest.mark.parametrize("policy", ["crop", "resize", "pad"])
    def test_policies_reach_any_canvas(self, tmp_path, policy):
        write_frames(tmp_path, ["0.png", "1.png"], size=(21, 16))
        folder = FrameFolder(tmp_path, size=(12, 20), resize=policy)
        frames = folder.frames([0, 1])
        assert frames.shape == (2, 3, 12, 20) and frames.dtype == torch.uint8

    def test_pad_keeps_pixels(self, tmp_path):
        arrays = write_frames(tmp_path, ["0.png"], size=(5, 5))
        frame = FrameFolder(tmp_path, size=(6, 8), resize="pad").frame(0)
        np.testing.assert_array_equal(frame[:, :5, :5].permute(1, 2, 0).numpy(), arrays["0.png"])
        np.testing.assert_array_equal(frame[:, 5, :5], frame[:, 4, :5])  # edge replicated

    def test_crop_centres(self, tmp_path):
        array = np.zeros((10, 20, 3), np.uint8)
        array[:, 5:15] = 255  # a white centre band that the crop keeps
        Image.fromarray(array).save(tmp_path / "0.png")
        frame = FrameFolder(tmp_path, size=(10, 10), resize="crop").frame(0)
        assert frame.float().mean() > 250

    def test_adapt_in_memory(self):
        frames = InMemoryFrames(torch.zeros(2, 3, 35, 35, dtype=torch.uint8))
        assert adapt_frames(frames, (36, 36), "pad").data.shape == (2, 3, 36, 36)
        with pytest.raises(ValueError, match="are 35 x 35 .* canvas is 36 x 36"):
            adapt_frames(frames, (36, 36), "keep")


class TestFolderErrors:
    def test_missing(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            FrameFolder(tmp_path / "nope")

    def test_empty(self, tmp_path):
        with pytest.raises(ValueError, match="holds no .png or .jpg frames \\(it is empty\\)"):
            FrameFolder(tmp_path)

    def test_no_images(self, tmp_path):
        (tmp_path / "notes.txt").write_text("x")
        with pytest.raises(ValueError, match="no .png or .jpg frames \\(found \\['notes.txt'"):
            FrameFolder(tmp_path)

    def test_unfinished_dataset(self, tmp_path):
        partial = tmp_path / ".data.abc.partial"
        write_frames(partial, ["0.png"])
        with pytest.raises(ValueError, match="unfinished dataset"):
            FrameFolder(partial)


class TestCache:
    def test_cached_frames_are_reused(self, tmp_path):
        write_frames(tmp_path, ["0.png"])
        folder = FrameFolder(tmp_path, cache=True)
        first = folder.frame(0)
        (tmp_path / "0.png").unlink()
        assert torch.equal(folder.frame(0), first)

    def test_auto_respects_the_budget(self, tmp_path):
        write_frames(tmp_path, ["0.png"])
        assert FrameFolder(tmp_path, cache="auto", cache_limit_bytes=1)._cache is None


class TestStacks:
    def test_never_cross_clips(self, tmp_path):
        names = [f"{i}.png" for i in range(7)]
        write_frames(tmp_path, names)
        (tmp_path / "index.csv").write_text(
            "frame,clip,t\n"
            + "".join(f"{i}.png,{0 if i < 3 else 1},{i if i < 3 else i - 3}\n" for i in range(7))
        )
        stacks = FrameStacks(FrameFolder(tmp_path), 3)
        assert [list(stacks.indices(i)) for i in range(len(stacks))] == [
            [0, 1, 2],
            [3, 4, 5],
            [4, 5, 6],
        ]
        item = stacks[1]
        assert item.shape == (3, 3, 6, 8) and item.dtype == torch.float32
        assert item.min() >= 0 and item.max() <= 1

    def test_moc_names_give_clips(self, tmp_path):
        names = [f"{s:05d}_{t}.png" for s in range(3) for t in range(4)]
        write_frames(tmp_path, names)
        stacks = FrameStacks(FrameFolder(tmp_path), 4)
        assert len(stacks) == 3
        assert all(len(set(FrameFolder(tmp_path).clips[stacks.indices(i)])) == 1 for i in range(3))

    def test_stack_longer_than_every_clip(self, tmp_path):
        names = [f"{s:05d}_{t}.png" for s in range(2) for t in range(4)]
        write_frames(tmp_path, names)
        with pytest.raises(
            ValueError, match="frames_per_item=5 is larger than every clip .* longest has 4"
        ):
            FrameStacks(FrameFolder(tmp_path), 5)

    def test_short_clips_are_skipped_with_a_warning(self):
        frames = InMemoryFrames(
            torch.zeros(5, 3, 2, 2, dtype=torch.uint8), clips=[0, 0, 0, 1, 1], times=[0, 1, 2, 0, 1]
        )
        with pytest.warns(UserWarning, match="1 of 2 clips are shorter"):
            stacks = FrameStacks(frames, 3)
        assert len(stacks) == 1

    def test_index_missing_frames(self, tmp_path):
        write_frames(tmp_path, ["0.png", "1.png"])
        (tmp_path / "index.csv").write_text("frame,clip,t\n0.png,0,0\n")
        with pytest.raises(ValueError, match="does not list 1 frames"):
            FrameFolder(tmp_path)

    def test_batch_size_not_divisible_by_four(self):
        frames = InMemoryFrames(
            torch.arange(10, dtype=torch.uint8)[:, None, None, None]
            .expand(10, 3, 1, 1)
            .contiguous(),
            clips=[0] * 5 + [1] * 5,
            times=list(range(5)) * 2,
        )
        stacks = FrameStacks(frames, 4)
        loader = torch.utils.data.DataLoader(stacks, batch_size=3, shuffle=True)
        for batch in loader:
            values = (batch[:, :, 0, 0, 0] * 255).round()
            assert ((values[:, 1:] - values[:, :-1]) == 1).all()  # consecutive inside each item


def test_ground_truth_and_masks_follow_the_resize_policy(tmp_path):
    """Boxes are in pixels of the frames as returned: scaled by ``resize``, unchanged by
    ``pad`` (whose masks are padded with background); masks refuse the other policies."""
    from marionette.data import generate, load_dataset, write_dataset

    data = generate("tiny", "test", num_clips=2)
    frames = data.frames.data.permute(0, 2, 3, 1).numpy()
    names, clips, times = data.frames.names, data.frames.clips, data.frames.times
    write_dataset(tmp_path / "d", frames, names, clips, times, {}, data.groundtruth, data.masks)
    height, width = frames.shape[1:3]
    padded = load_dataset(tmp_path / "d", (height + 8, width + 8), "pad")
    np.testing.assert_allclose(padded.groundtruth.boxes, data.groundtruth.boxes, atol=1e-3)
    assert padded.masks.shape[1:] == (height + 8, width + 8)
    assert (padded.masks[:, height:] == -1).all() and (padded.masks[:, :, width:] == -1).all()
    with pytest.raises(ValueError, match="only with the resize policy 'pad'"):
        load_dataset(tmp_path / "d", (2 * height, 2 * width), "resize")
    (tmp_path / "d" / "masks.npz").unlink()
    doubled = load_dataset(tmp_path / "d", (2 * height, 2 * width), "resize")
    np.testing.assert_allclose(doubled.groundtruth.boxes, 2 * data.groundtruth.boxes, atol=2e-3)
