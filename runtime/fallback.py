"""The trajectory published when the model's own cannot be: the last good one, shifted to now.

Rule: the vehicle is assumed to have followed the last good trajectory for ``age`` seconds, so the
fallback is that trajectory from ``age`` on, re-expressed in the ego frame at ``age``; past its end the
vehicle holds the final pose (stopped). With no good trajectory yet, the fallback is standing still.
Pure functions: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from .geometry import to_frame


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


def fallback_trajectory(last_good: np.ndarray | None, dt: float, age: float, points: int) -> np.ndarray:
    """The last good trajectory shifted by ``age`` seconds, or a standstill if there is none."""
    if last_good is None:
        return np.zeros((points, 3), dtype=np.float32)
    return shift_trajectory(last_good, dt, age)
