"""vla-serve as AlpaSim's driver: a real ``vla-serve`` process on a free loopback port, driven by
carla-driver-interface's own ``FakeLoop`` (the package's closed loop, not a client of ours) and poked with the
package's generated stubs for the contract's error cases. The bundles are the reference models in their tiny
configurations, so a drive costs milliseconds: model 2 (three stages, controls output) and, for recurrent
state, model 1 (one graph, poses output; conftest's ``tiny_bundle``)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from carla_driver_interface.contract import METADATA_KEY, contract_metadata
from carla_driver_interface.protocol import (
    DriveRequest,
    DriveResponse,
    DriveSessionCloseRequest,
    DriveSessionRequest,
    DynamicState,
    EgodriverServiceStub,
    Empty,
    GroundTruthRequest,
    RolloutCameraImage,
    RolloutEgoTrajectory,
    Route,
    RouteRequest,
    Vec3,
    channel_options,
)
from carla_driver_interface.testing import FakeCamera, FakeLoop

from conftest import run_cli
from vla.runtime.cli_support import EXIT_USER_ERROR
from vla.runtime.engine import open_engine
from vla.serve.cli import main as serve_main
from vla.serve.decide import DecideConfig, Decider

SERVE = [sys.executable, "-m", "vla.serve.cli"]
CAMERAS = (FakeCamera("camera_front", width=160, height=90, pitch_down_deg=5.0),
           FakeCamera("camera_left", width=160, height=90, pitch_down_deg=5.0, yaw_left_deg=60.0),
           FakeCamera("camera_right", width=160, height=90, pitch_down_deg=5.0, yaw_left_deg=-60.0))
WAYPOINTS = 16  # TINY_V2's
DT_US = 100_000


class Server:
    """``vla-serve`` in a subprocess on a free port (``--port 0``: the port it bound is read from its
    'serving ... on HOST:PORT' line); its stderr is collected in ``lines``."""

    def __init__(self, bundle: Path, *args: str) -> None:
        self.proc = subprocess.Popen([*SERVE, "--engine", str(bundle), "--port", "0", "--warmup-runs", "2", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port = 0
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if " serving egodriver.EgodriverService " in line:
                self.port = int(line.rsplit(":", 1)[1])
                break
        assert self.port, "vla-serve did not start:\n" + "\n".join(self.lines)
        self.startup = list(self.lines)  # what it said before the port opened
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_for_line(self, needle: str, timeout: float = 10.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = [ln for ln in self.lines if needle in ln]
            if found:
                return found[-1]
            time.sleep(0.02)
        raise AssertionError(f"no line with {needle!r} in:\n" + "\n".join(self.lines))

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc


class Recorder(grpc.UnaryUnaryClientInterceptor):
    """Every unary call's method, request and response (None when it failed), as the wire carried them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, object]] = []

    def intercept_unary_unary(self, continuation, details, request):  # grpc's interface
        outcome = continuation(details, request)
        try:
            response = outcome.result()
        except grpc.RpcError:
            response = None
        self.calls.append((details.method.rsplit("/", 1)[-1], request, response))
        return outcome

    def of(self, method: str) -> list[tuple[object, object]]:
        return [(req, resp) for m, req, resp in self.calls if m == method]


@pytest.fixture(scope="module")
def server(tiny_v2_bundle):
    srv = Server(tiny_v2_bundle)
    yield srv
    srv.terminate()


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(server.target, options=channel_options())
    yield EgodriverServiceStub(channel)
    channel.close()


def code_of(call: Callable, request: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=10)
    return err.value.code()


def png(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return cv2.imencode(".png", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))[1].tobytes()


def start(stub: EgodriverServiceStub, cameras: tuple[FakeCamera, ...] = CAMERAS, seed: int = 0) -> str:
    session = str(uuid.uuid4())
    request = DriveSessionRequest(session_uuid=session, random_seed=seed)
    request.rollout_spec.vehicle.available_cameras.extend(c.available_camera() for c in cameras)
    stub.start_session(request, timeout=10, metadata=contract_metadata())
    return session


def egomotion(session: str, t_us: int, x: float, speed: float | None = None) -> RolloutEgoTrajectory:
    msg = RolloutEgoTrajectory(session_uuid=session)
    pose = msg.trajectory.poses.add()
    pose.timestamp_us = t_us
    pose.pose.vec.x, pose.pose.quat.w = x, 1.0
    if speed is not None:
        msg.dynamic_states.append(DynamicState(linear_velocity=Vec3(x=speed)))
    return msg


def image(session: str, camera: str, data: bytes, t_us: int = 0) -> RolloutCameraImage:
    msg = RolloutCameraImage(session_uuid=session)
    msg.camera_image.logical_id, msg.camera_image.image_bytes = camera, data
    msg.camera_image.frame_start_us = msg.camera_image.frame_end_us = t_us
    return msg


