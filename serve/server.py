"""The egodriver gRPC service answered by the runtime's engine, and the server's lifecycle.

What ``carla-driver-interface``'s ``EgodriverServicer`` already does, and is used as it is:
``get_version`` (AlpaSim API 0.55.0 and the ``carla-driver-interface-contract: 2`` response header),
``start_session`` (cameras translated to contract revision 2 whatever the client speaks; a duplicate
id is ``ALREADY_EXISTS``; a session the driver refuses is ``FAILED_PRECONDITION``), ``submit_route``
(stored, then ``on_route``), the session table, ``NOT_FOUND`` for an unknown session, the debug payload
in the form each mode's runtime reads. What this subclass changes:

- ``submit_image_observation``: decoded at submit (JPEG or PNG, told from the bytes) and preprocessed
  into the session's slot of the model's camera input, so a bad image is ``INVALID_ARGUMENT`` for the
  call that brought it, not a failed drive later, and a drive does no image work; frames of another
  size than declared are resized; cameras the bundle does not use are accepted and not decoded; a
  camera the session never declared is ``INVALID_ARGUMENT``;
- ``submit_egomotion_observation``: poses read as arrays (non-finite values are ``INVALID_ARGUMENT``),
  timestamps not newer than the last dropped, speed, acceleration and yaw rate taken from the dynamic
  state where given and derived from the poses where not (``egomotion.py``);
- ``submit_recording_ground_truth``: accepted (the model reads none);
- ``close_session``: ``NOT_FOUND`` for an unknown session, as every other call;
- ``drive``: an empty plan ("hold", as AlpaSim's own drivers answer) until the session has egomotion
  and an image from every camera the bundle reads; then one decision (``decide.py``) and the plan from
  the ego's pose at ``time_now_us`` (``plan.py``). ``time_query_us`` before ``time_now_us`` is
  ``INVALID_ARGUMENT``.

Lifecycle (``serve``): the engine is opened and warmed before the port opens; messages up to 64 MiB
each way (the contract's ``channel_options``); SIGTERM or SIGINT stops it cleanly (in-flight calls get
a grace period, then the engine is closed) and the process exits 0. No request can stop the server: a
handler's exception fails only its own call.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures

import grpc
import numpy as np
from carla_driver_interface.driver import BaseDriver, DriveContext, DriveResult, SessionState
from carla_driver_interface.protocol import (
    ALPASIM_API_VERSION,
    DriveRequest,
    DriveResponse,
    DriveSessionCloseRequest,
    DriveSessionRequest,
    Empty,
    GroundTruthRequest,
    RolloutCameraImage,
    RolloutEgoTrajectory,
    SessionRequestStatus,
    Trajectory,
    add_CarlaVehicleServiceServicer_to_server,
    add_EgodriverServiceServicer_to_server,
    channel_options,
)
from carla_driver_interface.server import bind_address
from carla_driver_interface.service import EgodriverServicer, ServiceMode

from vla.runtime.errors import CameraError, VlaError
from vla.runtime.loop.stats import Window

from .cameras import ImageError, decode_image, map_cameras
from .decide import Decider, Decision
from .egomotion import Measured
from .plan import HOLD, Plan, plan_poses, plan_to_proto
from .route import LOOKAHEAD_M, TURN_DEG, route_command
from .session import Session

CONTRACT = "egodriver.EgodriverService"


class VlaDriver(BaseDriver):
    """The package's policy hooks, used for session bookkeeping: a ``Session`` per rollout (camera mapping,
    inputs), the route's command. Decisions go through ``VlaServicer.drive``, not ``BaseDriver.drive``."""

    def __init__(self, decider: Decider, camera_map: Mapping[str, str] | None = None,
                 lookahead_m: float = LOOKAHEAD_M, turn_deg: float = TURN_DEG,
                 log: Callable[[str], None] | None = None) -> None:
        self.decider = decider
        self.name = f"vla-serve:{decider.manifest.name}"
        self.camera_map = dict(camera_map or {})
        self.lookahead_m, self.turn_deg = lookahead_m, turn_deg
        self.log = log or (lambda line: None)
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.closed = 0  # sessions ended (the server's exit line counts them)

    def session(self, uuid: str) -> Session | None:
        with self._lock:
            return self.sessions.get(uuid)

    def on_session_start(self, session: SessionState) -> None:
        """Map the bundle's cameras onto the declared ones; a ValueError refuses the session
        (``FAILED_PRECONDITION``, with its message)."""
        declared = list(session.cameras)  # declaration order
        bundle = list(self.decider.cameras)
        mapping = map_cameras(bundle, declared, self.camera_map)
        if bundle and not mapping.used:
            raise ValueError(f"the session declares no camera; the bundle reads {', '.join(bundle)}")
        sizes = {cid: (int(c.intrinsics.resolution_w), int(c.intrinsics.resolution_h))
                 for cid, c in session.cameras.items()}
        state = Session(session.uuid, session.seed, mapping, sizes, self.decider.new_inputs(session.seed))
        with self._lock:
            self.sessions[session.uuid] = state
        ignored = [c for c in declared if c not in mapping.used]
        self.log(f"session {session.uuid}: cameras {mapping.describe()}"
                 + (f"; not used: {', '.join(ignored)}" if ignored else "") + f"; seed {session.seed}")

    def on_session_close(self, session: SessionState) -> None:
        with self._lock:
            state = self.sessions.pop(session.uuid, None)
            self.closed += state is not None
        if state is not None:
            self.log(f"session {session.uuid} closed: {state.summary()}")

    def on_route(self, session: SessionState) -> None:
        """The route's next turn as the session's command (``route.py``)."""
        state = self.session(session.uuid)
        if state is not None:
            command = route_command(session.route_waypoints_in_rig, self.lookahead_m, self.turn_deg)
            with state.lock:
                state.command = command

    def drive(self, ctx: DriveContext) -> DriveResult:
        raise NotImplementedError("VlaServicer.drive decides; this driver only keeps sessions")


