"""Record and replay end to end: ``vla-run --record`` then ``vla-replay``, on real engines and real files.

The tiny reference (one graph, recurrent state) and a tiny reference 2 (a bundle of stages on the
dual-rate schedule) are recorded through the real loop and replayed: the same bundle gives zero
differences; a bundle with other weights is a regression named by tick and output; ``--update``
makes a log the new bundle passes; truncated, corrupt, foreign and incomplete logs are one-line
errors. The committed log (``tests/data``) of the trained reference is replayed as CI's check.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY_REFERENCE, VLA_EXPORT, VLA_RUN, assert_one_line_error, run_cli
from vla.runtime.engine import open_engine
from vla.runtime.errors import VlaError
from vla.runtime.inputs.sources import open_cameras
from vla.runtime.loop.runner import RunConfig, Runner
from vla.runtime.loop.world_model import WorldModel, surprise
from vla.runtime.manifest import parse_manifest
from vla.runtime.record import format as fmt
from vla.runtime.record.writer import McapSink
from vla.runtime.replay.compare import OutputDiff, Tolerances, differs
from vla.runtime.replay.reader import read_recording

VLA_REPLAY = [sys.executable, "-m", "vla.runtime.replay.cli"]
DATA = Path(__file__).parent / "data"
COMMITTED_LOG = DATA / "reference-v2.mcap"


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory) -> Path:
    """The tiny reference with other weights (seed 7): the same contract, other outputs."""
    out = tmp_path_factory.mktemp("rr") / "tiny-seed7"
    proc = run_cli(VLA_EXPORT, "reference-v1", "-o", out, "--config", "seed=7",
                   *(a for kv in TINY_REFERENCE for a in ("--config", kv)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def record(bundle: Path, out: Path, *extra: str, frames: int = 15) -> list[dict]:
    proc = run_cli(VLA_RUN, "--engine", bundle, "--camera", "synthetic://", "--frames", frames, "--record", out,
                   *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "recording: recorded" in proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def replay(log: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = log.with_suffix(".report.json")
    proc = run_cli(VLA_REPLAY, log, "--json", report, *args)
    return proc, (json.loads(report.read_text()) if report.exists() else {})


# ---- pure parts --------------------------------------------------------------------------------------------
def test_openpilot_tolerance_rule():
    a = np.array([0.0, 1.0, 100.0, 100.0, np.nan, np.inf, 1.0], dtype=np.float64)
    b = np.array([0.05, 1.05, 109.0, 111.0, np.nan, np.inf, np.nan], dtype=np.float64)
    # tol 0.1: |0.05| <= 0.1 abs floor; 0.05 <= 0.1*1.05; 9 <= 0.1*109=10.9; 11 > 11.1? no: 11 <= 11.1
    assert differs(a, b, 0.1).tolist() == [False, False, False, False, False, False, True]
    assert differs(a, b, 0.01).tolist() == [True, True, True, True, False, False, True]
    assert not differs(a[:4], a[:4], 0.0).any()


def test_output_diff_names_the_first_and_worst():
    d = OutputDiff("traj", 0.0)
    d.add(0, 10, np.zeros(4), np.zeros(4))
    d.add(1, 11, np.zeros(4), np.array([0, 0, 0.5, 0]))
    d.add(2, 12, np.zeros(4), np.array([2.0, 0, 0, 0]))
    assert (d.first_bad, d.bad_runs, d.bad_values, d.worst_tick, d.max_abs) == ((1, 11, 2), 2, 2, 12, 2.0)
    with pytest.raises(VlaError, match="shape"):
        d.add(3, 13, np.zeros(4), np.zeros(5))


def test_tolerances_resolve_flag_then_manifest_then_precision():
    t = Tolerances.parse(["score=0.5", "0.01"])
    assert t.resolve("score", {}, "fp32") == 0.5 and t.resolve("x", {}, "fp32") == 0.01
    t = Tolerances.parse([])
    assert t.resolve("traj", {"traj": {"tolerance": 0.2}}, "fp32") == 0.2
    assert t.resolve("traj", {}, "fp16") == 5e-2 and t.resolve("traj", {}, "int8") == 0.3
    for bad in ("x", "score=-1", "nan", "a=b"):
        with pytest.raises(VlaError, match="--tol"):
            Tolerances.parse([bad])


def test_surprise_is_scale_free_and_zero_for_a_perfect_prediction():
    obs = np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float32)
    assert surprise(obs, obs) == 0.0
    assert surprise(np.zeros_like(obs), obs) == pytest.approx(1.0)
    assert surprise(10 * np.zeros_like(obs), 10 * obs) == pytest.approx(surprise(np.zeros_like(obs), obs))
    with pytest.raises(ValueError):
        surprise(obs, obs[0])


def test_world_model_compares_each_run_with_the_previous_prediction(reference_manifest):
    raw = json.loads(json.dumps(reference_manifest))
    for o in raw["outputs"]:
        if o["role"] == "aux":
            o["aux"] = {"predicts": "score"}  # any output of the same shape would do; score is [1, K]
            o["shape"] = [1, raw["outputs"][1]["shape"][1]]
    m = parse_manifest(raw)
    aux = m.outputs_with("aux")[0].name
    wm = WorldModel.for_manifest(m, {t.name for t in m.outputs})
    assert wm.active and wm.unavailable is None
    a, b = np.ones((1, 3), np.float32), np.full((1, 3), 2.0, np.float32)
    assert wm.observe({aux: a, "score": b}) is None  # nothing predicted yet
    assert wm.observe({aux: b, "score": b}) == pytest.approx(0.25)  # predicted 1, saw 2
    assert wm.observe({aux: a, "score": b}) == 0.0
    hidden = WorldModel.for_manifest(m, {"trajectory"})
    assert not hidden.active and "does not expose" in hidden.unavailable


# ---- record and replay, one graph --------------------------------------------------------------------------
def test_record_then_replay_same_bundle_is_bit_exact(tiny_bundle, tmp_path):
    log = tmp_path / "run.mcap"
    ticks = record(tiny_bundle, log, "--record-raw")
    rec = read_recording(log)
    assert rec.truncated is None and len(rec.ticks) == len(ticks) == 15
    assert [t["tick"] for t in rec.ticks] == [t["tick"] for t in ticks]
    assert {fmt.TICK, fmt.TRAJECTORY, fmt.SCENE, fmt.EGO, fmt.COMMAND, fmt.RUN, "/camera/front", "/camera/front/raw",
            "/engine/input/images", "/engine/state/memory", "/engine/output/next_latent"} <= rec.topics
    assert rec.bundle["manifest_sha256"].startswith("sha256:") and rec.run_settings["seed"] == 0
    proc, report = replay(log, "--tol", "0")  # bit-exact asked, preprocessing included
    assert proc.returncode == 0, proc.stderr
    assert report["ok"] and report["same_bundle"] and report["replayed"] == report["runs"] >= 15
    assert {o["output"] for o in report["outputs"]} >= {"trajectory", "score", "next_latent", "new_memory",
                                                        "trajectory (decoded)"}
    assert all(o["max_abs"] == 0.0 for o in report["outputs"])
    assert report["preprocess"]["runs"] >= 15 and report["preprocess"]["max_abs"] == 0.0
    assert "bit-exact" in proc.stderr


def test_other_weights_are_a_regression_then_update_makes_the_new_reference(tiny_bundle, other_weights, tmp_path):
    log = tmp_path / "run.mcap"
    record(tiny_bundle, log)
    proc, report = replay(log, "--engine", other_weights)
    assert proc.returncode == 1, proc.stderr
    assert "REGRESSION: first difference at tick 0 (run 0)" in proc.stderr
    assert report["first_regression"]["tick"] == 0 and not report["same_bundle"]
    new = tmp_path / "new.mcap"
    proc = run_cli(VLA_REPLAY, log, "--engine", other_weights, "--update", new)
    assert proc.returncode == 0 and "new reference log" in proc.stderr, proc.stderr
    proc, report = replay(new, "--engine", other_weights, "--tol", "0")
    assert proc.returncode == 0 and report["ok"], proc.stderr
    assert read_recording(new).bundle["updated_from"]
    assert replay(new, "--engine", tiny_bundle)[0].returncode == 1  # and the old bundle now regresses


def _record_with_a_failing_run(bundle: Path, log: Path, fail_at: int, ticks: int = 12,
                               slow: bool = False) -> list[dict]:
    """Record the loop in-process while the engine raises on its ``fail_at``-th run (counting the warm-up's; with
    ``slow``, the ``fail_at``-th run of a dual-rate schedule's slow stages)."""
    from vla.runtime.record.session import RecordingSession, RecordOptions

    backend = open_engine(str(bundle), backend="ort")
    calls = [0]

    def failing(real):
        def run(*args):
            if slow and not any(s.slow for s in args[0]):
                return real(*args)
            calls[0] += 1
            if calls[0] == fail_at:
                raise RuntimeError("injected: CUDA error 700 (an illegal memory access)")
            return real(*args)
        return run

    if slow:
        backend.execute = failing(backend.execute)
    else:
        backend.run = failing(backend.run)
    cams = open_cameras(["synthetic://"], backend.manifest.camera_names, backend.manifest.camera_sizes)
    runner = Runner(backend, cams, RunConfig(max_ticks=ticks, budget_ms=1000.0, warmup_runs=3))
    session = RecordingSession(runner, RecordOptions(path=str(log), engine=str(bundle)), log=lambda _line: None)
    try:
        records = list(runner)
    finally:
        runner.close()
        session.close()
    return records


def test_a_run_that_failed_live_is_replayed_as_failed_and_its_state_not_committed(tiny_bundle, tmp_path):
    """An engine error live (injected by a wrapper: ONNX Runtime on a CPU has no way to fail one run of a good
    model, a GPU fault does) commits nothing, so the recurrent state goes on from the run before. Replay must
    do the same: re-running that run and committing its state made every later run a false regression."""
    log = tmp_path / "fault.mcap"
    records = _record_with_a_failing_run(tiny_bundle, log, fail_at=3 + 6)
    failed = [r for r in records if "engine error" in (r["problem"] or "")]
    assert len(failed) == 1 and "CUDA error 700" in failed[0]["problem"]
    rec = read_recording(log)
    lost = [r for r in rec.runs if r.error]
    assert len(lost) == 1 and lost[0].tick == failed[0]["tick"] and lost[0].outputs == {}
    proc, report = replay(log, "--tol", "0")
    assert proc.returncode == 0 and report["ok"], proc.stderr
    assert report["failed_live"] == 1 and report["replayed"] == report["runs"] - 1
    assert "1 failed live" in proc.stderr and all(o["max_abs"] == 0.0 for o in report["outputs"])


def test_a_slow_run_that_failed_live_is_not_replayed_and_the_fast_path_reads_the_context_before(tiny_v2_bundle,
                                                                                               tmp_path):
    """Dual rate: a slow run (vision, context) whose engine raised publishes nothing; the fast runs after it read
    the previous context, and replay must give them that one (injected failure, as above)."""
    log = tmp_path / "slow-fault.mcap"
    _record_with_a_failing_run(tiny_v2_bundle, log, fail_at=4, ticks=15, slow=True)
    rec = read_recording(log)
    lost = [r for r in rec.runs if r.error]
    assert len(lost) == 1 and lost[0].kind == "slow" and "CUDA error 700" in lost[0].error
    assert all(r.context_run != lost[0].run for r in rec.runs if r.kind == "fast")
    proc, report = replay(log, "--tol", "0")
    assert proc.returncode == 0 and report["ok"], proc.stderr
    assert report["failed_live"] == 1 and all(o["max_abs"] == 0.0 for o in report["outputs"])


# ---- the dual-rate schedule and the world model ------------------------------------------------------------
def test_dual_rate_replays_the_recorded_schedule_with_surprise(tiny_v2_bundle, tmp_path):
    log = tmp_path / "dual.mcap"
    ticks = record(tiny_v2_bundle, log, frames=20)
    assert any(t["surprise"] is not None for t in ticks), "the world model's surprise is published"
    rec = read_recording(log)
    kinds = {r.kind for r in rec.runs}
    assert kinds == {"slow", "fast"} and rec.runs[0].tick == -1  # the warm-up's context run is recorded too
    assert all(r.context_run is not None for r in rec.runs if r.kind == "fast")
    proc, report = replay(log, "--tol", "0")
    assert proc.returncode == 0 and report["ok"], proc.stderr
    names = {o["output"] for o in report["outputs"]}
    assert {"context", "next_context", "controls", "trajectory (decoded)"} <= names
    assert all(o["max_abs"] == 0.0 for o in report["outputs"])


def test_prometheus_publishes_the_surprise(tiny_v2_bundle):
    proc = subprocess.Popen([*VLA_RUN, "--engine", str(tiny_v2_bundle), "--camera", "synthetic://", "--frames", "400",
                             "--metrics-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:
            if "metrics on http://" in line:
                port = int(line.split("metrics on http://0.0.0.0:")[1].split("/")[0])
                break
        assert port, "vla-run did not say where its metrics are"
        for line in proc.stdout:
            if json.loads(line)["surprise"] is not None:
                break
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        value = [ln for ln in text.splitlines() if ln.startswith("vla_world_model_surprise ")]
        assert value and float(value[0].split()[1]) >= 0.0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


# ---- triggers and snippets ---------------------------------------------------------------------------------
def test_triggered_snippets_are_written_around_late_ticks_and_replay(tiny_bundle, tmp_path):
    folder = tmp_path / "snips"
    # A 1 ms budget: every tick is late, so the first one triggers; 0.5 s after it the snippet closes.
    proc = run_cli(VLA_RUN, "--engine", tiny_bundle, "--camera", "synthetic://", "--frames", 25, "--budget-ms", 1,
                   "--record", folder, "--record-on", "late", "--record-pre", 1, "--record-post", 0.5)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(folder.glob("vla-*.mcap"))
    assert files and all("late" in f.name for f in files), files
    rec = read_recording(files[0])
    assert "late" in rec.metadata["vla.snippet"]["reasons"]
    assert 3 <= len(rec.ticks) < 25
    proc, report = replay(files[0], "--tol", "0")
    assert proc.returncode == 0 and report["ok"] and report["replayed"] >= 3, proc.stderr


def test_manual_trigger_by_sigusr1(tiny_bundle, tmp_path):
    folder = tmp_path / "manual"
    proc = subprocess.Popen([*VLA_RUN, "--engine", str(tiny_bundle), "--camera", "synthetic://", "--frames", "60",
                             "--record", str(folder), "--record-on", "manual", "--record-pre", "1",
                             "--record-post", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for seen, _line in enumerate(proc.stdout, 1):
        if seen == 20:
            proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    files = list(folder.glob("vla-*manual*.mcap"))
    assert len(files) == 1, (files, err)
    assert read_recording(files[0]).metadata["vla.snippet"]["reasons"].startswith("manual")


def test_bad_trigger_spec_and_record_on_without_folder_are_one_line(tiny_bundle, tmp_path):
    proc = run_cli(VLA_RUN, "--engine", tiny_bundle, "--frames", 3, "--record", tmp_path / "d", "--record-on", "nope")
    assert_one_line_error(proc, "nope")
    proc = run_cli(VLA_RUN, "--engine", tiny_bundle, "--frames", 3, "--record-on", "fault")
    assert_one_line_error(proc, "--record DIR")
    proc = run_cli(VLA_RUN, "--engine", tiny_bundle, "--frames", 3, "--record", tmp_path)
    assert_one_line_error(proc, "is a folder")
    proc = run_cli(VLA_RUN, "--engine", tiny_bundle, "--frames", 3, "--record", "/proc/no-such/run.mcap")
    assert_one_line_error(proc, "cannot open for writing")


# ---- bad input ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_log(tiny_bundle, tmp_path_factory) -> Path:
    log = tmp_path_factory.mktemp("good") / "run.mcap"
    record(tiny_bundle, log, frames=12)
    return log


def test_truncated_log_is_refused_then_salvaged(good_log, tmp_path):
    cut = tmp_path / "cut.mcap"
    data = good_log.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    proc = run_cli(VLA_REPLAY, cut)
    assert_one_line_error(proc, "truncated", "--salvage")
    proc, report = replay(cut, "--salvage")
    assert proc.returncode == 0 and report["truncated"] and 0 < report["replayed"] < 12, proc.stderr
    assert "warning: the log is truncated" in proc.stderr


def test_corrupt_foreign_and_incomplete_logs_are_one_line(good_log, tiny_v2_bundle, tmp_path):
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"\x00garbage" * 100)
    assert_one_line_error(run_cli(VLA_REPLAY, junk), "not an MCAP")
    flipped = tmp_path / "flipped.mcap"
    data = bytearray(good_log.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):  # inside a compressed chunk
        data[i] ^= 0xFF
    flipped.write_bytes(bytes(data))
    err = assert_one_line_error(run_cli(VLA_REPLAY, flipped), str(flipped))
    assert "corrupt" in err or "truncated" in err or "not an MCAP" in err
    assert_one_line_error(run_cli(VLA_REPLAY, good_log, "--engine", tiny_v2_bundle), "manifest mismatch")
    bare = tmp_path / "bare.mcap"
    sink = McapSink(bare, {fmt.META_MANIFEST: {"json": "{}"}})
    sink.write(fmt.json_message(fmt.COMMAND, 1, {"text": "x", "name": "x"}, "vla.command/1"))
    sink.close()
    assert_one_line_error(run_cli(VLA_REPLAY, bare, "--engine", tiny_v2_bundle), "channel /tick missing")
    assert_one_line_error(run_cli(VLA_REPLAY, tmp_path / "none.mcap"), "no such recording")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=4))
def test_reader_property_any_damage_is_a_one_line_error_or_a_prefix(good_log, cut, flips):
    """Any cut and any flipped bytes: the reader gives a VlaError (one line) or, salvaging, a prefix of the
    original ticks; never another exception."""
    data = bytearray(good_log.read_bytes())
    for where, bits in flips:
        data[int(where * (len(data) - 1))] ^= bits
    data = bytes(data[: max(1, int(cut * len(data)))])
    path = good_log.parent / "damaged.mcap"
    path.write_bytes(data)
    original = [t["tick"] for t in read_recording(good_log).ticks]
    try:
        rec = read_recording(path, salvage=True)
    except VlaError as exc:
        assert "\n" not in str(exc)
        return
    got = [t["tick"] for t in rec.ticks]
    if not flips:
        assert got == original[: len(got)]


# ---- the committed reference log: CI replays it against a fresh export of the trained reference -----------
@pytest.fixture(scope="module")
def trained_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "reference"
    proc = run_cli(VLA_EXPORT, "reference", "-o", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_committed_reference_log_replays_within_tolerance(trained_reference, tmp_path):
    assert COMMITTED_LOG.stat().st_size <= 2_000_000
    log = tmp_path / COMMITTED_LOG.name
    shutil.copy(COMMITTED_LOG, log)
    proc, report = replay(log, "--engine", trained_reference)
    assert proc.returncode == 0 and report["ok"], proc.stderr
    assert report["replayed"] == report["runs"] >= 20 and report["skipped"] == 0
    assert read_recording(log).bundle["model"] == "vla-reference-2"
