"""The simulated world seen through the bundle's cameras: camera sources the real loop reads.

``SimRig`` owns one scenario's ``World``: it renders every camera when a frame is due on the loop's
clock, moves the world to that time first (the ego following the runtime's published plans through
the tracking controller, ``tracking.py``), and takes each published record as the next plan to follow
from the moment it was published. ``SimCamera`` is one of its cameras as a ``CameraSource``, so the
``Runner`` reads simulated frames exactly as it reads a USB camera: same ``Frame``, same pixel formats,
the vehicle state attached to each frame (``provides_ego``) like the ``synthetic://`` rig.

Time: the world starts when the loop ticks for the first time (``Runner.ticking_since``); before
that (warm-up) the cameras show the start and the world stands still. World time is the loop's clock
minus that start, so on the simulated clock a tick period of loop time is a tick period of world time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vla.runtime.inputs.sources.base import CameraSource, EgoState, Frame
from vla.runtime.inputs.sources.scene import Rig
from vla.runtime.loop.clock import Clock

from .render import WorldRenderer
from .tracking import Plan, limit_jerk, plan_in_world, track
from .world import World

#: The physics and control step (s): the tracking controller runs at 20 Hz between frames.
CONTROL_DT = 0.05
#: Frame times are rounded onto the camera's grid within this (s) (float noise of the clock).
_GRID_EPS = 1e-6


@dataclass
class Trace:
    """What the ego did, for metrics and the top-down picture: rows of (t, x, y, yaw, speed)."""

    rows: list[tuple[float, float, float, float, float]] = field(default_factory=list)

    def array(self) -> np.ndarray:
        return np.asarray(self.rows, dtype=np.float64).reshape(-1, 5)


class SimRig:
    """One scenario's world, rendered into the named cameras on the loop's clock."""

    def __init__(self, world: World, names: list[str], width: int, height: int, clock: Clock, *,
                 fmt: str = "rgb", fps: float = 10.0, hfov_deg: float = 100.0, drop_frames: float = 0.0,
                 seed: int = 0) -> None:
        self.world, self.clock, self.fps, self.fmt = world, clock, float(fps), fmt
        self.renderer = WorldRenderer(Rig(names, width, height, hfov_deg), world.ground(), fmt)
        self.names = list(names)
        self.width, self.height = width, height
        self.drop_frames = float(drop_frames)
        self._rng = np.random.default_rng([seed, 7])  # frame drops: their own stream, reproducible
        self.runner: Any = None  # set by the caller: its ``ticking_since`` starts the world
        self._index = -1
        self._frames: dict[str, Frame | None] = dict.fromkeys(names)
        self.dropped = 0
        self._poses: deque[tuple[float, tuple[float, float, float]]] = deque(maxlen=64)  # (world t, pose)
        self._pending: list[tuple[float, dict[str, Any]]] = []  # (effective world time, record)
        self.plan: Plan | None = None
        self.trace = Trace()

    # ---- time ------------------------------------------------------------------------------------
    def world_time(self, loop_time: float) -> float:
        """World seconds at loop clock ``loop_time`` (0 until the loop ticks)."""
        since = getattr(self.runner, "ticking_since", None)
        return 0.0 if since is None else max(0.0, loop_time - since)

    def loop_time(self, world_t: float) -> float:
        since = getattr(self.runner, "ticking_since", None)
        return world_t if since is None else world_t + since

    # ---- frames ----------------------------------------------------------------------------------
    def newest(self, name: str) -> Frame | None:
        """Camera ``name``'s newest frame; renders every camera when a new frame is due."""
        now = self.clock.now()
        t = self.world_time(now)
        index = math.floor(t * self.fps + _GRID_EPS)
        if index != self._index:
            with self.clock.paused():  # simulating and rendering is the camera's business, not the loop's
                self._capture(index, self.loop_time(index / self.fps))
        frame = self._frames[name]
        if getattr(self.runner, "ticking_since", None) is None and frame is not None:
            # Warm-up: the world stands still, so its picture is current: the context the warm-up
            # publishes for tick 0 is as old as the warm-up, not as old as the first render.
            frame = self._frames[name] = replace(frame, capture_time=now)
        return frame

    def _capture(self, index: int, capture_time: float) -> None:
        self.advance_to(index / self.fps)
        self._index = index
        w = self.world
        pose = (w.ego.x, w.ego.y, w.ego.yaw)
        self._poses.append((w.t, pose))
        boxes, colors = w.boxes()
        outputs = self.renderer.new_outputs()  # fresh buffers: a kept (dropped-after) frame stays intact
        self.renderer.render(pose, boxes, colors, outputs)
        ego = EgoState(speed=float(w.ego.speed), accel=float(w.ego.accel), yaw_rate=float(w.ego.yaw_rate))
        for name in self.names:
            if self._frames[name] is not None and self.drop_frames > 0 and self._rng.random() < self.drop_frames:
                self.dropped += 1  # this camera loses the frame: the loop sees its previous one again
                continue
            self._frames[name] = Frame(name, outputs[name], self.fmt, self.width, self.height, index,
                                       capture_time, ego=ego)

    # ---- the world -------------------------------------------------------------------------------
    def advance_to(self, t: float) -> None:
        """Move the world to world time ``t``, the ego tracking the plan in force at each step."""
        w = self.world
        while w.t < t - _GRID_EPS:
            self._activate(w.t)
            step = min(CONTROL_DT, t - w.t)
            due = self._pending[0][0] if self._pending else math.inf
            if w.t < due < w.t + step:  # a plan takes over mid-step: step to it exactly
                step = due - w.t
            e = w.ego
            if self.plan is None:  # before the runtime's first answer the car holds its speed and steering
                accel, curvature = 0.0, e.curvature
            else:
                accel, curvature = track(self.plan, w.t, e.x, e.y, e.yaw, e.speed)
                accel = limit_jerk(e.accel, accel, step)
            w.step(step, accel, curvature)
            self.trace.rows.append((w.t, w.ego.x, w.ego.y, w.ego.yaw, w.ego.speed))
        self._activate(w.t)

    def _activate(self, t: float) -> None:
        while self._pending and self._pending[0][0] <= t + _GRID_EPS:
            _, record = self._pending.pop(0)
            self.plan = self._plan_of(record, t)

    def _pose_at(self, t: float) -> tuple[float, float, float] | None:
        for when, pose in reversed(self._poses):
            if abs(when - t) <= 1e-3:
                return pose
        return None

    def _plan_of(self, record: dict[str, Any], now: float) -> Plan:
        """A record's trajectory as a world-frame plan: an ok tick's from its frames' pose and capture
        time; a fallback's (shifted to its publish time) from the ego's pose now."""
        points = np.asarray(record["trajectory"], dtype=np.float64)
        if record["status"] == "ok":
            origin = self.world_time(record["capture_time"])
            pose = self._pose_at(origin)
            if pose is not None:
                return plan_in_world(points, pose, origin, float(record["dt"]))
        e = self.world.ego
        return plan_in_world(points, (e.x, e.y, e.yaw), now, float(record["dt"]))

    def publish(self, record: dict[str, Any]) -> None:
        """The loop published ``record``: the car follows it from its publish time on."""
        effective = self.world_time(record["publish_time"])
        self._pending.append((effective, record))
        self._pending.sort(key=lambda item: item[0])


class SimCamera(CameraSource):
    """One camera of a ``SimRig``: what the loop reads (``sim://NAME``)."""

    provides_ego = True

    def __init__(self, rig: SimRig, name: str) -> None:
        self.rig, self.name, self.uri = rig, name, f"sim://{name}"

    def newest(self) -> Frame | None:
        return self.rig.newest(self.name)

    def close(self) -> None:
        pass
