"""The ``marionette`` command end to end on the tiny synthetic world."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import marionette
from marionette.api import load_run
from marionette.cli import main
from marionette.decompose import read_decomposition
from marionette.eval import suppress_overlaps

TINY_FLAGS = [
    "--synthetic", "tiny", "--synthetic_clips", "8", "--canvas_size", "32", "--layer_size", "4",
    "--num_classes", "4", "--dim_z", "16", "--bs", "2", "--num_steps", "6", "--log_every", "3",
    "--image_every", "0", "--transform_encoder", "match", "--selection", "match",
    "--sprite_init", "data", "--checkpoint_every", "4", "--no-progress", "--no-tensorboard",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out), *TINY_FLAGS]) == 0
    return out


def test_train_writes_a_readable_run(run):
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["layer_size"] == 4 and config["train"]["num_steps"] == 6
    assert (run / "checkpoints" / "final.pt").exists()


def test_decompose_round_trip(run, tmp_path, capsys):
    out = tmp_path / "dec"
    assert main(["decompose", "--run", str(run), "--out", str(out), "--frames", "6",
                 "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "sprite sheet" in printed and "summary" in printed
    document = json.loads((out / "decomposition.json").read_text())
    assert len(document["frames"]) == 6
    for record in document["frames"]:
        for sprite in record["sprites"]:
            x0, y0, x1, y1 = sprite["box"]
            assert 0 <= x0 <= x1 <= 32 and 0 <= y0 <= y1 <= 32
            assert set(sprite) >= {"layer", "row", "col", "sprite", "presence", "offset", "depth"}
        # repeats: the visible sprites that non-maximum suppression leaves out, as evaluation
        # does (ties in presence keep the first slot in (layer, row, col) order)
        shown = [sprite for sprite in record["sprites"] if sprite["visible"]]
        shown.sort(key=lambda s: (s["layer"], s["row"], s["col"]))
        kept = suppress_overlaps(
            np.array([sprite["box"] for sprite in shown]).reshape(-1, 4),
            np.array([sprite["presence"] for sprite in shown]),
            np.zeros(len(shown), np.int64),
        )
        assert [sprite["repeat"] for sprite in shown] == (~kept).tolist()
        assert not any(s["repeat"] for s in record["sprites"] if not s["visible"])
    sprites = [[s for s in r["sprites"] if s["visible"]] for r in document["frames"]]
    objects = np.mean([sum(not s["repeat"] for s in shown) for shown in sprites])
    assert f"{objects:.1f} objects per frame: {np.mean([len(s) for s in sprites]):.1f}" in printed
    looks = document["sprite_looks"]  # each entry's look is an entry that is its own look
    assert len(looks) == document["num_sprites"] and all(looks[look] == look for look in looks)
    for name in ("sprite_sheet.png", "summary.png", "sprites/0.png"):
        assert (out / name).exists()
    with Image.open(out / "sprites" / "0.png") as sprite:
        assert sprite.mode == "RGBA"
    # Rendering the JSON reproduces the stored hard reconstructions (up to 8-bit rounding).
    decomposition, names = read_decomposition(out)
    rendered = marionette.render(decomposition)[:, 0]
    for b, name in enumerate(names):
        stored = np.asarray(Image.open(out / "reconstructions" / f"{name.rsplit('.', 1)[0]}.png"))
        expected = (rendered[b].permute(1, 2, 0).numpy() * 255).round()
        assert np.abs(stored.astype(float) - expected).max() <= 1


def test_api_load_decompose_edit_render(run):
    model, config = marionette.load(run)
    frames = torch.rand(1, 1, 3, 32, 32)
    decomposition = model.decompose(frames)
    hard = model(frames, "hard", decomposition.plane_order).reconstruction
    torch.testing.assert_close(marionette.render(decomposition), hard)
    swapped = decomposition.replace(sprite_ids=(decomposition.sprite_ids + 1) % 4)
    assert marionette.render(swapped).shape == (1, 1, 3, 32, 32)


def test_eval_writes_metrics(run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--run", str(run), "--frames", "64", "--out", str(out),
                 "--no-tensorboard"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == 64 and metrics["step"] == 6
    assert {"all", "moving", "relevant"} <= set(metrics)
    assert "f_score" in metrics["all"] and "foreground_ari" in metrics
    assert (out / "metrics_eval.csv").read_text().count("\n") == 2
    printed = capsys.readouterr().out
    assert "relevant/f_score" in printed
    by_class = metrics["relevant"]["recall_by_class"]
    assert by_class and all(0 <= value <= 1 for value in by_class.values())
    assert f"relevant recall by class: {next(iter(by_class))} " in printed


def test_eval_of_an_earlier_checkpoint_records_its_step(run, tmp_path):
    # The run logged metrics up to step 6; the metrics are those of the step-4 weights.
    out = tmp_path / "eval"
    earlier = run / "checkpoints" / "step_000000004.pt"
    assert main(["eval", "--run", str(run), "--checkpoint", str(earlier), "--frames", "16",
                 "--out", str(out), "--no-tensorboard"]) == 0  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["step"] == 4
    loaded = load_run(run, earlier)
    assert (loaded.step, loaded.checkpoint) == (4, earlier)
    assert load_run(run).step == 6


def test_eval_of_a_folder_without_ground_truth(run, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / f"{i}.png")
    assert main(["eval", "--run", str(run), "--data", str(folder)]) == 2
    assert "no groundtruth.csv" in capsys.readouterr().err


def test_sweep_trains_each_point_once(tmp_path, capsys):
    settings = [
        "synthetic=tiny", "synthetic_clips=8", "height=32", "width=32", "layer_size=4",
        "num_classes=4", "dim_z=16", "bs=2", "num_steps=3", "image_every=0",
        "transform_encoder=match", "selection=match", "sprite_init=data", "eval_frames=32",
    ]  # fmt: skip
    argv = ["sweep", "--grid", "seed=0,1", "--set", *settings, "--out", str(tmp_path),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.count("run seed=") == 2
    losses = [(tmp_path / f"seed={s}" / "metrics.csv").read_text().splitlines()[-1] for s in (0, 1)]
    assert losses[0] != losses[1]  # the seed is really applied
    assert main(argv) == 0
    assert capsys.readouterr().out.count("skip seed=") == 2
    table = (tmp_path / "summary.md").read_text()
    assert "| 2 |" in table and "±" in table


def test_sweep_rejects_an_unknown_key(tmp_path, capsys):
    assert main(["sweep", "--grid", "layers=1,2", "--out", str(tmp_path)]) == 2
    assert "layers" in capsys.readouterr().err


def test_data_synthetic(tmp_path):
    assert main(["data", "synthetic", "--world", "tiny", "--clips", "2",
                 "--out", str(tmp_path / "w")]) == 0  # fmt: skip
    assert (tmp_path / "w" / "groundtruth.csv").exists()
    assert main(["data", "synthetic", "--world", "tiny", "--out", str(tmp_path / "w")]) == 2


def test_the_originals_num_classes_names_the_dictionary_size(tmp_path):
    from marionette.cli import build_parser
    from marionette.config import Config

    args = build_parser().parse_args(["train", "--num_classes", "7"])
    assert args.num_sprites == "7"
    assert Config().replace(num_classes=7).model.num_sprites == 7
    stored = Config().to_dict()
    stored["model"]["num_classes"] = stored["model"].pop("num_sprites")  # a pre-rename file
    assert Config.from_dict(stored) == Config()


def test_mario_stages_are_parsed_and_checked(capsys):
    from marionette.cli import build_parser

    args = build_parser().parse_args(["data", "mario", "--out", "m", "--stages", "1-1", "8-4"])
    assert args.stages == [(1, 1), (8, 4)]
    assert build_parser().parse_args(["data", "mario", "--out", "m"]).stages is None
    for bad in ("9-1", "1-5", "1", "a-b"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["data", "mario", "--out", "m", "--stages", bad])
        assert f"world 1-8 and stage 1-4 (e.g. 1-1), got {bad!r}" in capsys.readouterr().err


SWEEP_SETTINGS = [
    "synthetic=tiny", "synthetic_clips=8", "height=32", "width=32", "layer_size=4",
    "num_classes=4", "dim_z=16", "bs=2", "num_steps=3", "image_every=0", "threads=1",
    "transform_encoder=match", "selection=match", "sprite_init=data", "eval_frames=32",
]  # fmt: skip


def test_sweep_jobs_run_in_parallel_with_the_results_of_one_job(tmp_path, capsys):
    """Two jobs (one thread each, as one job here) give bit-identical runs and evaluations."""
    common = ["sweep", "--grid", "seed=0,1", "--set", *SWEEP_SETTINGS, "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    assert main([*common, "--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    assert capsys.readouterr().out.count("thread(s))") == 2
    for seed in (0, 1):
        one, two = (tmp_path / name / f"seed={seed}" for name in ("one", "two"))
        a = torch.load(one / "checkpoints" / "final.pt", weights_only=True)["model"]
        b = torch.load(two / "checkpoints" / "final.pt", weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
        metrics = [json.loads((run / "eval" / "metrics.json").read_text()) for run in (one, two)]
        assert metrics[0] == metrics[1]
        assert (two / "sweep.log").exists() and not list(two.glob("*.json.tmp"))
    assert main([*common, "--out", str(tmp_path / "two"), "--jobs", "2"]) == 0
    assert capsys.readouterr().out.count("skip seed=") == 2


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failing_sweep_run_is_reported_and_the_others_finish(tmp_path, capsys, jobs):
    argv = ["sweep", "--grid", "lr=1e-3,1e9", "--set", *SWEEP_SETTINGS, "--no-progress",
            "--out", str(tmp_path), "--jobs", jobs]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and "lr=1e9" in err and "loss became" in err
    assert (tmp_path / "lr=1e-3" / "eval" / "metrics.json").exists()
    assert "| 1 |" in (tmp_path / "summary.md").read_text()
