"""Faults and bad input around the edges (docs/reliability.md): nothing lost, no silent wrong
result, no traceback. Each test injects the fault it names."""

import csv
import errno
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import marionette
import marionette.core.objective as objective_module
import marionette.step as step_module
from marionette.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from marionette.cli import main as marionette_cli
from marionette.config import Config
from marionette.data import FrameFolder, GroundTruth, load_dataset
from marionette.eval import clustering_scores, few_shot_accuracy
from marionette.step import step_memory_lower_bound
from marionette.sweep import run_sweep, summarise
from marionette.trainer import OutOfMemory, TrainingDiverged, TrainingFailed

from .test_trainer import losses, quiet_train, tiny_config


def steps(run_dir) -> list[int]:
    with open(run_dir / "metrics.csv") as handle:
        return [int(float(row["step"])) for row in csv.DictReader(handle)]


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "final.pt")["model"]


def assert_same_weights(a, b) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def frames_dir(tmp_path):
    marionette_cli(
        ["data", "synthetic", "--world", "tiny", "--clips", "4", "--out", str(tmp_path / "d")]
    )
    return tmp_path / "d"


def poison_call(monkeypatch, module, name, at: int, effect):
    """Replace ``module.name`` so that its ``at``-th call runs ``effect(real, args)``."""
    real, calls = getattr(module, name), {"n": 0}

    def patched(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at:
            return effect(real, args, kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, patched)


# 1. A NaN stop names a checkpoint that is good; decompose / eval refuse non-finite weights.


def test_a_checkpoint_whose_weights_give_nan_is_not_called_good(tmp_path, monkeypatch):
    # steps 1-4 finite (checkpoints at 2 and 4); the forward from step 4's weights gives NaN
    poison_call(
        monkeypatch,
        objective_module,
        "reconstruction_loss",
        5,
        lambda real, args, kw: real(*args) * float("nan"),
    )
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="loss became nan at step 4") as info:
        quiet_train(tiny_config(), run)
    assert "the last good checkpoint is" in str(info.value)
    assert (
        str(info.value)
        .split("last good checkpoint is ")[1]
        .startswith(str(run / "checkpoints" / "step_000000002.pt"))
    )
    assert [p.name for p in list_checkpoints(run)] == ["step_000000002.pt"]  # step 4 removed


def test_non_finite_weights_are_refused_by_load(tmp_path):
    run = tmp_path / "run"
    quiet_train(tiny_config(), run)
    final = run / "checkpoints" / "final.pt"
    state = load_checkpoint(final)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].fill_(float("nan"))
    torch.save(state, final)
    with pytest.raises(CheckpointError, match=f"non-finite weights \\({name}"):
        marionette.load(run, final)
    with pytest.warns(UserWarning, match="non-finite weights"):
        model, _ = marionette.load(run)  # falls back to the newest good checkpoint
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for path in list_checkpoints(run):
        torch.save(state, path)
    code = marionette_cli(["decompose", "--run", str(run), "--no-progress"])
    assert code == 2 and not (run / "decomposition").exists()


# 2. An error inside the loop checkpoints the last finished step and names its cause.


def test_a_frame_that_breaks_mid_training_is_named_and_progress_kept(
    frames_dir, tmp_path, monkeypatch
):
    config = tiny_config(data=str(frames_dir), num_steps=8, checkpoint_every=100)
    real_frame, real_check = FrameFolder.frame, FrameFolder.check
    reads = {"after_check": None}

    def check(self):
        real_check(self)
        reads["after_check"] = 0

    def truncated_after_start(self, index):  # the disk goes bad once training runs
        if reads["after_check"] is not None:
            reads["after_check"] += 1
            if reads["after_check"] > 40:  # the dictionary's sample, then some steps
                raise ValueError(f"{self.paths[index]}: unreadable or truncated image")
        return real_frame(self, index)

    monkeypatch.setattr(FrameFolder, "check", check)
    monkeypatch.setattr(FrameFolder, "frame", truncated_after_start)
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed) as info:
        quiet_train(config, run)
    message = str(info.value)
    assert f"{frames_dir}/" in message and "unreadable or truncated image" in message
    stopped = int(message.split("after step ")[1].split(":")[0])
    assert stopped > 0 and load_checkpoint(list_checkpoints(run)[-1])["step"] == stopped
    assert not (run / "checkpoints" / "final.pt").exists()
    monkeypatch.undo()
    assert quiet_train(config, run).step == 8


