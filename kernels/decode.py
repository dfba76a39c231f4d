"""``decode_trajectory``: the engine's K candidate trajectories in, one checked, publishable trajectory out.

One pass (C++ on the host, CUDA on the device, same arithmetic from ``kernels/src/decode.h``):

* pick the best mode by score (ties → lowest index);
* resample it onto the publish ``times`` (linear, with the implicit origin (0, 0, 0) at t = 0);
* derive speed, longitudinal acceleration and curvature from finite differences on the waypoints;
* check them: any non-finite value (score, any channel of the chosen mode, any output) →
  ``NONFINITE``; ``|curvature| > max_curvature`` while moving (speed ≥ 0.5 m/s) → ``CURVATURE``;
  ``|accel| > max_accel`` → ``ACCEL``; ``speed > max_speed`` → ``SPEED``.

Host (NumPy) inputs return a finished :class:`DecodedTrajectory`; the GIL is released while the
C++ twin runs. Device inputs (``__cuda_array_interface__``: CuPy, PyTorch, Numba, ...) enqueue the
kernel on ``stream`` and return a :class:`DeviceDecode` at once, without synchronising; see its
docstring for how to read the result.

Models whose action head outputs controls rather than poses (per step: acceleration, curvature, as
NVIDIA's Alpamayo does) go through :func:`integrate_controls` first; its [K, T, 4] poses
(x, y, yaw, speed) are a ``trajectory`` for :func:`decode_trajectory`, on the host or the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike

from . import _core
from .arrays import as_kernel_array

NONFINITE, CURVATURE, ACCEL, SPEED = 1, 2, 4, 8
# Device path only: a device ``times`` value outside [0, T*dt] (host times raise ValueError instead;
# checking device times on the host would need a synchronisation). The kernel clamps such times.
TIMES = 16
FLAG_NAMES = {NONFINITE: "NONFINITE", CURVATURE: "CURVATURE", ACCEL: "ACCEL", SPEED: "SPEED", TIMES: "TIMES"}
#: The plausibility limits, by flag: (argument name, unit). A caller that lets its user relax the
#: limits (a bring-up mode) needs to know which limit a trajectory broke, not only that it did.
LIMITS = {CURVATURE: ("max_curvature", "1/m"), ACCEL: ("max_accel", "m/s²"), SPEED: ("max_speed", "m/s")}
LIMIT_FLAGS = CURVATURE | ACCEL | SPEED

COLUMNS = ("x", "y", "yaw", "speed", "accel", "curvature")
#: :func:`integrate_controls`' input channels (m/s², 1/m, positive = left) and output columns.
CONTROL_FIELDS = ("accel", "curvature")
POSE_COLUMNS = ("x", "y", "yaw", "speed")
assert len(POSE_COLUMNS) == int(_core.INTEGRATE_POSE_COLUMNS), "POSE_COLUMNS out of step with decode.h"
MIN_SPEED = float(_core.DECODE_MIN_SPEED)  # m/s: below it curvature is 0 and not checked
RESULT_WORDS = int(_core.DECODE_RESULT_WORDS)

_N_FLAGS = 5
# Mirror of ``struct DecodeResult`` in decode.h (20 little-endian 4-byte words).
RESULT_DTYPE = np.dtype(
    [
        ("mode", "<i4"),
        ("score", "<f4"),
        ("verdict", "<u4"),
        ("bad_score", "<i4"),
        ("bad_waypoint", "<i4"),
        ("first", "<i4", (_N_FLAGS,)),
        ("value", "<f4", (_N_FLAGS,)),
        ("time", "<f4", (_N_FLAGS,)),
    ]
)
assert RESULT_DTYPE.itemsize == 4 * RESULT_WORDS, "RESULT_DTYPE out of step with decode.h"


@dataclass(frozen=True)
class LimitBreach:
    """One plausibility limit a trajectory broke, at its first offending output row.

    ``limit`` is the argument's name (``max_curvature``, ``max_accel``, ``max_speed``), ``bound``
    its value, ``value`` the signed value that broke it at ``time`` s, and ``text`` the same as the
    matching part of :attr:`DecodedTrajectory.problem` ("curvature 0.52 1/m > 0.3 at t=1.2 s").
    """

    flag: int
    limit: str
    unit: str
    value: float
    bound: float
    time: float
    text: str


@dataclass(frozen=True)
class DecodedTrajectory:
    """The chosen mode, resampled and checked.

    ``points`` is [M, 6] float32: x, y, yaw (rad), speed (m/s), longitudinal acceleration (m/s²),
    curvature (1/m, positive = left), one row per requested time. ``verdict`` is 0 when plausible,
    else an OR of the flag bits; ``problem`` says what is wrong in one line (None when plausible);
    ``first`` maps each raised flag to the first output row where it occurs (absent when the flag
    is not tied to a row, e.g. a non-finite score or a NaN in a waypoint no output point uses).
    ``breaches`` lists the plausibility limits broken (curvature, acceleration, speed), in that
    order, so a caller can say which limit and value, or treat them apart from non-finite values.
    """

    mode: int
    score: float  # NaN when no score was given
    points: np.ndarray
    verdict: int
    problem: str | None
    first: dict[int, int] = field(default_factory=dict)
    breaches: tuple[LimitBreach, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the trajectory may be published."""
        return self.verdict == 0

    @property
    def only_limits(self) -> bool:
        """Whether the plausibility limits are all that is wrong: every value finite, so the
        trajectory could be driven if the limits were relaxed."""
        return self.verdict != 0 and not self.verdict & ~LIMIT_FLAGS


