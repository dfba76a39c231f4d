"""Plans on the wire: the engine's waypoints (ego frame) become poses in the simulator's ``local`` frame.

AlpaSim reads a drive's answer as a trajectory of ``local -> rig`` poses on its own clock: the first
pose is the ego at ``time_now_us`` and the rest follow it, each at its time. The engine's waypoint k
(x forward, y left, yaw counter-clockwise, in the ego frame at the decision) is at ``k * dt`` after
the decision, so the plan is ``ego pose ∘ waypoint k`` at ``time_now_us + k * dt_us``, in unsigned
64-bit microseconds (times past 2**64 - 1 cannot be sent and are dropped). A plan must reach
``time_query_us``, the time the simulator steps to next: when the engine's horizon ends before it,
one more pose is extrapolated from the last waypoints' motion.

Quaternions here are (w, x, y, z), the wire's field order; the wire's positions and quaternions are
float32, so plans are rounded to float32 before they are sent. Pure functions: arrays in, arrays out.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

U64_MAX = 2**64 - 1
IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])


def normalize(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (w, x, y, z) [..., 4]; a zero one (a default protobuf message) is the identity."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(norm > 1e-12, q / np.where(norm > 1e-12, norm, 1.0), IDENTITY)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Hamilton product ``a ⊗ b`` (rotate by b, then by a), broadcast over leading axes."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz,
                     aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectors ``v`` [..., 3] rotated by unit quaternions ``q`` [..., 4]."""
    q = np.asarray(q, dtype=np.float64)
    w, u = q[..., :1], q[..., 1:]
    v = np.asarray(v, dtype=np.float64)
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def yaw_quat(yaw: np.ndarray | float) -> np.ndarray:
    """Rotations about z by ``yaw`` (rad, counter-clockwise) as (w, x, y, z)."""
    half = 0.5 * np.asarray(yaw, dtype=np.float64)
    zero = np.zeros_like(half)
    return np.stack([np.cos(half), zero, zero, np.sin(half)], axis=-1)