def test_out_of_memory_in_a_step_names_the_settings_and_keeps_progress(tmp_path, monkeypatch):
    def out_of_memory(real, args, kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    poison_call(monkeypatch, step_module, "training_objective", 4, out_of_memory)
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed, match="out of memory .*Tried to allocate 2.00 GiB.*--bs"):
        quiet_train(tiny_config(checkpoint_every=100), run)
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == 3


def test_a_full_disk_is_named_and_the_good_checkpoint_kept(tmp_path, monkeypatch):
    run = tmp_path / "run"
    quiet_train(tiny_config(num_steps=2, checkpoint_every=100), run)
    good = (run / "checkpoints" / "final.pt").read_bytes()

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainingFailed, match="no space left on device.*could not be written"):
        quiet_train(tiny_config(num_steps=4, checkpoint_every=3), run, resume=True)
    assert (run / "checkpoints" / "step_000000002.pt").read_bytes() == good
    assert not [p for p in (run / "checkpoints").iterdir() if p.suffix == ".tmp"]
    other = ["--out", str(tmp_path / "other"), "--no-progress", "--no-tensorboard"]
    code = marionette_cli(["train", "--config", str(run / "config.json"), *other])
    assert code == 1


def test_data_check_names_every_bad_frame_and_a_new_run_refuses_them(frames_dir, tmp_path, capsys):
    assert marionette_cli(["data", "check", str(frames_dir)]) == 0
    assert "every frame decodes" in capsys.readouterr().out
    names = sorted(p.name for p in frames_dir.glob("*.png"))
    for name in names[3:5]:
        (frames_dir / name).write_bytes((frames_dir / name).read_bytes()[:60])
    assert marionette_cli(["data", "check", str(frames_dir)]) == 2
    err = capsys.readouterr().err
    assert "2 of" in err and names[3] in err and names[4] in err
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="2 of .* frames .* cannot be used"):
        quiet_train(tiny_config(data=str(frames_dir)), run)
    assert not (run / "config.json").exists()


# 3. metrics.csv holds every step once after any resume.


def test_metrics_rows_after_the_resumed_step_are_cut(tmp_path):
    config = tiny_config(num_steps=6, log_every=1, checkpoint_every=2, keep_checkpoints=3)
    run = tmp_path / "run"
    quiet_train(config, run)
    for path in [run / "checkpoints" / "final.pt", *list_checkpoints(run)[-1:]]:
        path.unlink()  # as after a crash past step 4, or a fallback to an older checkpoint
    assert steps(run) == [1, 2, 3, 4, 5, 6]
    quiet_train(config, run)
    assert steps(run) == [1, 2, 3, 4, 5, 6]
    quiet_train(config, tmp_path / "straight")
    assert losses(run) == losses(tmp_path / "straight")


# 4. A failed start leaves nothing behind.


def test_a_failed_start_does_not_lock_in_its_configuration(tmp_path, frames_dir):
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="doesnotexist"):
        quiet_train(tiny_config(data=str(tmp_path / "doesnotexist")), run)
    assert not run.exists()  # not even an empty folder
    assert quiet_train(tiny_config(data=str(frames_dir)), run).step == 6


# 5. Ctrl-C checkpoints at a step boundary, random state and all.


def test_ctrl_c_stops_at_a_step_boundary_and_resumes_bit_identically(tmp_path, monkeypatch):
    def ctrl_c(real, args, kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives inside the step's forward
        return real(*args, **kwargs)

    poison_call(monkeypatch, step_module, "training_objective", 4, ctrl_c)
    config = tiny_config(num_steps=8, checkpoint_every=100, hard_mix=1.0)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        quiet_train(config, run)
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(run)] == [4]  # step 4 finished
    monkeypatch.undo()
    assert quiet_train(config, run).step == 8
    quiet_train(config, tmp_path / "straight")
    assert_same_weights(run, tmp_path / "straight")


