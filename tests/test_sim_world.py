"""The synthetic driving world: geometry, the car, the map raster, traffic, the expert, determinism.

The expert test drives real scenarios end to end; the others check one mechanism each with answers
derived by hand.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from vla.runtime.errors import VlaError
from vla.sim.world import COMMAND_PHRASES, Expert, GroundMap, Scenario, VehicleState, World, make_scenario
from vla.sim.world.expert import drive
from vla.sim.world.geometry import Path, boxes_overlap
from vla.sim.world.navigator import command_key
from vla.sim.world.raster import ASPHALT, GRASS, WHITE, build_ground
from vla.sim.world.roads import LANE_WIDTH
from vla.sim.world.scenario import Crossing, LaneChange, Route
from vla.sim.world.vehicle import MAX_ACCEL, MAX_CURVATURE, REAR_AXLE, bicycle_step

EXPERT_SEEDS = range(30)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return make_scenario(3)


# -- geometry ----------------------------------------------------------------------------------
def test_boxes_overlap_by_hand():
    car = (0.0, 0.0, 0.0, 4.0, 2.0)
    assert boxes_overlap(car, (3.9, 0.0, 0.0, 4.0, 2.0))  # 0.1 m of overlap nose to tail
    assert not boxes_overlap(car, (4.1, 0.0, 0.0, 4.0, 2.0))
    assert not boxes_overlap(car, (0.0, 2.1, 0.0, 4.0, 2.0))  # side by side, 0.1 m apart
    # Rotated 45 deg: its corner reaches sqrt(2) * 1 m ahead of its centre along x (a 2x2 square).
    assert boxes_overlap(car, (2.0 + math.sqrt(2) - 0.05, 0.0, math.pi / 4, 2.0, 2.0))
    assert not boxes_overlap(car, (2.0 + math.sqrt(2) + 0.05, 0.0, math.pi / 4, 2.0, 2.0))


def test_path_pose_and_projection_on_a_circle():
    r = 20.0
    ang = np.linspace(0.0, math.pi / 2, 400)
    path = Path(np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1))
    assert path.length == pytest.approx(r * math.pi / 2, rel=1e-4)
    x, y, yaw = path.pose(r * math.pi / 4)
    assert (x, y) == pytest.approx((r / math.sqrt(2), r / math.sqrt(2)), abs=3e-3)  # chords of a circle
    assert yaw == pytest.approx(3 * math.pi / 4, abs=1e-3)
    assert np.median(path.kappa) == pytest.approx(1 / r, rel=1e-3)
    # A point 1 m outside the circle at 30 deg: s = r * pi/6, 1 m to the right of travel.
    s, lat, _ = path.project(21.0 * math.cos(math.pi / 6), 21.0 * math.sin(math.pi / 6), hint=0)
    assert s == pytest.approx(r * math.pi / 6, abs=0.02)
    assert lat == pytest.approx(-1.0, abs=0.01)


# -- the car -------------------------------------------------------------------------------------
def test_bicycle_drives_straight_and_on_circles():
    car = VehicleState(0.0, 0.0, 0.0, 10.0)
    for _ in range(20):
        bicycle_step(car, 0.0, 0.0, 0.05)
    assert (car.x, car.y, car.speed) == pytest.approx((10.0, 0.0, 10.0))
    # Constant curvature 0.1 (already reached): the rear axle stays on a circle of radius 10 m.
    car = VehicleState(REAR_AXLE, 0.0, 0.0, 5.0, curvature=0.1)
    for _ in range(100):
        bicycle_step(car, 0.0, 0.1, 0.05)
        rx, ry = car.x - REAR_AXLE * math.cos(car.yaw), car.y - REAR_AXLE * math.sin(car.yaw)
        assert math.hypot(rx, ry - 10.0) == pytest.approx(10.0, abs=1e-9)
    assert car.yaw_rate == pytest.approx(0.5)


def test_bicycle_limits_the_commands():
    car = VehicleState(0.0, 0.0, 0.0, 1.0)
    bicycle_step(car, 100.0, 5.0, 0.05)
    assert car.accel == pytest.approx(15.0 * 0.05)  # jerk-limited first step
    assert car.curvature == pytest.approx(0.3 * 0.05)  # steering-rate limited
    for _ in range(100):
        bicycle_step(car, 100.0, 5.0, 0.05)
    assert car.accel == MAX_ACCEL and car.curvature == MAX_CURVATURE
    for _ in range(200):  # full braking: stops, never reverses
        bicycle_step(car, -100.0, 0.0, 0.05)
        assert car.speed >= 0.0
    assert car.speed == 0.0


# -- the map ---------------------------------------------------------------------------------------
def test_ground_raster_is_drawn_where_the_roads_are(scenario):
    net = scenario.network
    ground = build_ground(net)
    assert isinstance(ground, GroundMap) and ground.image.dtype == np.uint8 and ground.image.shape[2] == 3

    def px(x: float, y: float) -> tuple[int, ...]:
        return tuple(ground.image[round((y - ground.y0) / ground.res), round((x - ground.x0) / ground.res)])

    node = net.nodes[4]
    assert px(node.x, node.y) == ASPHALT
    # The middle of the block between four junctions is grass.
    assert px(node.x + 40.0, node.y + 40.0) == GRASS
    road = net.roads[0]
    x, y, tx, ty = road.frame(road.length / 2)
    assert px(x + ty * LANE_WIDTH * 0.5, y - tx * LANE_WIDTH * 0.5) == ASPHALT  # a lane centre
    # The edge line (solid white) 7 m right of the centre line.
    assert px(x + ty * 7.0, y - tx * 7.0) == WHITE
    # The stop line just before the junction, across the incoming lanes.
    x, y, tx, ty = road.frame(road.length - 0.2)
    assert px(x + ty * 3.0, y - tx * 3.0) == WHITE
    assert scenario.ground() is scenario.ground()  # built once, cached


def test_map_and_route_geometry_within_the_design_limits():
    for seed in range(10):
        sc = make_scenario(seed, verify=False)
        lanes = [s for s in sc.network.segments if s.kind == "lane"]
        assert max(max(abs(k) for k in s.path.kappa) for s in lanes) < 1 / 30.0  # lane radius >= 30 m
        turns = [s for s in sc.network.segments if s.kind == "connector" and s.turn != "straight"]
        assert min(1 / max(abs(k) for k in s.path.kappa[2:-2]) for s in turns) >= 10.0 - 0.05
        assert len(sc.route.crossings) == 2 and all(c.turn in ("left", "right", "straight")
                                                    for c in sc.route.crossings)
        assert 0 <= len(sc.traffic) <= 6


# -- determinism, copies, pickling -----------------------------------------------------------------
def _fingerprint(world: World) -> tuple:
    boxes, colors = world.boxes()
    e = world.ego
    return (world.t, e.x, e.y, e.yaw, e.speed, e.accel, e.curvature, boxes.tobytes(), colors.tobytes(),
            world.command(), world.progress())


def _drive(world: World, steps: int) -> None:
    for i in range(steps):
        world.step(0.1, 1.0 if i % 20 < 10 else -1.0, 0.01 * math.sin(i / 7))


def test_same_seed_same_scenario_and_same_world_after_same_controls():
    a, b = make_scenario(11), make_scenario(11)
    assert a.route.path.xy.tobytes() == b.route.path.xy.tobytes()
    assert a.traffic == b.traffic and a.obstacles == b.obstacles and a.ego_start == b.ego_start
    assert np.array_equal(a.ground().image, b.ground().image)
    wa, wb = World(a), World(b)
    _drive(wa, 50)
    _drive(wb, 50)
    assert _fingerprint(wa) == _fingerprint(wb)
    c = make_scenario(12)
    assert c.route.path.xy.shape != a.route.path.xy.shape or not np.array_equal(c.route.path.xy, a.route.path.xy)


def test_copy_is_independent_and_pickles_round_trip(scenario):
    world = World(scenario)
    _drive(world, 20)
    before = _fingerprint(world)
    twin = world.copy()
    _drive(twin, 30)
    assert _fingerprint(world) == before
    assert _fingerprint(twin) != before

    sc2 = pickle.loads(pickle.dumps(scenario))
    assert sc2.route.path.xy.tobytes() == scenario.route.path.xy.tobytes() and sc2.traffic == scenario.traffic
    w2 = pickle.loads(pickle.dumps(world))
    _drive(world, 30)
    _drive(w2, 30)
    assert _fingerprint(w2) == _fingerprint(world) == _fingerprint(twin)
    assert len(pickle.dumps(scenario)) < 5_000_000  # the raster is not shipped, it is rebuilt


# -- the navigator ----------------------------------------------------------------------------------
def test_command_phrases_along_a_route():
    path = Path(np.array([[0.0, 0.0], [300.0, 0.0]]))
    route = Route(path, 0.0, 250.0, (Crossing(80.0, 110.0, 0, 2, "left"), Crossing(180.0, 200.0, 1, 2, "straight")),
                  LaneChange(20.0, 45.0, "right"), (10.0,) * path.n, ())
    expect = {0.0: "follow", 9.9: "follow", 10.0: "lane_change_right", 44.9: "lane_change_right", 45.0: "left",
              109.9: "left", 110.0: "follow", 154.9: "follow", 155.0: "straight", 199.9: "straight",
              200.0: "follow", 220.0: "stop", 260.0: "stop"}
    assert {s: command_key(route, s) for s in expect} == expect
    # A lane change right after a junction: the junction's command holds until through it.
    route = Route(path, 0.0, 250.0, (Crossing(80.0, 110.0, 0, 2, "right"),), LaneChange(113.0, 138.0, "left"),
                  (10.0,) * path.n, ())
    expect = {60.0: "right", 102.9: "right", 109.9: "right", 110.0: "lane_change_left", 137.9: "lane_change_left",
              138.0: "follow", 219.9: "follow", 220.0: "stop"}
    assert {s: command_key(route, s) for s in expect} == expect
    assert set(COMMAND_PHRASES) == {"follow", "straight", "left", "right", "lane_change_left",
                                    "lane_change_right", "stop"}


# -- the world's checks -----------------------------------------------------------------------------
def test_offroad_collision_and_ttc_by_hand(scenario):
    world = World(scenario)
    assert not world.offroad() and world.collision() is None and world.done() is None
    node = scenario.network.nodes[4]
    world.ego.x, world.ego.y = node.x + 40.0, node.y + 40.0  # the grass in the middle of a block
    world._check_ego()
    assert world.offroad()

    world = World(scenario)
    e = world.ego
    # A box 20 m straight ahead; ego at 8 m/s: bumper gap 20 - 2.3 - 0.5 = 17.2 m -> 2.15 s.
    e.curvature = 0.0
    box = (e.x + 20 * math.cos(e.yaw), e.y + 20 * math.sin(e.yaw))
    from vla.sim.world.scenario import Obstacle

    blocked = Scenario(scenario.seed, scenario.duration_s, scenario.network, scenario.route, scenario.ego_start, (),
                       (Obstacle(*box, e.yaw, 1.0, 1.0, 1.0, (255, 0, 0), "box"),))
    world = World(blocked)
    world.ego.curvature, world.ego.speed = 0.0, 8.0
    assert world.ttc() == pytest.approx(17.2 / 8.0, abs=0.051)  # sampled every 0.05 s
    while world.done() is None:
        world.step(0.1, 0.0, 0.0)
    assert world.done() == "collision" and world.collision() == "obstacle 0"
    assert world.collisions() == ["obstacle 0"]


def test_boxes_and_commands_are_well_formed(scenario):
    world = World(scenario)
    boxes, colors = world.boxes()
    assert boxes.dtype == np.float32 and boxes.shape == (len(scenario.traffic) + len(scenario.obstacles), 6)
    assert colors.dtype == np.uint8 and colors.shape == (len(boxes), 3)
    assert np.all(boxes[:, 3:] > 0)
    assert world.command() in COMMAND_PHRASES.values()


def test_bad_input_is_a_one_line_error(scenario):
    with pytest.raises(VlaError, match="seed"):
        make_scenario(-1)
    with pytest.raises(VlaError, match="traffic"):
        make_scenario(1, traffic=-2)
    with pytest.raises(VlaError, match="finite"):
        World(scenario).step(0.1, float("nan"), 0.0)
    with pytest.raises(VlaError, match="dt"):
        World(scenario).step(0.0, 0.0, 0.0)


# -- the expert ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", EXPERT_SEEDS)
def test_expert_completes_every_scenario_safely(seed):
    sc = make_scenario(seed)
    world = World(sc)
    expert = Expert()
    vehicles_overlap = 0
    while world.done() is None:
        world.step(0.1, *expert.control(world))
        assert not world.offroad(), f"seed {seed}: off-road at t={world.t:.1f}"
        live = world.traffic_states()
        for i, (a, xa, ya, ta, _) in enumerate(live):  # traffic never runs into traffic either
            for b, xb, yb, tb, _ in live[i + 1:]:
                sa, sb = sc.traffic[a], sc.traffic[b]
                vehicles_overlap += boxes_overlap((xa, ya, ta, sa.length, sa.width), (xb, yb, tb, sb.length, sb.width))
    assert world.done() == "goal", (seed, world.done(), world.progress())
    assert world.collisions() == [] and vehicles_overlap == 0
    assert world.progress() == 1.0
    assert 10.0 < world.t <= sc.duration_s


def test_the_safety_net_is_rarely_needed():
    """make_scenario drops vehicles only where the expert would otherwise miss the deadline."""
    dropped = sum(len(make_scenario(s, verify=False).traffic) - len(make_scenario(s).traffic) for s in range(20))
    assert dropped <= 1
    assert drive(make_scenario(5, verify=False))["done"] == "goal"


def test_future_controls_are_the_expert_s_own_and_leave_the_world_alone(scenario):
    world = World(scenario)
    expert = Expert()
    for _ in range(30):
        world.step(0.1, *expert.control(world))
    before = _fingerprint(world)
    labels = expert.future_controls(world, steps=64, dt=0.1)
    assert labels.shape == (64, 2) and labels.dtype == np.float32
    assert _fingerprint(world) == before
    assert tuple(labels[0]) == pytest.approx(expert.control(world), abs=1e-6)
    # Driving the labels open loop from a copy (at the label's own step) retraces the look-ahead.
    twin = world.copy()
    twin.dt = 0.1
    for a, k in labels[:30]:
        twin.step(0.1, float(a), float(k))
    relabel = expert.future_controls(twin, steps=4, dt=0.1)
    np.testing.assert_allclose(relabel, labels[30:34], atol=1e-5)
    # Exploration noise (seeded) perturbs control() only, never the label.
    noisy, again = Expert(seed=5, noise=0.5), Expert(seed=5, noise=0.5)
    assert noisy.control(world) == again.control(world) != expert.control(world)
    np.testing.assert_array_equal(noisy.future_controls(world, steps=8), labels[:8])


def test_the_expert_turns_as_the_commands_say():
    """Through each junction the ego's heading changes by about +90 deg after "turn left", -90 deg
    after "turn right", 0 after "go straight"; after a lane change it sits in the lane it was told to take."""
    want = {"turn left": math.pi / 2, "turn right": -math.pi / 2, "go straight": 0.0}
    seen = set()
    for seed in range(8):
        sc = make_scenario(seed)
        world, expert = World(sc), Expert()
        marks: dict[str, float] = {}
        lateral_after_change = None
        while world.done() is None:
            s, lat = world.route_position()
            for k, c in enumerate(sc.route.crossings):
                if f"in{k}" not in marks and s >= c.s_entry - 15.0:
                    marks[f"in{k}"], marks[f"cmd{k}"] = world.ego.yaw, world.command()  # type: ignore[assignment]
                if f"out{k}" not in marks and s >= c.s_exit + 10.0:
                    marks[f"out{k}"] = world.ego.yaw
            lc = sc.route.lane_change
            if lc and lateral_after_change is None and s > lc.s_end + 5.0:
                lateral_after_change = lat
            world.step(0.1, *expert.control(world))
        assert world.done() == "goal"
        for k in range(len(sc.route.crossings)):
            cmd = marks[f"cmd{k}"]
            turned = (marks[f"out{k}"] - marks[f"in{k}"] + math.pi) % (2 * math.pi) - math.pi
            assert abs(turned - want[cmd]) < math.pi / 4, (seed, k, cmd, turned)  # roads curve a little
            seen.add(cmd)
        if lateral_after_change is not None:  # the route path is the target lane's centre there
            assert abs(lateral_after_change) < 0.5
    assert seen == set(want)


def test_a_car_that_leaves_its_route_makes_no_progress_past_the_turn():
    seed = next(s for s in range(30) if make_scenario(s, verify=False).route.crossings[0].turn != "straight")
    sc = make_scenario(seed, verify=False)
    world = World(sc)
    for _ in range(150):  # straight on, at the start speed, through the junction where the route turns
        world.step(0.1, 0.0, 0.0)
    c = sc.route.crossings[0]
    assert world.progress() < (c.s_exit - sc.route.s_start) / sc.route.length
    assert world.route_position()[0] < c.s_exit + 5.0
    assert world.command() in COMMAND_PHRASES.values()


def test_traffic_waits_for_an_ego_standing_in_a_junction():
    """The ego stops dead in the middle of the first junction; 30 s of traffic around it hit nothing."""
    waited = 0
    for seed in range(4):
        sc = make_scenario(seed, traffic=6, verify=False)
        world = World(sc)
        node = sc.network.nodes[sc.route.crossings[0].node]
        world.ego.x, world.ego.y, world.ego.speed = node.x, node.y, 0.0
        for _ in range(300):
            world.step(0.1, 0.0, 0.0)
            waited += any(v < 0.1 for *_, v in world.traffic_states())
        assert world.collisions() == [], seed
    assert waited > 0  # someone had to stop for it
