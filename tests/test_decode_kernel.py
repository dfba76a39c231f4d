"""decode_trajectory (C++ twin): real arithmetic against NumPy references written here.

The references follow the documented definitions with independent code (np.gradient, np.diff,
np.interp, float64); the analytic cases (straight line, circle, constant acceleration) check
the definitions themselves. The CUDA kernel shares decode.h with the twin; it cannot run on this
GPU-less machine, so here it is only compiled (by the build) and its error path is tested.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

import vla.kernels as kernels
from vla.kernels.decode import (
    ACCEL,
    CURVATURE,
    NONFINITE,
    RESULT_WORDS,
    SPEED,
    DecodedTrajectory,
    decode_trajectory,
    new_result_buffer,
)

DT = 0.1
T = 64
TIMES = DT * np.arange(1, T + 1)
# float32 arithmetic against a float64 reference: per-column absolute tolerances
# (x, y, yaw, speed, accel, curvature). Second differences of float32 positions of tens of metres,
# divided by dt², carry ~1e-2 m/s² of rounding.
ATOL = np.array([1e-4, 1e-4, 1e-4, 1e-3, 3e-2, 1e-3])


def reference(mode: np.ndarray, dt: float, times: np.ndarray) -> np.ndarray:
    """The documented decode of one mode, in float64 NumPy: [M, 6] x, y, yaw, speed, accel, curvature."""
    mode = mode.astype(np.float64)
    ts = dt * np.arange(len(mode) + 1)
    x = np.concatenate([[0.0], mode[:, 0]])
    y = np.concatenate([[0.0], mode[:, 1]])
    vx, vy = np.gradient(x, dt, edge_order=2), np.gradient(y, dt, edge_order=2)

    def second(p: np.ndarray) -> np.ndarray:
        d2 = np.diff(p, 2) / dt**2
        return np.concatenate([d2[:1], d2, d2[-1:]])

    ax, ay = second(x), second(y)
    speed = np.hypot(vx, vy)
    accel = np.gradient(speed, dt, edge_order=2)
    moving = speed >= 0.5
    if mode.shape[1] >= 3:
        yaw = np.concatenate([[0.0], mode[:, 2]])
    else:  # heading of travel, held while standing, 0 at the origin
        yaw = np.zeros_like(x)
        for j in range(1, len(x)):
            yaw[j] = math.atan2(vy[j], vx[j]) if moving[j] else yaw[j - 1]
    safe = np.where(moving, speed, 1.0)
    curvature = np.where(moving, (vx * ay - vy * ax) / safe**3, 0.0)
    cols = (x, y, np.unwrap(yaw), speed, accel, curvature)
    return np.stack([np.interp(times, ts, c) for c in cols], axis=1)


def wrap(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi


def assert_matches(points: np.ndarray, ref: np.ndarray) -> None:
    assert points.shape == ref.shape and points.dtype == np.float32
    err = np.abs(points.astype(np.float64) - ref)
    err[:, 2] = np.abs(wrap(points[:, 2] - ref[:, 2]))  # derived yaw (F = 2) lies in [-pi, pi]
    bad = err > ATOL + 1e-5 * np.abs(ref)
    assert not bad.any(), f"column(s) {sorted(set(np.nonzero(bad)[1]))}: max err per column {err.max(axis=0)}"


def straight(v: float, a: float = 0.0, t: np.ndarray = TIMES, f: int = 3) -> np.ndarray:
    """[T, f] along x: x = v t + a t² / 2."""
    mode = np.zeros((len(t), f), dtype=np.float32)
    mode[:, 0] = v * t + 0.5 * a * t**2
    return mode


def circle(radius: float, v: float, t: np.ndarray = TIMES, f: int = 3, left: bool = True) -> np.ndarray:
    """[T, f] on a circle through the origin, heading +x at t = 0 (left turn: centre at (0, R))."""
    s = 1.0 if left else -1.0
    w = v / radius
    mode = np.zeros((len(t), f), dtype=np.float32)
    mode[:, 0] = radius * np.sin(w * t)
    mode[:, 1] = s * radius * (1 - np.cos(w * t))
    if f >= 3:
        mode[:, 2] = s * w * t
    return mode


def modes(*m: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.stack(m), dtype=np.float32)


def scores(*s: float) -> np.ndarray:
    return np.array(s, dtype=np.float32)


# --- analytic cases -------------------------------------------------------------------------------


@pytest.mark.parametrize("f", [2, 3])
def test_straight_constant_speed(f):
    d = decode_trajectory(modes(straight(15.0, f=f)), None, DT)
    assert isinstance(d, DecodedTrajectory)
    assert d.ok and d.verdict == 0 and d.problem is None
    assert d.mode == 0 and math.isnan(d.score)
    np.testing.assert_allclose(d.points[:, 0], 15.0 * TIMES, rtol=1e-6)
    np.testing.assert_allclose(d.points[:, 1:3], 0.0, atol=0)
    np.testing.assert_allclose(d.points[:, 3], 15.0, rtol=1e-5)
    np.testing.assert_allclose(d.points[:, 4], 0.0, atol=2e-2)
    np.testing.assert_allclose(d.points[:, 5], 0.0, atol=0)


@pytest.mark.parametrize("f", [2, 3])
@pytest.mark.parametrize("left", [True, False])
def test_constant_radius_turn(f, left):
    radius, v = 20.0, 10.0
    d = decode_trajectory(modes(circle(radius, v, f=f, left=left)), scores(1.0), DT)
    assert d.ok, d.problem
    sign = 1.0 if left else -1.0
    np.testing.assert_allclose(d.points[:, 5], sign / radius, rtol=0.01)  # curvature = 1/R within 1 %
    np.testing.assert_allclose(d.points[:, 3], v, rtol=0.01)
    # No longitudinal acceleration. At the two ends the one-sided stencil reads a_lat * yaw_rate * dt
    # at most (speed error O(dt²) that differs from the central one's): 5 m/s² * 0.5 /s * 0.1 s.
    np.testing.assert_allclose(d.points[1:-2, 4], 0.0, atol=0.01)
    assert np.abs(d.points[[0, -2, -1], 4]).max() <= (v**2 / radius) * (v / radius) * DT
    yaw = sign * v / radius * TIMES  # 0 -> 3.2 rad: F = 3 passes the model's yaw on, F = 2 wraps at pi
    np.testing.assert_allclose(wrap(d.points[:, 2] - yaw), 0.0, atol=2e-3)
    if f == 3:
        np.testing.assert_allclose(d.points[:, 2], yaw, atol=1e-6)
    assert_matches(d.points, reference(circle(radius, v, f=f, left=left), DT, TIMES))


def test_constant_acceleration_from_rest_and_moving():
    t = np.concatenate([[0.0], TIMES])  # includes the origin
    for v0, a in [(0.0, 3.0), (5.0, 2.0), (30.0, -4.0)]:
        d = decode_trajectory(modes(straight(v0, a)), None, DT, t)
        assert d.ok, d.problem
        np.testing.assert_allclose(d.points[:, 3], np.abs(v0 + a * t), atol=2e-3)
        np.testing.assert_allclose(d.points[:, 4], a, atol=3e-2)
        assert d.points[0, 0] == 0.0 and d.points[0, 1] == 0.0 and d.points[0, 2] == 0.0  # the origin


def test_matches_reference_on_20hz_grid():
    """An S-curve with braking, resampled at 20 Hz from t = 0 to the horizon, both F = 2 and F = 3."""
    t = TIMES
    x = 12.0 * t - 0.6 * t**2
    y = 2.0 * np.sin(0.8 * t) * t / 3
    yaw = np.arctan2(np.gradient(y, t), np.gradient(x, t))
    grid = np.arange(0, 129) * 0.05  # float64 on purpose: host times are converted
    for f in (2, 3):
        mode = np.stack([x, y, yaw], axis=1)[:, :f].astype(np.float32)
        d = decode_trajectory(modes(mode, mode + 1), scores(0.9, 0.1), DT, grid)
        assert d.ok, d.problem
        assert d.points.shape == (129, 6)
        assert_matches(d.points, reference(mode, DT, grid))
        # positions are plain np.interp of the waypoints with the origin first
        np.testing.assert_allclose(d.points[:, 0], np.interp(grid, np.r_[0, t], np.r_[0, x]), atol=1e-4)
        np.testing.assert_allclose(d.points[:, 1], np.interp(grid, np.r_[0, t], np.r_[0, y]), atol=1e-4)


def test_derived_yaw_interpolates_across_the_pi_wrap():
    """F = 2 on a circle past pi: the heading wraps, and 20 Hz points between samples stay on the short arc."""
    mode = circle(10.0, 10.0, f=2)  # yaw rate 1 rad/s: passes pi at 3.14 s
    grid = np.arange(1, 129) * 0.05
    d = decode_trajectory(modes(mode), None, DT, grid)
    assert d.ok, d.problem
    assert_matches(d.points, reference(mode, DT, grid))
    np.testing.assert_allclose(wrap(d.points[:, 2] - grid), 0.0, atol=5e-3)


def test_standing_vehicle_has_no_curvature():
    rng = np.random.default_rng(0)
    mode = (rng.normal(0, 1e-3, (T, 3))).astype(np.float32)  # jitter around the origin
    d = decode_trajectory(modes(mode), None, DT, max_curvature=0.01)
    assert d.ok, d.problem
    assert (d.points[:, 3] < 0.5).all()
    assert (d.points[:, 5] == 0).all()


def test_many_points_threaded_path_matches_reference_and_first_index():
    """5000 requested times: the CPU twin splits them across threads; first offending index must be exact."""
    mode = straight(50.0, 2.0)  # speed 50 -> 62.8 m/s, crosses 60 at t = 5 s
    grid = np.linspace(0, T * DT, 5000)
    d = decode_trajectory(modes(mode), None, DT, grid.astype(np.float32))
    ref = reference(mode, DT, grid.astype(np.float32).astype(np.float64))
    assert_matches(d.points, ref)
    assert d.verdict == SPEED
    assert d.first[SPEED] == int(np.argmax(d.points[:, 3] > 60.0))
    assert abs(grid[d.first[SPEED]] - 5.0) < 0.01


# --- mode choice ---------------------------------------------------------------------------------


def test_best_mode_by_score_ties_to_lowest_index():
    m = [straight(10.0) + np.float32([0, k, 0]) for k in range(4)]  # lateral offsets make the modes distinguishable
    d = decode_trajectory(modes(*m), scores(0.1, 0.7, 0.7, 0.2), DT)
    assert d.mode == 1 and d.score == pytest.approx(0.7)
    assert_matches(d.points, reference(m[1].astype(np.float32), DT, TIMES))
    assert decode_trajectory(modes(*m), scores(-3.0, -1.0, -2.0, -1.5), DT).mode == 1
    assert decode_trajectory(modes(*m), scores(5.0, 5.0, 5.0, 5.0), DT).mode == 0
    assert decode_trajectory(modes(*m), None, DT).mode == 0


def test_batched_input_selects_the_batch_item():
    b0 = modes(straight(10.0), straight(20.0))
    b1 = modes(circle(30.0, 8.0), straight(5.0))
    traj = np.stack([b0, b1])
    sc = np.array([[0.9, 0.1], [0.3, 0.6]], dtype=np.float32)
    d = decode_trajectory(traj, sc, DT, batch=1)
    assert d.mode == 1
    assert_matches(d.points, reference(b1[1], DT, TIMES))
    assert decode_trajectory(traj, sc, DT, batch=0).mode == 0


def test_writes_into_caller_buffers():
    out = np.full((T, 6), -1.0, dtype=np.float32)
    result = new_result_buffer()
    d = decode_trajectory(modes(straight(10.0)), scores(1.0), DT, out=out, result=result)
    assert d.points is out
    np.testing.assert_allclose(out[:, 3], 10.0, rtol=1e-5)
    assert result.shape == (RESULT_WORDS,) and result[0] == 0  # mode word


def test_empty_request_and_boundary_times():
    d = decode_trajectory(modes(straight(10.0)), None, DT, np.zeros(0, dtype=np.float32))
    assert d.points.shape == (0, 6) and d.ok
    d = decode_trajectory(modes(straight(10.0)), None, DT, [0.0, T * DT])  # origin and horizon
    np.testing.assert_allclose(d.points[:, 0], [0.0, 10.0 * T * DT], rtol=1e-6)
    d = decode_trajectory(modes(straight(10.0)), None, DT, np.arange(1, 65) * 0.1)  # ends at 6.4000000000000004
    assert d.ok


# --- verdicts ------------------------------------------------------------------------------------


def test_nan_in_chosen_mode_is_nonfinite():
    bad = straight(10.0)
    bad[10, 1] = np.nan
    d = decode_trajectory(modes(straight(8.0), bad), scores(0.2, 0.8), DT)
    assert d.mode == 1
    assert d.verdict & NONFINITE and not d.ok
    assert d.problem is not None and d.problem.startswith("non-finite trajectory (mode 1, waypoint 10)")
    assert NONFINITE in d.first and d.first[NONFINITE] <= 10
    assert np.isfinite(d.points[:5]).all()  # the damage stays local


def test_nan_out_of_reach_of_the_requested_times_still_fails():
    bad = straight(10.0)
    bad[-1, 2] = np.inf  # yaw of the last waypoint; only the first 3.2 s are requested
    d = decode_trajectory(modes(bad), None, DT, TIMES[:32])
    assert np.isfinite(d.points).all()
    assert d.verdict == NONFINITE and NONFINITE not in d.first
    assert d.problem == "non-finite trajectory (mode 0, waypoint 63)"


def test_nan_only_in_a_non_chosen_mode_is_plausible():
    bad = straight(10.0)
    bad[:, 0] = np.nan
    d = decode_trajectory(modes(bad, straight(12.0)), scores(0.1, 0.9), DT)
    assert d.mode == 1 and d.ok and d.problem is None


def test_non_finite_score():
    m = modes(straight(8.0), straight(9.0), straight(10.0))
    d = decode_trajectory(m, scores(0.2, 0.5, np.nan), DT)
    assert d.verdict == NONFINITE
    assert d.mode == 1  # best finite mode, still decoded for the log
    assert d.problem == "non-finite score (mode 2)"
    d = decode_trajectory(m, scores(np.inf, 0.5, 0.1), DT)
    assert d.verdict == NONFINITE and d.problem == "non-finite score (mode 0)"


def test_curvature_limit():
    d = decode_trajectory(modes(circle(2.0, 5.0)), None, DT)
    assert d.verdict & CURVATURE
    assert d.first[CURVATURE] == 0
    assert d.problem is not None and re.fullmatch(r"curvature 0\.5\d 1/m > 0\.3 at t=0\.1 s", d.problem)
    d = decode_trajectory(modes(circle(2.5, 4.0, left=False)), None, DT)
    assert d.verdict == CURVATURE, d.problem
    assert d.problem == "curvature -0.40 1/m < -0.3 at t=0.1 s"
    assert decode_trajectory(modes(circle(2.5, 4.0)), None, DT, max_curvature=0.5).ok


def test_accel_limit():
    d = decode_trajectory(modes(straight(40.0, -10.0)), None, DT)
    assert d.verdict == ACCEL, d.problem
    assert d.first[ACCEL] == 0
    assert d.problem == "acceleration -10.00 m/s² < -8 at t=0.1 s"
    d = decode_trajectory(modes(straight(0.0, 9.0, t=TIMES[:20])), None, DT)
    assert d.verdict == ACCEL and d.problem == "acceleration 9.00 m/s² > 8 at t=0.1 s"
    assert decode_trajectory(modes(straight(40.0, -10.0)), None, DT, max_accel=12.0).ok


def test_speed_limit():
    d = decode_trajectory(modes(straight(70.0)), None, DT)
    assert d.verdict == SPEED
    assert d.problem == "speed 70.00 m/s > 60 at t=0.1 s"
    assert decode_trajectory(modes(straight(70.0)), None, DT, max_speed=80.0).ok


def test_several_flags_are_all_reported():
    d = decode_trajectory(modes(circle(2.0, 70.0, f=2)), None, DT, max_accel=1e6)
    assert d.verdict == CURVATURE | SPEED
    assert d.problem is not None and "curvature" in d.problem and "speed" in d.problem


# --- bad input -----------------------------------------------------------------------------------


class FakeDeviceArray:
    """Looks like a CUDA array to the binding (``__cuda_array_interface__``, version 3).

    No GPU exists on this machine, so these only exercise argument checks and the "CUDA
    unavailable" error path: the pointers are made up and must never be dereferenced (tests that
    would launch are skipped where CUDA is available).
    """

    _next = itertools.count(1)

    def __init__(self, shape: tuple[int, ...], typestr: str = "<f4", readonly: bool = False):
        ptr = 0x7F00_0000_0000 + next(self._next) * 0x100_0000  # distinct, never-overlapping fakes
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, readonly),
                                         "strides": None, "version": 3}


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


GOOD = modes(straight(10.0), straight(12.0))


def _call(**kw):
    args = {"trajectory": GOOD, "score": scores(0.1, 0.9), "dt": DT}
    args.update(kw)
    return decode_trajectory(args.pop("trajectory"), args.pop("score"), args.pop("dt"), **args)


BAD_INPUTS = {
    "trajectory float64": ("trajectory", {"trajectory": GOOD.astype(np.float64)}),
    "trajectory 2-D": ("trajectory", {"trajectory": GOOD[0]}),
    "trajectory F=1": ("trajectory", {"trajectory": GOOD[:, :, :1].copy()}),
    "trajectory T=1": ("trajectory", {"trajectory": GOOD[:, :1].copy()}),
    "trajectory K=0": ("trajectory", {"trajectory": GOOD[:0].copy(), "score": scores()}),
    "trajectory strided": ("trajectory", {"trajectory": GOOD[:, ::2]}),
    "trajectory list": ("trajectory", {"trajectory": GOOD.tolist()}),
    "score float64": ("score", {"score": np.array([0.1, 0.9])}),
    "score length": ("score", {"score": scores(0.1, 0.9, 0.3)}),
    "score 2-D": ("score", {"score": scores(0.1, 0.9)[None]}),
    "times beyond horizon": ("times", {"times": [1.0, 7.0]}),
    "times negative": ("times", {"times": [-0.1, 1.0]}),
    "times NaN": ("times", {"times": [np.nan]}),
    "times 2-D": ("times", {"times": np.ones((2, 2))}),
    "times complex": ("times", {"times": np.ones(3, dtype=complex)}),
    "dt zero": ("dt", {"dt": 0.0}),
    "dt negative": ("dt", {"dt": -0.1}),
    "dt NaN": ("dt", {"dt": float("nan")}),
    "dt text": ("dt", {"dt": "fast"}),
    "max_curvature zero": ("max_curvature", {"max_curvature": 0.0}),
    "max_accel negative": ("max_accel", {"max_accel": -1.0}),
    "max_speed NaN": ("max_speed", {"max_speed": float("nan")}),
    "out shape": ("out", {"out": np.zeros((T, 5), dtype=np.float32)}),
    "out rows": ("out", {"out": np.zeros((T + 1, 6), dtype=np.float32)}),
    "out dtype": ("out", {"out": np.zeros((T, 6), dtype=np.float64)}),
    "out Fortran order": ("out", {"out": np.zeros((T, 6), dtype=np.float32, order="F")}),
    "out read-only": ("out", {"out": _readonly(np.zeros((T, 6), dtype=np.float32))}),
    "out aliases trajectory": ("out", {"out": GOOD.reshape(-1)[: T * 6].reshape(T, 6)}),
    "result shape": ("result", {"result": np.zeros(4, dtype=np.int32)}),
    "result dtype": ("result", {"result": np.zeros(RESULT_WORDS, dtype=np.float32)}),
    "batch out of range": ("batch", {"batch": 1}),
    "batch not int": ("batch", {"batch": 0.5}),
    "host trajectory, device score": ("score", {"score": FakeDeviceArray((2,))}),
    "host trajectory, device out": ("out", {"out": FakeDeviceArray((T, 6))}),
    "device trajectory, host score": ("score", {"trajectory": FakeDeviceArray((2, T, 3)),
                                                "out": FakeDeviceArray((T, 6)),
                                                "result": FakeDeviceArray((RESULT_WORDS,), "<i4")}),
    "device trajectory, no out": ("out", {"trajectory": FakeDeviceArray((2, T, 3)),
                                          "score": FakeDeviceArray((2,))}),
    "device trajectory float64": ("trajectory", {"trajectory": FakeDeviceArray((2, T, 3), "<f8"),
                                                 "score": FakeDeviceArray((2,)),
                                                 "out": FakeDeviceArray((T, 6)),
                                                 "result": FakeDeviceArray((RESULT_WORDS,), "<i4")}),
    "device out read-only": ("out", {"trajectory": FakeDeviceArray((2, T, 3)), "score": FakeDeviceArray((2,)),
                                     "out": FakeDeviceArray((T, 6), readonly=True),
                                     "result": FakeDeviceArray((RESULT_WORDS,), "<i4")}),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_argument(case):
    name, kw = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=rf"^{name}:"):
        _call(**kw)


def test_device_arrays_without_cuda_raise_runtime_error():
    # No GPU exists on this machine: the fake device arrays only check that a well-formed device call
    # reports why CUDA cannot run, instead of crashing or falling back silently.
    if kernels.cuda_available():
        pytest.skip("a CUDA device is present: the fake pointers would be launched on")
    traj = FakeDeviceArray((2, T, 3))
    with pytest.raises(RuntimeError, match=r"^decode_trajectory: CUDA unavailable: .+") as info:
        decode_trajectory(traj, FakeDeviceArray((2,)), DT, FakeDeviceArray((8,)),
                          out=FakeDeviceArray((8, 6)), result=FakeDeviceArray((RESULT_WORDS,), "<i4"))
    assert kernels.cuda_status().removeprefix("CUDA unavailable: ") in str(info.value)


# ---- CUDA kernel vs CPU twin (GPU machines) -------------------------------------------------------
try:
    import cupy as _cupy
except ImportError:  # only GPU machines have it
    _cupy = None


@pytest.mark.skipif(_cupy is None, reason="CuPy is not installed")
@pytest.mark.skipif(not kernels.cuda_available(), reason=f"needs a CUDA device: {kernels.cuda_status()}")
@pytest.mark.parametrize("poison", [None, "nan", "sharp"])
def test_cuda_matches_cpu_twin(poison):
    from vla.kernels.decode import RESULT_WORDS, decode_trajectory

    rng = np.random.default_rng(3)
    t = 0.1 * np.arange(1, 65)
    k = 4
    traj = np.zeros((k, 64, 3), np.float32)
    for m in range(k):
        v, w = 8.0 + m, 0.05 * (m - 1.5)
        traj[m, :, 0] = v * t + 0.01 * rng.standard_normal(64)
        traj[m, :, 1] = 0.5 * w * v * t**2
        traj[m, :, 2] = w * t
    score = rng.random(k).astype(np.float32)
    best = int(np.argmax(score))
    if poison == "nan":
        traj[best, 20, 1] = np.nan
    elif poison == "sharp":
        traj[best, 30:, 1] += 3.0
    times = np.linspace(0.05, 6.4, 128).astype(np.float32)
    cpu = decode_trajectory(traj, score, 0.1, times)
    out_d = _cupy.empty((128, 6), _cupy.float32)
    res_d = _cupy.empty(RESULT_WORDS, _cupy.int32)
    stream = _cupy.cuda.Stream(non_blocking=True)
    pending = decode_trajectory(_cupy.asarray(traj), _cupy.asarray(score), 0.1, _cupy.asarray(times),
                                out=out_d, result=res_d, stream=stream)
    stream.synchronize()
    gpu = pending.read(res_d.get(), out_d.get())
    assert (gpu.mode, gpu.verdict) == (cpu.mode, cpu.verdict)
    np.testing.assert_allclose(gpu.points, cpu.points, rtol=1e-5, atol=1e-4, equal_nan=True)


def test_dlpack_inputs():
    torch = pytest.importorskip("torch")
    from vla.kernels.decode import decode_trajectory

    t = 0.1 * np.arange(1, 65, dtype=np.float32)
    traj = np.stack([10 * t, 0 * t, 0 * t], axis=-1)[None].astype(np.float32)
    got = decode_trajectory(torch.from_numpy(traj), torch.ones(1), 0.1)
    want = decode_trajectory(traj, np.ones(1, np.float32), 0.1)
    np.testing.assert_array_equal(got.points, want.points)


# --- the loop's prepared decoder ------------------------------------------------------------------
def test_trajectory_decoder_equals_decode_trajectory():
    decoder = kernels.TrajectoryDecoder(DT, T, max_curvature=0.2, max_accel=6.0, max_speed=40.0)
    cases = [
        (modes(straight(10.0), circle(30.0, 12.0)), scores(0.1, 0.9)),  # plausible, mode 1
        (modes(circle(3.0, 12.0)), None),  # too tight a turn: CURVATURE
        (modes(straight(50.0)), scores(0.5)),  # SPEED
    ]
    nan_mode = straight(5.0)
    nan_mode[7, 1] = np.nan
    cases.append((modes(nan_mode), scores(1.0)))
    for traj, score in cases:
        want = decode_trajectory(traj, score, DT, max_curvature=0.2, max_accel=6.0, max_speed=40.0)
        got = decoder(traj, score)
        assert (got.mode, got.verdict, got.problem, got.first) == (want.mode, want.verdict, want.problem, want.first)
        assert got.score == want.score or (math.isnan(got.score) and math.isnan(want.score))
        assert np.array_equal(got.points, want.points, equal_nan=True)
        assert got.points is decoder.points  # written in place, nothing allocated per call


def test_trajectory_decoder_rejects_what_it_was_not_set_up_for():
    decoder = kernels.TrajectoryDecoder(DT, T)
    with pytest.raises(ValueError, match="trajectory: 32 waypoints, but this decoder was set up for 64"):
        decoder(modes(straight(5.0, t=TIMES[:32])), None)
    with pytest.raises(ValueError, match="trajectory: expected float32"):
        decoder(straight(5.0)[None].astype(np.float64), None)
    with pytest.raises(ValueError, match="must be > 0"):
        kernels.TrajectoryDecoder(DT, T, max_speed=0.0)
