"""Closed-loop driving metrics in the style of NAVSIM's PDM score (PDMS).

PDMS = NC * DAC * (5 * TTC + 5 * EP + 2 * C) / 12, with
  NC   no collision: 1, 0.5 if the ego hit only static obstacles (NAVSIM's rule), else 0;
  DAC  drivable-area compliance: 0 if the ego's box ever left the asphalt, else 1;
  TTC  1 if the time to collision stayed >= 0.9 s while the ego moved, else 0;
  EP   ego progress: here the route completion 0..1 (NAVSIM compares with a reference planner's
       progress; our route is known, so completion is the direct measure);
  C    comfort: every comfort signal within the thresholds below.

The comfort thresholds are nuPlan's ``ego_is_comfortable`` defaults, which NAVSIM's PDM comfort
metric reuses (navsim/planning/simulation/planner/pdm_planner/scoring/pdm_comfort_metrics.py).
The signals are the ego's actuator state per tick (already jerk-limited by the car model), so no
extra smoothing filter is applied.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from vla.runtime.errors import VlaError

# nuPlan / NAVSIM comfort thresholds.
MIN_LON_ACCEL = -4.05  # m/s^2
MAX_LON_ACCEL = 2.40  # m/s^2
MAX_ABS_LAT_ACCEL = 4.89  # m/s^2
MAX_ABS_LON_JERK = 4.13  # m/s^3
MAX_ABS_YAW_RATE = 0.95  # rad/s
MAX_ABS_YAW_ACCEL = 1.93  # rad/s^2
TTC_THRESHOLD = 0.9  # s (NAVSIM)
MOVING_SPEED = 0.1  # m/s: below this the ego counts as standing (no TTC penalty)
STATIC_COLLISION_NC = 0.5  # NAVSIM: hitting a static object halves the score instead of zeroing it


def pdms(nc: float, dac: float, ttc: float, ep: float, comfort: float) -> float:
    """NAVSIM's PDM score from its sub-scores (each 0..1)."""
    return nc * dac * (5.0 * ttc + 5.0 * ep + 2.0 * comfort) / 12.0


def no_collision_score(collided_with: list[str]) -> float:
    """NC from the names of what was hit ("vehicle 3", "obstacle 1"): 1, 0.5 (static only) or 0."""
    if not collided_with:
        return 1.0
    if all(name.startswith("obstacle") for name in collided_with):
        return STATIC_COLLISION_NC
    return 0.0


def is_comfortable(min_lon_accel: float, max_lon_accel: float, max_abs_lat_accel: float, max_abs_jerk: float,
                   max_abs_yaw_rate: float = 0.0, max_abs_yaw_accel: float = 0.0) -> bool:
    """Whether the extremes of a drive are all within the comfort thresholds."""
    return (min_lon_accel >= MIN_LON_ACCEL and max_lon_accel <= MAX_LON_ACCEL
            and max_abs_lat_accel <= MAX_ABS_LAT_ACCEL and max_abs_jerk <= MAX_ABS_LON_JERK
            and max_abs_yaw_rate <= MAX_ABS_YAW_RATE and max_abs_yaw_accel <= MAX_ABS_YAW_ACCEL)


