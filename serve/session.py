"""One rollout's state between its calls: cameras, camera slots, ego poses and history, route command.

The simulator calls in from gRPC handler threads; ``lock`` guards the session (a drive holds it for
its whole decision, so a late observation waits rather than changes the inputs mid-decision). Times
on the simulator's clock are unsigned 64-bit microseconds; the ego history (floats, in seconds) counts
from the session's first egomotion, so a clock far from zero loses no precision.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Sequence

import numpy as np

from vla.runtime.inputs.sources.base import Frame
from vla.runtime.loop.health import reason_kind
from vla.runtime.loop.stats import percentile

from .cameras import CameraMapping
from .decide import Decider, Decision, Inputs
from .egomotion import Kinematics, Measured, derive, keep_newer
from .plan import heading, pose_at

#: Observed poses kept for the drive's anchor (interpolated at the drive's time): seconds of history at 10 Hz.
POSE_HISTORY = 64


class Session:
    def __init__(self, uuid: str, seed: int, mapping: CameraMapping, sizes: dict[str, tuple[int, int]],
                 inputs: Inputs) -> None:
        self.uuid, self.seed, self.mapping, self.sizes, self.inputs = uuid, seed, mapping, sizes, inputs
        self.used = mapping.used  # declared id -> the bundle camera it feeds
        self.lock = threading.Lock()
        self.seen: set[str] = set()  # bundle cameras that have sent an image
        self._seq = 0
        self._times: deque[int] = deque(maxlen=POSE_HISTORY)
        self._positions: deque[np.ndarray] = deque(maxlen=POSE_HISTORY)
        self._quats: deque[np.ndarray] = deque(maxlen=POSE_HISTORY)
        self.kinematics: Kinematics | None = None
        self.t0_us: int | None = None
        self.command: str | None = None  # from the route (route.py); None: the bundle's default
        self.status: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()  # the command each decision was given, by name
        self.decision_ms: list[float] = []

    # ---- observations --------------------------------------------------------------------------------
    def add_frame(self, camera: str, image_bgr: np.ndarray, t_us: int) -> None:
        """Bundle camera ``camera``'s newest image, decoded, into the session's slot of the model's input
        (``Decider.take_frame``; call under ``lock``); a frame the kernel cannot take is a ``CameraError``."""
        self._seq += 1
        h, w = image_bgr.shape[:2]
        Decider.take_frame(self.inputs, camera, Frame(camera, image_bgr, "bgr", w, h, self._seq, self.seconds(t_us)))
        self.seen.add(camera)

    def add_egomotion(self, times_us: Sequence[int], positions: np.ndarray, quats: np.ndarray,
                      measured: Sequence[Measured]) -> int:
        """Take the poses newer than the last one kept (``egomotion.keep_newer``), derive the ego's motion at
        each and feed the ego history; returns how many were kept (call under ``lock``)."""
        kept = keep_newer(times_us, self._times[-1] if self._times else None)
        for i in kept:
            t = int(times_us[i])
            if self.t0_us is None:
                self.t0_us = t
            yaw = float(heading(quats[i]))
            kin = derive(self.kinematics, t, float(positions[i][0]), float(positions[i][1]), yaw, measured[i])
            self.kinematics = kin
            if self.inputs.ego is not None:
                self.inputs.ego.update(self.seconds(t), kin.speed, kin.accel, kin.yaw_rate)
            self._times.append(t)
            self._positions.append(np.asarray(positions[i], dtype=np.float64))
            self._quats.append(np.asarray(quats[i], dtype=np.float64))
        return len(kept)

    # ---- for a drive ---------------------------------------------------------------------------------
    def seconds(self, t_us: int) -> float:
        """``t_us`` on the session's own clock (seconds since its first egomotion)."""
        return 0.0 if self.t0_us is None else (t_us - self.t0_us) / 1e6

    def waiting_for(self) -> str | None:
        """Why a drive must hold (an empty plan), or None when there is something to decide on."""
        if not self._times:
            return "no egomotion yet"
        missing = [cid for cid, name in self.used.items() if name not in self.seen]
        if missing:
            return f"no image yet from {', '.join(missing)}"
        return None

    def anchor(self, t_us: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The ego's pose (position, quaternion w, x, y, z) in the local frame at ``t_us`` (``plan.pose_at``)."""
        kin = self.kinematics
        return pose_at(list(self._times), np.array(self._positions), np.array(self._quats), t_us,
                       kin.speed if kin else 0.0, kin.yaw_rate if kin else 0.0)

    def count(self, decision: Decision | None) -> None:
        """Tally a drive: ``hold`` (None), else the decision's status and reason kind."""
        if decision is None:
            self.status["hold"] += 1
            return
        self.status[decision.status] += 1
        if decision.command:
            self.commands[decision.command] += 1
        self.decision_ms.append(decision.decision_ms)
        if decision.reason:
            self.reasons[reason_kind(decision.reason)] += 1

    def summary(self) -> str:
        """One line for the session's end: drives by status, commands, fallback reasons by kind, decision times."""
        drives = sum(self.status.values())
        parts = [f"{drives} drives ({', '.join(f'{k} {v}' for k, v in sorted(self.status.items())) or 'none'})"]
        if self.commands:
            parts.append("commands: " + ", ".join(f"{k} {v}" for k, v in sorted(self.commands.items())))
        if self.reasons:
            parts.append("fallback reasons: " + ", ".join(f"{k} x{v}" for k, v in self.reasons.most_common(3)))
        if self.decision_ms:  # trtexec's percentiles, as every figure of the runtime
            ms = sorted(self.decision_ms)
            parts.append(f"decision p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms")
        return "; ".join(parts)
