"""The benchmark runner runs end to end on the CPU (a smoke test: no timing assertions)."""

import json

import pytest

from benchmarks.run import main


def test_small_benchmark_writes_its_record(tmp_path, capsys):
    out = tmp_path / "cpu.json"
    record = main(["--small", "--device", "cpu", "--variants", "match", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert {r["kernel"] for r in record["kernels"]} == {  # the fused kernel only on CUDA
        "render (PyTorch: shift, place, composite)",
        "select (mix K sprites)",
        "shift (bilinear)",
        "place (parity planes)",
        "composite (over)",
        "consistency loss (T=4)",
    }
    steps = record["steps"]
    assert [(s["T"], s["consistency"]) for s in steps] == [(1, False), (4, False), (4, True)]
    assert {s["renderer"] for s in steps} == {"auto"}
    assert all(s["step_ms"] > 0 and s["frames_per_s"] > 0 for s in steps)
    assert record["device_type"] == "cpu" and record["torch"]
    assert "## Training step" in capsys.readouterr().out


def test_gpu_call_runs_every_phase_dry(tmp_path):
    """The prepared GPU call's --dry mode: the same phases at tiny sizes on the CPU, each
    recorded (JSON and Markdown) without an error."""
    from benchmarks.gpu import main as gpu

    record = gpu(["--dry", "--out", str(tmp_path)])
    phases = ["environment", "self_check", "kernels", "steps", "compile", "training"]
    assert list(record) == phases
    errors = {name: phase["error"] for name, phase in record.items() if "error" in phase}
    assert not errors
    assert {row["dtype"] for row in record["kernels"]["rows"]} == {"float32", "bfloat16"}
    steps = record["steps"]["rows"]
    measured = {(r["variant"], r["precision"]) for r in steps}
    assert measured >= {("faithful", "fp32"), ("match", "bf16")}
    assert [r["compiled"] for r in record["compile"]["rows"]] == [False, True]
    assert record["training"]["steps"] == 3 and "evaluation" in record["training"]
    assert json.loads((tmp_path / "gpu.json").read_text()).keys() == record.keys()
    assert "## compile" in (tmp_path / "gpu.md").read_text()
    skipped = gpu(["--dry", "--out", str(tmp_path / "short"), "--budget", "0"])
    assert all("skipped" in skipped[name] for name in phases[1:])


def test_scaling_varies_one_setting_at_a_time(tmp_path):
    from benchmarks.scaling import DRY_SCALES, point
    from benchmarks.scaling import main as scaling

    assert point("space_invaders", "canvas", 256, 8) == (
        {"height": 256, "width": 256, "layer_size": 32},  # the base's 8 px cell kept
        1,
        8,
    )
    assert point("space_invaders", "T", 4, 8) == ({}, 4, 8)
    assert point("space_invaders", "num_sprites", 108, 8) == ({"num_sprites": 108}, 1, 8)
    record = scaling(["--dry", "--out", str(tmp_path / "scaling.json")])
    measured = [(row["setting"], row["value"]) for row in record["rows"]]
    assert measured == [(name, v) for name, values in DRY_SCALES.items() for v in values]
    assert all(row["step_ms"] > 0 for row in record["rows"])
    assert [row["T"] for row in record["rows"] if row["setting"] == "T"] == DRY_SCALES["T"]
    assert json.loads((tmp_path / "scaling.json").read_text()) == json.loads(json.dumps(record))


def test_suite_runs_dry_and_continues_where_it_stopped(tmp_path, capsys):
    """The game suite's --dry mode: generate, train with the automatic settings, evaluate,
    tabulate; run again, it reads back what is done and never trains a run twice; the budget
    stops training at a step boundary."""
    from benchmarks.suite import HEADER
    from benchmarks.suite import main as suite

    (record,) = suite(["--dry", "--out", str(tmp_path / "a")])
    assert "error" not in record, record.get("traceback")
    assert record["steps"] == 3
    assert record["settings"]["cell"] * record["settings"]["grid"][0] == 32
    assert set(record["evaluation"]["psnr"]) == {"soft", "hard", "background"}
    assert record["commands"][2].endswith(f"--num_steps 3 --out {tmp_path / 'a' / 'tiny'}")
    table = (tmp_path / "a" / "suite.md").read_text()
    assert table.startswith(HEADER) and table.count("\n| tiny |") == 1
    chosen = json.loads((tmp_path / "a" / "tiny" / "config.json").read_text())["train"]
    assert record["settings"]["sprite_init"] == chosen["sprite_init"] != "random"
    assert f"{chosen['sprite_init']} init |" in table
    run, data = tmp_path / "a" / "tiny", tmp_path / "a" / "data" / "tiny" / "dataset.json"
    written = (run / "metrics.csv").stat().st_mtime_ns, data.stat().st_mtime_ns
    assert suite(["--dry", "--out", str(tmp_path / "a")]) == [record]
    assert (run / "metrics.csv").stat().st_mtime_ns == written[0]
    (run / "suite.json").unlink()  # evaluated again, from the finished run and the same data
    (again,) = suite(["--dry", "--out", str(tmp_path / "a")])
    assert again["steps"] == 3 and again["evaluation"] == record["evaluation"]
    assert (run / "metrics.csv").stat().st_mtime_ns == written[0]  # not trained again
    assert data.stat().st_mtime_ns == written[1]
    (stopped,) = suite(["--dry", "--out", str(tmp_path / "b"), "--budget", "0"])
    assert stopped["steps"] == 1


def test_suite_runs_games_outside_it_as_its_atari_entries(tmp_path, monkeypatch):
    """``--atari GAME``: an OCAtari game outside the suite, generated with the suite's Atari
    arguments and run alone; a game of the suite is refused (it has its entry)."""
    import benchmarks.suite as suite

    ran = []

    def run_entry(name, entry, out, args):
        ran.append((name, entry))
        return {"dataset": name, "error": "not run in this test"}

    monkeypatch.setattr(suite, "run_entry", run_entry)
    suite.main(["--out", str(tmp_path), "--atari", "Freeway"])
    ((name, entry),) = ran
    assert name == "Freeway" and entry.kind == "outside the suite"
    pong = suite.SUITE["Pong"]  # the same recording, another game
    assert entry.train[:3] == ("atari", "--game", "Freeway") and entry.train[3:] == pong.train[3:]
    assert entry.test[:3] == ("atari", "--game", "Freeway") and entry.test[3:] == pong.test[3:]
    with pytest.raises(SystemExit):
        suite.main(["--out", str(tmp_path), "--atari", "Pong"])