@dataclass(frozen=True)
class DeviceDecode:
    """What a device call returns: the kernel is enqueued, nothing has been read back.

    ``points`` and ``result`` are the caller's device arrays ([M, 6] float32 and int32[RESULT_WORDS]).
    They are complete once ``stream`` reaches the kernel. To read the verdict::

        pending = decode_trajectory(traj_d, score_d, dt, out=out_d, result=res_d, stream=s)
        ...                                   # enqueue more work, then
        s.synchronize()                       # or wait on an event recorded after the call
        decoded = pending.read(res_d.get(), out_d.get())   # CuPy; torch: .cpu().numpy()

    Only the 80-byte ``result`` has to come back to decide whether to publish; the points may stay
    on the device (``read(result_host)`` then keeps ``points`` as the device array).
    """

    points: Any
    result: Any
    horizon: float
    max_curvature: float
    max_accel: float
    max_speed: float

    def read(self, result_host: np.ndarray, points_host: np.ndarray | None = None) -> DecodedTrajectory:
        """Build the :class:`DecodedTrajectory` from a host copy of ``result`` (after a sync)."""
        words = np.ascontiguousarray(result_host)
        if words.nbytes != RESULT_DTYPE.itemsize:
            raise ValueError(f"result_host: expected {RESULT_WORDS} 4-byte words, got {words.nbytes} bytes")
        return _decoded(words, self.points if points_host is None else points_host, self.horizon,
                        self.max_curvature, self.max_accel, self.max_speed)


def new_result_buffer() -> np.ndarray:
    """A host ``result`` buffer, int32[RESULT_WORDS] (pass one per loop to avoid an allocation per call)."""
    return np.zeros(RESULT_WORDS, dtype=np.int32)


def _is_device(obj: object) -> bool:
    return obj is not None and hasattr(obj, "__cuda_array_interface__")


def _host_times(times: ArrayLike) -> np.ndarray:
    """Host times as float32: request grids are small and often float64 (np.arange(1, 65) * 0.1)."""
    arr = np.asarray(times)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"times: expected real numbers (seconds), got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _fmt_t(t: float) -> str:
    return f"{round(float(t), 3):g}"


