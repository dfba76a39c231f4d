"""Ego-motion history: integrates vehicle-state samples into poses, resampled for the model.

The model wants ``steps`` samples at ``rate_hz`` (oldest first, the newest at "now") with poses in
the ego frame at the newest sample: x forward, y left, yaw counter-clockwise, so the newest pose is
(0, 0, 0). Samples arrive whenever a frame or an ego message does; poses are dead-reckoned from
speed and yaw rate in an odometry frame and interpolated onto the model's grid.

A model declares which of ``FIELDS`` it takes and in which order (the manifest's ``ego.fields``,
e.g. ``[v, a, yaw_rate]``): the history is kept in full whatever the model reads, and ``fill``
writes exactly the declared columns, so every ego source feeds every model the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..geometry import to_frame

if TYPE_CHECKING:
    from ..manifest import TensorSpec

FIELDS = ("x", "y", "yaw", "v", "a", "yaw_rate")
MAX_SAMPLE_HZ = 100.0  # the most samples per second the history is sized for (a tick rate)
_POSE = FIELDS[:3]  # dead-reckoned, re-expressed in the newest pose's frame
_COLUMN = {f: k + 1 for k, f in enumerate(FIELDS)}  # column of each field in the ring (column 0: time)


def ego_fields_problem(fields: Sequence[str], width: int | None = None) -> str | None:
    """Why ``fields`` cannot describe an ego input whose last axis is ``width`` long, or None.

    Non-empty, each one of ``FIELDS``, none twice, one per column: the fill writes field ``i`` into
    column ``i``, so a mismatch would feed the model the wrong quantity in a column.
    """
    fields = list(fields)
    if not fields:
        return f"no fields (declare some of {', '.join(FIELDS)})"
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        return f"unknown field(s) {unknown} (known: {', '.join(FIELDS)})"
    repeated = sorted({f for f in fields if fields.count(f) > 1})
    if repeated:
        return f"field(s) {repeated} declared more than once"
    if width is not None and width != len(fields):
        return f"last axis is {width} long but {len(fields)} field(s) are declared {fields}"
    return None


class EgoHistory:
    """A bounded ring of (t, x, y, yaw, v, a, yaw_rate) in an odometry frame; no growth per tick.

    ``fields`` (default all six, in ``FIELDS`` order) are the columns ``fill`` writes, in that order.
    """

    def __init__(self, steps: int, rate_hz: float, capacity: int | None = None,
                 fields: Iterable[str] = FIELDS) -> None:
        self.fields = tuple(fields)
        problem = ego_fields_problem(self.fields)
        if problem is not None:
            raise ValueError(f"ego fields: {problem}")
        self.steps = steps
        self.period = 1.0 / rate_hz
        # Enough samples for the whole window even when they come at MAX_SAMPLE_HZ (the loop adds one
        # per tick), so the oldest grid points are interpolated, never held at the oldest sample.
        window = math.ceil((steps - 1) * self.period * MAX_SAMPLE_HZ) + 2
        self._buf = np.zeros((capacity or max(4 * steps, window), 7), dtype=np.float64)
        self._n = 0  # samples stored (<= capacity), newest at the end of the valid range
        self._grid = np.arange(-(steps - 1), 1, dtype=np.float64) * self.period
        # (output column, pose column) for x/y/yaw; (output column, ring column) for v/a/yaw_rate.
        self._pose_cols = [(j, _POSE.index(f)) for j, f in enumerate(self.fields) if f in _POSE]
        self._state_cols = [(j, _COLUMN[f]) for j, f in enumerate(self.fields) if f not in _POSE]
        self._poses = np.empty((steps, 3), dtype=np.float64)

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
        """Write ``[steps, len(fields)]``, the declared fields in their order, ending at ``now``
        (default: the newest sample); all zeros before the first sample."""
        if out.shape != (self.steps, len(self.fields)):
            raise ValueError(f"ego fill: buffer {list(out.shape)} is not [{self.steps}, {len(self.fields)}] "
                             f"for fields {list(self.fields)}")
        if self._n == 0:
            out[...] = 0.0
            return
        b = self._buf[: self._n]
        t_now = b[-1, 0] if now is None else now
        times = t_now + self._grid
        if self._pose_cols:  # a pose needs all three (the frame turns x and y by yaw)
            for k in range(3):
                self._poses[:, k] = np.interp(times, b[:, 0], b[:, k + 1])
            to_frame(self._poses, self._poses[-1], out=self._poses)  # into the newest grid point's frame
            for j, k in self._pose_cols:
                out[:, j] = self._poses[:, k]
        for j, k in self._state_cols:
            out[:, j] = np.interp(times, b[:, 0], b[:, k])


class EgoFeed:
    """Every ego input of a model, each with its own grid and fields, fed from one stream of readings.

    A model may split its ego input (say past poses ``[x, y, yaw]`` at 10 Hz and the current speed
    ``[v]`` as one step): each input gets a history of its own shape; ``update`` feeds them all.
    ``inputs`` pairs each input's ego block (``steps`` from its shape, ``rate_hz``, ``fields``)
    with the ``[steps, len(fields)]`` array ``fill`` writes it into.
    """

    def __init__(self, inputs: Iterable[tuple[int, float, Sequence[str], np.ndarray]]) -> None:
        self._pairs = [(EgoHistory(steps, rate_hz, fields=fields), out) for steps, rate_hz, fields, out in inputs]

    @classmethod
    def for_specs(cls, specs: Iterable[TensorSpec], buffer_of: Callable[[TensorSpec], np.ndarray]) -> EgoFeed:
        """From manifest ego inputs (``TensorSpec``, shape ``[1, steps, len(fields)]``) and a function
        giving each one's writable ``[steps, len(fields)]`` array."""
        return cls((t.shape[1], t.detail["rate_hz"], t.detail["fields"], buffer_of(t)) for t in specs)

    @property
    def histories(self) -> list[EgoHistory]:
        return [h for h, _ in self._pairs]

    def update(self, t: float, speed: float, accel: float, yaw_rate: float) -> None:
        """Add one vehicle-state sample to every input's history."""
        for h, _ in self._pairs:
            h.update(t, speed, accel, yaw_rate)

    def fill(self, now: float | None = None) -> None:
        """Write every ego input for ``now`` (default: each history's newest sample)."""
        for h, out in self._pairs:
            h.fill(out, now)
