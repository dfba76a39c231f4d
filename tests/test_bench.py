"""vla-bench: engine mode on a bundle and on arbitrary ONNX graphs, loop mode, trtexec's rules,
bad input, Ctrl-C, and the regression gate's judgement."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import assert_one_line_error, run_cli
from vla.runtime.bench.engine_bench import concrete_shapes, deadline, parse_shapes, random_inputs
from vla.runtime.bench.loop_bench import tick_samples
from vla.runtime.errors import VlaError

VLA_BENCH = [sys.executable, "-m", "vla.runtime.bench.cli"]


def _symbolic_onnx(path, batch_dim="batch"):
    """x [batch, 8] float, ids [batch, 4] int64 -> y = x @ W + sum(ids) (a graph with no vla manifest)."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [8, 3], np.ones(24, np.float32).tolist())
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["idsf"], ["s"], keepdims=1),
        helper.make_node("Add", ["xw", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [batch_dim, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# ---- pure parts ------------------------------------------------------------------------------------
def test_parse_shapes_trtexec_syntax():
    assert parse_shapes("images:1x3x224x224,ids:2x16") == {"images": (1, 3, 224, 224), "ids": (2, 16)}
    assert parse_shapes("ns:input:1x4") == {"ns:input": (1, 4)}
    assert parse_shapes(None) == {}
    for bad in ("images", "images:1x", "images:ax3", ":1x2"):
        with pytest.raises(VlaError, match="expected NAME:DxDxD"):
            parse_shapes(bad)


def test_concrete_shapes_need_every_symbolic_dim():
    inputs = [("x", "tensor(float)", ["batch", 8]), ("ids", "tensor(int64)", [None, 4])]
    with pytest.raises(VlaError, match=r"need --shapes: x \[batch, 8\]; ids \[\?, 4\]"):
        concrete_shapes(inputs, {})
    assert concrete_shapes(inputs, {"x": (2, 8), "ids": (2, 4)}) == {"x": (2, 8), "ids": (2, 4)}
    with pytest.raises(VlaError, match="does not fit"):
        concrete_shapes(inputs, {"x": (2, 9), "ids": (2, 4)})  # the fixed dim is 8
    with pytest.raises(VlaError, match="does not have"):
        concrete_shapes(inputs, {"nope": (1,)})


def test_random_inputs_follow_dtypes():
    feeds = random_inputs([("x", "tensor(float)", []), ("m", "tensor(bool)", []), ("i", "tensor(int64)", [])],
                          {"x": (2, 3), "m": (4,), "i": (5,)})
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (2, 3)
    assert feeds["m"].dtype == np.bool_ and feeds["i"].dtype == np.int64 and (feeds["i"] >= 0).all()


def test_deadline_counts_runs_over_budget():
    assert deadline([1.0, 5.0, 10.0, 10.5], 10.0) == {"budget_ms": 10.0, "misses": 1, "rate": 0.25}
    assert deadline([1.0], None) is None


def test_tick_samples_take_overhead_only_where_the_engine_ran():
    recs = [{"latency_ms": {"acquire": 10.0, "preprocess": 1.0, "engine": 50.0, "decode": 0.2, "e2e": 62.0}},
            {"latency_ms": {"acquire": 5.0, "e2e": 100.0}}]  # a fallback tick: no engine time
    s = tick_samples(recs)
    assert s["compute"] == [50.0] and s["e2e"] == [62.0, 100.0] and s["overhead"] == [2.0]
    assert s["acquire"] == [10.0, 5.0]


# ---- the CLI ---------------------------------------------------------------------------------------
def test_any_onnx_with_symbolic_dims(tmp_path):
    model = _symbolic_onnx(tmp_path / "m.onnx")
    assert_one_line_error(run_cli(VLA_BENCH, "--engine", model, "--duration", "0"), "need --shapes", "x [batch, 8]")
    out = tmp_path / "r.json"
    proc = run_cli(VLA_BENCH, "--engine", model, "--shapes", "x:4x8,ids:4x4", "--iterations", "50",
                   "--duration", "0", "--budget-ms", "1000", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["schema"] == "vla.bench/1" and r["mode"] == "engine"
    assert set(r["stages"]) == {"compute", "e2e"}  # a bare graph: no pre/post stages
    assert r["stages"]["e2e"]["count"] == len(r["samples"]["e2e"]) >= 50
    assert r["deadline"]["misses"] == 0 and r["throughput_qps"] > 0
    assert r["settings"]["shapes"] == {"x": [4, 8], "ids": [4, 4]}
    assert r["environment"]["versions"]["onnxruntime"]
    assert "compute" in proc.stdout and "p99.9" in proc.stdout


def test_bundle_engine_mode_times_every_stage(reference_bundle, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli(VLA_BENCH, "--engine", reference_bundle, "--iterations", "12", "--duration", "0",
                   "--warmup", "0", "--budget-ms", "1", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert list(r["stages"]) == ["preprocess", "compute", "decode", "e2e"]
    s = r["samples"]
    # e2e of each run is its stages back to back (the same clock reads), never less than their sum.
    for i in range(len(s["e2e"])):
        parts = s["preprocess"][i] + s["compute"][i] + s["decode"][i]
        assert s["e2e"][i] == pytest.approx(parts, rel=1e-6, abs=1e-6)
    assert r["deadline"]["misses"] == len(s["e2e"])  # a 1 ms budget: every run misses
    assert r["settings"]["cameras"] == 3


def test_iterations_and_duration_are_both_minimums(tmp_path):
    model = _symbolic_onnx(tmp_path / "m.onnx", batch_dim=2)
    out = tmp_path / "r.json"
    start = time.monotonic()
    proc = run_cli(VLA_BENCH, "--engine", model, "--iterations", "5", "--duration", "1.0", "--json", out)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["wall_s"] >= 1.0 and r["stages"]["e2e"]["count"] > 5 and elapsed >= 1.0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--engine", "/nonexistent/x.onnx"], "no such file"),
        (["--engine", "{plan}"], "TensorRT is not installed"),
        (["--engine", "{onnx}", "--backend", "torch"], "--backend torch"),
        (["--engine", "{onnx}", "--cuda-graph"], "--cuda-graph in engine mode replays TensorRT"),
        (["--engine", "{onnx}", "--device", "cuda"], "a bare .onnx without a manifest runs on ONNX Runtime"),
        (["--engine", "{junk}"], "cannot load"),
        (["--engine", "{onnx}", "--iterations", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, needle):
    paths = {"plan": tmp_path / "v2.plan", "onnx": _symbolic_onnx(tmp_path / "m.onnx", batch_dim=1),
             "junk": tmp_path / "junk.onnx"}
    paths["plan"].write_bytes(b"\0" * 64)
    paths["junk"].write_bytes(b"not a model")
    argv = [a.format(**paths) if "{" in a else a for a in args]
    assert_one_line_error(run_cli(VLA_BENCH, *argv), needle)


def test_ctrl_c_still_prints_what_was_measured(tmp_path):
    model = _symbolic_onnx(tmp_path / "m.onnx", batch_dim=1)
    out = tmp_path / "r.json"
    # Started with SIGINT ignored, as a background job's children are: vla-bench takes Ctrl-C itself.
    proc = subprocess.Popen([*VLA_BENCH, "--engine", str(model), "--duration", "60", "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stderr.readline().startswith("vla-bench: warming up for 0.2 s, then timing")  # the engine is open
    time.sleep(0.2 + 2.0)  # the warm-up, then 2 s of runs of a model that takes microseconds
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate()  # a bench that ignored the signal would end after its 60 s: see wall_s
    assert proc.returncode == 130, stderr
    r = json.loads(out.read_text())
    assert r["interrupted"] is True and r["stages"]["e2e"]["count"] > 10
    assert r["wall_s"] < 30
    assert "interrupted" in stdout and "compute" in stdout


def test_loop_mode_times_the_real_pipeline(reference_bundle, tmp_path):
    out = tmp_path / "loop.json"
    proc = run_cli(VLA_BENCH, "--engine", reference_bundle, "--loop", "--ticks", "15", "--rate", "5",
                   "--camera", "synthetic://?size=640x360", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["mode"] == "loop" and r["settings"]["cameras"] == 3
    assert {"acquire", "preprocess", "e2e"} <= set(r["stages"])
    assert r["stages"]["e2e"]["count"] == 15
    s = r["samples"]
    # A machine too busy for the full model may have no tick whose engine result came in time (all
    # late or overrun, then a fault): engine-side stages exist when any tick decoded within its tick.
    if r["status"]["ok"]:
        assert {"compute", "decode", "overhead"} <= set(r["stages"])
        if len(s["e2e"]) == len(s["compute"]):  # every tick ran the engine: overhead is paired tick by tick
            assert all(o == pytest.approx(e - a - c, abs=1e-3)
                       for o, e, a, c in zip(s["overhead"], s["e2e"], s["acquire"], s["compute"], strict=True))
        assert 0 < r["stages"]["overhead"]["median"] < r["stages"]["e2e"]["median"]
    assert list(r["status"]) == ["ok", "late", "fallback", "fault"] and sum(r["status"].values()) == 15
    # Misses whatever was published, and what was published instead (a late line, a fallback, a fault).
    assert r["deadline"]["misses"] == sum(r["deadline"]["by_status"].values()) >= r["status"]["late"]
    assert sum(r["fallback_reasons"].values()) >= 15 - r["status"]["ok"] - r["status"]["fault"]
    assert "status: " + ", ".join(f"{k} {v}" for k, v in r["status"].items()) in proc.stdout.splitlines()


def test_loop_mode_takes_the_limits_mode_and_reports_counts(tiny_bundle, tmp_path):
    out = tmp_path / "loop.json"
    proc = run_cli(VLA_BENCH, "--engine", tiny_bundle, "--loop", "--ticks", "5", "--limits", "off",
                   "--camera", "synthetic://?size=160x120", "--json", out)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["settings"]["limits"] == "off" and r["limit_warnings"] == {}
    assert sum(r["status"].values()) == 5 and set(r["deadline"]) >= {"misses", "by_status"}
    lines = proc.stdout.splitlines()
    assert "limits=off" in next(ln for ln in lines if ln.startswith("settings: "))
    assert any(ln.startswith("status: ok ") for ln in lines), proc.stdout
    bad = run_cli(VLA_BENCH, "--engine", tiny_bundle, "--loop", "--limits", "loose")
    assert bad.returncode != 0 and "invalid choice: 'loose'" in bad.stderr


def test_loop_mode_refuses_cuda_graph_on_the_host_data_path(reference_bundle):
    """A CPU backend has no device tick to graph: saying nothing would report graph-less figures as graphed."""
    proc = run_cli(VLA_BENCH, "--engine", reference_bundle, "--loop", "--ticks", "2", "--backend", "ort",
                   "--cuda-graph", "--camera", "synthetic://?size=640x360")
    assert_one_line_error(proc, "host data path")


def test_interleaved_medians_take_turns_and_skip_the_warm_up():
    from vla.runtime.bench.interleaved import interleaved_medians_ms

    calls: list[str] = []
    slow = lambda: (calls.append("slow"), time.sleep(0.004))  # noqa: E731
    fast = lambda: calls.append("fast")  # noqa: E731
    ms = interleaved_medians_ms({"slow": slow, "fast": fast}, runs=5, warmup=2)
    assert calls == ["slow", "fast"] * 7  # round by round, warm-up rounds included
    assert set(ms) == {"slow", "fast"} and ms["slow"] >= 4.0 > ms["fast"] >= 0.0