def _over_limit(name: str, value: float, unit: str, limit: float, t: float) -> str:
    bound = f"> {limit:g}" if value >= 0 else f"< -{limit:g}"
    return f"{name} {value:.2f} {unit} {bound} at t={_fmt_t(t)} s"


def _breaches(r: np.void, verdict: int, max_curvature: float, max_accel: float,
              max_speed: float) -> tuple[LimitBreach, ...]:
    """The limits raised in ``verdict``, with the value and time the kernel reported for each."""
    bounds = {CURVATURE: max_curvature, ACCEL: max_accel, SPEED: max_speed}
    out = []
    for flag, (limit, unit) in LIMITS.items():
        if not verdict & flag:
            continue
        bit = flag.bit_length() - 1  # the result's value/time slot of this flag (decode.h: flag_value)
        value, t = float(r["value"][bit]), float(r["time"][bit])
        if flag == SPEED:
            text = f"speed {value:.2f} m/s > {max_speed:g} at t={_fmt_t(t)} s"
        else:
            text = _over_limit("curvature" if flag == CURVATURE else "acceleration", value, unit, bounds[flag], t)
        out.append(LimitBreach(flag, limit, unit, value, bounds[flag], t, text))
    return tuple(out)


def _problem(r: np.void, verdict: int, horizon: float, breaches: tuple[LimitBreach, ...]) -> str | None:
    """One line naming every raised flag, most serious first (``breaches``: ``_breaches``' for ``verdict``)."""
    parts: list[str] = []
    if r["bad_score"] >= 0:
        parts.append(f"non-finite score (mode {int(r['bad_score'])})")
    if r["bad_waypoint"] >= 0:
        parts.append(f"non-finite trajectory (mode {int(r['mode'])}, waypoint {int(r['bad_waypoint'])})")
    if verdict & NONFINITE and not parts:  # finite inputs, non-finite arithmetic (overflow)
        parts.append(f"non-finite output at t={_fmt_t(r['time'][0])} s")
    parts += [b.text for b in breaches]
    if verdict & TIMES:
        parts.append(f"requested time {float(r['value'][4]):g} s outside the trajectory [0, {horizon:g}] s "
                     "(clamped)")
    return "; ".join(parts) if parts else None


def _decoded(words: np.ndarray, points: Any, horizon: float, max_curvature: float, max_accel: float,
             max_speed: float) -> DecodedTrajectory:
    verdict = int(words[2])
    if verdict == 0:  # the common case, kept short: in a loop it runs on caches the engine has just evicted
        return DecodedTrajectory(mode=int(words[0]), score=float(words.view(np.float32)[1]), points=points,
                                 verdict=0, problem=None)
    r = words.view(RESULT_DTYPE)[0]
    first = {1 << b: int(r["first"][b]) for b in range(_N_FLAGS) if r["first"][b] >= 0}
    breaches = _breaches(r, verdict, max_curvature, max_accel, max_speed)
    return DecodedTrajectory(
        mode=int(r["mode"]),
        score=float(r["score"]),
        points=points,
        verdict=verdict,
        problem=_problem(r, verdict, horizon, breaches),
        first=first,
        breaches=breaches,
    )


@overload
def decode_trajectory(trajectory: np.ndarray, score: np.ndarray | None, dt: float, times: ArrayLike | None = None,
                      *, max_curvature: float = 0.3, max_accel: float = 8.0, max_speed: float = 60.0,
                      out: np.ndarray | None = None, result: np.ndarray | None = None, batch: int = 0,
                      stream: Any = None) -> DecodedTrajectory: ...


@overload
def decode_trajectory(trajectory: Any, score: Any, dt: float, times: Any = None, *, max_curvature: float = 0.3,
                      max_accel: float = 8.0, max_speed: float = 60.0, out: Any = None, result: Any = None,
                      batch: int = 0, stream: Any = None) -> DecodedTrajectory | DeviceDecode: ...


