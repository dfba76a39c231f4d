"""Pure decision functions: statistics, tick schedule, commands, ego history, decode, fallback."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vla.runtime.errors import VlaError
from vla.runtime.inputs.commands import encode_command
from vla.runtime.inputs.ego import EgoHistory
from vla.runtime.loop.fallback import fallback_trajectory, shift_trajectory
from vla.runtime.loop.schedule import next_tick
from vla.runtime.loop.stats import median, percentile, summarize


def test_trtexec_percentiles():
    s = [float(v) for v in range(1, 101)]  # 1..100
    # trtexec: sorted[max(N-1-int((1-p/100)*N), 0)] in float32. (1-0.99f)*100 = 0.99999 -> 0, so
    # p99 of exactly 100 values is the maximum; p90 is s[89] (float64 would give s[90] = 91).
    assert percentile(s, 99) == 100.0
    assert percentile(s, 90) == 90.0
    assert percentile(s, 50) == 50.0
    assert percentile([*s, 101.0], 99) == 100.0  # N=101: exclude int(1.0099) = 1 -> s[99]
    assert percentile(s, 99.9) == 100.0
    assert percentile(s[:10], 99) == 10.0
    assert percentile([], 50) != percentile([], 50)  # NaN
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert median([3.0, 1.0, 2.0][:1]) == 3.0
    st = summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert st["mean"] == 5.0 and st["std"] == 2.0 and st["cv"] == pytest.approx(0.4)
    assert st["min"] == 2.0 and st["max"] == 9.0 and st["median"] == 4.5


def test_schedule_keeps_grid_and_skips_missed_ticks():
    assert next_tick(10.0, 0.1, 9.0, -1) == (0, 10.0)
    idx, t = next_tick(10.0, 0.1, 10.05, 0)
    assert idx == 1 and t == pytest.approx(10.1)
    idx, t = next_tick(10.0, 0.1, 10.37, 1)  # overran: ticks 2 and 3 have passed
    assert idx == 4 and t == pytest.approx(10.4)


VOCAB = {
    "tokens": ["<pad>", "turn", "left", "right", "at", "the", "next", "intersection", "follow", "road", "go",
               "straight"],
    "pad": "<pad>",
    "commands": [
        {"id": 0, "name": "follow", "phrases": ["follow the road", "follow"]},
        {"id": 1, "name": "straight", "phrases": ["go straight"]},
        {"id": 2, "name": "left", "phrases": ["turn left", "left"]},
        {"id": 3, "name": "right", "phrases": ["turn right"]},
    ],
}


def test_command_tokenisation():
    enc = encode_command("Turn LEFT at the next intersection", VOCAB, 8)
    assert (enc.nav_id, enc.nav_name) == (2, "left")
    assert enc.token_ids.tolist() == [1, 2, 4, 5, 6, 7, 0, 0]
    assert enc.mask.tolist() == [True] * 6 + [False] * 2
    assert encode_command("go straight", VOCAB, 8).nav_id == 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [("turn lft", "['lft']"), ("the road", "names none of the model's commands"), ("", "is empty"),
     ("turn left " * 5, "at most 8")],
)
def test_command_errors(text, needle):
    with pytest.raises(VlaError) as info:
        encode_command(text, VOCAB, 8)
    assert needle in str(info.value)


def test_ego_history_straight_and_turning():
    h = EgoHistory(steps=16, rate_hz=10)
    for i in range(30):
        h.update(i * 0.1, 10.0, 0.0, 0.0)
    out = np.zeros((16, 6))
    h.fill(out)
    np.testing.assert_allclose(out[:, 0], 10.0 * 0.1 * np.arange(-15, 1), atol=1e-9)
    np.testing.assert_allclose(out[:, 1:3], 0.0, atol=1e-12)
    np.testing.assert_allclose(out[:, 3], 10.0)
    # A constant left turn: past positions lie behind and to the right... of a circle of radius v/w.
    h = EgoHistory(steps=16, rate_hz=10)
    v, w = 10.0, 0.2
    for i in range(40):
        h.update(i * 0.05, v, 0.0, w)
    h.fill(out)
    assert out[-1, :3].tolist() == [0.0, 0.0, 0.0]
    r = np.hypot(out[:, 0], out[:, 1] - v / w)  # centre of the turn is at (0, v/w) in the ego frame
    np.testing.assert_allclose(r, v / w, rtol=1e-3)
    np.testing.assert_allclose(out[:, 2], w * 0.1 * np.arange(-15, 1), atol=1e-9)


def test_ego_history_resamples_as_np_interp_does():
    """fill() interpolates all columns at once; it must give np.interp's values column by column,
    held at the ends, on irregular sample times and for a grid reaching past both ends."""
    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 40):
        h = EgoHistory(steps=16, rate_hz=10)
        t = np.cumsum(rng.uniform(0.01, 0.2, n))
        for ti in t:
            h.update(float(ti), float(rng.uniform(0, 20)), float(rng.normal()), float(rng.normal(0, 0.2)))
        b = h._buf[: h._n]
        for now in (t[-1], t[-1] + 0.35, t[0] + 0.05):
            times = now + h._grid
            want = np.stack([np.interp(times, b[:, 0], b[:, k]) for k in range(1, 7)], axis=1)
            x0, y0, yaw0 = want[-1, :3]
            c, s_ = np.cos(yaw0), np.sin(yaw0)
            dx, dy = want[:, 0] - x0, want[:, 1] - y0
            want[:, 0], want[:, 1], want[:, 2] = c * dx + s_ * dy, -s_ * dx + c * dy, want[:, 2] - yaw0
            out = np.zeros((16, 6))
            h.fill(out, now)
            np.testing.assert_allclose(out, want, rtol=0, atol=1e-9, err_msg=f"n={n}, now={now}")


def test_ego_history_without_samples_is_zero():
    out = np.ones((16, 6))
    EgoHistory(16, 10).fill(out)
    assert not out.any()


def test_fallback_shifts_to_now():
    dt = 0.1
    t = dt * np.arange(1, 65)
    straight = np.stack([10.0 * t, np.zeros(64), np.zeros(64)], axis=1).astype(np.float32)
    shifted = shift_trajectory(straight, dt, age=0.3)
    np.testing.assert_allclose(shifted[:61, 0], 10.0 * t[:61], atol=1e-4)  # same path, 3 m further on
    np.testing.assert_allclose(shifted[61:, 0], 10.0 * (6.4 - 0.3), atol=1e-4)  # holds the final pose
    # A trajectory turning left: seen later, the remaining path starts at the origin with yaw 0.
    w = 0.2
    yaw = w * t
    arc = np.stack([np.sin(yaw) * 10 / w, (1 - np.cos(yaw)) * 10 / w, yaw], axis=1).astype(np.float32)
    later = shift_trajectory(arc, dt, age=1.0)
    np.testing.assert_allclose(later[0], [math.sin(w * dt) * 10 / w, (1 - math.cos(w * dt)) * 10 / w, w * dt],
                               atol=2e-3)
    assert not fallback_trajectory(None, dt, 0.5, 64).any()


def test_fallback_slows_to_a_comfortable_stop_along_the_old_path():
    from vla.runtime.loop.fallback import stop_along

    dt, v, w = 0.1, 12.0, 0.05
    t = dt * np.arange(1, 65)
    yaw = w * t
    arc = np.stack([np.sin(yaw) * v / w, (1 - np.cos(yaw)) * v / w, yaw], axis=1).astype(np.float32)
    for horizon in (2.0, 4.0):
        fb = fallback_trajectory(arc, dt, age=0.5, points=64, stop_horizon=horizon)
        xy = np.vstack([[0.0, 0.0], fb[:, :2]])
        speed = np.linalg.norm(np.diff(xy, axis=0), axis=1) / dt
        assert speed[0] == pytest.approx(v - v / horizon * dt / 2, rel=0.02)  # starts at the path's speed
        stop_at = round(horizon / dt)
        assert speed[stop_at:].max() < 1e-3  # stopped after the horizon and stays stopped
        decel = -np.diff(speed)
        assert decel.max() <= v / horizon * dt * 1.05 and decel.min() >= -1e-3  # constant, never speeds up
        # Geometry kept: every point lies on the original circle of radius v / w (centre (0, v/w) after
        # the shift the centre moves, so check curvature instead: yaw grows with distance at rate w / v).
        dist = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
        np.testing.assert_allclose(fb[:, 2], w / v * dist[1:], atol=2e-3)
    # A path that is already stopped stays stopped; a zero horizon means stopped at once.
    assert not stop_along(np.zeros((64, 3), np.float32), dt, 4.0).any()
    assert np.abs(stop_along(arc, dt, 0.0)).max() == 0.0


def test_to_frame():
    from vla.runtime.geometry import to_frame

    poses = np.array([[1.0, 1.0, 0.5], [2.0, 1.0, math.pi / 2 + 0.1]])
    rel = to_frame(poses, (1.0, 1.0, math.pi / 2))  # origin facing +y (world "north")
    np.testing.assert_allclose(rel[0], [0.0, 0.0, 0.5 - math.pi / 2], atol=1e-12)
    np.testing.assert_allclose(rel[1], [0.0, -1.0, 0.1], atol=1e-12)  # 1 m east of a north-facing car: right


def test_health_faults_after_consecutive_fallbacks_and_recovers_with_hysteresis():
    from vla.runtime.loop.health import Health, HealthConfig, next_health

    cfg = HealthConfig(fault_after=3, fault_stall_ms=1000, recover_after=2)
    h, t, events = Health(), 0.0, []
    for fb in ["x", "x", None, "x", "x", "x", "x", None, "x", None, None, None]:
        t += 0.1
        h, ev = next_health(h, cfg, fallback=fb, stalled=None, now=t)
        events.append((h.faulted, ev))
    faulted = [f for f, _ in events]
    # a good tick resets the count; the 3rd consecutive fallback faults; one good tick is not enough
    assert faulted == [False, False, False, False, False, True, True, True, True, True, False, False]
    assert events[5][1] == "fault" and events[10][1].startswith("recovered after 0.5 s")
    assert [e for _, e in events].count("fault") == 1


def test_health_faults_at_once_on_a_stalled_camera():
    from vla.runtime.loop.health import Health, HealthConfig, next_health

    cfg = HealthConfig(fault_after=5, fault_stall_ms=1000, recover_after=1)
    h, ev = next_health(Health(), cfg, fallback="no new frame", stalled=("left", 1200.0), now=1.0)
    assert h.faulted and ev == "fault" and h.reason.startswith("camera 'left' stalled for 1200 ms")
    h, ev = next_health(h, cfg, fallback=None, stalled=("left", 1300.0), now=1.1)  # frames but still stale
    assert h.faulted and ev is None
    h, ev = next_health(h, cfg, fallback=None, stalled=None, now=1.2)
    assert not h.faulted and ev == "recovered after 0.2 s"


def test_cpu_lists_and_realtime_settings_degrade_with_a_warning():
    import os

    from vla.runtime.loop.realtime import apply_realtime, parse_cpus

    assert parse_cpus("0-2,5") == {0, 1, 2, 5}
    with pytest.raises(VlaError, match="expected CPU ids"):
        parse_cpus("a-b")
    warnings: list[str] = []
    mine = sorted(os.sched_getaffinity(0))
    applied = apply_realtime(str(mine[0]), None, warn=warnings.append)
    try:
        assert applied == [f"CPUs [{mine[0]}]"] and os.sched_getaffinity(0) == {mine[0]}
    finally:
        os.sched_setaffinity(0, set(mine))
    apply_realtime("4095", None, warn=warnings.append)  # a CPU this machine does not have
    assert warnings and "--cpu 4095: not applied" in warnings[-1]
    with pytest.raises(VlaError, match="SCHED_FIFO priorities are"):
        apply_realtime(None, 500, warn=warnings.append)


def test_idle_collector_keeps_gc_off_the_hot_path():
    import gc

    from vla.runtime.loop.realtime import IdleCollector

    was = gc.isenabled()
    c = IdleCollector(min_idle_s=0.005, full_every=2)
    try:
        assert not gc.isenabled()
        c.idle(0.001)  # no time: nothing collected
        assert c.collections == 0
        c.idle(0.05)
        c.idle(0.05)
        assert c.collections == 2
    finally:
        c.close()
    assert gc.isenabled() == was


def test_window_keeps_the_last_values_in_fixed_memory():
    from vla.runtime.loop.stats import Window

    w = Window(4)
    assert w.values() == [] and len(w) == 0
    for v in range(1, 4):
        w.append(float(v))
    assert w.values() == [1.0, 2.0, 3.0]
    for v in range(4, 11):
        w.append(float(v))
    assert w.values() == [7.0, 8.0, 9.0, 10.0] and len(w) == 4 and w.count == 10


def test_judge_group_names_the_camera_behind():
    from vla.runtime.loop.camera_group import judge_group

    last = {"front": 9, "left": 9, "right": 9}
    fresh = {"front": (10, 1.000), "left": (10, 1.010), "right": (10, 0.995)}
    v = judge_group(fresh, last, now=1.02, tolerance_ms=50, stall_ms=500)
    assert v.problem is None and v.waiting_on == () and v.spread_ms == pytest.approx(15.0)
    behind = {**fresh, "right": (10, 0.930)}
    v = judge_group(behind, last, now=1.02, tolerance_ms=50, stall_ms=500)
    assert v.problem == "camera 'right' lags 'left' by 80 ms (tolerance 50 ms)" and v.waiting_on == ("right",)
    same = {**fresh, "left": (9, 0.977)}  # left has nothing the model has not seen
    v = judge_group(same, last, now=1.02, tolerance_ms=50, stall_ms=500)
    assert v.problem == "no new frame from camera 'left'" and v.waiting_on == ("left",)
    frozen = {**fresh, "front": (10, 0.2)}  # stalled: named, not waited for
    v = judge_group(frozen, last, now=1.02, tolerance_ms=50, stall_ms=500)
    assert v.problem == "camera 'front' stalled: newest frame is 820 ms old" and v.waiting_on == ()
    missing = {**fresh, "left": None}
    v = judge_group(missing, last, now=1.02, tolerance_ms=50, stall_ms=500)
    assert v.problem == "no frame yet from camera 'left'" and v.waiting_on == ("left",)


def test_frame_ticks_every_third_frame_of_a_30fps_camera():
    from vla.runtime.loop.schedule import frame_tick

    anchor, period, slack = 5.0, 0.1, 0.01
    fired, index = [], -1
    for seq in range(13):  # 30 fps, captures with +-2 ms jitter
        capture = anchor + seq / 30 + (0.002 if seq % 2 else -0.002)
        k = frame_tick(anchor, period, slack, index, capture)
        if k is not None:
            fired.append((seq, k))
            index = k
    assert fired == [(0, 0), (3, 1), (6, 2), (9, 3), (12, 4)]
    # After an overrun the newest frame fires the latest tick it reaches (ticks 5 and 6 skipped).
    assert frame_tick(anchor, period, slack, 4, anchor + 0.72) == 7
    assert frame_tick(anchor, period, slack, 7, anchor + 0.75) is None  # too early for tick 8
    # A 12 fps camera at 10 Hz: the first frame at or after each tick time.
    caps = [anchor + i / 12 for i in range(13)]
    index, ticks = -1, []
    for c in caps:
        k = frame_tick(anchor, period, slack, index, c)
        if k is not None:
            ticks.append(round(c - anchor, 3))
            index = k
    assert ticks == [0.0, 0.167, 0.25, 0.333, 0.417, 0.5, 0.667, 0.75, 0.833, 0.917, 1.0]


def test_reason_kind_keeps_counters_bounded():
    from vla.runtime.loop.health import reason_kind

    assert reason_kind("engine error: RuntimeError: boom") == "engine error"
    assert reason_kind("camera 'right' lags 'left' by 144 ms (tolerance 50 ms)") == "camera 'right' lags 'left' by N ms"
    assert reason_kind("camera 'right' lags 'left' by 80 ms (tolerance 50 ms)") == reason_kind(
        "camera 'right' lags 'left' by 95 ms (tolerance 50 ms)")
    gone = "no new frame from camera 'front' (device /dev/video0 gone)"
    assert reason_kind(gone) == "no new frame from camera 'front'"
    assert reason_kind("late: engine still running 62 ms in at the deadline") == "late"


def test_budget_fit_from_warm_up_runs():
    from vla.runtime.loop.budget import judge_budget

    assert judge_budget([], 100.0, 10.0) is None
    ok = judge_budget([60.0, 62.0, 61.0, 70.0], budget_ms=100.0, rate_hz=10.0)
    assert ok.runs == 4 and ok.p50_ms == 61.5 and ok.p99_ms == 70.0  # trtexec: p99 of 4 runs is the slowest
    assert ok.fits and ok.engine_allowance_ms == pytest.approx(90.0)
    assert ok.line() == ("warm-up: engine p50 61.5 ms, p99 70.0 ms over 4 warm-up runs; fits the 100 ms budget "
                         "(90 ms for the engine, the rest for cameras and the loop)")
    # Within the period but not within the budget's allowance: late ticks; raise the budget.
    tight = judge_budget([85.0, 93.0, 88.0], budget_ms=100.0, rate_hz=10.0)
    assert not tight.fits_budget and tight.fits_period and tight.suggested_budget_ms() == 110
    line = tight.line()
    assert line.startswith("warning: engine p50 88.0 ms, p99 93.0 ms over 3 warm-up runs: ")
    assert "more than the 90 ms the 100 ms budget leaves the engine" in line and "--budget-ms 110" in line
    assert "--rate" not in line and line.endswith("a lighter precision (vla-export --precision fp16 or int8)")
    assert "\n" not in line
    # A budget larger than the period: it fits the budget, but runs overrun the next tick.
    overrun = judge_budget([150.0, 160.0], budget_ms=500.0, rate_hz=10.0)
    assert overrun.fits_budget and not overrun.fits_period and overrun.suggested_rate_hz() == 6
    assert "--rate 6" in overrun.line() and "--budget-ms" not in overrun.line()
    # Both, and a run slower than a second: the rate goes below 1 Hz in halves.
    slow = judge_budget([1500.0], budget_ms=100.0, rate_hz=10.0)
    assert slow.suggested_rate_hz() == 0.5 and slow.suggested_budget_ms() == 1670
    assert "--budget-ms 1670, or --rate 0.5, or a lighter precision" in slow.line()
    # The precision to suggest follows the bundle's own.
    assert "--precision int8)" in judge_budget([95.0], 100.0, 10.0, precision="fp16").line()
    int8 = judge_budget([95.0], 100.0, 10.0, precision="int8").line()
    assert "--precision" not in int8 and int8.endswith("a faster engine (vla-build, --backend trt on the target's GPU)")
    # A suggestion is always above the budget the user gave.
    edge = judge_budget([90.5], budget_ms=100.0, rate_hz=5.0)
    assert not edge.fits and "--budget-ms 110" in edge.line()
