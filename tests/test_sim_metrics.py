"""Closed-loop metrics: the PDM score's parts on hand-made traces whose answers are derived by hand,
and the tracker on a real drive of the world."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from vla.runtime.errors import VlaError
from vla.sim.metrics import (
    MAX_ABS_LON_JERK,
    MetricsTracker,
    aggregate,
    is_comfortable,
    no_collision_score,
    pdms,
)
from vla.sim.world import Expert, VehicleState, World, make_scenario


@dataclass
class Trace:
    """A hand-made drive: what the tracker reads of a world, set tick by tick by the test."""

    t: float = 0.0
    ego: VehicleState = field(default_factory=lambda: VehicleState(0.0, 0.0, 0.0, 5.0))
    off: bool = False
    hits: list[str] = field(default_factory=list)
    prog: float = 0.0
    ttc_s: float = math.inf
    end: str | None = None

    def offroad(self) -> bool:
        return self.off

    def collisions(self) -> list[str]:
        return list(self.hits)

    def collision(self) -> str | None:
        return self.hits[0] if self.hits else None

    def progress(self) -> float:
        return self.prog

    def ttc(self) -> float:
        return self.ttc_s

    def done(self) -> str | None:
        return self.end


def test_pdms_formula_by_hand():
    assert pdms(1, 1, 1, 1, 1) == 1.0
    assert pdms(1, 1, 1, 0.5, 1) == pytest.approx((5 + 2.5 + 2) / 12)  # 0.7917
    assert pdms(1, 1, 0, 1, 0) == pytest.approx(5 / 12)
    assert pdms(0.5, 1, 1, 1, 1) == 0.5
    assert pdms(0, 1, 1, 1, 1) == 0.0 and pdms(1, 0, 1, 1, 1) == 0.0


def test_collision_score_distinguishes_static_obstacles():
    assert no_collision_score([]) == 1.0
    assert no_collision_score(["obstacle 2"]) == 0.5
    assert no_collision_score(["obstacle 2", "vehicle 0"]) == 0.0


def test_comfort_thresholds():
    assert is_comfortable(-4.0, 2.3, 4.8, 4.1)
    assert not is_comfortable(-4.1, 2.3, 4.8, 4.1)  # brakes harder than -4.05
    assert not is_comfortable(-4.0, 2.5, 4.8, 4.1)  # accelerates harder than 2.40
    assert not is_comfortable(-4.0, 2.3, 4.9, 4.1)  # lateral beyond 4.89
    assert not is_comfortable(-4.0, 2.3, 4.8, 4.2)  # jerk beyond 4.13
    assert not is_comfortable(-4.0, 2.3, 4.8, 4.1, max_abs_yaw_rate=1.0)


def test_a_clean_half_route_by_hand():
    """10 ticks of 0.1 s at 5 m/s on a straight, accel 0 -> 0.3 at tick 5 (jerk 3 m/s^3), half the
    route: NC = DAC = TTC = C = 1, EP = 0.5 -> (5 + 2.5 + 2) / 12."""
    w = Trace()
    m = MetricsTracker(w)
    for i in range(1, 11):
        w.t = 0.1 * i
        w.ego.accel = 0.3 if i >= 5 else 0.0
        w.prog = 0.05 * i
        w.ttc_s = 3.0
        m.update(w)
    r = m.result()
    assert r["max_abs_jerk"] == pytest.approx(3.0) and r["max_abs_jerk"] < MAX_ABS_LON_JERK
    assert (r["nc"], r["dac"], r["ttc"], r["comfort"]) == (1.0, 1.0, 1.0, True)
    assert r["route_completion"] == r["ep"] == pytest.approx(0.5)
    assert r["score"] == pytest.approx(9.5 / 12)
    assert r["duration_s"] == pytest.approx(1.0) and r["min_ttc"] == 3.0 and r["collisions"] == 0


def test_offroad_ttc_and_collisions_by_hand():
    """Off the road for 3 ticks (0.3 s), TTC 0.5 s once while moving, hits an obstacle then a car."""
    w = Trace()
    m = MetricsTracker(w)
    for i in range(1, 11):
        w.t = 0.1 * i
        w.off = 3 <= i <= 5
        w.ttc_s = 0.5 if i == 7 else 2.0
        if i == 8:
            w.hits = ["obstacle 1"]
        if i == 9:
            w.hits = ["obstacle 1", "vehicle 4"]
        w.prog = 0.9
        m.update(w)
    r = m.result()
    assert r["offroad"] and r["offroad_s"] == pytest.approx(0.3)
    assert r["min_ttc"] == 0.5 and r["ttc"] == 0.0
    assert r["collided_with"] == ["obstacle 1", "vehicle 4"] and r["collisions"] == 2
    assert r["nc"] == 0.0 and r["dac"] == 0.0 and r["score"] == 0.0


def test_standing_still_is_not_a_ttc_failure_and_lateral_accel_counts():
    w = Trace(ego=VehicleState(0.0, 0.0, 0.0, 0.0))
    m = MetricsTracker(w)
    w.t, w.ttc_s = 0.1, 0.0  # something touching distance ahead, but the ego stands
    m.update(w)
    assert m.result()["ttc"] == 1.0
    w.t, w.ego.speed, w.ego.curvature, w.ttc_s = 0.2, 10.0, 0.05, math.inf  # v^2 k = 5 m/s^2
    m.update(w)
    r = m.result()
    assert r["max_lat_accel"] == pytest.approx(5.0) and not r["comfort"]
    assert r["score"] == pytest.approx(5 / 12)  # EP 0, comfort 0: only TTC's 5/12 left


def test_time_must_advance():
    w = Trace()
    m = MetricsTracker(w)
    with pytest.raises(VlaError, match="advance"):
        m.update(w)


def test_aggregate_by_hand():
    a = {"score": 1.0, "nc": 1.0, "dac": 1.0, "ttc": 1.0, "ep": 1.0, "comfort": True, "route_completion": 1.0,
         "collisions": 0, "offroad": False, "offroad_s": 0.0, "duration_s": 20.0, "done": "goal"}
    b = dict(a, score=0.0, nc=0.0, ep=0.4, route_completion=0.4, comfort=False, collisions=1, offroad=True,
             offroad_s=1.5, duration_s=8.0, done="collision")
    s = aggregate([a, b])
    assert s["episodes"] == 2 and s["score"] == 0.5 and s["ep"] == pytest.approx(0.7) and s["comfort"] == 0.5
    assert s["collisions"] == 1 and s["collision_rate"] == 0.5 and s["offroad_rate"] == 0.5
    assert s["offroad_s"] == 1.5 and s["duration_s"] == 28.0 and s["goal_rate"] == 0.5
    assert s["done"] == {"goal": 1, "collision": 1}
    with pytest.raises(VlaError):
        aggregate([])


def test_tracker_on_real_drives():
    """The expert scores 1; a car that never moves scores EP 0 (and, braking at the car's jerk
    limit, fails comfort): (5 * TTC) / 12."""
    world, expert = World(make_scenario(2)), Expert()
    m = MetricsTracker(world)
    while world.done() is None:
        world.step(0.1, *expert.control(world))
        m.update(world)
    r = m.result()
    assert r["done"] == "goal" and r["score"] == 1.0 and r["comfort"]

    world = World(make_scenario(2))
    m = MetricsTracker(world)
    for _ in range(30):
        world.step(0.1, -6.0, 0.0)
        m.update(world)
    r = m.result()
    assert r["max_abs_jerk"] > MAX_ABS_LON_JERK and not r["comfort"]
    assert r["ep"] < 0.1 and r["ttc"] == 1.0
    assert r["score"] == pytest.approx((5 + 5 * r["ep"]) / 12)
