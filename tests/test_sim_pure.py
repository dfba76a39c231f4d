"""vla-sim's decisions as pure functions: following a published plan, and the sweep grammar."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vla.runtime.errors import VlaError
from vla.sim.sweep import engine_for, grid, parse_axis, table, tasks
from vla.sim.tracking import plan_in_world, plan_speed, pursuit_curvature, track


def _straight(speed: float, n: int = 30, dt: float = 0.1) -> np.ndarray:
    x = speed * dt * np.arange(1, n + 1)
    return np.column_stack([x, np.zeros(n), np.zeros(n)])


def test_a_plan_is_placed_at_the_pose_it_was_made_from():
    plan = plan_in_world(_straight(10.0), (100.0, 50.0, math.pi / 2), origin_time=3.0, dt=0.1)
    # Ego x forward is world +y at yaw 90 degrees.
    np.testing.assert_allclose(plan.xy[0], [100.0, 50.0])
    np.testing.assert_allclose(plan.xy[-1], [100.0, 50.0 + 30.0], atol=1e-9)
    np.testing.assert_allclose(plan.speed, 10.0)


def test_plan_speed_follows_the_plan_s_timing_and_stands_still_past_it():
    points = _straight(10.0)
    braking = points.copy()
    braking[15:, 0] = braking[14, 0]  # stops after 1.5 s
    plan = plan_in_world(braking, (0.0, 0.0, 0.0), origin_time=0.0, dt=0.1)
    v, _ = plan_speed(plan, 0.5)
    assert v == pytest.approx(10.0)
    v_late, _ = plan_speed(plan, 2.0)
    assert v_late == pytest.approx(0.0)
    assert plan_speed(plan, 100.0) == (0.0, 0.0)


def test_pure_pursuit_steers_back_to_a_plan_beside_the_car():
    plan = plan_in_world(_straight(10.0), (0.0, 0.0, 0.0), origin_time=0.0, dt=0.1)
    # The car 1 m right of the plan, heading along it: steer left (positive curvature).
    assert pursuit_curvature(plan, 0.0, -1.0, 0.0, 10.0) > 0.0
    assert pursuit_curvature(plan, 0.0, 1.0, 0.0, 10.0) < 0.0
    assert pursuit_curvature(plan, 5.0, 0.0, 0.0, 10.0) == pytest.approx(0.0, abs=1e-9)


def test_pure_pursuit_on_a_circle_asks_for_its_curvature():
    radius, speed, dt = 40.0, 8.0, 0.1
    theta = speed * dt * np.arange(1, 65) / radius
    points = np.column_stack([radius * np.sin(theta), radius * (1 - np.cos(theta)), theta])
    plan = plan_in_world(points, (0.0, 0.0, 0.0), origin_time=0.0, dt=dt)
    assert pursuit_curvature(plan, 0.0, 0.0, 0.0, speed) == pytest.approx(1.0 / radius, rel=0.02)


def test_track_without_a_plan_brakes_and_with_one_accelerates_towards_its_speed():
    assert track(None, 0.0, 0.0, 0.0, 0.0, 5.0)[0] < 0.0
    assert track(None, 0.0, 0.0, 0.0, 0.0, 0.0) == (0.0, 0.0)
    plan = plan_in_world(_straight(10.0), (0.0, 0.0, 0.0), origin_time=0.0, dt=0.1)
    accel, curvature = track(plan, 0.0, 0.0, 0.0, 0.0, 6.0)
    assert accel > 0.0 and curvature == pytest.approx(0.0, abs=1e-9)


def test_sweep_axes_are_read_and_refused_in_one_line():
    assert parse_axis("latency=0,50,100") == ("latency", [0.0, 50.0, 100.0])
    assert parse_axis("precision=fp32,int8") == ("precision", ["fp32", "int8"])
    for bad, needle in (("latency", "AXIS=V1"), ("speed=1,2", "unknown axis"), ("latency=0,x", "not a number"),
                        ("precision=fp8", "fp32, fp16, int8"), ("drop=1.5", "out of range"),
                        ("latency=-5", "out of range")):
        with pytest.raises(VlaError, match=needle):
            parse_axis(bad)


def test_the_grid_varies_the_first_axis_slowest_and_names_each_bundle():
    points = grid([("precision", ["fp32", "int8"]), ("latency", [0.0, 100.0])])
    assert points == [{"precision": "fp32", "latency": 0.0}, {"precision": "fp32", "latency": 100.0},
                      {"precision": "int8", "latency": 0.0}, {"precision": "int8", "latency": 100.0}]
    assert engine_for("b/ref-{precision}", points[2]) == "b/ref-int8"
    with pytest.raises(VlaError, match=r"\{precision\}"):
        engine_for("b/ref", points[0])
    with pytest.raises(VlaError, match="twice"):
        grid([("latency", [0.0]), ("latency", [1.0])])
    assert len(tasks("b/ref-{precision}", points, [1, 2, 3])) == 12


def test_the_table_has_a_row_per_point():
    overall = {"score": 0.9, "route_completion": 0.97, "collisions": 0, "offroad": 1, "ok_fraction": 0.99}
    text = table([{"point": {"latency": 50.0}, "scenarios": 3, "overall": overall}], ["latency"])
    lines = text.splitlines()
    assert lines[0].startswith("| latency |") and len(lines) == 3
    assert lines[2] == "| 50 | 3 | 0.900 | 97.0 % | 0 | 1 | 99.0 % |"


def test_the_controller_limits_jerk_except_for_an_emergency_brake():
    from vla.sim.tracking import COMFORT_BRAKE, JERK_LIMIT, limit_jerk

    assert limit_jerk(0.0, 2.0, 0.1) == pytest.approx(JERK_LIMIT * 0.1)
    assert limit_jerk(1.0, -1.0, 0.1) == pytest.approx(1.0 - JERK_LIMIT * 0.1)
    assert limit_jerk(0.5, 0.52, 0.1) == pytest.approx(0.52)
    assert limit_jerk(0.0, COMFORT_BRAKE - 2.0, 0.05) == COMFORT_BRAKE - 2.0


def test_a_sweep_point_sets_its_options_and_precision_only_picks_the_bundle():
    from vla.sim.closed_loop import SimOptions
    from vla.sim.sweep import options_for

    assert parse_axis("stage_rate=tick,every:3") == ("stage_rate", ["tick", 3])
    opts = options_for(SimOptions(), {"latency": 200.0, "precision": "int8", "drop": 0.1, "stage_rate": 3})
    assert (opts.latency_ms, opts.drop_frames, opts.stage_rate) == (200.0, 0.1, 3)
    with pytest.raises(VlaError, match="every:N"):
        parse_axis("stage_rate=sometimes")
