"""vla-sim end to end: a bundle drives the simulated world through the real loop, reproducibly, and
the CLI writes its results, pictures and sweeps (on a real local Ray)."""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pytest
from stage_models import SPEED, write_bundle

from conftest import assert_one_line_error, run_cli
from vla.runtime.engine import open_engine
from vla.sim.closed_loop import SimOptions, drive
from vla.sim.world import make_scenario

VLA_SIM = [sys.executable, "-m", "vla.sim.cli"]


@pytest.fixture(scope="module")
def straight_bundle(tmp_path_factory):
    """A bundle of two stages whose trajectory is always straight ahead at SPEED m/s (one camera)."""
    return write_bundle(tmp_path_factory.mktemp("sim") / "straight", rate="tick")


@pytest.fixture(scope="module")
def backend(straight_bundle):
    b = open_engine(str(straight_bundle), threads=1, backend="ort")
    yield b
    b.close()


def _heading_progress(trace: np.ndarray) -> np.ndarray:
    """Distance along the start heading of every trace row."""
    x0, y0 = trace[0, 1], trace[0, 2]
    yaw0 = trace[0, 3]
    return (trace[:, 1] - x0) * math.cos(yaw0) + (trace[:, 2] - y0) * math.sin(yaw0)


def test_the_car_follows_what_the_loop_publishes(backend):
    records: list[dict] = []
    d = drive(backend, make_scenario(1000), SimOptions(latency_ms=20.0, duration_s=4.0), on_tick=records.append)
    status = d.result["status"]
    assert status["ok"] == d.result["ticks"] == len(records) > 0
    # The bundle always says "straight ahead": the car settles at the speed its plans ask for (their first
    # step's length over dt), its heading unchanged.
    asked = np.mean([r["trajectory"][0][0] / r["dt"] for r in records[-10:]])
    assert 1.0 < asked < SPEED + 1.0
    late = d.trace[d.trace[:, 0] > 2.5]
    assert np.all(np.abs(late[:, 4] - asked) < 0.3), (asked, late[:, 4])
    assert np.max(np.abs(np.diff(d.trace[:, 3]))) < 0.01
    assert _heading_progress(d.trace)[-1] > asked * 3.0


def test_a_run_with_an_injected_latency_is_reproducible(backend):
    opts = SimOptions(latency_ms=40.0, duration_s=3.0)
    a = drive(backend, make_scenario(1001), opts)
    b = drive(backend, make_scenario(1001), opts)
    np.testing.assert_array_equal(a.trace, b.trace)
    assert a.result["status"] == b.result["status"]


def test_latency_delays_when_an_answer_takes_effect(backend):
    """The car starts faster than the bundle asks: with 300 ms of engine time the slowing starts 300 ms
    later than with none."""
    fast = drive(backend, make_scenario(1000), SimOptions(latency_ms=0.0, duration_s=1.5))
    slow = drive(backend, make_scenario(1000), SimOptions(latency_ms=300.0, duration_s=1.5))
    start = fast.trace[0, 4]
    assert start > SPEED + 1.0

    def first_slowing(trace):
        return trace[np.argmax(trace[:, 4] < start - 0.05), 0]

    assert first_slowing(slow.trace) - first_slowing(fast.trace) == pytest.approx(0.3, abs=0.051)


def test_dropped_frames_go_through_the_loop_s_camera_checks(backend):
    d = drive(backend, make_scenario(1002), SimOptions(latency_ms=10.0, drop_frames=0.3, duration_s=3.0))
    assert d.result["dropped_frames"] > 0
    assert d.result["status"]["fallback"] > 0
    assert any("front" in k or "frame" in k for k in d.result["fallback_reasons"])


def test_vla_sim_writes_results_and_pictures(straight_bundle, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(VLA_SIM, "--engine", straight_bundle, "--scenarios", "2", "--latency-ms", "20",
                   "--duration", "3", "--out", out, "--png", "all", "--no-progress", timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert [s["seed"] for s in results["scenarios"]] == [1000, 1001]
    for s in [*results["scenarios"], results["overall"]]:
        assert 0.0 <= s["route_completion"] <= 1.0 and 0.0 <= s["score"] <= 1.0
        assert {"collisions", "offroad", "status"} <= set(s)
    assert sum(results["overall"]["status"].values()) == sum(s["ticks"] for s in results["scenarios"])
    for seed in (1000, 1001):
        assert (out / f"scenario-{seed}.png").stat().st_size > 10_000
    assert "score" in proc.stdout and "picture" in proc.stdout


@pytest.mark.parametrize("args, needle", [
    (["--drop-frames", "1.5"], "--drop-frames"),
    (["--scenarios", "0"], "--scenarios"),
    (["--sweep", "speed=1"], "unknown axis"),
    (["--sweep", "precision=fp32"], "{precision}"),
])
def test_vla_sim_refuses_bad_options_in_one_line(straight_bundle, args, needle):
    assert_one_line_error(run_cli(VLA_SIM, "--engine", straight_bundle, *args, timeout=120), needle)


def test_vla_sim_names_a_missing_bundle(tmp_path):
    assert_one_line_error(run_cli(VLA_SIM, "--engine", tmp_path / "nope", timeout=120), "nope")


def test_a_latency_sweep_runs_on_ray_and_writes_its_table_and_plot(straight_bundle, tmp_path):
    out = tmp_path / "sweep"
    proc = run_cli(VLA_SIM, "--engine", straight_bundle, "--sweep", "latency=0,200", "--scenarios", "1",
                   "--duration", "2", "--workers", "2", "--out", out, "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["point"]["latency"] for r in sweep["rows"]] == [0.0, 200.0]
    table = (out / "sweep.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| 0 |") and table[3].startswith("| 200 |")
    assert (out / "sweep.png").stat().st_size > 10_000


def test_realtime_drives_on_the_wall_clock(backend):
    t0 = time.monotonic()
    d = drive(backend, make_scenario(1003), SimOptions(realtime=True, duration_s=1.0))
    wall = time.monotonic() - t0
    assert d.result["ticks"] == 10
    assert wall >= 0.9  # ten 100 ms ticks of real time (a simulated clock takes a fraction of that)
    assert d.trace[-1, 0] == pytest.approx(1.0, abs=0.15)  # the world moved with the wall clock
