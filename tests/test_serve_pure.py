"""vla-serve's pure functions: plans on the simulator's clock and frame, egomotion kinematics, the camera
mapping, image decoding, the route's command. The quaternion arithmetic is checked against SciPy's
(a dependency of carla-driver-interface), which writes quaternions (x, y, z, w)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from carla_driver_interface.protocol import Trajectory
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from vla.runtime.errors import VlaError
from vla.serve.cameras import (
    ImageError,
    decode_image,
    header_size,
    map_cameras,
    neutral_frame,
    parse_camera_map,
    sniff,
)
from vla.serve.egomotion import Kinematics, Measured, derive, keep_newer, wrap_angle
from vla.serve.plan import (
    U64_MAX,
    heading,
    normalize,
    plan_poses,
    plan_to_proto,
    pose_at,
    quat_multiply,
    quat_rotate,
    yaw_quat,
)
from vla.serve.route import FOLLOW, LEFT, RIGHT, next_turn, route_command


def wxyz(r: Rotation) -> np.ndarray:
    x, y, z, w = r.as_quat()
    return np.array([w, x, y, z])


def same_rotation(a: np.ndarray, b: np.ndarray, tol: float = 1e-6) -> bool:
    """q and -q are the same rotation."""
    return bool(min(np.abs(a - b).max(), np.abs(a + b).max()) < tol)


# ---- quaternions and plans -----------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_quaternion_product_and_rotation_match_scipy(seed):
    rng = np.random.default_rng(seed)
    ra, rb = Rotation.random(random_state=rng), Rotation.random(random_state=rng)
    v = rng.normal(size=3)
    assert same_rotation(quat_multiply(wxyz(ra), wxyz(rb)), wxyz(ra * rb))
    np.testing.assert_allclose(quat_rotate(wxyz(ra), v), ra.apply(v), atol=1e-9)
    yaw = float(rng.uniform(-math.pi, math.pi))
    assert same_rotation(yaw_quat(yaw), wxyz(Rotation.from_euler("z", yaw)))
    # The heading of a pitched and rolled ego is the yaw of its x axis on the ground.
    tilted = Rotation.from_euler("ZYX", [yaw, rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)])
    forward = tilted.apply([1.0, 0.0, 0.0])
    assert heading(wxyz(tilted)) == pytest.approx(math.atan2(forward[1], forward[0]), abs=1e-9)


def test_zero_quaternion_is_the_identity():
    np.testing.assert_array_equal(normalize(np.zeros(4)), [1.0, 0.0, 0.0, 0.0])


def test_plan_starts_at_the_ego_and_composes_each_waypoint_in_the_local_frame():
    anchor_pos = np.array([100.0, -20.0, 1.5])
    anchor_quat = wxyz(Rotation.from_euler("z", math.pi / 2))  # heading +y in the local frame
    # Waypoint k: 2k metres ahead, 0.1k metres left, turned 0.05k rad left.
    k = np.arange(1, 5, dtype=np.float64)
    waypoints = np.column_stack([2.0 * k, 0.1 * k, 0.05 * k])
    plan = plan_poses(anchor_pos, anchor_quat, waypoints, 7_000_000, 7_100_000, 100_000)
    assert plan.times_us == [7_000_000 + 100_000 * i for i in range(5)]
    assert plan.positions.dtype == np.float32 and plan.quats.dtype == np.float32
    np.testing.assert_allclose(plan.positions[0], anchor_pos, atol=1e-4)
    assert same_rotation(plan.quats[0].astype(np.float64), anchor_quat)
    # Ahead of an ego heading +y is +y in the local frame; its left is -x.
    expected = anchor_pos + np.column_stack([-0.1 * k, 2.0 * k, np.zeros(4)])
    np.testing.assert_allclose(plan.positions[1:], expected, atol=1e-4)
    for i, q in enumerate(plan.quats[1:], start=1):  # (w, x, y, z) of the total yaw pi/2 + 0.05 i
        total = math.pi / 2 + 0.05 * i
        assert same_rotation(q.astype(np.float64), np.array([math.cos(total / 2), 0, 0, math.sin(total / 2)]), 1e-6)


def test_plan_reaches_the_query_time_past_the_horizon_by_continuing_the_last_motion():
    waypoints = np.column_stack([np.arange(1, 4) * 1.0, np.zeros(3), np.zeros(3)])  # 10 m/s straight
    plan = plan_poses(np.zeros(3), np.array([1.0, 0, 0, 0]), waypoints, 0, 500_000, 100_000)
    assert plan.times_us == [0, 100_000, 200_000, 300_000, 500_000]
    np.testing.assert_allclose(plan.positions[-1], [5.0, 0.0, 0.0], atol=1e-5)
    # A query inside the horizon changes nothing: the whole horizon is sent.
    assert len(plan_poses(np.zeros(3), np.array([1.0, 0, 0, 0]), waypoints, 0, 100_000, 100_000)) == 4


def test_plan_times_stay_on_the_unsigned_64_bit_clock():
    waypoints = np.column_stack([np.arange(1, 11) * 1.0, np.zeros(10), np.zeros(10)])
    now = U64_MAX - 250_000
    plan = plan_poses(np.zeros(3), np.array([1.0, 0, 0, 0]), waypoints, now, U64_MAX, 100_000)
    assert plan.times_us[:3] == [now, now + 100_000, now + 200_000]
    assert plan.times_us[-1] == U64_MAX and all(t <= U64_MAX for t in plan.times_us)
    message = plan_to_proto(plan, Trajectory)
    assert [p.timestamp_us for p in message.poses] == plan.times_us  # fixed64 carries every bit
    with pytest.raises(ValueError, match="time_query_us"):
        plan_poses(np.zeros(3), np.array([1.0, 0, 0, 0]), waypoints, 1_000, 999, 100_000)


def test_plan_on_the_wire_is_float32_positions_and_wxyz_quaternions():
    quat = wxyz(Rotation.from_euler("z", 0.3))
    plan = plan_poses(np.array([1234.5678, 2.0, 0.0]), quat, np.array([[1.0, 0.0, 0.0]]), 0, 100_000, 100_000)
    message = plan_to_proto(plan, Trajectory)
    first = message.poses[0].pose
    assert (first.vec.x, first.vec.y) == (float(np.float32(1234.5678)), 2.0)
    assert (first.quat.w, first.quat.z) == pytest.approx((math.cos(0.15), math.sin(0.15)), abs=1e-6)
    assert first.quat.x == 0.0 and first.quat.y == 0.0


def test_pose_at_interpolates_holds_and_extrapolates_a_bounded_arc():
    times = [1_000_000, 1_100_000]
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    quats = np.array([yaw_quat(0.0), yaw_quat(0.2)])
    assert pose_at([], np.zeros((0, 3)), np.zeros((0, 4)), 5) is None
    pos, q = pose_at(times, positions, quats, 1_050_000)
    np.testing.assert_allclose(pos, [0.5, 0.0, 0.0])
    assert heading(q) == pytest.approx(0.1)
    pos, _ = pose_at(times, positions, quats, 0)  # before the first: the first
    np.testing.assert_allclose(pos, [0.0, 0.0, 0.0])
    # 0.1 s past the last at 10 m/s, no turn: 1 m further along its heading (0.2 rad).
    pos, q = pose_at(times, positions, quats, 1_200_000, speed=10.0, yaw_rate=0.0)
    np.testing.assert_allclose(pos, [1.0 + math.cos(0.2), math.sin(0.2), 0.0], atol=1e-9)
    # Far past the last: extrapolated for max_extrapolate_us only, then held.
    far, _ = pose_at(times, positions, quats, 60_000_000, speed=10.0, max_extrapolate_us=500_000)
    np.testing.assert_allclose(far, [1.0 + 5.0 * math.cos(0.2), 5.0 * math.sin(0.2), 0.0], atol=1e-9)
    _, q = pose_at(times, positions, quats, 1_600_000, speed=0.0, yaw_rate=1.0)
    assert heading(q) == pytest.approx(0.7)


# ---- egomotion ---------------------------------------------------------------------------------------------------
def test_keep_newer_drops_resent_and_older_timestamps():
    assert keep_newer([1, 2, 2, 3, 1, 4], None) == [0, 1, 3, 5]
    assert keep_newer([1, 2, 3, 4], 3) == [3]
    assert keep_newer([3, 3], 3) == []


def test_derive_uses_what_is_measured_and_derives_the_rest():
    first = derive(None, 0, 0.0, 0.0, 0.0, Measured(speed=4.0))
    assert (first.speed, first.accel, first.yaw_rate) == (4.0, 0.0, 0.0)
    # 0.5 m along a heading of 0.05 rad in 0.1 s, turning 0.1 rad: speed 5, yaw rate 1, accel (5-4)/0.1.
    nxt = derive(first, 100_000, 0.5 * math.cos(0.05), 0.5 * math.sin(0.05), 0.1)
    assert nxt.speed == pytest.approx(5.0) and nxt.yaw_rate == pytest.approx(1.0) and nxt.accel == pytest.approx(10.0)
    measured = derive(first, 100_000, 0.5, 0.0, 0.0, Measured(speed=7.0, accel=-1.0, yaw_rate=0.3))
    assert (measured.speed, measured.accel, measured.yaw_rate) == (7.0, -1.0, 0.3)
    back = derive(Kinematics(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 100_000, -0.2, 0.0, 0.0)
    assert back.speed == pytest.approx(-2.0)  # reversing
    across = derive(Kinematics(0, 0.0, 0.0, 3.1, 0.0, 0.0, 0.0), 100_000, 0.0, 0.0, -3.1)
    assert across.yaw_rate == pytest.approx(wrap_angle(-6.2) / 0.1)  # +0.083 rad in 0.1 s, not -62 rad/s
    with pytest.raises(ValueError, match="not newer"):
        derive(first, 0, 0.0, 0.0, 0.0)


@settings(max_examples=60, deadline=None)
@given(st.floats(0.5, 30.0), st.floats(-0.5, 0.5), st.floats(-math.pi, math.pi), st.integers(20_000, 200_000))
def test_derived_motion_on_a_circle_is_the_chord_speed_and_the_exact_yaw_rate(speed, yaw_rate, yaw0, dt_us):
    """Sampling a constant-speed arc: the derived yaw rate is exact and the speed is the chord's,
    v * sin(x) / x with x = yaw_rate * dt / 2 (the displacement along the mean heading)."""
    dt = dt_us / 1e6
    turn = yaw_rate * dt
    x_half = 0.5 * turn
    chord = speed * dt * (math.sin(x_half) / x_half if x_half else 1.0)
    mid = yaw0 + x_half
    prev = Kinematics(0, 0.0, 0.0, yaw0, speed, 0.0, yaw_rate)
    k = derive(prev, dt_us, chord * math.cos(mid), chord * math.sin(mid), yaw0 + turn)
    assert k.yaw_rate == pytest.approx(yaw_rate, abs=1e-9)
    assert k.speed == pytest.approx(chord / dt, rel=1e-9)
    assert k.speed == pytest.approx(speed, rel=0.011)  # within 1.1 % at 0.5 rad/s over 0.2 s


# ---- cameras -------------------------------------------------------------------------------------------------------
ALPASIM = ["camera_front_wide_120fov", "camera_front_tele_30fov", "camera_cross_left_120fov",
           "camera_cross_right_120fov", "camera_rear_left_70fov", "camera_rear_right_70fov"]


def test_cameras_map_by_name_in_declaration_order():
    m = map_cameras(["front", "left", "right"], ALPASIM, {})
    assert m.source == {"front": "camera_front_wide_120fov", "left": "camera_cross_left_120fov",
                        "right": "camera_cross_right_120fov"}
    assert set(m.how.values()) == {"by name"}
    assert m.used == {"camera_front_wide_120fov": "front", "camera_cross_left_120fov": "left",
                      "camera_cross_right_120fov": "right"}


def test_cameras_map_explicitly_then_by_name_then_by_order():
    m = map_cameras(["front", "left", "right"], ALPASIM, {"front": "camera_front_tele_30fov"})
    assert m.source["front"] == "camera_front_tele_30fov" and m.how["front"] == "--camera-map"
    m = map_cameras(["a", "b"], ["cam1", "cam2", "cam3"], {})
    assert m.source == {"a": "cam1", "b": "cam2"} and set(m.how.values()) == {"by order"}
    m = map_cameras(["left", "main"], ["cam_main", "cam_left"], {})
    assert m.source == {"left": "cam_left", "main": "cam_main"}  # names first, whatever the order
    # A more specific name picks first: front_left is not left to "front".
    m = map_cameras(["front", "front_left"], ["cam_front_left", "cam_front"], {})
    assert m.source == {"front": "cam_front", "front_left": "cam_front_left"}
    m = map_cameras(["front", "left", "right"], ["camera_front"], {})
    assert m.source == {"front": "camera_front", "left": None, "right": None}
    assert "left=- (no camera: neutral frame)" in m.describe()
    with pytest.raises(ValueError, match="does not declare: front=camera_x"):
        map_cameras(["front"], ["camera_front"], {"front": "camera_x"})


def test_camera_map_flag_is_parsed_and_checked():
    assert parse_camera_map(["front=cam_a,left=cam_b", " right = cam_c "], ["front", "left", "right"]) == {
        "front": "cam_a", "left": "cam_b", "right": "cam_c"}
    for bad, needle in ((["front"], "expected NAME=LOGICAL_ID"), (["rear=cam"], "no camera 'rear'"),
                        (["front=a", "front=b"], "mapped twice")):
        with pytest.raises(VlaError, match=needle):
            parse_camera_map(bad, ["front", "left"])


def test_images_are_told_from_their_bytes_decoded_and_resized_to_the_declared_size():
    rgb = np.zeros((90, 160, 3), dtype=np.uint8)
    rgb[:, :80] = (255, 0, 0)
    for ext, kind in ((".png", "png"), (".jpg", "jpeg")):
        data = cv2.imencode(ext, rgb)[1].tobytes()
        assert sniff(data) == kind and header_size(data, kind) == (160, 90)
        image = decode_image(data)
        assert image.shape == (90, 160, 3) and image[45, 10, 0] >= 250 and image[45, 150, 0] <= 5  # BGR order kept
        assert decode_image(data, (320, 180)).shape == (180, 320, 3)
        assert decode_image(data, (0, 0)).shape == (90, 160, 3)  # no declared size: as it came
    for garbage, needle in ((b"", "no bytes"), (b"GIF89a....", "not a JPEG or PNG"),
                            (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "does not decode")):
        with pytest.raises(ImageError, match=needle):
            decode_image(garbage)


def test_an_image_claiming_too_many_pixels_is_refused_before_decoding():
    png = bytearray(cv2.imencode(".png", np.zeros((4, 4, 3), dtype=np.uint8))[1].tobytes())
    png[16:24] = (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big")  # IHDR: 100000 x 100000
    with pytest.raises(ImageError, match="100000x100000 pixels is larger"):
        decode_image(bytes(png))


def test_a_camera_nobody_feeds_sees_the_normalisation_mean():
    spec = {"height": 4, "width": 6, "color": "RGB", "normalization": {"mean": [123.675, 116.28, 103.53]}}
    frame = neutral_frame(spec)
    assert frame.shape == (4, 6, 3) and frame[0, 0].tolist() == [124, 116, 104]
    assert neutral_frame({"height": 2, "width": 2})[0, 0].tolist() == [128, 128, 128]


# ---- route -----------------------------------------------------------------------------------------------------------
def junction(turn_at: float, direction: float, start: float = -10.0) -> np.ndarray:
    """A route straight ahead to ``turn_at`` m, then at 90 degrees (direction +1 left, -1 right), every 2 m."""
    ahead = np.column_stack([np.arange(start, turn_at, 2.0), np.zeros(len(np.arange(start, turn_at, 2.0)))])
    side = np.column_stack([np.full(40, turn_at), direction * np.arange(1, 41) * 2.0])
    return np.column_stack([np.vstack([ahead, side]), np.zeros(len(ahead) + 40)])


def test_route_command_is_the_turn_at_the_next_junction():
    straight = np.column_stack([np.arange(0, 100, 2.0), np.zeros(50), np.zeros(50)])
    assert route_command(straight) == FOLLOW
    assert route_command(junction(20.0, +1)) == LEFT
    assert route_command(junction(20.0, -1)) == RIGHT
    assert route_command(junction(80.0, +1)) == FOLLOW  # beyond the look-ahead
    assert route_command(junction(80.0, +1), lookahead_m=100.0) == LEFT
    assert next_turn(junction(20.0, +1)) == pytest.approx(math.pi / 2, abs=0.5)
    # A gentle bend (radius 150 m: 19 degrees over 50 m) is the road, not a junction.
    s = np.arange(0, 120, 2.0)
    bend = np.column_stack([150 * np.sin(s / 150), 150 * (1 - np.cos(s / 150)), np.zeros(len(s))])
    assert route_command(bend) == FOLLOW
    assert route_command(bend, turn_deg=15.0) == LEFT


def test_route_command_tolerates_jitter_and_routes_without_a_direction():
    rng = np.random.default_rng(0)
    x = np.arange(0, 80, 0.5)
    jittery = np.column_stack([x, rng.normal(0, 0.05, len(x)), np.zeros(len(x))])
    assert route_command(jittery) == FOLLOW
    assert next_turn(np.zeros((0, 3))) is None and route_command(np.zeros((0, 3))) == FOLLOW
    assert next_turn(np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])) is None
    assert route_command(np.array([[0.0, 0.0, 0.0], [np.nan, 1.0, 0.0], [50.0, 0.0, 0.0]])) == FOLLOW
