"""The benchmark runner runs end to end on the CPU (a smoke test: no timing assertions)."""

import json

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
