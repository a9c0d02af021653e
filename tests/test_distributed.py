"""DistributedDataParallel under torchrun on the CPU: gloo, two processes of one thread each."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from marionette.checkpoint import latest_checkpoint, load_checkpoint
from marionette.cli import main

TINY = [
    "--synthetic", "tiny", "--synthetic_clips", "8", "--canvas_size", "32", "--layer_size", "4",
    "--num_classes", "4", "--dim_z", "16", "--image_every", "0", "--transform_encoder", "match",
    "--selection", "match", "--sprite_init", "data", "--lr", "1e-3", "--log_every", "1",
    "--threads", "1", "--no-progress", "--no-tensorboard",
    "--precision", "fp32",  # ranks and one process agree to float32 rounding (bf16's is coarser)
]  # fmt: skip


def torchrun(nproc: int, out: Path, *flags: str, wait: bool = True):
    """``torchrun --standalone --nproc_per_node N -m marionette train`` on the tiny world."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "marionette", "train", *TINY, "--out", str(out), *flags,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def logged_steps(run: Path) -> list[int]:
    if not (run / "metrics.csv").exists():
        return []
    with open(run / "metrics.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def weights(run: Path, checkpoint: str = "final.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / checkpoint)["model"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = torchrun(2, out, "--bs", "2", "--num_steps", "3", "--checkpoint_every", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done


def test_two_ranks_equal_one_process_with_the_double_batch(two_ranks, tmp_path):
    out, _ = two_ranks
    single = tmp_path / "single"
    assert main(["train", *TINY, "--bs", "4", "--num_steps", "2", "--out", str(single)]) == 0
    ddp, alone = weights(out, "step_000000002.pt"), weights(single)
    # Adam moves each weight by about lr = 1e-3 a step; float rounding of the two reductions
    # (2 x 2 items against 4) shows up below 5e-5 after two steps, a different gradient at
    # once. Not after three: Adam's third step divides by the root of squared gradients that
    # are near zero for some weights and amplifies the rounding (one process alone, 1 thread
    # against 2: 3.3e-4 on an encoder weight, with the seeds of 4a8bb98)
    for name, weight in alone.items():
        torch.testing.assert_close(ddp[name], weight, atol=1e-4, rtol=1e-4, msg=name)
    assert json.loads((out / "config.json").read_text())["train"]["world_size"] == 2
    assert json.loads((single / "config.json").read_text())["train"]["world_size"] == 1


def test_rank_0_alone_writes_and_reports(two_ranks):
    out, done = two_ranks
    assert logged_steps(out) == [1, 2, 3]
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["final.pt", "step_000000001.pt", "step_000000002.pt"]
    assert done.stdout.count("trained 3 steps") == 1  # one summary for the group
    assert not list(out.rglob("*.tmp"))


def test_a_killed_rank_fails_the_group_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    flags = ["--bs", "2", "--num_steps", "100000", "--checkpoint_every", "4"]
    group = torchrun(2, out, *flags, wait=False)
    try:
        deadline = time.monotonic() + 120
        while max(logged_steps(out), default=0) < 10:
            assert group.poll() is None and time.monotonic() < deadline, "the group did not train"
            time.sleep(0.2)
        os.kill(_worker(group.pid, rank=1), signal.SIGKILL)
        output = group.communicate(timeout=120)[0].decode()
    finally:
        group.kill()
    assert group.returncode != 0 and "local_rank: 1" in output, output  # torchrun names it
    assert "the process group broke" in output, output  # and rank 0 says what it kept
    for path in (out / "checkpoints").glob("*.pt"):  # nothing half-written
        load_checkpoint(path)
    state, _ = latest_checkpoint(out)
    reached = int(state["step"])
    assert reached >= 8
    resumed = ["--resume", "--bs", "2", "--num_steps", str(reached + 3), "--checkpoint_every", "4"]
    assert main(["train", *TINY, *resumed, "--out", str(out)]) == 0
    steps = logged_steps(out)
    assert steps == list(range(1, reached + 4)), steps  # every step once


def test_sigterm_to_one_rank_stops_the_group_at_a_step_boundary(tmp_path):
    out = tmp_path / "run"
    flags = ["--bs", "2", "--num_steps", "100000", "--checkpoint_every", "1000"]
    group = torchrun(2, out, *flags, wait=False)
    try:
        while max(logged_steps(out), default=0) < 6:
            assert group.poll() is None, "the group did not train"
            time.sleep(0.2)
        os.kill(_worker(group.pid, rank=1), signal.SIGTERM)
        output = group.communicate(timeout=120)[0].decode()
    finally:
        group.kill()
    assert "exitcode  : 130" in output, output  # both ranks: interrupted, not killed
    assert output.count("stopped by a signal to another process after step") == 1, output
    state, path = latest_checkpoint(out)
    assert path.name.startswith("step_") and int(state["step"]) == logged_steps(out)[-1]


def _worker(parent: int, rank: int) -> int:
    """The pid of the torchrun worker of ``rank`` (a child of the agent ``parent``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under {parent}")


def test_resume_across_world_sizes_continues_the_steps(tmp_path):
    out = tmp_path / "run"
    first = torchrun(2, out, "--bs", "2", "--num_steps", "4", "--checkpoint_every", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (
        main(["train", *TINY, "--resume", "--bs", "2", "--num_steps", "6", "--out", str(out)]) == 0
    )
    assert json.loads((out / "config.json").read_text())["train"]["world_size"] == 1
    again = torchrun(2, out, "--resume", "--bs", "2", "--num_steps", "8", "--checkpoint_every", "2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert logged_steps(out) == list(range(1, 9))
    assert load_checkpoint(out / "checkpoints" / "final.pt")["step"] == 8
    assert json.loads((out / "config.json").read_text())["train"]["world_size"] == 2