def drive(stub: EgodriverServiceStub, session: str, now: int, query: int | None = None) -> DriveResponse:
    return stub.drive(DriveRequest(session_uuid=session, time_now_us=now,
                                   time_query_us=now + DT_US if query is None else query), timeout=30)


# ---- the package's closed loop drives it --------------------------------------------------------------------------
def test_fakeloop_drives_vla_serve_along_the_road_with_plans_from_the_ego_in_the_local_frame(server):
    recorder = Recorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.target, options=channel_options()), recorder)
    # Off the lane centre and turned a little: a plan in the rig frame could not start at the ego's pose.
    with FakeLoop(channel, CAMERAS, initial_speed_mps=5.0, initial_lateral_offset_m=0.5,
                  initial_heading_rad=0.05) as loop:
        result = loop.run(20, seed=3)
    channel.close()
    assert result.steps == 20 and not result.terminated_by_policy
    # It moved along the road: forward, at about the speed it started with (an untrained model steers little).
    assert result.ego.positions[-1][0] > 4.0, result.ego.positions[:, 0]
    assert abs(result.ego.positions[-1][1] - 0.5) < 3.0
    poses = {req.trajectory.poses[0].timestamp_us: req.trajectory.poses[0].pose
             for req, _ in recorder.of("submit_egomotion_observation")}
    drives = recorder.of("drive")
    assert len(drives) == 20
    for req, resp in drives:
        plan = resp.trajectory.poses
        assert len(plan) == WAYPOINTS + 1  # the ego's pose, then one pose per waypoint
        assert [p.timestamp_us for p in plan] == [req.time_now_us + k * DT_US for k in range(WAYPOINTS + 1)]
        assert plan[-1].timestamp_us >= req.time_query_us
        ego, first = poses[req.time_now_us], plan[0].pose
        assert (first.vec.x, first.vec.y, first.vec.z) == pytest.approx((ego.vec.x, ego.vec.y, ego.vec.z), abs=1e-4)
        assert (first.quat.w, first.quat.z) == pytest.approx((ego.quat.w, ego.quat.z), abs=1e-5)
        norms = [np.linalg.norm([p.pose.quat.w, p.pose.quat.x, p.pose.quat.y, p.pose.quat.z]) for p in plan]
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        # The plan's next pose is where the ego is at the next step (FakeLoop follows the plan exactly).
        if req.time_now_us + DT_US in poses:
            nxt = poses[req.time_now_us + DT_US]
            assert (plan[1].pose.vec.x, plan[1].pose.vec.y) == pytest.approx((nxt.vec.x, nxt.vec.y), abs=1e-3)
    line = server.wait_for_line("closed: 20 drives")
    assert "commands: follow 20" in line  # FakeLoop's route is the straight lane ahead
    started = server.wait_for_line("cameras front=camera_front (by name)")
    assert "left=camera_left (by name), right=camera_right (by name)" in started


def test_the_demo_command_drives_it_with_one_camera(server):
    proc = run_cli(["carla-driver-interface"], "demo", "--driver", server.target, "--steps", "5",
                   "--camera-width", "160", "--camera-height", "90")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "steps              : 5" in proc.stdout
    server.wait_for_line("left=- (no camera: neutral frame), right=- (no camera: neutral frame)")


def test_get_version_answers_the_contract_header_and_api_version(stub):
    version, call = stub.get_version.with_call(Empty(), timeout=10)
    assert (METADATA_KEY, "2") in tuple(call.initial_metadata())
    api = version.grpc_api_version
    assert (api.major, api.minor, api.patch) == (0, 55, 0)
    assert version.version_id.startswith("vla-serve:vla-reference-2")


# ---- the contract's cases, through the package's stubs -----------------------------------------------------------
def test_unknown_session_is_not_found_for_every_call(stub):
    ghost = "no-such-session"
    for call, request in ((stub.submit_image_observation, image(ghost, "camera_front", png(8, 8))),
                          (stub.submit_egomotion_observation, egomotion(ghost, 0, 0.0)),
                          (stub.submit_route, RouteRequest(session_uuid=ghost)),
                          (stub.submit_recording_ground_truth, GroundTruthRequest(session_uuid=ghost)),
                          (stub.drive, DriveRequest(session_uuid=ghost, time_now_us=0, time_query_us=DT_US)),
                          (stub.close_session, DriveSessionCloseRequest(session_uuid=ghost))):
        assert code_of(call, request) == grpc.StatusCode.NOT_FOUND


