"""integrate_controls (C++ twin): (accel, curvature) controls into (x, y, yaw, speed) poses.

The reference below is the documented scheme (kernels/src/decode.h) written again in float64
NumPy; the analytic cases (straight line, constant acceleration, circle, braking to a stop) check
the scheme itself against closed forms. The CUDA kernel shares decode.h's arithmetic with the twin;
without a GPU it is only compiled (by the build) and its error path is tested here.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import vla.kernels as kernels
from vla.kernels.decode import (
    CONTROL_FIELDS,
    NONFINITE,
    POSE_COLUMNS,
    decode_trajectory,
    integrate_controls,
)

DT = 0.1
T = 64
TIMES = DT * np.arange(1, T + 1)


def reference(controls: np.ndarray, v0: float, dt: float) -> np.ndarray:
    """The documented integration in float64: [K, T, 4] x, y, yaw, speed."""
    c = np.asarray(controls, dtype=np.float64)
    k_modes, steps, _ = c.shape
    out = np.zeros((k_modes, steps, 4))
    x, y, yaw, v = np.zeros(k_modes), np.zeros(k_modes), np.zeros(k_modes), np.full(k_modes, float(v0))
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(steps):
            a, curv = c[:, i, 0], c[:, i, 1]
            raw = v + a * dt
            v_next = np.where((raw < 0) & np.isfinite(raw), 0.0, raw)  # NaN and -inf pass through
            v_mid = 0.5 * (v + v_next)
            dyaw = curv * v_mid * dt
            yaw_mid = yaw + 0.5 * dyaw
            x = x + v_mid * dt * np.cos(yaw_mid)
            y = y + v_mid * dt * np.sin(yaw_mid)
            yaw, v = yaw + dyaw, v_next
            out[:, i] = np.stack([x, y, yaw, v], axis=1)
    return out


def controls_of(accel, curvature, k: int = 1, steps: int = T) -> np.ndarray:
    """[k, steps, 2] float32 from scalars or per-step arrays (broadcast)."""
    c = np.zeros((k, steps, 2), dtype=np.float32)
    c[..., 0] = accel
    c[..., 1] = curvature
    return c


def assert_close(got: np.ndarray, want: np.ndarray, atol: float = 1e-4, rtol: float = 1e-5) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want)
    bad = err > atol + rtol * np.abs(want)
    assert not bad.any(), f"max error per column {err.reshape(-1, 4).max(axis=0)} at {np.argwhere(bad)[:3].tolist()}"


def test_constants():
    assert CONTROL_FIELDS == ("accel", "curvature")
    assert POSE_COLUMNS == ("x", "y", "yaw", "speed")


# --- analytic cases -------------------------------------------------------------------------------


def test_straight_constant_speed():
    poses = integrate_controls(controls_of(0.0, 0.0, k=2), 12.5, DT)
    assert poses.shape == (2, T, 4) and poses.dtype == np.float32
    for k in range(2):
        np.testing.assert_allclose(poses[k, :, 0], 12.5 * TIMES, rtol=1e-5)
        assert not poses[k, :, 1:3].any()  # no lateral motion, no heading change: exactly 0
        assert (poses[k, :, 3] == 12.5).all()


@pytest.mark.parametrize(("v0", "a"), [(0.0, 2.0), (8.0, 1.5), (20.0, -1.0)])
def test_constant_acceleration(v0, a):
    poses = integrate_controls(controls_of(a, 0.0), v0, DT)[0]
    # The midpoint speed is the exact mean over a step while the speed stays above 0.
    np.testing.assert_allclose(poses[:, 0], v0 * TIMES + 0.5 * a * TIMES**2, rtol=2e-6, atol=1e-5)
    np.testing.assert_allclose(poses[:, 3], v0 + a * TIMES, rtol=2e-6, atol=1e-5)
    assert not poses[:, 1:3].any()


@pytest.mark.parametrize("curvature", [0.05, -0.05, 0.2])
def test_constant_curvature_is_a_circle(curvature):
    v = 10.0
    poses = integrate_controls(controls_of(0.0, curvature), v, DT)[0].astype(np.float64)
    r = 1.0 / curvature
    h = curvature * v * DT  # heading change per step
    # The vertices lie on a circle through the origin, centre (0, R'), R' = R (h/2) / sin(h/2)
    # (decode.h); within R h²/12 of the circle of radius R itself.
    r_poly = r * (h / 2) / np.sin(h / 2)
    dist = np.hypot(poses[:, 0], poses[:, 1] - r_poly)
    np.testing.assert_allclose(dist, abs(r_poly), rtol=1e-5)
    dist_true = np.hypot(poses[:, 0], poses[:, 1] - r)
    assert np.abs(dist_true - abs(r)).max() < abs(r) * h**2 / 12 + 1e-4
    np.testing.assert_allclose(poses[:, 2], curvature * v * TIMES, rtol=1e-5)
    assert (poses[:, 3] == v).all()
    assert np.sign(poses[5, 1]) == np.sign(curvature)  # positive curvature turns left (+y)


@pytest.mark.parametrize("a", [-4.0, -3.0])  # stops on a step boundary (t = 2.5 s) / inside one (3.33 s)
def test_braking_to_a_standstill_stays_stopped(a):
    v0 = 10.0
    controls = controls_of(a, 0.1)  # a steering wheel turned while stopping: no heading change once stopped
    poses = integrate_controls(controls, v0, DT)[0]
    t_stop = v0 / -a
    stopped = t_stop + 1e-6 < TIMES
    assert (poses[stopped, 3] == 0.0).all()  # clamped to exactly 0
    assert (poses[:, 3] >= 0.0).all()  # never negative
    last = np.argmax(stopped)
    after = poses[last:]
    assert (after[:, :3] == after[0, :3]).all()  # position and heading frozen
    assert_close(poses[None], reference(controls, v0, DT))
    if a == -4.0:  # stop on a boundary: the distance is exact, v0² / (2|a|) along the arc
        arc = np.hypot(np.diff(poses[: last + 1, 0], prepend=0.0), np.diff(poses[: last + 1, 1], prepend=0.0)).sum()
        assert abs(arc - v0**2 / (2 * -a)) < 1e-2


def test_braking_from_a_standstill_stays_at_the_origin():
    poses = integrate_controls(controls_of(-1.0, 0.3), 0.0, DT)[0]
    assert not poses.any()


# --- against the reference ------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "steps", "v0"), [(1, 64, 0.0), (3, 64, 12.0), (6, 64, 15.0), (4, 7, 1.0),
                                                (2, 1, 5.0), (16, 100, 8.0)])
def test_random_controls_match_reference(k, steps, v0):
    rng = np.random.default_rng(k * 1000 + steps)
    controls = np.empty((k, steps, 2), dtype=np.float32)
    # Mode means from hard braking to accelerating: the first modes stop, and then stand while
    # their controls keep asking for more braking or a little acceleration.
    mean = np.linspace(-3.0, 1.0, k) if k > 1 else np.array([-1.0])
    controls[..., 0] = mean[:, None] + 2.0 * rng.standard_normal((k, steps))
    controls[..., 1] = 0.05 * rng.standard_normal((k, steps))
    want = reference(controls, v0, DT)
    if steps > 1:
        assert (want[..., 3] == 0).any(), "the case should exercise the standstill clamp"
    # float32 accumulation over up to 100 steps of up to ~3 m each
    assert_close(integrate_controls(controls, v0, DT), want, atol=5e-4, rtol=2e-5)


def test_batch_of_one_and_caller_buffer():
    rng = np.random.default_rng(5)
    controls = (rng.standard_normal((3, T, 2)) * [1.0, 0.02]).astype(np.float32)
    want = integrate_controls(controls, 7.0, DT)
    out = np.full((3, T, 4), np.nan, dtype=np.float32)
    got = integrate_controls(controls[None], 7.0, DT, out=out)
    assert got is out
    assert np.array_equal(out, want)


def test_modes_are_independent_and_threaded_path_agrees():
    # Enough modes for the twin to split them across threads; each mode alone must give the same bits.
    rng = np.random.default_rng(11)
    k = 2000
    controls = np.empty((k, T, 2), dtype=np.float32)
    controls[..., 0] = rng.standard_normal((k, T))
    controls[..., 1] = 0.03 * rng.standard_normal((k, T))
    v0 = 9.0
    many = integrate_controls(controls, v0, DT)
    for i in (0, 1, 999, k - 1):
        assert np.array_equal(many[i], integrate_controls(controls[i : i + 1].copy(), v0, DT)[0])
    assert_close(many[:50], reference(controls[:50], v0, DT), atol=5e-4, rtol=2e-5)


# --- non-finite inputs ----------------------------------------------------------------------------


def _smooth(k: int = 3) -> np.ndarray:
    c = controls_of(0.5 * np.sin(TIMES), 0.02 * np.cos(0.7 * TIMES), k=k)
    c[:, :, 0] += np.arange(k, dtype=np.float32)[:, None] * 0.2
    return c


@pytest.mark.parametrize(("channel", "value"), [(0, np.nan), (0, -np.inf), (0, np.inf), (1, np.nan), (1, np.inf)])
def test_non_finite_control_propagates_to_every_later_row(channel, value):
    clean = _smooth()
    bad = clean.copy()
    mode, step = 1, 20
    bad[mode, step, channel] = value
    want = integrate_controls(clean, 6.0, DT)
    got = integrate_controls(bad, 6.0, DT)
    assert np.array_equal(got[[0, 2]], want[[0, 2]])  # other modes untouched
    assert np.array_equal(got[mode, :step], want[mode, :step])  # earlier rows untouched
    later = got[mode, step:]
    if channel == 0:  # the speed itself: every column, from this step on
        assert not np.isfinite(later).any()
    else:  # curvature: the pose, but not the speed (which does not depend on it)
        assert not np.isfinite(later[:, :3]).any()
        assert np.array_equal(later[:, 3], want[mode, step:, 3])


def test_infinite_curvature_while_standing_is_not_hidden():
    c = controls_of(0.0, 0.0)
    c[0, 3, 1] = np.inf  # inf * 0 m travelled: NaN, not "no heading change"
    poses = integrate_controls(c, 0.0, DT)[0]
    assert not poses[:3].any()
    assert not np.isfinite(poses[3:, :3]).any()


def test_decode_after_a_nan_control_says_nonfinite():
    c = _smooth(1)
    c[0, 30, 0] = np.nan
    d = decode_trajectory(integrate_controls(c, 6.0, DT), None, DT)
    assert d.verdict & NONFINITE
    assert d.problem is not None and "waypoint 30" in d.problem


# --- chained with decode_trajectory -----------------------------------------------------------------


def test_integrate_then_decode_speed_matches_integrated_speed():
    controls = _smooth(3)
    score = np.array([0.2, 0.5, 0.3], dtype=np.float32)
    poses = integrate_controls(controls, 8.0, DT)
    d = decode_trajectory(poses, score, DT)
    assert d.ok, d.problem
    assert d.mode == 1
    # Finite differences of the integrated positions recover the integrated speed: the midpoint steps
    # are second-order accurate, as are the decode's stencils.
    np.testing.assert_allclose(d.points[:, 3], poses[1, :, 3], atol=5e-3)
    np.testing.assert_allclose(d.points[:, :2], poses[1, :, :2], atol=1e-4)
    np.testing.assert_allclose(d.points[:, 2], poses[1, :, 2], atol=1e-5)  # F = 4: yaw as given
    # ... and the longitudinal acceleration the controls asked for (step i's accel ends at row i).
    a = controls[1, :, 0]
    np.testing.assert_allclose(d.points[1:-1, 4], 0.5 * (a[1:-1] + a[2:]), atol=2e-2)


# --- bad input ------------------------------------------------------------------------------------


class FakeDeviceArray:
    """Looks like a CUDA array to the binding; the made-up pointers are never dereferenced (no GPU)."""

    _next = itertools.count(1)

    def __init__(self, shape: tuple[int, ...], typestr: str = "<f4", readonly: bool = False):
        ptr = 0x7E00_0000_0000 + next(self._next) * 0x100_0000
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, readonly),
                                         "strides": None, "version": 3}


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


GOOD = _smooth(2)
_SHARED = np.zeros(2 * T * 4, dtype=np.float32)

BAD_INPUTS = {
    "controls float64": ("controls", {"controls": GOOD.astype(np.float64)}),
    "controls 2-D": ("controls", {"controls": GOOD[0]}),
    "controls 3 channels": ("controls", {"controls": np.zeros((2, T, 3), np.float32)}),
    "controls batch of 2": ("controls", {"controls": np.stack([GOOD, GOOD])}),
    "controls K=0": ("controls", {"controls": GOOD[:0].copy()}),
    "controls T=0": ("controls", {"controls": GOOD[:, :0].copy()}),
    "controls strided": ("controls", {"controls": GOOD[:, ::2]}),
    "controls list": ("controls", {"controls": GOOD.tolist()}),
    "v0 negative": ("v0", {"v0": -0.1}),
    "v0 NaN": ("v0", {"v0": float("nan")}),
    "v0 inf": ("v0", {"v0": float("inf")}),
    "v0 overflows float32": ("v0", {"v0": 1e300}),
    "v0 text": ("v0", {"v0": "fast"}),
    "dt zero": ("dt", {"dt": 0.0}),
    "dt negative": ("dt", {"dt": -0.1}),
    "dt NaN": ("dt", {"dt": float("nan")}),
    "dt None": ("dt", {"dt": None}),
    "out shape": ("out", {"out": np.zeros((2, T, 6), np.float32)}),
    "out modes": ("out", {"out": np.zeros((3, T, 4), np.float32)}),
    "out dtype": ("out", {"out": np.zeros((2, T, 4), np.float64)}),
    "out Fortran order": ("out", {"out": np.zeros((2, T, 4), np.float32, order="F")}),
    "out read-only": ("out", {"out": _readonly(np.zeros((2, T, 4), np.float32))}),
    "out aliases controls": ("out", {"controls": _SHARED[: 2 * T * 2].reshape(2, T, 2),
                                     "out": _SHARED.reshape(2, T, 4)}),
    "host controls, device out": ("out", {"out": FakeDeviceArray((2, T, 4))}),
    "device controls, host out": ("out", {"controls": FakeDeviceArray((2, T, 2)),
                                          "out": np.zeros((2, T, 4), np.float32)}),
    "device controls, no out": ("out", {"controls": FakeDeviceArray((2, T, 2))}),
    "device controls float64": ("controls", {"controls": FakeDeviceArray((2, T, 2), "<f8"),
                                             "out": FakeDeviceArray((2, T, 4))}),
    "device out read-only": ("out", {"controls": FakeDeviceArray((2, T, 2)),
                                     "out": FakeDeviceArray((2, T, 4), readonly=True)}),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_argument(case):
    name, kw = BAD_INPUTS[case]
    args = {"controls": GOOD, "v0": 5.0, "dt": DT, **kw}
    with pytest.raises(ValueError, match=rf"^{name}: [^\n]+$"):
        integrate_controls(args.pop("controls"), args.pop("v0"), args.pop("dt"), **args)


def test_device_arrays_without_cuda_raise_runtime_error():
    if kernels.cuda_available():
        pytest.skip("a CUDA device is present: the fake pointers would be launched on")
    with pytest.raises(RuntimeError, match=r"^integrate_controls: CUDA unavailable: .+"):
        integrate_controls(FakeDeviceArray((2, T, 2)), 5.0, DT, out=FakeDeviceArray((2, T, 4)))


def test_dlpack_input():
    torch = pytest.importorskip("torch")
    got = integrate_controls(torch.from_numpy(GOOD), 5.0, DT)
    assert np.array_equal(got, integrate_controls(GOOD, 5.0, DT))


# ---- CUDA kernel vs CPU twin (GPU machines) -------------------------------------------------------
try:
    import cupy as _cupy
except ImportError:  # only GPU machines have it
    _cupy = None


@pytest.mark.skipif(_cupy is None, reason="CuPy is not installed")
@pytest.mark.skipif(not kernels.cuda_available(), reason=f"needs a CUDA device: {kernels.cuda_status()}")
def test_cuda_matches_cpu_twin():
    rng = np.random.default_rng(7)
    controls = np.empty((300, T, 2), dtype=np.float32)  # more modes than one block
    controls[..., 0] = 2.0 * rng.standard_normal((300, T))
    controls[..., 1] = 0.05 * rng.standard_normal((300, T))
    controls[5, 10, 0] = np.nan
    cpu = integrate_controls(controls, 9.0, DT)
    out_d = _cupy.empty((300, T, 4), _cupy.float32)
    stream = _cupy.cuda.Stream(non_blocking=True)
    assert integrate_controls(_cupy.asarray(controls), 9.0, DT, out=out_d, stream=stream) is out_d
    stream.synchronize()
    np.testing.assert_allclose(out_d.get(), cpu, rtol=1e-5, atol=1e-4, equal_nan=True)
