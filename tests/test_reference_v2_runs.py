"""Reference model 2 (three stages) after `vla-export reference`: it runs on ONNX Runtime and torch through
vla-run with the declared dual-rate schedule, on TensorRT (the stand-in: TensorRT cannot exist here), and
benches per stage. A tiny configuration (the same stages, inputs and outputs) keeps it to seconds."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from trt_standin import install

from conftest import TINY_V2, VLA_EXPORT, VLA_RUN, run_cli
from vla.runtime.engine import open_engine
from vla.runtime.inputs.feeds import example_feeds

VLA_BENCH = [sys.executable, "-m", "vla.runtime.bench.cli"]


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_vla_run_drives_reference_2_dual_rate(tiny_v2_bundle, backend):
    # A budget and a context age no machine misses with this tiny model, busy or not: not a speed test.
    proc = run_cli(VLA_RUN, "--engine", tiny_v2_bundle, "--camera", "synthetic://", "--frames", "8",
                   "--backend", backend, "--budget-ms", "1000", "--context-max-age", "2000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 8 and all(r["status"] == "ok" for r in records), [r["reason"] for r in records]
    # The action expert (x10) on every tick; the poses came from integrated (accel, curvature) controls.
    assert all("action" in r["stage_ms"] and r["context_age_ms"] <= 2000 for r in records)
    first = np.array(records[0]["trajectory"])
    assert first.shape == (16, 6) and np.all(np.isfinite(first)) and np.all(first[:, 3] >= 0)  # speed >= 0
    assert "dual rate: slow stages (vision" in proc.stderr and "vision+context async" in proc.stderr


def test_vla_bench_times_the_action_stage_alone(tiny_v2_bundle):
    proc = run_cli(VLA_BENCH, "--engine", tiny_v2_bundle, "--stage", "action", "--iterations", "5", "--duration", "0.2",
                   "--warmup", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stage:action" in proc.stdout


def test_reference_2_on_tensorrt_equals_onnx_runtime(tiny_v2_bundle, monkeypatch, tmp_path):
    """On the TensorRT stand-in (a plan per stage, built into the bundle's cache on first open)."""
    import shutil

    import vla.kernels

    bundle = shutil.copytree(tiny_v2_bundle, tmp_path / "copy")
    monkeypatch.setattr(vla.kernels, "cuda_available", lambda: False)
    install(monkeypatch)
    ort_b, trt_b = open_engine(str(bundle), backend="ort"), open_engine(str(bundle), backend="trt")
    try:
        feeds = example_feeds(ort_b.manifest, seed=3)
        outs = []
        for b in (ort_b, trt_b):
            for name, value in feeds.items():
                np.copyto(b.feed(name), value)
            outs.append({k: np.array(v) for k, v in b.run().items()})
        assert set(trt_b.last_timings_ms()) == {"vision", "context", "action"}
        for name in outs[0]:
            np.testing.assert_allclose(outs[1][name], outs[0][name], rtol=1e-5, atol=1e-6)
        assert len(list((bundle / "engines").glob("*.plan"))) == 3
    finally:
        ort_b.close()
        trt_b.close()


def test_reference_2_exported_as_one_graph_runs_its_controls_through_the_decode(tmp_path):
    """--one-graph: the model's forward() (10 unrolled Euler steps) as one model.onnx; the loop integrates its
    (accel, curvature) controls as for the staged bundle."""
    out = tmp_path / "one"
    proc = run_cli(VLA_EXPORT, "reference", "--one-graph", "-o", out, *(a for kv in TINY_V2 for a in ("--config", kv)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "model.onnx").is_file() and "stages" not in manifest
    assert next(t for t in manifest["outputs"] if t["role"] == "trajectory")["trajectory"]["fields"] == [
        "accel", "curvature"]
    run = run_cli(VLA_RUN, "--engine", out, "--camera", "synthetic://", "--frames", "5", "--budget-ms", "1000")
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok"] * 5 and all(r["stage_ms"] is None for r in records)
    refused = run_cli(VLA_EXPORT, "reference", "--one-graph", "--stage-precision", "action=fp16", "-o", tmp_path / "x")
    assert refused.returncode != 0 and refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "--one-graph exports no stages" in refused.stderr and not (tmp_path / "x").exists()
