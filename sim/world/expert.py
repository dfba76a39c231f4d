"""The scripted expert: pure pursuit on the route's lane centre, IDM on whatever is ahead.

Lateral: pure pursuit of the route path (the lane sequence the navigator's commands describe, lane
change blended in) from the rear axle, look-ahead 4 m + 0.6 s * speed. Longitudinal: the smallest
of (a) speed tracking toward the route's speed cap (urban limit, curves, read 0.8 s ahead), (b) IDM
on each actor whose box lies on the path ahead (vehicles, obstacles), (c) a planned stop at the
stop line of the next junction while a vehicle on a conflicting move has committed to it and the
ego can still stop, (d) a planned stop at the goal. The result is jerk-limited for comfort except
in emergencies.
"""

from __future__ import annotations

import math

import numpy as np

from vla.runtime.errors import VlaError

from .scenario import Scenario
from .traffic import idm
from .vehicle import MAX_BRAKE, MAX_CURVATURE, REAR_AXLE
from .world import CONFLICTS, World

LOOKAHEAD_BASE, LOOKAHEAD_TIME = 4.0, 0.6  # m, s
PREVIEW_S = 0.8  # s: the speed cap is read this far ahead
SCAN = 60.0  # m of path scanned for actors
A_MAX, B_COMF = 1.5, 2.0  # m/s^2, the expert's IDM
SPEED_GAIN = 1.0  # 1/s, speed tracking toward the cap (IDM's own free-road term is sluggish near v0)
HEADWAY, GAP_VEHICLE = 1.2, 2.0  # s, m
YIELD_BRAKE = 5.0  # m/s^2: yields at a junction only if it can stop within this
JERK = 3.5  # m/s^3, comfort limit on the expert's own acceleration changes
EMERGENCY = -3.0  # m/s^2: a brake request beyond this skips the jerk limit (above 2 m/s)
STOP_DECEL = 1.3  # m/s^2, the deceleration of a planned stop (goal, stop line)
TICK = 0.1  # s, the control period the jerk limit assumes


class Expert:
    """The scripted driver: pure pursuit on the route's lane centre + IDM for what is ahead.

    Deterministic: the controls are a function of the world state. ``seed`` seeds the optional
    exploration ``noise`` (std of accel m/s^2; curvature gets noise/50 1/m) added by ``control``
    only; ``future_controls`` (the imitation label) is always noise-free.
    """

    def __init__(self, seed: int = 0, noise: float = 0.0) -> None:
        if noise < 0 or not math.isfinite(noise):
            raise VlaError(f"Expert noise must be a non-negative number, got {noise}")
        self.seed = seed
        self.noise = float(noise)
        self._rng = np.random.default_rng(seed)

    def control(self, world: World) -> tuple[float, float]:
        """(accel m/s^2, curvature 1/m) now."""
        a, k = plan_control(world)
        if self.noise > 0.0:
            a += float(self._rng.normal(0.0, self.noise))
            k += float(self._rng.normal(0.0, self.noise / 50.0))
        return a, k

    def future_controls(self, world: World, steps: int = 64, dt: float = 0.1) -> np.ndarray:
        """float32 [steps, 2]: the expert's (accel, curvature) over the next ``steps * dt`` s, driving a
        copy of ``world`` (which is left untouched). The copy steps once per ``dt`` (no substeps) and
        skips the ego's collision / off-road bookkeeping: it is a look-ahead, not a record."""
        if not isinstance(world, World):
            raise VlaError(f"future_controls needs a World, got {type(world).__name__}")
        if int(steps) != steps or steps < 1 or not (dt > 0 and math.isfinite(dt)):
            raise VlaError(f"future_controls needs steps >= 1 and dt > 0, got steps={steps}, dt={dt}")
        w = world.copy()
        w._lite = True
        w.dt = float(dt)
        out = np.empty((int(steps), 2), dtype=np.float32)
        for i in range(int(steps)):
            a, k = plan_control(w)
            out[i, 0], out[i, 1] = a, k
            w.step(dt, a, k)
        return out


