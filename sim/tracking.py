"""How the simulated car follows what the runtime publishes: a trajectory-tracking controller.

Why: on a vehicle the runtime's trajectory goes to a tracking controller, not straight to the
wheels. The simulator does the same, so a closed-loop score measures the trajectories, and the
timing (a plan is followed from when it is published, at the time it says) is the runtime's.

A published plan is the runtime's ``trajectory`` (x, y, yaw at t = dt..T*dt in the ego frame of its
origin time): an ``ok`` tick's plan starts at its frames' capture time, from the ego pose then; a
fallback's (the last good plan shifted, slowing to a stop) at its publish time, from the pose then.
The controller: speed from the plan's timing at the current time (feed-forward acceleration plus
a proportional term), steering by pure pursuit on the plan's path. Pure functions of the plan and
the car's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Pure-pursuit look-ahead: at least this far (m) and this many seconds of travel.
LOOKAHEAD_MIN_M = 4.0
LOOKAHEAD_S = 0.6
#: Speed tracking gain (1/s) and how far ahead (s) the plan's speed is read (the car's lag).
SPEED_GAIN = 1.5
SPEED_LEAD_S = 0.2
#: A plan shorter than this (m) is "stand still": no steering from it.
MIN_PATH_M = 0.5
#: The longitudinal controller's jerk limit (m/s³): a new plan every tick must not jolt the car (NAVSIM's
#: comfort bound is 4.13 m/s³); braking harder than COMFORT_BRAKE (an emergency) may change faster.
JERK_LIMIT = 3.5
COMFORT_BRAKE = -3.0


@dataclass(frozen=True)
class Plan:
    """A published trajectory in the world frame, from its origin on."""

    origin_time: float
    dt: float
    xy: np.ndarray  # [T+1, 2] world frame, row 0 the ego at origin_time
    s: np.ndarray  # [T+1] arc length along xy
    speed: np.ndarray  # [T] m/s on each dt segment

    @property
    def horizon(self) -> float:
        return self.dt * len(self.speed)


def plan_in_world(points: np.ndarray, pose: tuple[float, float, float], origin_time: float, dt: float) -> Plan:
    """The runtime's ego-frame ``points`` [T, >=2] (x, y, ...) from ``pose`` (x, y, yaw) in the world."""
    x0, y0, yaw0 = pose
    c, s = math.cos(yaw0), math.sin(yaw0)
    local = np.vstack([[0.0, 0.0], np.asarray(points, dtype=np.float64)[:, :2]])
    xy = np.column_stack([x0 + c * local[:, 0] - s * local[:, 1], y0 + s * local[:, 0] + c * local[:, 1]])
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    return Plan(origin_time, dt, xy, np.concatenate([[0.0], np.cumsum(seg)]), seg / dt)


def plan_speed(plan: Plan, t: float) -> tuple[float, float]:
    """(speed, acceleration) the plan asks for at time ``t`` (past its horizon: stand still)."""
    tau = t - plan.origin_time
    n = len(plan.speed)
    if n == 0 or tau >= plan.horizon:
        return 0.0, 0.0
    # Segment speeds sit at segment mid-times; interpolate between them.
    mids = plan.dt * (np.arange(n) + 0.5)
    v = float(np.interp(tau, mids, plan.speed))
    v_next = float(np.interp(tau + plan.dt, mids, plan.speed, right=0.0))
    return v, (v_next - v) / plan.dt


def pursuit_curvature(plan: Plan, x: float, y: float, yaw: float, speed: float) -> float:
    """Pure pursuit: the curvature of the arc from the car to the plan's point one look-ahead away."""
    if plan.s[-1] < MIN_PATH_M:
        return 0.0
    d = np.hypot(plan.xy[:, 0] - x, plan.xy[:, 1] - y)
    nearest = int(np.argmin(d))
    look = max(LOOKAHEAD_MIN_M, LOOKAHEAD_S * speed)
    target_s = plan.s[nearest] + look
    if target_s > plan.s[-1]:  # beyond the plan's end: extend along its last heading
        dx, dy = plan.xy[-1] - plan.xy[-2] if len(plan.xy) > 1 else (1.0, 0.0)
        norm = math.hypot(dx, dy) or 1.0
        extra = target_s - plan.s[-1]
        tx, ty = plan.xy[-1, 0] + dx / norm * extra, plan.xy[-1, 1] + dy / norm * extra
    else:
        tx = float(np.interp(target_s, plan.s, plan.xy[:, 0]))
        ty = float(np.interp(target_s, plan.s, plan.xy[:, 1]))
    c, s = math.cos(yaw), math.sin(yaw)
    lx, ly = c * (tx - x) + s * (ty - y), -s * (tx - x) + c * (ty - y)
    dist2 = lx * lx + ly * ly
    return 0.0 if dist2 < 1e-6 else 2.0 * ly / dist2


def limit_jerk(previous: float, wanted: float, dt: float) -> float:
    """The acceleration after ``dt`` s on the way from ``previous`` to ``wanted`` at the jerk limit (an
    emergency brake is not limited)."""
    if wanted < COMFORT_BRAKE and wanted < previous:
        return wanted
    step = JERK_LIMIT * dt
    return min(previous + step, max(previous - step, wanted))


def track(plan: Plan | None, t: float, x: float, y: float, yaw: float, speed: float) -> tuple[float, float]:
    """(acceleration, curvature) that follow ``plan`` at time ``t``; no plan: brake to a stop."""
    if plan is None:
        return (-3.0 if speed > 0.0 else 0.0), 0.0
    v_ref, a_ref = plan_speed(plan, t + SPEED_LEAD_S)
    accel = a_ref + SPEED_GAIN * (v_ref - speed)
    return accel, pursuit_curvature(plan, x, y, yaw, speed)
