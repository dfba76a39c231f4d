"""TensorRT on a bundle of stages: a plan per stage in the bundle's cache, built by ``vla-build`` or on first
open, reused, refused when stale naming the stage, and run as a StagedBackend by the dual-rate loop.

Everything runs on ``trt_standin`` (TensorRT's and cuda-bindings' APIs emulated in host memory, a plan
executed by ONNX Runtime), so it runs everywhere and its outputs must equal ONNX Runtime's exactly; it
proves the calls, the cache decisions and the wiring, never TensorRT's numerics or speed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from stage_models import write_bundle
from trt_standin import Gpu, install, write_shims

from conftest import assert_one_line_error, run_cli
from vla.runtime import RunConfig, Runner
from vla.runtime.backends.staged import StagedBackend
from vla.runtime.backends.trt import TrtBackend, open_trt_backend, open_trt_stage
from vla.runtime.bundle import staged_manifest
from vla.runtime.engine import open_engine
from vla.runtime.errors import VlaError
from vla.runtime.inputs.sources import open_cameras
from vla.runtime.trt.cache import parse_sidecar, read_sidecar, sha256_file

VLA_BUILD = [sys.executable, "-m", "vla.runtime.trt.cli"]
STAGES = ("vision", "action")


@pytest.fixture(scope="module")
def standin_env(tmp_path_factory) -> dict[str, str]:
    """The environment in which a child process (vla-build) imports the stand-in as ``tensorrt``."""
    shims = write_shims(tmp_path_factory.mktemp("trt-standin"))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shims), *filter(None, [os.environ.get("PYTHONPATH")])])}


@pytest.fixture(scope="module")
def built(tmp_path_factory, standin_env) -> tuple[Path, str]:
    """The two-stage bundle (vision, action x3) after ``vla-build BUNDLE``: (folder, vla-build's stdout)."""
    bundle = write_bundle(tmp_path_factory.mktemp("stages") / "two", steps=3)
    proc = run_cli(VLA_BUILD, bundle, "--heartbeat-s", "0", env=standin_env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    return bundle, proc.stdout


@pytest.fixture
def copy_of(built, tmp_path) -> Path:
    """A copy of the built bundle, plans included, for tests that change it."""
    return Path(shutil.copytree(built[0], tmp_path / "two"))


@pytest.fixture
def standin(monkeypatch) -> Gpu:
    """In this process ``import tensorrt`` is the stand-in; the data path stays on the host (its "device"
    memory is host memory, which CUDA kernels cannot read)."""
    import vla.kernels

    monkeypatch.setattr(vla.kernels, "cuda_available", lambda: False)
    return install(monkeypatch)


def plans(bundle: Path) -> dict[str, Path]:
    """Stage name -> its plan in the bundle's cache."""
    found = {p.name.split("-", 1)[0]: p for p in (bundle / "engines").glob("*.plan")}
    assert len(found) == len(list((bundle / "engines").glob("*.plan"))), "two plans share a stage prefix"
    return found


def _fill(backend, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for t in backend.manifest.inputs:
        buf = backend.feed(t.name)
        if buf.dtype == np.uint8:
            buf[...] = rng.integers(0, 256, buf.shape, dtype=np.uint8)
        else:
            buf[...] = rng.standard_normal(buf.shape).astype(buf.dtype)


def _change_action_graph(bundle: Path) -> None:
    """A real change to what the action stage computes: its step divisor k (3 -> 4)."""
    model = onnx.load(str(bundle / "action.onnx"))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "k":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(4.0, np.float32), "k"))
    onnx.save(model, str(bundle / "action.onnx"))


# ---- vla-build --------------------------------------------------------------------------------------------

def test_vla_build_builds_a_plan_per_stage_then_says_up_to_date(built, standin_env):
    bundle, stdout = built
    found = plans(bundle)
    assert sorted(found) == sorted(STAGES)
    assert "2 stages: vision, action" in stdout
    assert "stage 1/2 'vision': vision.onnx" in stdout and "stage 2/2 'action': action.onnx" in stdout
    assert stdout.count("built in") == 2
    whole = json.loads((bundle / "manifest.json").read_text())
    for name, plan in found.items():
        doc = read_sidecar(plan)
        assert doc["stage"] == {"name": name, "file": f"{name}.onnx"}
        assert parse_sidecar(doc).model_hash == sha256_file(bundle / f"{name}.onnx")  # no hash recorded: the file's
        assert doc["manifest"] == whole
    # The stages' profiles are their own contracts: the action plan's includes the repeat's sample and t.
    action_profile = {n for n, *_ in parse_sidecar(read_sidecar(found["action"])).profile}
    assert action_profile == {"feat", "ego", "sample", "t"}
    before = {p: p.stat().st_mtime_ns for p in found.values()}
    again = run_cli(VLA_BUILD, bundle, env=standin_env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("up to date") == 2 and "built in" not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in found.values()} == before


def test_vla_build_refuses_o_for_a_bundle_of_stages(tmp_path, standin_env):
    bundle = write_bundle(tmp_path / "two")
    proc = run_cli(VLA_BUILD, bundle, "-o", tmp_path / "x.plan", env=standin_env)
    assert_one_line_error(proc, "-o", "bundle of stages live in the bundle's cache", "leave out -o")
    assert not list(tmp_path.glob("**/*.plan"))


def test_vla_build_rebuilds_only_the_stage_whose_graph_changed(copy_of, standin_env):
    found = plans(copy_of)
    vision_before = found["vision"].stat().st_mtime_ns
    _change_action_graph(copy_of)
    proc = run_cli(VLA_BUILD, copy_of, env=standin_env)
    assert proc.returncode == 0, proc.stderr
    assert "was built from stage 'vision'" in proc.stdout and proc.stdout.count("up to date") == 1
    assert "bundle changed (model hash" in proc.stdout and proc.stdout.count("built in") == 1
    assert found["vision"].stat().st_mtime_ns == vision_before
    assert parse_sidecar(read_sidecar(found["action"])).model_hash == sha256_file(copy_of / "action.onnx")


# ---- opening: the cache rules per stage ---------------------------------------------------------------------

def test_open_trt_stage_builds_when_missing_then_reuses(tmp_path, standin):
    bundle = write_bundle(tmp_path / "two")
    whole = staged_manifest(bundle)
    for expected in ("building it", "reusing"):
        for stage in whole.stages:
            lines: list[str] = []
            backend = open_trt_stage(bundle, stage, whole.stage_manifest(stage), log=lines.append)
            try:
                assert isinstance(backend, TrtBackend) and backend.plan_path.name.startswith(f"{stage.name}-")
            finally:
                backend.close()
            decisions = [line for line in lines if line.startswith("TensorRT backend: ")]
            assert len(decisions) == 1 and f"stage '{stage.name}'" in decisions[0], lines
            assert expected in decisions[0], lines
    assert sorted(plans(bundle)) == sorted(STAGES)
    assert standin.live() == 0, "close() left allocations, streams, events or graphs behind"


def test_second_open_reuses_and_runs_exactly_as_onnx_runtime(built, standin, capfd):
    bundle, _ = built
    mtimes = {p: p.stat().st_mtime_ns for p in plans(bundle).values()}
    trt = open_engine(str(bundle), backend="trt")
    ort = open_engine(str(bundle), backend="ort")
    try:
        assert isinstance(trt, StagedBackend) and trt.selection.startswith("--backend trt")
        assert all(isinstance(trt.backends[s], TrtBackend) for s in STAGES)
        err = capfd.readouterr().err
        assert all(f"stage '{s}': reusing" in err for s in STAGES), err
        assert "building" not in err and "rebuilding" not in err, err
        assert "vision: TensorRT 10.3.0" in trt.describe() and "action: TensorRT 10.3.0" in trt.describe()
        for seed in range(3):
            _fill(trt, seed)
            _fill(ort, seed)
            got = {k: v.copy() for k, v in trt.run().items()}
            want = ort.run()
            assert got.keys() == want.keys() == {"trajectory", "score"}
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"seed {seed}: {name}")
        assert set(trt.last_timings_ms()) == set(STAGES)
        # Each stage replays its engine as a CUDA graph once captured (no state: one parity, one graph).
        assert all(trt.backends[s].graph_note == "on (1 captured)" for s in STAGES)
        assert standin.calls["cudaGraphLaunch"] > 0
    finally:
        trt.close()
        ort.close()
    assert {p: p.stat().st_mtime_ns for p in plans(bundle).values()} == mtimes
    assert standin.live() == 0


