"""The trajectory published when the model's own cannot be: the last good one, shifted to now,
slowing to a stop.

Rule: the vehicle is assumed to have followed the last good trajectory for ``age`` seconds, so the
fallback follows the rest of that path, re-expressed in the ego frame at ``age``; along it, the
speed falls linearly from the path's current speed to zero over ``stop_horizon`` seconds (a
constant, comfortable deceleration of v0 / stop_horizon), and the vehicle then stays stopped. Only
the geometry of the old path is kept: never its speed-ups. With no good trajectory yet, the
fallback is standing still. Pure functions: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from ..geometry import to_frame


def shift_trajectory(points: np.ndarray, dt: float, age: float) -> np.ndarray:
    """``points`` [T, 3] (x, y, yaw at t = dt..T*dt) seen ``age`` seconds later, in the new ego frame."""
    n = len(points)
    times = dt * np.arange(1, n + 1)
    src_t = np.concatenate([[0.0], times])
    src = np.vstack([np.zeros((1, points.shape[1])), points])
    query = np.clip(times + age, 0.0, times[-1])
    here = [np.interp(age, src_t, src[:, k]) for k in range(3)]
    moved = np.stack([np.interp(query, src_t, src[:, k]) for k in range(3)], axis=1)
    return to_frame(moved, here, out=np.empty((n, 3), dtype=np.float32))


def stop_along(path: np.ndarray, dt: float, stop_horizon: float) -> np.ndarray:
    """Re-time ``path`` [T, 3] (from the origin) so speed ramps from its initial value to 0 over ``stop_horizon``."""
    xy = np.vstack([[0.0, 0.0], path[:, :2].astype(np.float64)])
    s_path = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
    v0 = s_path[1] / dt  # the path's speed right now
    t = dt * np.arange(1, len(path) + 1)
    decel = v0 / stop_horizon if stop_horizon > 0 else np.inf
    t_stop = np.minimum(t, v0 / decel if decel > 0 and np.isfinite(decel) else 0.0)
    s_t = np.minimum(v0 * t_stop - 0.5 * decel * t_stop**2 if np.isfinite(decel) else 0.0 * t, s_path[-1])
    yaw = np.concatenate([[0.0], path[:, 2].astype(np.float64)])
    out = np.empty_like(path, dtype=np.float32)
    out[:, 0] = np.interp(s_t, s_path, xy[:, 0])
    out[:, 1] = np.interp(s_t, s_path, xy[:, 1])
    out[:, 2] = np.interp(s_t, s_path, yaw)
    return out


def fallback_trajectory(last_good: np.ndarray | None, dt: float, age: float, points: int,
                        stop_horizon: float = 4.0) -> np.ndarray:
    """The last good path from now on, slowing to a stop over ``stop_horizon`` s; a standstill if none."""
    if last_good is None:
        return np.zeros((points, 3), dtype=np.float32)
    return stop_along(shift_trajectory(last_good, dt, age), dt, stop_horizon)