@pytest.mark.parametrize("stop", [3, 5])
def test_a_resumed_run_maintains_its_dictionary_as_an_uninterrupted_one(tmp_path, stop):
    """Merges before steps 4 and 7. Stopped at 3 (the merge still to come) or at 5 (sprite use
    counted since the merge, and the re-seeding's random state, in the checkpoint) and resumed,
    a run ends with the weights of one that was not stopped."""
    config = tiny_config(num_sprites=16, merge_every=3, num_steps=8, checkpoint_every=100)
    quiet_train(config.replace(num_steps=stop), tmp_path / "run")
    assert quiet_train(config, tmp_path / "run", resume=True).step == 8
    quiet_train(config, tmp_path / "straight")
    assert_same_weights(tmp_path / "run", tmp_path / "straight")


def test_an_error_after_the_dictionary_maintenance_writes_no_checkpoint(tmp_path, monkeypatch):
    # The merge after step 2 changed the dictionary before step 3's forward failed: those
    # weights are step 2's no more, so no checkpoint claims they are.
    def broken(real, args, kwargs):
        raise RuntimeError("broken step")

    poison_call(monkeypatch, step_module, "training_objective", 3, broken)
    config = tiny_config(num_sprites=16, merge_every=2, num_steps=6, checkpoint_every=100)
    with pytest.raises(TrainingFailed, match="no checkpoint written .*part-way through step 3"):
        quiet_train(config, tmp_path / "run")
    assert list_checkpoints(tmp_path / "run") == []


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path, monkeypatch):
    def two_ctrl_c(real, args, kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    poison_call(monkeypatch, step_module, "training_objective", 4, two_ctrl_c)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        quiet_train(tiny_config(checkpoint_every=2), run)
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(run)] == [2]


# 6. A checkpoint is compared with the run's configuration.


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    quiet_train(tiny_config(gating="original"), tmp_path / "a")
    quiet_train(tiny_config(), tmp_path / "b")  # same shapes, another gating
    foreign = tmp_path / "a" / "checkpoints" / "final.pt"
    with pytest.raises(CheckpointError, match="written with gating 'original'"):
        marionette.load(tmp_path / "b", foreign)
    shutil.copy(foreign, tmp_path / "b" / "checkpoints" / "final.pt")
    with pytest.warns(UserWarning, match="gating"):
        marionette.load(tmp_path / "b")  # the newest compatible one: step 4 of b
    state = load_checkpoint(foreign)
    del state["config"]
    state["model"] = {k: v[..., :1] if v.ndim else v for k, v in state["model"].items()}
    torch.save(state, tmp_path / "other_shapes.pt")
    with pytest.raises(CheckpointError, match="does not fit the model of .*config.json"):
        marionette.load(tmp_path / "b", tmp_path / "other_shapes.pt")


# 7. No traceback escapes the command line.


@pytest.mark.parametrize("flag", [["--frames", "-1"], ["--batch-size", "0"]])
def test_bad_counts_are_refused_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit) as info:
        marionette_cli(["decompose", "--run", "r", *flag])
    assert info.value.code == 2 and "must be an integer >=" in capsys.readouterr().err


def test_a_step_that_cannot_fit_is_refused_up_front(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(step_module, "available_memory", lambda device: 4 << 30)
    with pytest.raises(OutOfMemory, match="needs at least .* GiB but 4.0 GiB are free"):
        quiet_train(tiny_config(num_sprites=1_000_000), tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()
    code = marionette_cli(["train", "--preset", "original", "--synthetic", "tiny",
                           "--num_sprites", "1000000", "--out", str(tmp_path / "cli"),
                           "--no-progress"])  # fmt: skip
    assert code == 1 and "selection weights" in capsys.readouterr().err


def test_the_demo_step_is_within_its_memory_bound():
    """The bound is a lower bound of the real step (so a refusal is never a false alarm)."""
    config = tiny_config(bs=2)
    parts = step_memory_lower_bound(config)
    model = marionette.MarioNette(config.model)
    parameters = sum(p.numel() for p in model.parameters())
    assert parts["parameters, gradients and AdamW state"] == 16 * parameters
    bigger = step_memory_lower_bound(config.replace(num_sprites=8))
    key = next(k for k in parts if k.startswith("selection weights"))
    assert sum(bigger.values()) > sum(parts.values()) and parts[key] > 0


_REUSE = """
import resource, torch
from marionette.step import retain_freed_memory
applied = retain_freed_memory() if {retain} else None
for step in range(30):  # a 64 MiB activation (above glibc's mmap thresholds) per step, freed
    if step == 20:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(1 << 24).fill_(1.0)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _reuse(retain: bool, **env) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    code = _REUSE.format(retain=retain)
    done = subprocess.run([sys.executable, "-c", code], env={**environment, **env},
                          capture_output=True, text=True, check=True)  # fmt: skip
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_unless_the_user_set_the_thresholds():
    """A 64 MiB tensor freed and asked for again, step after step: by default glibc hands it back
    to the kernel and takes fresh pages every time (a page fault for each 4 KiB page, about
    16,000 a step); once retained, the heap settles within a few steps and the last ten reuse
    its memory with almost no fault. Thresholds the user set are left alone."""
    applied, faults = _reuse(True)
    _, baseline = _reuse(False)
    assert applied == "True" and faults < 1000, (faults, baseline)
    assert _reuse(True, MALLOC_MMAP_THRESHOLD_=str(1 << 20))[0] == "False"


def test_training_runs_the_encoder_in_channels_last(tmp_path):
    model = quiet_train(tiny_config(num_steps=1), tmp_path / "run").model
    for name, weight in model.named_parameters():
        if weight.dim() == 4:
            assert weight.is_contiguous(memory_format=torch.channels_last), name


@pytest.mark.parametrize(
    ("value", "checks"), [("yes", "True"), ("off", "False"), ("maybe", "True")]
)
def test_typecheck_environment_spellings(value, checks):
    env = {**os.environ, "MARIONETTE_TYPECHECK": value}
    code = "import marionette.core as c; print(c.typecheck_enabled())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == checks, done.stderr
    assert ("MARIONETTE_TYPECHECK must be one of" in done.stderr) == (value == "maybe")


# 8. A malicious checkpoint is refused for what it is.


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused_as_such(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"format": 1, "model": {}, "payload": _RunsCode(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(info.value)
    assert "refused: it is not a weights-only checkpoint" in message
    assert "weights_only=False" not in message and "corrupt" not in message
    assert not marker.exists()


# 9. No silent wrong evaluation.


def test_ground_truth_without_rows_or_with_swapped_corners_is_an_error(tmp_path):
    header = "frame,clip,t,class,x0,y0,x1,y1,moving,instance\n"
    (tmp_path / "gt.csv").write_text(header)
    with pytest.raises(ValueError, match="header but no rows"):
        GroundTruth.read_csv(tmp_path / "gt.csv")
    (tmp_path / "gt.csv").write_text(header + "0.png,0,0,a,1,2,3,4,1,0\n0.png,0,0,a,9,2,3,4,1,0\n")
    with pytest.raises(ValueError, match=r"gt.csv:3: box must be .*x0 <= x1.*\(9, 2, 3, 4\)"):
        GroundTruth.read_csv(tmp_path / "gt.csv")


def test_unmatched_ground_truth_rows_are_counted_in_a_warning(frames_dir):
    table = frames_dir / "groundtruth.csv"
    rows = table.read_text().splitlines()
    table.write_text(
        "\n".join([*rows, "999.png,0,0,ghost,1,1,2,2,1,0", "0.png,0,0,ufo,1,1,2,2,1,0"]) + "\n"
    )
    with pytest.warns(UserWarning) as record:
        load_dataset(frames_dir)
    messages = " ".join(str(w.message) for w in record)
    assert "1 frame(s) named in the ground truth are not in the folder" in messages
    assert (
        "['999.png']" in messages and "2 row(s) have class names" in messages and "ufo" in messages
    )


def test_representation_metrics_check_their_shapes():
    codes, labels = np.random.default_rng(0).normal(size=(30, 4)), np.array(["a", "b"] * 15)
    assert few_shot_accuracy(codes, labels, repeats=1) is not None
    for metric in (few_shot_accuracy, clustering_scores):
        with pytest.raises(Exception, match="codes"):
            metric(codes.T, labels)


# 10. Outputs never mix runs; paths work from anywhere.


def test_decompose_replaces_an_earlier_folder(tmp_path, frames_dir):
    run = tmp_path / "run"
    quiet_train(tiny_config(num_steps=2), run)
    stale = run / "decomposition" / "reconstructions" / "stale.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    (run / "decomposition" / "decomposition.json").write_text("{}")
    assert marionette_cli(["decompose", "--run", str(run), "--no-progress", "--frames", "3"]) == 0
    assert not stale.exists() and len(list(stale.parent.iterdir())) == 3
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert marionette_cli(["decompose", "--run", str(run), "--out", str(other)]) == 2
    assert (other / "notes.txt").read_text() == "keep me"


def test_a_relative_data_path_is_stored_resolved(tmp_path, frames_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quiet_train(tiny_config(data="d", num_steps=2), tmp_path / "run")
    assert Config.load(tmp_path / "run" / "config.json").data.data == str(frames_dir.resolve())
    assert quiet_train(tiny_config(data="d", num_steps=2), tmp_path / "run").step == 2


# 11. The sweep reports what it measured.


def test_the_sweep_counts_each_column_and_marks_collapsed_runs(tmp_path):
    runs = []
    for seed, metrics in (
        (0, '{"objects": 0, "frames": 4}'),
        (1, '{"objects": 5, "frames": 4, "all": {"f_score": 0.5}}'),
    ):
        run = tmp_path / f"seed={seed}"
        (run / "eval").mkdir(parents=True)
        (run / "eval" / "metrics.json").write_text(metrics)
        runs.append(({"seed": str(seed)}, run))
    rows = summarise(tmp_path, runs, {"seed": ["0", "1"]})
    assert rows[0]["runs"] == 2 and rows[0]["collapsed"] == 1
    assert rows[0]["all/f_score"] == (0.5, 0.0, 1)
    table = (tmp_path / "summary.md").read_text()
    assert "0.500 ± 0.000 (n=1)" in table and "collapsed" in table


def test_a_sweep_run_with_other_settings_is_not_skipped_as_done(tmp_path):
    base = tiny_config(num_steps=2)
    run_sweep(base, {"seed": ["0"]}, tmp_path, progress=False, log=lambda *_: None)
    log = []
    run_sweep(base.replace(num_steps=4), {"seed": ["0"]}, tmp_path, progress=False, log=log.append)
    assert log == ["run seed=0"]
    assert load_checkpoint(tmp_path / "seed=0" / "checkpoints" / "final.pt")["step"] == 4


# 12. Hardware settings change without --resume.


def test_threads_change_without_resume(tmp_path):
    run = tmp_path / "run"
    quiet_train(tiny_config(num_steps=2), run)
    assert quiet_train(tiny_config(num_steps=2, threads=1), run).step == 2
    assert Config.load(run / "config.json").train.threads == 1


# 13. Smaller ones.


def test_render_refuses_nan_presence():
    model = marionette.MarioNette(tiny_config().model)
    d = model(torch.rand(1, 1, 3, 32, 32), "hard").decomposition
    with pytest.raises(ValueError, match="presence must lie in"):
        marionette.render(d.replace(presence=torch.full_like(d.presence, float("nan"))))


def test_frames_of_another_float_type_are_cast_with_a_warning():
    model = marionette.MarioNette(tiny_config().model).eval()
    frames = torch.rand(1, 1, 3, 32, 32)
    with pytest.warns(UserWarning, match="frames are torch.float64.*cast to torch.float32"):
        cast = model(frames.double()).reconstruction
    torch.testing.assert_close(cast, model(frames).reconstruction)


def test_an_odd_cell_size_names_canvas_size_and_layer_size():
    with pytest.raises(ValueError, match=r"60 / 4 = 15 must be even.*canvas_size.*layer_size in"):
        Config().replace(canvas_size=60, layer_size=4)


def test_an_unknown_atari_game_lists_the_games():
    pytest.importorskip("ocatari")
    from marionette.data.atari import AtariConfig, _make_env

    with pytest.raises(ValueError, match="got 'NoSuchGame'; choose one of .*SpaceInvaders"):
        _make_env(AtariConfig(game="NoSuchGame"))