def test_bad_requests_get_their_codes_and_the_server_keeps_serving(server, stub):
    rear = FakeCamera("camera_rear", width=160, height=90, yaw_left_deg=180.0)  # declared, not read by the bundle
    session = start(stub, (*CAMERAS, rear))
    duplicate = DriveSessionRequest(session_uuid=session)
    assert code_of(stub.start_session, duplicate) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(stub.start_session, DriveSessionRequest(session_uuid="")) == grpc.StatusCode.INVALID_ARGUMENT

    # A drive before any egomotion, then before any image: an empty plan ("hold").
    assert len(drive(stub, session, 0).trajectory.poses) == 0
    stub.submit_egomotion_observation(egomotion(session, 100_000, 2.0, speed=3.0), timeout=10)
    assert len(drive(stub, session, 100_000).trajectory.poses) == 0

    good = png(160, 90)
    for data in (b"not an image at all", b"\x89PNG\r\n\x1a\n" + bytes(64), b"\xff\xd8\xff" + bytes(64)):
        assert code_of(stub.submit_image_observation, image(session, "camera_front", data)) == \
            grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.submit_image_observation, image(session, "camera_nobody_declared", good)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    stub.submit_image_observation(image(session, "camera_rear", b"ignored: the bundle reads no rear camera"),
                                  timeout=10)
    # Another size than declared (10x), one over gRPC's default 4 MiB limit: resized, accepted.
    big = png(1600, 1000, seed=1)
    assert len(big) > 4 * 1024 * 1024
    stub.submit_image_observation(image(session, "camera_front", big), timeout=30)
    for cam in ("camera_left", "camera_right"):
        stub.submit_image_observation(image(session, cam, good), timeout=10)

    nan = egomotion(session, 200_000, float("nan"))
    assert code_of(stub.submit_egomotion_observation, nan) == grpc.StatusCode.INVALID_ARGUMENT
    two_states = egomotion(session, 200_000, 2.5, speed=3.0)
    two_states.dynamic_states.append(DynamicState())
    assert code_of(stub.submit_egomotion_observation, two_states) == grpc.StatusCode.INVALID_ARGUMENT
    # Not newer than the last pose kept (t = 100 ms, x = 2): accepted and dropped, resent or older.
    for t_us in (100_000, 50_000):
        stub.submit_egomotion_observation(egomotion(session, t_us, 75.0), timeout=10)
    plan = drive(stub, session, 100_000).trajectory.poses
    assert len(plan) == WAYPOINTS + 1 and plan[0].pose.vec.x == pytest.approx(2.0)
    assert code_of(stub.drive, DriveRequest(session_uuid=session, time_now_us=100_000, time_query_us=99_999)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    stub.submit_recording_ground_truth(GroundTruthRequest(session_uuid=session), timeout=10)
    stub.close_session(DriveSessionCloseRequest(session_uuid=session), timeout=10)
    assert code_of(stub.close_session, DriveSessionCloseRequest(session_uuid=session)) == grpc.StatusCode.NOT_FOUND

    # A camera declared without a resolution keeps its frames' own size: one pixel cannot be cropped to the model's.
    bare = str(uuid.uuid4())
    request = DriveSessionRequest(session_uuid=bare)
    request.rollout_spec.vehicle.available_cameras.add(logical_id="camera_front")
    stub.start_session(request, timeout=10, metadata=contract_metadata())
    assert code_of(stub.submit_image_observation, image(bare, "camera_front", png(1, 1))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    stub.submit_image_observation(image(bare, "camera_front", png(64, 32)), timeout=10)

    # Still serving: the closed loop runs as before.
    assert server.proc.poll() is None
    with FakeLoop(server.target, CAMERAS[:1]) as loop:
        assert loop.run(3).steps == 3


def test_the_route_becomes_the_command_at_its_next_junction(server, stub):
    session = start(stub, CAMERAS[:1])
    stub.submit_image_observation(image(session, "camera_front", png(160, 90)), timeout=10)
    straight = [Vec3(x=float(x)) for x in range(0, 60, 2)]
    left = [*straight[:10], *(Vec3(x=20.0, y=float(y)) for y in range(2, 60, 2))]  # a junction 20 m ahead
    for k, route in enumerate((left, left, straight)):
        t_us = (k + 1) * DT_US
        stub.submit_egomotion_observation(egomotion(session, t_us, 0.5 * k, speed=5.0), timeout=10)
        stub.submit_route(RouteRequest(session_uuid=session, route=Route(timestamp_us=t_us, waypoints=route)),
                          timeout=10)
        assert len(drive(stub, session, t_us).trajectory.poses) == WAYPOINTS + 1
    stub.close_session(DriveSessionCloseRequest(session_uuid=session), timeout=10)
    assert "commands: follow 1, left 2" in server.wait_for_line(f"session {session} closed")


def test_sessions_are_independent_and_seeded(server):
    """The same seed gives the same rollout whatever ran before it (each session has its own ego history,
    noise generator and state); another seed draws other noise."""
    runs = []
    for seed in (7, 7, 8):
        with FakeLoop(server.target, CAMERAS, initial_speed_mps=5.0) as loop:
            runs.append(loop.run(6, seed=seed).ego.positions)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_a_model_with_recurrent_state_keeps_it_per_session(tiny_bundle):
    """Reference model 1 (one graph, poses output, recurrent memory): two sessions driven at once, their
    calls interleaved on one engine, each give the rollout the same seed gives alone."""
    srv = Server(tiny_bundle)
    try:
        def rollout(out: list, seed: int = 7) -> None:
            with FakeLoop(srv.target, CAMERAS, initial_speed_mps=5.0) as loop:
                out.append(loop.run(8, seed=seed).ego.positions)

        alone: list = []
        rollout(alone)
        together: list = []
        threads = [threading.Thread(target=rollout, args=(together,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(together) == 2
        for positions in together:
            np.testing.assert_array_equal(positions, alone[0])
        assert alone[0][-1][0] > 2.0  # it drove
        assert srv.wait_for_line("closed: 8 drives (ok 8)")
    finally:
        assert srv.terminate() == 0


def test_each_session_carries_its_own_recurrent_state_and_falls_back_on_its_own_last_good(tiny_bundle):
    """In process, on the same engine: a decision commits the model's state outputs into its session only; a
    trajectory beyond a limit is replaced by that session's fallback (standing still before any good one)."""
    backend = open_engine(str(tiny_bundle), backend="ort")
    try:
        decider = Decider(backend, DecideConfig(limits="warn"))  # an untrained model: its runs are used
        a, b = decider.new_inputs(1), decider.new_inputs(1)
        for k in range(1, 3):
            assert decider.decide(a, 0.1 * k, k * DT_US, None).status == "ok"
            assert int(a.state["memory_valid"].sum()) == k  # the model marks one more slot valid per run
        assert not b.state["memory_valid"].any() and not np.abs(b.state["memory"]).any()
        strict = Decider(backend, DecideConfig(max_speed=1e-3))
        held = strict.decide(b, 0.0, 0, None)
        assert held.status == "fallback" and "--max-speed" in held.reason
        np.testing.assert_array_equal(held.points, 0.0)  # no good trajectory yet: stand still
        assert not b.state["memory_valid"].any()  # an unusable run commits nothing
    finally:
        backend.close()


# ---- lifecycle ------------------------------------------------------------------------------------------------------
def test_camera_map_is_obeyed_and_sigterm_ends_the_server_cleanly(tiny_v2_bundle):
    srv = Server(tiny_v2_bundle, "--camera-map", "front=camera_wide")
    try:
        assert any("warm-up: decision" in ln for ln in srv.startup), srv.startup  # warmed before the port opened
        channel = grpc.insecure_channel(srv.target, options=channel_options())
        stub = EgodriverServiceStub(channel)
        assert code_of(lambda r, timeout: start(stub, CAMERAS), None) == grpc.StatusCode.FAILED_PRECONDITION
        wide = FakeCamera("camera_wide", width=160, height=90)
        session = start(stub, (*CAMERAS, wide))
        srv.wait_for_line("cameras front=camera_wide (--camera-map), left=camera_left (by name)")
        stub.submit_egomotion_observation(egomotion(session, 0, 0.0), timeout=10)
        for cam in ("camera_wide", "camera_left", "camera_right"):
            stub.submit_image_observation(image(session, cam, png(160, 90)), timeout=10)
        assert len(drive(stub, session, 0).trajectory.poses) == WAYPOINTS + 1
        channel.close()
        t0 = time.monotonic()
        rc = srv.terminate()
        assert rc == 0 and time.monotonic() - t0 < 10.0, "\n".join(srv.lines)
        assert any("stopped (SIGTERM): 0 session(s) closed, 1 open, 1 drive(s)" in ln for ln in srv.lines), srv.lines
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()


def test_command_line_mistakes_are_one_line_errors(tiny_v2_bundle, tmp_path, capsys):
    def refused(*args: object) -> str:
        assert serve_main([str(a) for a in args]) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if "error" in ln]
        assert "Traceback" not in err and len(errors) == 1, err
        return errors[0]

    assert "missing" in refused("--engine", tmp_path / "missing")
    assert "no camera 'rear'" in refused("--engine", tiny_v2_bundle, "--camera-map", "rear=camera_rear")
    assert "['fly', 'moon'] are not in the model's vocabulary" in refused("--engine", tiny_v2_bundle, "--command",
                                                                           "fly to the moon")
    assert "--port must be 0-65535" in refused("--engine", tiny_v2_bundle, "--port", 70000)
    with socket.socket() as taken:  # a port another program listens on is refused, not shared
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in refused("--engine", tiny_v2_bundle, "--port", port,
                                                               "--warmup-runs", 1)