class VlaServicer(EgodriverServicer):
    """``EgodriverServicer`` with the runtime's engine behind ``drive`` (see the module docstring)."""

    def __init__(self, driver: VlaDriver, mode: ServiceMode = "alpasim") -> None:
        super().__init__(driver, mode)
        self.driver = driver
        self.drive_ms = Window(36_000)  # the server's last hour of drives at 10 Hz (a bounded ring)
        self.drives = 0

    def _session(self, uuid: str, context: grpc.ServicerContext) -> tuple[SessionState, Session]:
        state = self._require_session(uuid, context)  # NOT_FOUND
        session = self.driver.session(uuid)
        if session is None:  # closing at this very moment
            context.abort(grpc.StatusCode.NOT_FOUND, f"Unknown session {uuid}")
        return state, session  # type: ignore[return-value]

    def start_session(self, request: DriveSessionRequest, context: grpc.ServicerContext) -> SessionRequestStatus:
        if not request.session_uuid:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "start_session: session_uuid is empty")
        return super().start_session(request, context)

    def close_session(self, request: DriveSessionCloseRequest, context: grpc.ServicerContext) -> Empty:
        self._require_session(request.session_uuid, context)
        return super().close_session(request, context)

    def submit_image_observation(self, request: RolloutCameraImage, context: grpc.ServicerContext) -> Empty:
        state, session = self._session(request.session_uuid, context)
        image = request.camera_image
        if image.logical_id not in state.cameras:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"camera {image.logical_id!r} was not declared in start_session; declared: "
                          f"{', '.join(state.cameras) or 'none'}")
        name = session.used.get(image.logical_id)
        if name is None:
            return Empty()  # a camera the bundle does not read: accepted, not decoded
        try:
            bgr = decode_image(image.image_bytes, session.sizes.get(image.logical_id))
        except ImageError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"camera {image.logical_id!r}: {exc}")
        try:
            with session.lock:
                session.add_frame(name, bgr, int(image.frame_end_us))
        except CameraError as exc:  # decodable, but not a frame the preprocess kernel takes (1 pixel wide, say)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return Empty()

    def submit_egomotion_observation(self, request: RolloutEgoTrajectory, context: grpc.ServicerContext) -> Empty:
        _, session = self._session(request.session_uuid, context)
        poses = request.trajectory.poses
        states = list(request.dynamic_states)
        if states and len(states) != len(poses):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"dynamic_states ({len(states)}) must match the trajectory's poses ({len(poses)}) when given")
        if not poses:
            return Empty()
        times = [int(p.timestamp_us) for p in poses]
        positions = np.array([(p.pose.vec.x, p.pose.vec.y, p.pose.vec.z) for p in poses], dtype=np.float64)
        quats = np.array([(p.pose.quat.w, p.pose.quat.x, p.pose.quat.y, p.pose.quat.z) for p in poses],
                         dtype=np.float64)
        if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(quats))):
            bad = int(np.nonzero(~(np.isfinite(positions).all(1) & np.isfinite(quats).all(1)))[0][0])
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"egomotion pose {bad} (t={times[bad]} us) has a non-finite position or quaternion")
        measured = [_measured(s) for s in states] if states else [Measured()] * len(poses)
        with session.lock:
            session.add_egomotion(times, positions, quats, measured)
        return Empty()

    def submit_recording_ground_truth(self, request: GroundTruthRequest, context: grpc.ServicerContext) -> Empty:
        self._session(request.session_uuid, context)
        return Empty()  # accepted: the model reads no ground truth

    def drive(self, request: DriveRequest, context: grpc.ServicerContext) -> DriveResponse:
        started = time.perf_counter()
        state, session = self._session(request.session_uuid, context)
        now_us, query_us = int(request.time_now_us), int(request.time_query_us)
        if query_us < now_us:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"time_query_us {query_us} is before time_now_us {now_us}")
        decider = self.driver.decider
        decision: Decision | None = None
        plan: Plan = HOLD
        with session.lock:
            if session.waiting_for() is None:
                anchor = session.anchor(now_us)
                decision = decider.decide(session.inputs, session.seconds(now_us), now_us, session.command)
                plan = plan_poses(anchor[0], anchor[1], decision.points, now_us, query_us,
                                  round(decider.dt * 1e6))
            session.count(decision)
            state.drive_count += 1
        elapsed = time.perf_counter() - started
        self.drive_ms.append(elapsed * 1000.0)
        self.drives += 1
        return DriveResponse(trajectory=plan_to_proto(plan, Trajectory),
                             debug_info=DriveResponse.DebugInfo(
                                 unstructured_debug_info=self._debug_payload(elapsed, _scalars(decision))))


