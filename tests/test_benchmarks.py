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