def decode_trajectory(trajectory: Any, score: Any, dt: float, times: Any = None, *, max_curvature: float = 0.3,
                      max_accel: float = 8.0, max_speed: float = 60.0, out: Any = None, result: Any = None,
                      batch: int = 0, stream: Any = None) -> DecodedTrajectory | DeviceDecode:
    """Choose, resample and check the engine's trajectory in one pass.

    Args:
        trajectory: float32 [K, T, F] (or [B, K, T, F] with ``batch``), F ≥ 2 (x, y[, yaw, ...]),
            T ≥ 2; waypoint i is at t = (i + 1) * dt in the ego frame (x forward, y left).
        score: float32 [K] ([B, K]) or None (mode 0, score NaN).
        dt: seconds between waypoints.
        times: requested times in [0, T * dt] (s), [M]; None → the native grid (i + 1) * dt. Host
            times may be any real dtype (converted to float32); device times must be float32.
        max_curvature, max_accel, max_speed: plausibility limits (1/m, m/s², m/s), all > 0.
        out: float32 [M, 6] C-contiguous to write into; allocated for host inputs when None,
            required for device inputs (nothing here allocates device memory).
        result: int32 [RESULT_WORDS] for the verdict words; as ``out`` (see :func:`new_result_buffer`).
        batch: batch item of a 4-D trajectory.
        stream: CUDA stream for device inputs (None = default stream, an int handle, or an object
            with ``.cuda_stream`` / ``.ptr``); ignored for host inputs.

    Returns:
        :class:`DecodedTrajectory` for host inputs; :class:`DeviceDecode` for device inputs.

    Raises:
        ValueError: naming the bad argument (dtype, shape, layout, range, host/device mix).
        RuntimeError: device inputs without a usable CUDA device.
    """
    trajectory, score, times = (as_kernel_array(a, n) for a, n in ((trajectory, "trajectory"), (score, "score"),
                                                                    (times, "times")))
    out, result = as_kernel_array(out, "out"), as_kernel_array(result, "result")
    device = _is_device(trajectory)
    if times is not None and not _is_device(times):
        times = _host_times(times)
    if device:
        if out is None:
            raise ValueError("out: device inputs need a device array [M, 6] float32 to write into "
                             "(decode_trajectory allocates no device memory)")
        if result is None:
            raise ValueError(f"result: device inputs need a device int32 array [{RESULT_WORDS}] for the verdict")
    else:
        if out is None:
            shape = getattr(trajectory, "shape", ())
            m = len(times) if times is not None else (int(shape[-2]) if len(shape) >= 2 else 0)
            out = np.empty((m, 6), dtype=np.float32)
        if result is None:
            result = new_result_buffer()

    dt_s = _number(dt, "dt")
    limits = (_number(max_curvature, "max_curvature"), _number(max_accel, "max_accel"), _number(max_speed, "max_speed"))
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)):
        raise ValueError(f"batch: expected an int, got {type(batch).__name__}")
    _core.decode_trajectory(trajectory, score, times, out, result, dt_s, *limits, int(batch), stream)

    # Validated above: a 3-D or 4-D shape with T at [-2].
    shape = trajectory.__cuda_array_interface__["shape"] if device else trajectory.shape
    horizon = float(shape[-2]) * dt_s
    if device:
        return DeviceDecode(out, result, horizon, *limits)
    return _decoded(np.asarray(result), out, horizon, *limits)


