"""The ego car: state, actuator limits and the kinematic bicycle step.

(x, y) is the centre of the car's box (the contract's frame); the kinematics are those of the rear
axle, which sits ``REAR_AXLE`` behind the centre (the rear axle moves along its heading, on an arc
of the commanded curvature). The limits are the car's, not comfort: a policy may brake at 6 m/s^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LENGTH, WIDTH, HEIGHT = 4.6, 1.9, 1.5  # m
WHEELBASE = 2.8  # m
REAR_AXLE = WHEELBASE / 2  # m behind the box centre (equal overhangs of 0.9 m)
MAX_ACCEL = 3.0  # m/s^2
MAX_BRAKE = 6.0  # m/s^2
MAX_CURVATURE = 0.2  # 1/m (about 29 deg of steering at a 2.8 m wheelbase)
MAX_CURVATURE_RATE = 0.3  # 1/m/s (steering-rate limit)
MAX_JERK = 15.0  # m/s^3 (actuator response, not comfort)


@dataclass
class VehicleState:
    """A car's pose and motion; the box is centred on (x, y)."""

    x: float
    y: float
    yaw: float
    speed: float
    accel: float = 0.0
    curvature: float = 0.0
    length: float = LENGTH
    width: float = WIDTH

    @property
    def yaw_rate(self) -> float:
        return self.speed * self.curvature


def _toward(current: float, target: float, max_step: float) -> float:
    return current + max(-max_step, min(max_step, target - current))


def bicycle_step(ego: VehicleState, accel: float, curvature: float, dt: float) -> None:
    """Advance ``ego`` in place by ``dt`` under commanded (accel, curvature), within the car's limits.

    The command is first clipped to the car's ranges, then approached at the jerk and steering-rate
    limits; the speed never goes negative (no reverse gear).
    """
    a_cmd = min(MAX_ACCEL, max(-MAX_BRAKE, accel))
    k_cmd = min(MAX_CURVATURE, max(-MAX_CURVATURE, curvature))
    a = _toward(ego.accel, a_cmd, MAX_JERK * dt)
    k = _toward(ego.curvature, k_cmd, MAX_CURVATURE_RATE * dt)
    v0 = ego.speed
    v1 = v0 + a * dt
    if v1 < 0.0:  # stops within the step: travel only until standstill
        dist = 0.5 * v0 * v0 / -a if a < 0.0 else 0.0
        v1 = 0.0
    else:
        dist = 0.5 * (v0 + v1) * dt
    c, s = math.cos(ego.yaw), math.sin(ego.yaw)
    rx, ry = ego.x - REAR_AXLE * c, ego.y - REAR_AXLE * s
    dyaw = k * dist
    yaw1 = ego.yaw + dyaw
    c1, s1 = math.cos(yaw1), math.sin(yaw1)
    if abs(dyaw) < 1e-6:
        mid = ego.yaw + 0.5 * dyaw
        rx += dist * math.cos(mid)
        ry += dist * math.sin(mid)
    else:
        rx += (s1 - s) / k
        ry -= (c1 - c) / k
    ego.x, ego.y = rx + REAR_AXLE * c1, ry + REAR_AXLE * s1
    ego.yaw = (yaw1 + math.pi) % (2.0 * math.pi) - math.pi
    ego.speed, ego.accel, ego.curvature = v1, a, k