def _measured(state: object) -> Measured:
    """A dynamic state's forward speed, forward acceleration and yaw rate, each None when the message
    leaves its vector out (proto3 tells a missing sub-message from a zero one)."""
    def field(name: str, axis: str) -> float | None:
        if not state.HasField(name):  # type: ignore[attr-defined]
            return None
        value = float(getattr(getattr(state, name), axis))
        return value if np.isfinite(value) else None
    return Measured(field("linear_velocity", "x"), field("linear_acceleration", "x"), field("angular_velocity", "z"))


def _scalars(decision: Decision | None) -> dict[str, float]:
    """The drive's numbers for the debug payload (``inference_seconds`` is the package's, the whole drive)."""
    if decision is None:
        return {"hold": 1.0}
    out = {"ok": float(decision.status == "ok"), "engine_ms": decision.engine_ms,
           "decision_ms": decision.decision_ms, "ego_speed_mps": decision.speed}
    if decision.mode is not None:
        out["mode"] = float(decision.mode)
    if decision.score is not None and np.isfinite(decision.score):
        out["score"] = float(decision.score)
    return out


def build_server(driver: VlaDriver, host: str, port: int, mode: ServiceMode = "alpasim",
                 max_workers: int = 8) -> tuple[grpc.Server, VlaServicer, int]:
    """A server (not started) for ``driver`` on ``host:port`` (port 0: a free one) with the contract's
    64 MiB message limits; returns it, its servicer and the bound port. A port that cannot be bound is a
    one-line ``VlaError``."""
    # grpc sets SO_REUSEPORT by default: a second server on a port in use would bind and share its calls.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="vla-serve"),
                         options=[*channel_options(), ("grpc.so_reuseport", 0)])
    servicer = VlaServicer(driver, mode)
    add_EgodriverServiceServicer_to_server(servicer, server)
    add_CarlaVehicleServiceServicer_to_server(servicer, server)  # turn indicators: always NO_COMMAND here
    address = bind_address(host, port)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        server.stop(None)
        raise VlaError(f"cannot listen on {address}: the port is in use, or the address is not this machine's "
                       "(--port 0 picks a free port)")
    return server, servicer, (0 if host.startswith(("unix:", "unix-abstract:")) else bound)


def serve(driver: VlaDriver, host: str, port: int, mode: ServiceMode, max_workers: int,
          log: Callable[[str], None]) -> tuple[VlaServicer, str]:
    """Serve until SIGTERM or SIGINT; returns the servicer (for its figures) and the signal's name."""
    server, servicer, bound = build_server(driver, host, port, mode, max_workers)
    stop = threading.Event()
    why: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        why.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    api = ALPASIM_API_VERSION
    where = host if host.startswith(("unix:", "unix-abstract:")) else f"{host}:{bound}"
    log(f"serving {CONTRACT} (AlpaSim API {api.major}.{api.minor}.{api.patch}, contract revision 2, "
        f"{mode} mode) on {where}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop(grace=2.0).wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return servicer, why[0] if why else "stopped"
