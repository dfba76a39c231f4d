"""vla-run end to end with real synthetic cameras (own process, shared memory).

The full reference model runs at whatever speed this machine has, so its tests assert what holds on
any machine: records well-formed, each status consistent with the timings it reports, state
committed only on good ticks. Tests of a decision use the tiny bundle, paced (``conftest.paced``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import VLA_RUN, paced, run_cli
from vla.runtime.engine import open_engine
from vla.runtime.inputs.sources import open_cameras
from vla.runtime.loop.runner import RunConfig, Runner

SMALL_CAM = "synthetic://?size=640x360&fps=30"
BUDGET_MS = 200.0


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def _check_record(r: dict) -> None:
    assert r["schema"] == "vla.tick/2"
    assert r["status"] in ("ok", "late", "fallback", "fault")
    assert (r["reason"] is None) == (r["status"] == "ok")
    assert r["problem"] == r["reason"] or r["status"] == "fault"  # the tick's own reason; a fault's differs
    assert r["problem"] is None or r["status"] != "ok"
    assert isinstance(r["deadline_missed"], bool) and (r["warning"] is None or r["status"] == "ok")
    assert r["status"] != "ok" or r["fallback_age_ms"] is None
    assert (r["mode"] is None) == (r["status"] != "ok")
    assert set(r["frame_id"]) == {"front", "left", "right"}
    assert r["publish_time"] >= r["capture_time"]
    assert r["latency_ms"]["e2e"] == pytest.approx((r["publish_time"] - r["capture_time"]) * 1000, abs=0.01)
    traj = np.asarray(r["trajectory"])
    assert r["fields"] == ["x", "y", "yaw", "speed", "accel", "curvature"]
    assert traj.shape == (64, 6) and np.isfinite(traj).all()
    assert r["dt"] == 0.1


def _check_timing(r: dict, budget_ms: float) -> None:
    """The status agrees with the timings the record reports (rounded to 1 µs)."""
    lat = r["latency_ms"]
    if r["status"] == "ok":  # the model ran and was published by its deadline
        assert "engine" in lat and lat["e2e"] <= budget_ms + 0.001, r
        assert lat["engine"] <= lat["e2e"], r
        assert not r["deadline_missed"], r
    elif r["status"] == "late":  # published at the deadline (engine still running) or after it
        assert r["reason"].startswith("late: "), r
        assert lat["e2e"] >= budget_ms - 0.001, r
        assert r["deadline_missed"], r
        if r["reason"].startswith("late: engine still running"):
            assert "engine" not in lat, r
    elif r["reason"].startswith("engine overrun"):  # the previous run held the engine: this one never ran
        assert "engine" not in lat, r
        assert r["deadline_missed"], r  # a miss, though published as a fallback


def test_vla_run_synthetic_end_to_end(reference_bundle, tmp_path):
    """The full reference model at real speed under the default 100 ms budget."""
    out = tmp_path / "run.jsonl"
    proc = run_cli(VLA_RUN, "--engine", reference_bundle, "--camera", SMALL_CAM, "--frames", "12",
                   "--command", "turn left", "--output", out)
    assert proc.returncode == 0, proc.stderr
    records = _records(out.read_text())
    assert len(records) == 12
    for r in records:
        _check_record(r)
        _check_timing(r, 100.0)
    assert [r["tick"] for r in records] == list(range(12))
    assert all(r["command"] == "left" for r in records)
    ok = [r for r in records if r["status"] == "ok"]
    front_ids = [r["frame_id"]["front"] for r in ok]
    assert front_ids == sorted(front_ids) and len(set(front_ids)) == len(front_ids)  # always a newer frame
    assert all(0 <= r["mode"] < 3 and 0 < r["score"] < 1 for r in ok)
    # The start-up line judged the engine against the budget from its warm-up runs, in one line.
    warm = [ln for ln in proc.stderr.splitlines() if "warm-up runs" in ln]
    assert len(warm) == 1 and "engine p50" in warm[0] and " p99 " in warm[0], proc.stderr
    assert "summary: 12 ticks" in proc.stderr and "e2e" in proc.stderr and "p99" in proc.stderr
    # The summary counts what was published: every status, 0 included; every deadline miss.
    head = proc.stderr.split("summary: 12 ticks (")[1].splitlines()[0]
    statuses = [r["status"] for r in records]
    assert head.startswith(", ".join(f"{s} {statuses.count(s)}" for s in ("ok", "late", "fallback", "fault"))
                           + f"); deadline misses {sum(r['deadline_missed'] for r in records)} ("), head


def test_state_is_carried_and_committed_only_on_good_ticks(reference_bundle):
    """The full reference model at real speed: whatever each tick's status, the memory moves exactly
    on the runs that gave a usable trajectory (an ok tick's, or a late run collected afterwards)."""
    backend = open_engine(str(reference_bundle))
    real_run, seen = backend.run, {}

    def run_and_capture():
        # The real engine runs; the test only keeps a copy of what went in and came out.
        seen["memory_in"] = backend.feed("memory").copy()
        out = real_run()
        seen["new_memory"] = out["new_memory"].copy()
        return out

    backend.run = run_and_capture
    cameras = open_cameras([SMALL_CAM], backend.manifest.camera_names)
    # No fault however slow this machine: a faulted tick's record hides whether its run was committed.
    runner = Runner(backend, cameras, RunConfig(max_ticks=6, fault_after=100))
    memory, valid = backend.feed("memory"), backend.feed("memory_valid")
    assert not valid.any() and not memory.any()  # initial values from the manifest
    ran_ticks = late_seen = 0
    before = memory.copy()
    try:
        for rec in runner:
            # State is double-buffered: feed() names the buffer the next run reads.
            memory, valid = backend.feed("memory"), backend.feed("memory_valid")
            late_now = runner.late_runs_committed  # runs collected after their tick was published
            # A run decoded within its tick is committed, on time ("ok") or not ("late: published
            # N ms after capture": it finished, but its line went out past the deadline).
            if rec["status"] == "ok" or (rec["reason"] or "").startswith("late: published"):
                ran_ticks += rec["status"] == "ok"  # a late one is in late_runs_committed
                # The model's new memory is the next tick's input, and it is the old one shifted.
                np.testing.assert_array_equal(memory, seen["new_memory"])
                np.testing.assert_array_equal(memory[0, :3], seen["memory_in"][0, 1:])
                assert np.abs(memory[0, 3]).sum() > 0
            elif late_now == late_seen:  # nothing was committed at this tick: the memory is untouched
                np.testing.assert_array_equal(memory, before)
            late_seen = late_now
            n = min(ran_ticks + late_now, 4)
            assert valid[0].tolist() == [False] * (4 - n) + [True] * n, (rec["status"], rec["reason"])
            before = memory.copy()
    finally:
        runner.close()
    assert runner.ticks == 6


@pytest.mark.parametrize("limits", ["enforce", "warn", "off"])
def test_nan_output_falls_back_and_keeps_state(tiny_bundle, limits):
    """A NaN is never driveable: it falls back in every --limits mode."""
    backend = open_engine(str(tiny_bundle))
    real_run = paced(backend.run, BUDGET_MS / 5)  # on time with wide margins
    calls = {"n": 0}

    def poisoned():
        # The real engine runs; its output is then corrupted as a faulty engine's would be.
        out = real_run()
        calls["n"] += 1
        if calls["n"] == 4:  # warm-up run + 2 good ticks, then a NaN on tick 3
            out["trajectory"][0, :, 5, 1] = np.nan
        return out

    backend.run = poisoned  # before the Runner, which takes the engine's run when it is made
    cameras = open_cameras([SMALL_CAM], backend.manifest.camera_names)
    runner = Runner(backend, cameras, RunConfig(max_ticks=4, budget_ms=BUDGET_MS, warmup_runs=1, limits=limits))
    try:
        records = list(runner)
    finally:
        runner.close()
    assert [r["status"] for r in records[:2]] == ["ok", "ok"]
    bad = records[2]
    assert bad["status"] == "fallback" and bad["reason"].startswith("non-finite output: non-finite trajectory")
    assert bad["fallback_age_ms"] > 0 and np.isfinite(np.asarray(bad["trajectory"])).all()
    assert backend.feed("memory_valid")[0].tolist() == [False, True, True, True]  # 3 commits, not 4
    assert runner.summary()["fallback_reasons"]["non-finite output"] == 1  # (a busy machine may add a late tick)


def test_stalled_camera_falls_back_faults_and_recovers(tiny_bundle):
    uri = "synthetic://?size=320x180&fps=30&stall_after=8&stall_ms=800"
    # The tiny engine (~1 ms) far inside the budget: only the camera's stall decides the statuses.
    proc = run_cli(VLA_RUN, "--engine", tiny_bundle, "--camera", uri, "--frames", "22", "--stall-ms", "200",
                   "--fault-after", "3", "--recover-after", "2", "--budget-ms", f"{BUDGET_MS:g}")
    assert proc.returncode == 0, proc.stderr
    records = _records(proc.stdout)
    for r in records:
        _check_record(r)
    statuses = [r["status"] for r in records]
    events = [(i, r["event"]) for i, r in enumerate(records) if r["event"]]
    # ok ... fallback, fallback (2 < 3) ... fault (the 3rd) ... fault ... recovered (2 good ticks) ... ok
    assert events[0][1] == "fault" and events[1][1].startswith("recovered after"), events
    first_fault, recovered = events[0][0], events[1][0]
    assert statuses[first_fault - 2 : first_fault] == ["fallback", "fallback"]
    assert set(statuses[first_fault:recovered]) == {"fault"}
    assert statuses[recovered] == "ok" and statuses[-1] == "ok"
    fault = records[first_fault]
    assert fault["reason"].startswith("3 consecutive fallbacks (last: ")
    # While faulted the published trajectory slows to a stop: it ends where it stopped.
    traj = np.asarray(records[recovered - 1]["trajectory"])
    assert np.abs(traj[-1, 3]) < 1e-3 and np.abs(traj[-5:, :2] - traj[-1, :2]).max() < 1e-3
    assert "health: fault; recovered after" in proc.stderr


def test_video_file_camera(tiny_bundle, tmp_path):
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30, (320, 180))
    for i in range(60):
        img = np.full((180, 320, 3), 60, np.uint8)
        cv2.line(img, (160 + i, 180), (160, 90), (255, 255, 255), 3)
        writer.write(img)
    writer.release()
    proc = run_cli(VLA_RUN, "--engine", tiny_bundle, "--camera", clip, "--frames", "5")
    assert proc.returncode == 0, proc.stderr
    for r in _records(proc.stdout):
        _check_record(r)


