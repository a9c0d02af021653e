"""Trainer callbacks: events in order with their documented arguments, resumed step numbers,
StopTraining, a failing callback named with a checkpoint kept; the docs' examples run."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

import marionette
from marionette.callbacks import EVENTS, RunInfo
from marionette.monitor import MetricsFile, ProcessTitle, ProgressBar, TensorBoard
from marionette.monitor import default_callbacks as monitors
from marionette.trainer import TrainingFailed, train
from tests.test_trainer import tiny_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "callbacks.md"


class Recorder(marionette.Callback):
    """Every event with its arguments."""

    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name in EVENTS:
            return lambda *args: self.events.append((name, args))
        return super().__getattribute__(name)

    def of(self, name):
        return [args for event, args in self.events if event == name]


def quiet(config, run_dir, callbacks, **kwargs):
    return train(config, run_dir, progress=False, tensorboard=False, callbacks=callbacks, **kwargs)


def test_every_event_arrives_in_order_with_its_arguments(tmp_path):
    config = tiny_config(num_steps=6, log_every=3, image_every=3, checkpoint_every=4,
                         eval_every=6, eval_frames=8)  # fmt: skip
    recorder = Recorder()
    result = quiet(config, tmp_path / "run", [recorder])
    names = [event for event, _ in recorder.events]
    assert names == [
        "on_start",
        "on_step", "on_step", "on_step", "on_log", "on_images",
        "on_step", "on_checkpoint",
        "on_step", "on_step", "on_log", "on_images", "on_evaluation",
        "on_checkpoint",
        "on_end",
    ]  # fmt: skip
    (run,) = recorder.of("on_start")[0]
    assert isinstance(run, RunInfo) and run.step == 0 and run.num_steps == 6
    assert run.run_dir == tmp_path / "run" and run.model is result.model
    assert run.config == result.config
    assert [args[0] for args in recorder.of("on_step")] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(args[1]["loss"]) for args in recorder.of("on_step"))
    assert "psnr" in recorder.of("on_step")[-1][1]  # the latest logged PSNR rides along
    step, row = recorder.of("on_log")[1]
    with open(tmp_path / "run" / "metrics.csv") as handle:
        logged = [r for r in csv.DictReader(handle) if "loss" in r and r["loss"]]
    assert step == 6 and float(logged[-1]["loss"]) == pytest.approx(row["loss"], rel=1e-5)
    step, images = recorder.of("on_images")[0]
    assert step == 3 and all(i.dtype == np.uint8 and i.shape[-1] == 3 for i in images.values())
    step, scalars = recorder.of("on_evaluation")[0]
    assert step == 6 and scalars and all(k.startswith("eval/") for k in scalars)
    (step, path, final), (last, final_path, is_final) = recorder.of("on_checkpoint")
    assert (step, final, path.name) == (4, False, "step_000000004.pt") and path.exists()
    assert (last, is_final, final_path.name) == (6, True, "final.pt")
    assert recorder.of("on_end") == [(6, result.metrics, "finished")]


class StopAt(marionette.Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, step, scalars):
        if step == self.step:
            raise marionette.StopTraining("enough")


def test_stop_training_ends_early_and_a_rerun_continues_the_numbers(tmp_path, capsys):
    config, first = tiny_config(num_steps=6, log_every=1), Recorder()
    result = quiet(config, tmp_path / "run", [StopAt(3), first])
    assert result.step == 3 and first.of("on_end")[0][2] == "stopped"
    assert "by StopAt: enough" in capsys.readouterr().err
    assert first.of("on_checkpoint")[-1][0] == 3
    again = Recorder()
    result = quiet(config, tmp_path / "run", [again])
    assert again.of("on_start")[0][0].step == 3 and result.step == 6
    assert [args[0] for args in again.of("on_step")] == [4, 5, 6]
    with open(tmp_path / "run" / "metrics.csv") as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4, 5, 6]


class Boom(marionette.Callback):
    def on_log(self, step, scalars):
        if step == 4:
            raise ValueError("tracker offline")


def test_a_failing_callback_is_named_and_the_last_step_kept(tmp_path):
    config, recorder = tiny_config(num_steps=6, log_every=2, checkpoint_every=100), Recorder()
    with pytest.raises(TrainingFailed) as caught:
        quiet(config, tmp_path / "run", [Boom(), recorder])
    message = str(caught.value)
    assert "callback Boom.on_log at step 4 raised ValueError: tracker offline" in message
    assert "step_000000004.pt written" in message
    assert (tmp_path / "run" / "checkpoints" / "step_000000004.pt").exists()
    assert recorder.of("on_end")[0][2] == "failed"
    assert quiet(config, tmp_path / "run", []).step == 6  # resumes from step 4


def test_a_failing_start_is_named(tmp_path):
    class Broken(marionette.Callback):
        def on_start(self, run):
            raise OSError("no tracker")

    with pytest.raises(TrainingFailed, match=r"could not start: callback Broken.on_start"):
        quiet(tiny_config(), tmp_path / "run", [Broken()])


@pytest.mark.parametrize(
    "callback, message",
    [
        (Recorder, "pass an instance"),
        (print, "pass an instance"),
        (type("Typo", (), {"on_steps": lambda self, s, v: None})(), "unknown events"),
    ],
)
def test_callbacks_that_cannot_work_are_refused_before_anything_is_written(
    tmp_path, callback, message
):
    with pytest.raises(TypeError, match=message):
        quiet(tiny_config(), tmp_path / "run", [callback])
    assert not (tmp_path / "run").exists()


def test_the_flags_leave_the_built_in_monitors_out():
    kinds = lambda **flags: [type(c) for c in monitors(**flags)]  # noqa: E731
    assert kinds() == [MetricsFile, ProgressBar, TensorBoard, ProcessTitle]
    assert kinds(progress=False, tensorboard=False) == [MetricsFile, ProcessTitle]


def test_the_docs_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    namespace = {}
    for block in blocks[:2]:  # the two callbacks; the third block is the call, made here
        exec(block, namespace)
    assert "marionette.train(" in blocks[2]
    log = tmp_path / "log.jsonl"
    plateau = namespace["StopOnPlateau"](key="loss", patience=1, min_gain=1e9)
    config = tiny_config(num_steps=6, log_every=2)
    result = quiet(config, tmp_path / "run", [namespace["JsonLinesTracker"](log), plateau])
    assert result.step == 4  # the first log sets the best, the second is no gain: stop
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["event"] == "start"
    assert records[0]["config"] == json.loads(json.dumps(result.config.to_dict()))
    assert [r["step"] for r in records[1:-1]] == [2, 4] and "loss" in records[1]
    assert records[-1] == {"event": "end", "step": 4, "status": "stopped"}


def test_ctrl_c_arrives_as_an_interruption_with_its_checkpoint(tmp_path):
    import os
    import signal

    class CtrlC(marionette.Callback):
        def on_step(self, step, scalars):
            if step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt):
        quiet(tiny_config(num_steps=6, checkpoint_every=100), tmp_path / "run", [CtrlC(), recorder])
    names = [event for event, _ in recorder.events]
    assert names[-3:] == ["on_checkpoint", "on_interrupt", "on_end"]
    ((step, path, final),) = recorder.of("on_checkpoint")
    assert recorder.of("on_interrupt") == [(3, "SIGINT", path)] and not final and path.exists()
    assert recorder.of("on_end")[0][0] == 3 and recorder.of("on_end")[0][2] == "interrupted"
