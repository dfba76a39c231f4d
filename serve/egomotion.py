"""The simulator's egomotion -> what the model's ego input needs (speed, acceleration, yaw rate).

AlpaSim sends the ego's estimated poses in its ``local`` frame, sometimes several in one message, and
resends the pose at the previous step's boundary; each pose may come with a dynamic state (velocities
and accelerations in the rig frame), often with only the forward speed set. The runtime's ego history
(``vla.runtime.inputs.ego``) takes (t, speed, accel, yaw_rate) samples, so:

- a timestamp not newer than the last one kept is dropped (a resent pose is not a new observation,
  and the history must stay strictly increasing);
- what the dynamic state gives is used as given; what it leaves out is derived from consecutive poses:
  speed from the displacement along the heading, yaw rate from the heading's change, acceleration
  from the speed's change. The first pose has nothing to differ from: what is missing there is 0.

Pure functions: numbers in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    """What the simulator's dynamic state says at one pose; None where it says nothing."""

    speed: float | None = None  # m/s, forward (rig x)
    accel: float | None = None  # m/s^2, forward
    yaw_rate: float | None = None  # rad/s, counter-clockwise (rig z)


@dataclass(frozen=True)
class Kinematics:
    """The ego at one kept timestamp: its planar pose in the local frame and its motion."""

    t_us: int
    x: float
    y: float
    yaw: float
    speed: float
    accel: float
    yaw_rate: float


def wrap_angle(a: float) -> float:
    """``a`` in [-pi, pi)."""
    return (a + math.pi) % (2.0 * math.pi) - math.pi


def keep_newer(times_us: Sequence[int], last_us: int | None) -> list[int]:
    """Indices of the timestamps to keep, in order: each strictly newer than the last one kept (or than
    ``last_us``, the newest kept before this message)."""
    kept, newest = [], last_us
    for i, t in enumerate(times_us):
        if newest is None or t > newest:
            kept.append(i)
            newest = t
    return kept


def derive(prev: Kinematics | None, t_us: int, x: float, y: float, yaw: float,
           measured: Measured = Measured()) -> Kinematics:
    """The ego's kinematics at a new pose (``t_us`` newer than ``prev.t_us``), measured values first."""
    if prev is None:
        return Kinematics(t_us, x, y, yaw, measured.speed or 0.0, measured.accel or 0.0, measured.yaw_rate or 0.0)
    dt = (t_us - prev.t_us) / 1e6
    if dt <= 0.0:
        raise ValueError(f"pose at {t_us} us is not newer than the last one kept ({prev.t_us} us)")
    turn = wrap_angle(yaw - prev.yaw)
    speed = measured.speed
    if speed is None:  # the displacement along the mean heading: negative when reversing
        mid = prev.yaw + 0.5 * turn
        speed = ((x - prev.x) * math.cos(mid) + (y - prev.y) * math.sin(mid)) / dt
    yaw_rate = measured.yaw_rate if measured.yaw_rate is not None else turn / dt
    accel = measured.accel if measured.accel is not None else (speed - prev.speed) / dt
    return Kinematics(t_us, x, y, yaw, speed, accel, yaw_rate)