def test_loop_runs_dual_rate_on_trt_stages(built, standin):
    bundle, _ = built
    backend = open_engine(str(bundle), backend="trt")
    cameras = open_cameras(["synthetic://"], backend.manifest.camera_names, backend.manifest.camera_sizes)
    # A budget no machine misses and a max age of many periods: the stand-in's stages under test, not speed.
    runner = Runner(backend, cameras, RunConfig(max_ticks=8, stage_rate=3, context_max_age_ms=2000.0,
                                                budget_ms=1000.0))
    try:
        assert runner.data_path.startswith("host")
        records = list(runner)
        summary = runner.summary()
    finally:
        runner.close()
    assert len(records) == 8 and all(r["status"] == "ok" for r in records), [r["reason"] for r in records]
    sched = summary["schedule"]
    assert not sched["single_rate"] and sched["slow"] == ["vision"] and sched["fast"] == ["action"]
    assert all("action" in r["stage_ms"] for r in records)
    assert sum("vision" in r["stage_ms"] for r in records) < len(records)  # vision ran on its own worker, less often
    assert all(np.isfinite(r["trajectory"]).all() for r in records)
    assert standin.calls["cudaGraphLaunch"] > 0 and standin.live() == 0


def test_a_changed_stage_graph_is_refused_naming_the_stage_until_rebuild(copy_of, standin, capfd):
    _change_action_graph(copy_of)
    with pytest.raises(VlaError) as err:
        open_engine(str(copy_of), backend="trt")
    message = str(err.value)
    assert message.startswith("stage 'action': ") and "\n" not in message
    assert "bundle changed (model hash" in message and "pass --rebuild" in message
    assert standin.live() == 0, "the stage opened before the refusal was not closed"
    capfd.readouterr()
    trt = open_engine(str(copy_of), backend="trt", rebuild=True)
    ort = open_engine(str(copy_of), backend="ort")
    try:
        err_text = capfd.readouterr().err
        assert "stage 'vision': reusing" in err_text and "stage 'action': rebuilding" in err_text, err_text
        _fill(trt, 7)
        _fill(ort, 7)
        got = {k: v.copy() for k, v in trt.run().items()}
        for name, want in ort.run().items():
            np.testing.assert_array_equal(got[name], want, err_msg=name)  # the new graph's outputs
    finally:
        trt.close()
        ort.close()


def test_build_options_are_in_each_stage_key(built, standin):
    bundle, _ = built
    whole = staged_manifest(bundle)
    vision = whole.stages[0]
    with pytest.raises(VlaError) as err:  # the plans were built with the automatic workspace
        open_trt_stage(bundle, vision, whole.stage_manifest(vision), workspace_mb=512, log=lambda _line: None)
    assert str(err.value).startswith("stage 'vision': ") and "workspace_mb auto → 512" in str(err.value)


def test_a_stage_plan_alone_and_the_folder_as_one_graph_are_one_line(built, standin):
    bundle, _ = built
    with pytest.raises(VlaError) as err:
        open_trt_backend(plans(bundle)["vision"], log=lambda _line: None)
    assert "the plan of stage 'vision' of a bundle of stages" in str(err.value)
    assert str(bundle.resolve()) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(VlaError, match=r"a bundle of stages has no single model\.onnx; each stage gets its own plan"):
        open_trt_backend(bundle, log=lambda _line: None)
    assert standin.live() == 0