def heading(q: np.ndarray) -> np.ndarray | float:
    """The yaw of a pose's forward (x) axis projected onto the local ground plane (rad).

    Why not an Euler angle: a pitched or rolled ego still heads where its x axis points on the ground,
    which is what a planar model's ego frame means."""
    w, x, y, z = np.moveaxis(normalize(q), -1, 0)
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """The rotation a fraction ``a`` of the way from ``q0`` to ``q1`` along the shorter arc."""
    q0, q1 = normalize(q0), normalize(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly equal: a normalised lerp is exact to float precision
        return normalize(q0 + a * (q1 - q0))
    theta = math.acos(dot)
    return (math.sin((1.0 - a) * theta) * q0 + math.sin(a * theta) * q1) / math.sin(theta)


def compose(pos_a: np.ndarray, quat_a: np.ndarray, pos_b: np.ndarray, quat_b: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """``a ∘ b``: pose b (given in a's frame) expressed in the frame a is given in."""
    return np.asarray(pos_a, dtype=np.float64) + quat_rotate(quat_a, pos_b), quat_multiply(quat_a, quat_b)


def pose_at(times_us: Sequence[int], positions: np.ndarray, quats: np.ndarray, t_us: int, speed: float = 0.0,
            yaw_rate: float = 0.0, max_extrapolate_us: int = 500_000) -> tuple[np.ndarray, np.ndarray] | None:
    """The ego's pose at ``t_us`` from its observed poses (times increasing); None before any.

    Between two observations: position linearly, rotation by slerp. Before the first: the first. After
    the last (the drive's time is usually the last egomotion's, but need not be): the last pose moved on
    by ``speed`` and ``yaw_rate`` along an arc for at most ``max_extrapolate_us``, then held, so a long
    silence never flings the plan's start far along a guess.
    """
    n = len(times_us)
    if n == 0:
        return None
    positions, quats = np.asarray(positions, dtype=np.float64), np.asarray(quats, dtype=np.float64)
    if t_us <= times_us[0]:
        return positions[0].copy(), normalize(quats[0])
    if t_us >= times_us[-1]:
        dt = min(t_us - times_us[-1], max_extrapolate_us) / 1e6
        if dt == 0.0:
            return positions[-1].copy(), normalize(quats[-1])
        turn = yaw_rate * dt
        step = speed * dt * np.array([math.cos(0.5 * turn), math.sin(0.5 * turn), 0.0])
        return compose(positions[-1], normalize(quats[-1]), step, yaw_quat(turn))
    i = bisect.bisect_right(list(times_us), t_us)  # times_us[i - 1] <= t_us < times_us[i]
    t0, t1 = times_us[i - 1], times_us[i]
    a = (t_us - t0) / (t1 - t0)
    return positions[i - 1] + a * (positions[i] - positions[i - 1]), slerp(quats[i - 1], quats[i], a)


@dataclass(frozen=True)
class Plan:
    """A plan as the wire carries it: times (µs), positions float32 [N, 3], quaternions (w, x, y, z) float32
    [N, 4]. Empty (N = 0) means "hold", as AlpaSim's own drivers answer before they can drive."""

    times_us: list[int]
    positions: np.ndarray
    quats: np.ndarray

    def __len__(self) -> int:
        return len(self.times_us)


HOLD = Plan([], np.zeros((0, 3), dtype=np.float32), np.zeros((0, 4), dtype=np.float32))


def plan_poses(anchor_pos: np.ndarray, anchor_quat: np.ndarray, waypoints: np.ndarray, time_now_us: int,
               time_query_us: int, dt_us: int) -> Plan:
    """The plan for waypoints [T, >=3] (x, y, yaw in the ego frame at ``k * dt``, k = 1..T) from the ego's
    pose at ``time_now_us``: that pose first, then ``anchor ∘ waypoint k`` at ``time_now_us + k * dt_us``.

    Points past the 64-bit clock's end are dropped. If the last time is before ``time_query_us``, one
    pose at ``time_query_us`` continues the last waypoint's motion (position and yaw, linearly).
    """
    if not 0 <= time_now_us <= time_query_us <= U64_MAX:
        raise ValueError(f"time_query_us {time_query_us} must be >= time_now_us {time_now_us}, both in [0, 2**64)")
    if dt_us <= 0:
        raise ValueError(f"dt_us must be > 0 (got {dt_us})")
    pts = np.asarray(waypoints, dtype=np.float64)[:, :3]
    ego = np.vstack([np.zeros((1, 3)), pts])  # row k: the ego frame pose at k * dt (row 0: the anchor itself)
    times = [time_now_us + k * dt_us for k in range(len(ego))]
    keep = bisect.bisect_right(times, U64_MAX)
    ego, times = ego[:keep], times[:keep]
    if times[-1] < time_query_us:
        prev = ego[-2] if len(ego) > 1 else ego[-1]
        ego = np.vstack([ego, ego[-1] + (ego[-1] - prev) * ((time_query_us - times[-1]) / dt_us)])
        times.append(time_query_us)
    anchor_quat = normalize(anchor_quat)
    offsets = np.column_stack([ego[:, 0], ego[:, 1], np.zeros(len(ego))])
    positions, quats = compose(anchor_pos, anchor_quat, offsets, yaw_quat(ego[:, 2]))
    return Plan(times, positions.astype(np.float32), normalize(quats).astype(np.float32))


def plan_to_proto(plan: Plan, trajectory_type: type) -> object:
    """The plan as the contract's ``common.Trajectory`` (``trajectory_type``), each ``PoseAtTime`` in order."""
    message = trajectory_type()
    for t, p, q in zip(plan.times_us, plan.positions.tolist(), plan.quats.tolist(), strict=True):
        entry = message.poses.add()
        entry.timestamp_us = t
        entry.pose.vec.x, entry.pose.vec.y, entry.pose.vec.z = p
        entry.pose.quat.w, entry.pose.quat.x, entry.pose.quat.y, entry.pose.quat.z = q
    return message
