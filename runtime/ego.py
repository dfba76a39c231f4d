"""Ego-motion history: integrates vehicle-state samples into poses, resampled for the model.

The model wants ``steps`` samples at ``rate_hz`` (oldest first, the newest at "now") with poses in
the ego frame at the newest sample: x forward, y left, yaw counter-clockwise, so the newest pose is
(0, 0, 0). Samples arrive whenever a frame or an ego message does; poses are dead-reckoned from
speed and yaw rate in an odometry frame and interpolated onto the model's grid.
"""

from __future__ import annotations

import math

import numpy as np

from .geometry import to_frame

FIELDS = ("x", "y", "yaw", "v", "a", "yaw_rate")


class EgoHistory:
    """A bounded ring of (t, x, y, yaw, v, a, yaw_rate) in an odometry frame; no growth per tick."""

    def __init__(self, steps: int, rate_hz: float, capacity: int | None = None) -> None:
        self.steps = steps
        self.period = 1.0 / rate_hz
        self._buf = np.zeros((capacity or 4 * steps, 7), dtype=np.float64)
        self._n = 0  # samples stored (<= capacity), newest at the end of the valid range
        self._grid = np.arange(-(steps - 1), 1, dtype=np.float64) * self.period

    def update(self, t: float, speed: float, accel: float, yaw_rate: float) -> None:
        """Add the vehicle state at time ``t`` (monotonic seconds); older-than-newest samples are ignored."""
        if self._n:
            last = self._buf[self._n - 1]
            dt = t - last[0]
            if dt <= 0:
                return
            yaw_mid = last[3] + 0.5 * last[6] * dt
            ds = 0.5 * (last[4] + speed) * dt
            x, y, yaw = last[1] + ds * math.cos(yaw_mid), last[2] + ds * math.sin(yaw_mid), last[3] + last[6] * dt
        else:
            x = y = yaw = 0.0
        if self._n == len(self._buf):
            self._buf[:-1] = self._buf[1:]
            self._n -= 1
        self._buf[self._n] = (t, x, y, yaw, speed, accel, yaw_rate)
        self._n += 1

    def fill(self, out: np.ndarray, now: float | None = None) -> None:
        """Write ``[steps, 6]`` (x, y, yaw, v, a, yaw_rate) ending at ``now`` (default: newest sample)."""
        if self._n == 0:
            out[...] = 0.0
            return
        b = self._buf[: self._n]
        t_now = b[-1, 0] if now is None else now
        times = t_now + self._grid
        cols = [np.interp(times, b[:, 0], b[:, k]) for k in range(1, 7)]
        poses = np.stack(cols[:3], axis=1)
        to_frame(poses, poses[-1], out=out[:, :3])  # into the ego frame at the newest grid point
        out[:, 3], out[:, 4], out[:, 5] = cols[3], cols[4], cols[5]