def plan_control(world: World) -> tuple[float, float]:
    """The expert's noise-free (accel, curvature) for the world's current state."""
    sc = world.scenario
    route = sc.route
    path = route.path
    e = world.ego
    s, _ = world.route_position()
    v = e.speed
    c, sn = math.cos(e.yaw), math.sin(e.yaw)

    # Lateral: pure pursuit from the rear axle.
    ld = LOOKAHEAD_BASE + LOOKAHEAD_TIME * v
    tx, ty, _ = path.pose(s - REAR_AXLE + ld)
    rx, ry = e.x - REAR_AXLE * c, e.y - REAR_AXLE * sn
    dx, dy = tx - rx, ty - ry
    fx, fy = c * dx + sn * dy, -sn * dx + c * dy
    kappa = 2.0 * fy / max(fx * fx + fy * fy, 1e-6)
    kappa = max(-MAX_CURVATURE, min(MAX_CURVATURE, kappa))

    # Longitudinal: speed cap with preview.
    speed = route.speed
    n1 = len(speed) - 1
    i_now = min(max(int(s / path.ds), 0), n1)
    i_pre = min(max(int((s + max(v * PREVIEW_S, 1.0)) / path.ds), 0), n1)
    v0 = max(min(speed[i_now], speed[i_pre]), 0.5)
    a = min(A_MAX, SPEED_GAIN * (v0 - v))
    half = 0.5 * e.length

    for gap, v_lead in _actors_ahead(world, s):
        a = min(a, idm(v, max(v0, v), gap, v_lead, A_MAX, B_COMF, HEADWAY, GAP_VEHICLE))

    for cr in route.crossings:
        if cr.s_exit < s:
            continue
        gap = cr.s_entry - s - half - 0.8
        can_stop = gap > -0.3 and cr.s_entry - s < SCAN and gap > v * v / (2.0 * YIELD_BRAKE)
        if can_stop and any(CONFLICTS[cr.move, move] for _, _, move in world.intersection_users(cr.node)):
            a = min(a, stop_accel(v, gap))
        break

    if route.s_goal - s < SCAN:
        a = min(a, stop_accel(v, route.s_goal - s))

    a = max(a, -MAX_BRAKE)
    step = JERK * TICK
    if a > e.accel + step or (a < e.accel - step and (a > EMERGENCY or v < 2.0)):
        a = min(max(a, e.accel - step), e.accel + step)
    return a, kappa


def stop_accel(v: float, d: float) -> float:
    """Acceleration to stop exactly ``d`` metres ahead: cruise until the constant deceleration that
    stops there reaches STOP_DECEL, then hold that profile (IDM's approach to a standstill point is
    asymptotic and slow; this one ends in finite time)."""
    if d <= 0.05:
        return -STOP_DECEL if v > 0.05 else -0.5
    need = v * v / (2.0 * d)
    if need >= STOP_DECEL:
        return -need
    return min(A_MAX, math.sqrt(2.0 * STOP_DECEL * d) - v)


def _actors_ahead(world: World, s: float) -> list[tuple[float, float]]:
    """(bumper gap, speed along the path) of every actor whose box is on the route path ahead."""
    path = world.scenario.route.path
    e = world.ego
    actors = world._actors()
    if not actors:
        return []
    arr = np.asarray(actors)
    near = (arr[:, 0] - e.x) ** 2 + (arr[:, 1] - e.y) ** 2 < (SCAN + 5.0) ** 2
    if not near.any():
        return []
    arr = arr[near]
    i0 = max(int((s - 2.0) / path.ds), 0)
    i1 = min(int((s + SCAN) / path.ds) + 1, path.n)
    if i1 - i0 < 2:
        return []
    win = path.xy[i0:i1]
    d2 = (arr[:, None, 0] - win[None, :, 0]) ** 2 + (arr[:, None, 1] - win[None, :, 1]) ** 2
    j = d2.argmin(axis=1)
    dist = np.sqrt(d2[np.arange(len(arr)), j])
    out = []
    for (_x, _y, yaw, length, width, speed), jj, d in zip(arr.tolist(), j.tolist(), dist.tolist(), strict=True):
        if jj == 0 or jj == i1 - i0 - 1:
            continue
        idx = i0 + jj
        rel = yaw - path.yaw[idx]
        cr, sr = abs(math.cos(rel)), abs(math.sin(rel))
        reach = 0.5 * e.width + 0.5 * (sr * length + cr * width) + 0.4
        if d > reach:
            continue
        gap = idx * path.ds - s - 0.5 * e.length - 0.5 * (cr * length + sr * width)
        if gap < -0.5 * e.length:  # beside or behind the ego
            continue
        out.append((gap, speed * math.cos(rel)))
    return out


def drive(scenario: Scenario, expert: Expert | None = None, dt: float = 0.1) -> dict:
    """Drive ``scenario`` with the expert until done; a summary of how it went (tests, make_scenario)."""
    world = World(scenario)
    expert = expert or Expert()
    offroad_steps = 0
    while world.done() is None:
        a, k = expert.control(world)
        world.step(dt, a, k)
        offroad_steps += world.offroad()
    return {"done": world.done(), "t": world.t, "progress": world.progress(), "collisions": world.collisions(),
            "offroad_steps": offroad_steps}