class MetricsTracker:
    """Accumulates one closed-loop drive. Create it on the fresh world, call ``update(world)`` after
    every ``world.step``, read ``result()`` at the end (or at any time)."""

    def __init__(self, world: Any) -> None:
        self._t = float(world.t)
        self._t0 = self._t
        e = world.ego
        self._accel = float(e.accel)
        self._yaw_rate = float(e.yaw_rate)
        self.min_lon_accel = self.max_lon_accel = float(e.accel)
        self.max_abs_lat_accel = abs(e.speed * e.speed * e.curvature)
        self.max_abs_jerk = 0.0
        self.max_abs_yaw_rate = abs(self._yaw_rate)
        self.max_abs_yaw_accel = 0.0
        self.min_ttc = math.inf
        self.offroad_s = 0.0
        self.offroad = bool(world.offroad())
        self.collided_with: list[str] = []
        self.progress = float(world.progress())
        self.done: str | None = world.done()

    def update(self, world: Any) -> None:
        t = float(world.t)
        dt = t - self._t
        if dt <= 0:
            raise VlaError(f"MetricsTracker.update: the world's time did not advance ({self._t} -> {t})")
        e = world.ego
        accel, yaw_rate = float(e.accel), float(e.yaw_rate)
        self.min_lon_accel = min(self.min_lon_accel, accel)
        self.max_lon_accel = max(self.max_lon_accel, accel)
        self.max_abs_lat_accel = max(self.max_abs_lat_accel, abs(e.speed * e.speed * e.curvature))
        self.max_abs_jerk = max(self.max_abs_jerk, abs(accel - self._accel) / dt)
        self.max_abs_yaw_rate = max(self.max_abs_yaw_rate, abs(yaw_rate))
        self.max_abs_yaw_accel = max(self.max_abs_yaw_accel, abs(yaw_rate - self._yaw_rate) / dt)
        if e.speed > MOVING_SPEED:
            self.min_ttc = min(self.min_ttc, float(world.ttc()))
        if world.offroad():
            self.offroad = True
            self.offroad_s += dt
        hits = world.collisions() if hasattr(world, "collisions") else [c for c in [world.collision()] if c]
        for name in hits:
            if name not in self.collided_with:
                self.collided_with.append(name)
        self.progress = max(self.progress, float(world.progress()))
        self.done = world.done()
        self._t, self._accel, self._yaw_rate = t, accel, yaw_rate

    def result(self) -> dict:
        nc = no_collision_score(self.collided_with)
        dac = 0.0 if self.offroad else 1.0
        ttc = 1.0 if self.min_ttc >= TTC_THRESHOLD else 0.0
        comfort = is_comfortable(self.min_lon_accel, self.max_lon_accel, self.max_abs_lat_accel, self.max_abs_jerk,
                                 self.max_abs_yaw_rate, self.max_abs_yaw_accel)
        ep = min(1.0, max(0.0, self.progress))
        return {
            "route_completion": ep, "collisions": len(self.collided_with), "collided_with": list(self.collided_with),
            "offroad": self.offroad, "offroad_s": self.offroad_s, "max_abs_jerk": self.max_abs_jerk,
            "max_lat_accel": self.max_abs_lat_accel, "min_lon_accel": self.min_lon_accel,
            "max_lon_accel": self.max_lon_accel, "max_abs_yaw_rate": self.max_abs_yaw_rate,
            "max_abs_yaw_accel": self.max_abs_yaw_accel, "comfort": comfort, "min_ttc": self.min_ttc,
            "nc": nc, "dac": dac, "ttc": ttc, "ep": ep, "score": pdms(nc, dac, ttc, ep, float(comfort)),
            "duration_s": self._t - self._t0, "done": self.done,
        }


def aggregate(results: list[dict]) -> dict:
    """Summary of many drives: means of the scores, sums of counts and times, rates and done reasons."""
    if not results:
        raise VlaError("aggregate needs at least one result")
    n = len(results)

    def mean(key: str) -> float:
        return sum(float(r[key]) for r in results) / n

    return {
        "episodes": n,
        "score": mean("score"), "nc": mean("nc"), "dac": mean("dac"), "ttc": mean("ttc"), "ep": mean("ep"),
        "comfort": mean("comfort"), "route_completion": mean("route_completion"),
        "collisions": sum(int(r["collisions"]) for r in results),
        "collision_rate": sum(1 for r in results if r["collisions"]) / n,
        "offroad_rate": sum(1 for r in results if r["offroad"]) / n,
        "offroad_s": sum(float(r["offroad_s"]) for r in results),
        "duration_s": sum(float(r["duration_s"]) for r in results),
        "goal_rate": sum(1 for r in results if r["done"] == "goal") / n,
        "done": dict(Counter(str(r["done"]) for r in results)),
    }