def integrate_controls(controls: Any, v0: float, dt: float, out: Any = None, stream: Any = None) -> Any:
    """Integrate per-step controls into poses, from the ego at the origin moving at ``v0``.

    Why a kernel: the decode after it needs poses, and on the device path the controls never leave
    the GPU; on the host it is one native call without the GIL. The scheme (``decode.h``): per step,
    speed ``max(0, v + a*dt)`` (braking stops, it never reverses), then the midpoint speed and
    heading move the pose; each mode is integrated on its own. NaN and inf are carried into every
    later row of their mode, so :func:`decode_trajectory` reports ``NONFINITE`` instead of a
    plausible-looking stop.

    Args:
        controls: float32 [K, T, 2] C-contiguous, per step (accel m/s², curvature 1/m) held for ``dt``
            (:data:`CONTROL_FIELDS`); also [1, K, T, 2] (its one batch item).
        v0: the ego's current speed (m/s), finite and >= 0.
        dt: seconds per step, > 0.
        out: float32 [K, T, 4] C-contiguous to write into; allocated for host inputs when None,
            required for device inputs (nothing here allocates device memory).
        stream: CUDA stream for device inputs (as :func:`decode_trajectory`); ignored on the host.

    Returns:
        ``out`` (or the new host array): row ``[k, i]`` is (x, y, yaw, speed) at t = (i + 1) * dt
        (:data:`POSE_COLUMNS`). For device inputs it is complete once ``stream`` reaches the call.

    Raises:
        ValueError: naming the bad argument (dtype, shape, layout, range, host/device mix).
        RuntimeError: device inputs without a usable CUDA device.
    """
    controls, out = as_kernel_array(controls, "controls"), as_kernel_array(out, "out")
    if _is_device(controls):
        if out is None:
            raise ValueError("out: device controls need a device array [K, T, 4] float32 to write into "
                             "(integrate_controls allocates no device memory)")
    elif out is None:
        shape = tuple(getattr(controls, "shape", ()))
        # A shape the native side will reject gets a placeholder: the error names controls, not out.
        out = np.empty((*shape[-3:-1], len(POSE_COLUMNS)) if len(shape) >= 3 else (0, 0, 4), dtype=np.float32)
    _core.integrate_controls(controls, out, _number(v0, "v0"), _number(dt, "dt"), stream)
    return out


def _number(value: object, name: str) -> float:
    """A scalar argument as float, or a ValueError naming it (float('x') would not)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None


class TrajectoryDecoder:
    """:func:`decode_trajectory` for a loop over host outputs of one engine: the step, the limits
    and the output buffers are set up once, so a tick makes one native call and reads 3 words.

    That matters because the call runs right after the engine, whose working set has just evicted
    the caches: every Python step of the general entry point is a handful of cache misses there.
    The native side still checks every array it is given. ``points`` (the [T, 6] output) is
    rewritten by each call, as ``decode_trajectory(..., out=...)`` would.
    """

    def __init__(self, dt: float, steps: int, *, max_curvature: float = 0.3, max_accel: float = 8.0,
                 max_speed: float = 60.0) -> None:
        self.dt = _number(dt, "dt")
        self.limits = (_number(max_curvature, "max_curvature"), _number(max_accel, "max_accel"),
                       _number(max_speed, "max_speed"))
        if not (self.dt > 0 and all(v > 0 for v in self.limits)):
            raise ValueError(f"dt and the limits must be > 0, got dt={dt!r}, limits={self.limits}")
        self.horizon = int(steps) * self.dt
        self.points = np.zeros((int(steps), len(COLUMNS)), dtype=np.float32)
        self.result = new_result_buffer()

    def __call__(self, trajectory: np.ndarray, score: np.ndarray | None, batch: int = 0) -> DecodedTrajectory:
        """Decode host ``trajectory`` [(B,) K, T, F] with T = ``steps`` (and ``score`` [(B,) K] or None)."""
        if trajectory.shape[-2] != self.points.shape[0]:
            raise ValueError(f"trajectory: {trajectory.shape[-2]} waypoints, but this decoder was set up for "
                             f"{self.points.shape[0]}")
        _core.decode_trajectory(trajectory, score, None, self.points, self.result, self.dt, *self.limits, batch, None)
        return _decoded(self.result, self.points, self.horizon, *self.limits)
