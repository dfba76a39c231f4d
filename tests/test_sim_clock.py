"""The simulated clock under the real loop: idle time passes at once, an injected engine time is exact,
and the same run gives the same records (vla-sim's reproducibility)."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from stage_models import H, W, write_bundle

from vla.runtime.engine import open_engine
from vla.runtime.inputs.sources.base import CameraSource, EgoState, Frame
from vla.runtime.loop.clock import WALL, SimClock
from vla.runtime.loop.engine_worker import EngineWorker
from vla.runtime.loop.runner import RunConfig, Runner


def test_idle_waits_pass_at_once_and_the_clock_only_moves_forward():
    clock = SimClock(start=5.0, run_s=0.0)
    event = threading.Event()
    t0 = time.perf_counter()
    assert clock.wait(event, 10.0) is False
    assert time.perf_counter() - t0 < 0.5
    assert clock.now() == pytest.approx(15.0)
    clock.advance_to(12.0)  # the past: no change
    assert clock.now() == pytest.approx(15.0)
    clock.sleep(0.25)
    assert clock.now() == pytest.approx(15.25)
    event.set()
    assert clock.wait(event, 3.0) is True and clock.now() == pytest.approx(15.25)


def test_measured_clock_follows_the_wall_but_not_while_paused():
    clock = SimClock()
    a = clock.now()
    with clock.paused():
        time.sleep(0.05)
    paused = clock.now() - a
    b = clock.now()
    time.sleep(0.05)
    assert paused < 0.02
    assert clock.now() - b >= 0.045


def _sleepy(ms: float):
    def run() -> dict:
        time.sleep(ms / 1000.0)
        return {"out": np.zeros(1)}
    return run


def test_an_injected_run_time_is_exact_whatever_the_run_really_takes():
    clock = SimClock(run_s=0.03)
    worker = EngineWorker(clock=clock)
    start = clock.now()
    worker.submit(_sleepy(60))  # really 60 ms, 30 ms on this clock
    assert worker.wait(0.1) is True
    assert worker.finished - worker.started == pytest.approx(0.03)
    assert clock.now() == pytest.approx(start + 0.03)
    assert not worker.busy
    worker.close(1.0)


def test_an_injected_run_longer_than_the_wait_stays_busy_until_the_clock_reaches_its_end():
    clock = SimClock(run_s=0.25)
    worker = EngineWorker(clock=clock)
    start = clock.now()
    worker.submit(_sleepy(1))
    assert worker.wait(0.1) is False  # the caller's deadline comes first
    assert clock.now() == pytest.approx(start + 0.1)
    assert worker.busy  # really finished, but not yet on this clock
    clock.advance_to(start + 0.2)
    assert worker.busy
    clock.advance_to(start + 0.25)
    assert not worker.busy
    worker.close(1.0)


def test_the_wall_clock_worker_is_unchanged():
    worker = EngineWorker(clock=WALL)
    worker.submit(_sleepy(20))
    assert worker.wait(1.0) and worker.finished - worker.started >= 0.015
    worker.close(1.0)


class ClockedCamera(CameraSource):
    """A real camera source on the loop's clock: a new frame on every 1/fps grid point from the loop's
    first tick, a moving car's state attached (what the simulator's cameras do, without a world; the
    world and its cameras have their own tests)."""

    provides_ego = True

    def __init__(self, clock, fps: float = 10.0) -> None:
        self.name, self.uri, self.clock, self.fps = "front", "clocked://front", clock, fps
        self._frame: Frame | None = None
        self.image = np.full((H, W, 3), 90, np.uint8)
        self.runner: Runner | None = None

    def newest(self) -> Frame | None:
        since = self.runner.ticking_since if self.runner is not None else None
        since = 0.0 if since is None else since
        index = math.floor((self.clock.now() - since) * self.fps + 1e-6)
        if self._frame is None or self._frame.seq != index:
            self._frame = Frame("front", self.image, "rgb", W, H, index, since + index / self.fps,
                                ego=EgoState(speed=8.0, accel=0.0, yaw_rate=0.0))
        return self._frame

    def close(self) -> None:
        pass


def _run(bundle, latency_ms: float, ticks: int = 30, budget_ms: float = 100.0) -> list[dict]:
    clock = SimClock(run_s=latency_ms / 1000.0)
    backend = open_engine(str(bundle), threads=1, backend="ort", stage_rate="tick")
    cfg = RunConfig(sync="clock", max_ticks=ticks, budget_ms=budget_ms, warmup_runs=3, warmup_s=0.0, seed=3)
    camera = ClockedCamera(clock)
    runner = Runner(backend, {"front": camera}, cfg, clock=clock)
    camera.runner = runner
    try:
        return list(runner)
    finally:
        runner.close()


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("sim") / "two-stage", rate="tick")


def test_the_loop_on_the_simulated_clock_is_exact_and_reproducible(two_stage):
    t0 = time.perf_counter()
    first = _run(two_stage, 30.0)
    assert time.perf_counter() - t0 < 20.0  # 3 simulated seconds; far less than real time matters not here
    assert [r["status"] for r in first] == ["ok"] * 30
    assert {r["latency_ms"]["e2e"] for r in first} == {30.0}
    captures = np.diff([r["capture_time"] for r in first])
    np.testing.assert_allclose(captures, 0.1, atol=1e-6)  # a tick period of simulated time per tick
    again = _run(two_stage, 30.0)
    assert [r["trajectory"] for r in again] == [r["trajectory"] for r in first]


def test_an_injected_latency_past_the_budget_goes_through_the_loop_s_own_deadlines(two_stage):
    records = _run(two_stage, 250.0, ticks=12)
    statuses = [r["status"] for r in records]
    # 250 ms per run, 100 ms ticks: a run misses its deadline, the next two ticks find the engine busy,
    # the fourth takes the late run in and starts the next: never ok, the same every time.
    assert "ok" not in statuses
    reasons = [r["problem"] for r in records]
    assert reasons[0].startswith("late: engine still running 100 ms")
    assert reasons[1].startswith("engine overrun")
    assert [r["status"] for r in _run(two_stage, 250.0, ticks=12)] == statuses


def test_a_run_nobody_waits_on_is_in_hand_once_the_clock_passes_its_end():
    """The dual-rate slow stages are polled (``busy``), never waited on: on a fixed run time their
    result must not depend on how fast the machine really is."""
    clock = SimClock(run_s=0.0)
    worker = EngineWorker(clock=clock)
    worker.submit(_sleepy(80))
    assert not worker.busy  # ends at once on this clock: busy waits for the real run
    assert worker.outputs is not None
    worker.close(1.0)


def test_a_measured_idle_wait_is_real_while_a_run_is_in_flight():
    """Measured time: skipping idle time while a worker still computes would let the clock run ahead of
    the run (it would end long after it really took on this clock). The wait is real up to the run's
    end, and the rest of it passes at once."""
    clock = SimClock()
    worker = EngineWorker(clock=clock)
    start, t0 = clock.now(), time.perf_counter()
    worker.submit(_sleepy(50))
    assert clock.wait(threading.Event(), 1.0) is False
    real = time.perf_counter() - t0
    assert 0.045 <= real < 0.9  # waited for the run, not for the whole second
    assert worker.finished - start < 0.5  # ~50 ms on this clock, not after the skipped second
    assert clock.now() - start == pytest.approx(1.0, abs=0.05)
    t1 = time.perf_counter()
    clock.sleep(5.0)  # nothing in flight: at once
    assert time.perf_counter() - t1 < 0.5 and clock.now() - start == pytest.approx(6.0, abs=0.05)
    worker.close(1.0)


def test_a_measured_wait_sees_its_event_while_a_run_is_in_flight():
    clock = SimClock()
    worker = EngineWorker(clock=clock)
    worker.submit(_sleepy(1500))
    event = threading.Event()
    threading.Timer(0.05, event.set).start()
    t0 = time.perf_counter()
    assert clock.wait(event, 10.0) is True
    assert time.perf_counter() - t0 < 1.0  # seen when set, not when the 1.5 s run ends
    worker.close(3.0)


def test_a_slow_context_on_the_measured_clock_is_as_old_as_it_really_took(tmp_path):
    """vla-sim's default clock and a dual-rate bundle: the slow stages (really 30 ms here: the wrapper
    below sleeps inside the backend's run, as a heavier VLM would compute) run on their own worker while
    the loop idles to the next tick. Their context must be about one tick old when used, as it would be
    on a vehicle; it used to age by a whole tick for every tick they ran (the loop skipped its idle
    time meanwhile) and the fast path fell back with "context too old"."""
    bundle = write_bundle(tmp_path / "async", rate="async", max_age_ms=300.0)
    clock = SimClock()
    backend = open_engine(str(bundle), threads=1, backend="ort")
    execute = backend.execute

    def slow_vision(stages, store):
        if any(s.name == "vision" for s in stages):
            time.sleep(0.03)
        return execute(stages, store)

    backend.execute = slow_vision
    cfg = RunConfig(sync="clock", max_ticks=25, budget_ms=100.0, warmup_runs=2, warmup_s=0.0, seed=3)
    camera = ClockedCamera(clock)
    runner = Runner(backend, {"front": camera}, cfg, clock=clock)
    camera.runner = runner
    try:
        records = list(runner)
    finally:
        runner.close()
    assert [r["status"] for r in records] == ["ok"] * 25, [r.get("problem") for r in records]
    ages = [r["context_age_ms"] for r in records if r["context_age_ms"] is not None]
    assert ages and max(ages) < 250.0, ages