def test_sigterm_stops_cleanly_with_summary(tiny_bundle):
    p = subprocess.Popen([*VLA_RUN, "--engine", str(tiny_bundle), "--camera", SMALL_CAM],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()  # wait for a first tick
        assert json.loads(first)["schema"] == "vla.tick/2"
        time.sleep(0.3)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert "summary:" in err and "ended: signal SIGTERM" in err
    lines = [first, *out.splitlines()]
    assert all(json.loads(line)["schema"] == "vla.tick/2" for line in lines if line.strip())


def test_readme_embedding_example_runs(reference_bundle, tmp_path):
    """The README's Runner example is real code: run it as written, against the test's bundle."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Embedding the loop")[1]
    code = section.split("```python\n")[1].split("```")[0].replace("bundles/reference", str(reference_bundle))
    script = tmp_path / "embed.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    p99 = float(proc.stdout.strip().splitlines()[-1])  # the summary's e2e p99, printed last
    assert 0 < p99 < 10_000


def test_metrics_endpoint_and_ego_profile_from_the_command_line(tiny_bundle):
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    p = subprocess.Popen([*VLA_RUN, "--engine", str(tiny_bundle), "--camera", SMALL_CAM, "--metrics-port", "0",
                          "--ego", "profile://", "--frames", "40"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = [p.stderr.readline() for _ in range(3)]
        ego_line = next(line for line in banner if line.startswith("vla-run: ego"))
        assert "profile" in ego_line
        port = int(ego_line.split("metrics on http://0.0.0.0:")[1].split("/")[0])
        ticks = [json.loads(p.stdout.readline()) for _ in range(5)]
        text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)
    finally:
        p.kill()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    counted = sum(v for (name, _), v in samples.items() if name == "vla_ticks_total")
    assert counted >= 5  # at least the ticks read so far were counted when scraped
    misses = {dict(labels)["status"] for name, labels in samples if name == "vla_deadline_misses_total"}
    assert misses == {"ok", "late", "fallback", "fault"}  # every status, from the first scrape
    info = [dict(labels) for name, labels in samples if name == "vla_model_info"]
    assert len(info) == 1 and info[0]["model"] == "vla-reference" and "onnxruntime" in info[0]["backend"]
    assert all(t["ego_age_ms"] is not None and t["ego_age_ms"] < 200 for t in ticks if t["status"] == "ok")


def test_onnxruntime_state_is_swapped_not_copied(reference_bundle):
    """commit_state() makes the last run's state outputs the next run's inputs: the same arrays,
    bound crosswise, so nothing is copied; an uncommitted run leaves the inputs as they were."""
    backend = open_engine(str(reference_bundle), backend="ort")
    rng = np.random.default_rng(3)
    for spec in backend.manifest.inputs:
        if spec.role in ("camera", "ego", "noise"):
            buf = backend.feed(spec.name)
            buf[...] = rng.integers(0, 255, buf.shape) if buf.dtype == np.uint8 else rng.standard_normal(buf.shape)
    before = backend.feed("memory").copy()
    out = backend.run()
    new_memory = out["new_memory"]
    assert np.array_equal(backend.feed("memory"), before)  # not committed: the input is untouched
    assert not np.array_equal(new_memory, before)
    backend.commit_state()
    assert backend.feed("memory") is new_memory and backend.feed("memory_valid") is out["new_memory_valid"]
    kept = new_memory.copy()
    out2 = backend.run()
    assert out2["new_memory"] is not new_memory  # written into the other buffer
    np.testing.assert_array_equal(new_memory, kept)  # the input of this run was not overwritten
    np.testing.assert_array_equal(out2["new_memory"][0, :3], kept[0, 1:])  # the model shifts its memory


def _paced_run(bundle, engine_ms: float, config: RunConfig) -> Runner:
    backend = open_engine(str(bundle))
    backend.run = paced(backend.run, engine_ms)
    cameras = open_cameras(["synthetic://?size=160x120"], backend.manifest.camera_names)
    return Runner(backend, cameras, config)


@pytest.mark.parametrize("engine_ms, fits", [(BUDGET_MS * 5, False), (BUDGET_MS / 5, True)])
def test_warm_up_judges_the_engine_against_the_budget(tiny_bundle, engine_ms, fits):
    """The warm-up times the engine before tick 0 and says in one line whether it fits the budget."""
    said: list[str] = []
    runner = _paced_run(tiny_bundle, engine_ms,
                        RunConfig(max_ticks=1, budget_ms=BUDGET_MS, rate_hz=10.0, warmup_runs=4, log=said.append))
    try:
        list(runner)
    finally:
        runner.close()
    assert len(runner.warmup_engine_ms) == 3 and min(runner.warmup_engine_ms) >= engine_ms  # the first is not timed
    fit = runner.budget_fit
    assert fit is not None and fit.fits == fits and fit.runs == 3
    assert said == [fit.line()]
    if fits:
        assert said[0].startswith("warm-up: engine p50") and "fits the 200 ms budget" in said[0]
    else:
        assert said[0].startswith("warning: engine p50") and f"p99 {fit.p99_ms:.1f} ms" in said[0]
        assert f"--budget-ms {fit.suggested_budget_ms()}" in said[0] and fit.suggested_budget_ms() >= engine_ms / 0.9
        assert "--rate 0.5" in said[0] and "--precision" in said[0]
    assert runner.summary()["warmup_engine_ms"]["count"] == 3


def test_vla_run_says_when_the_engine_cannot_fit_the_budget(reference_bundle):
    """From the command line, on the full reference model: a 2 ms budget at 500 Hz fits no CPU."""
    proc = run_cli(VLA_RUN, "--engine", reference_bundle, "--camera", SMALL_CAM, "--frames", "2",
                   "--budget-ms", "2", "--rate", "500")
    assert proc.returncode == 0, proc.stderr
    warned = [ln for ln in proc.stderr.splitlines() if ln.startswith("vla-run: warning: engine p50")]
    assert len(warned) == 1, proc.stderr
    p99 = float(warned[0].split(" p99 ")[1].split(" ms")[0])
    assert p99 > 2 and "--budget-ms " in warned[0] and "--rate " in warned[0] and "--precision" in warned[0]
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr
