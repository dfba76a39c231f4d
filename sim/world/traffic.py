"""Other vehicles: their fixed routes (lane / connector sequences), IDM car following, and how they
are placed. The per-tick update lives in ``world.py`` (it needs the ego); this module holds the data
and the pure pieces.

IDM (Treiber et al. 2000): a = a_max [1 - (v/v0)^4 - (s*/s)^2], s* = s0 + v T + v dv / (2 sqrt(a_max b)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .roads import RoadNetwork

IDM_A = 1.5  # m/s^2, comfortable acceleration
IDM_B = 2.0  # m/s^2, comfortable deceleration
IDM_T = 1.5  # s, time headway
IDM_S0 = 2.0  # m, standstill gap
IDM_MAX_BRAKE = 8.0  # m/s^2, the most an IDM car brakes (emergencies)
TURN_LAT_ACCEL = 2.5  # m/s^2: connector speed cap sqrt(a / curvature)
SPEED_RANGE = (7.0, 10.0)  # m/s desired speeds

CAR_COLORS = ((200, 30, 30), (30, 60, 170), (235, 235, 235), (20, 20, 22), (150, 150, 155), (200, 160, 20),
              (20, 120, 60), (120, 40, 120), (230, 110, 20), (90, 60, 40))
CAR_SIZES = ((4.6, 1.9, 1.5), (4.2, 1.8, 1.45), (4.9, 1.95, 1.7), (5.2, 2.0, 1.9))


def idm(v: float, v0: float, gap: float, v_lead: float, a_max: float = IDM_A, b: float = IDM_B,
        headway: float = IDM_T, s0: float = IDM_S0) -> float:
    """IDM acceleration for speed ``v``, desired speed ``v0``, bumper gap ``gap`` to a leader at ``v_lead``.

    ``gap = inf`` is the free road. Pure function; negative gaps (overlap) give the strongest brake.
    """
    free = 1.0 - (v / v0) ** 4 if v0 > 0.1 else -1.0
    if gap == math.inf:
        return a_max * free
    s_star = s0 + max(0.0, v * headway + v * (v - v_lead) / (2.0 * math.sqrt(a_max * b)))
    return a_max * (free - (s_star / max(gap, 0.05)) ** 2)


@dataclass(frozen=True)
class TrafficSpec:
    """One other vehicle: its route and its car. Immutable; the world keeps the moving state."""

    segs: tuple[int, ...]
    s0: float  # initial arc length on segs[0]
    v0: float  # initial speed
    v_des: float
    length: float
    width: float
    height: float
    color: tuple[int, int, int]
    lens: tuple[float, ...] = ()
    cum: tuple[float, ...] = ()  # start of each segment along the route
    cross: tuple[tuple[int, int, tuple[int, int, int]] | None, ...] = ()  # connectors: (node, in_arm, move key)
    vcap: tuple[float, ...] = ()  # per segment speed cap (turns)
    index: dict[int, int] = field(default_factory=dict)  # segment id -> position in segs


def make_spec(net: RoadNetwork, segs: list[int], s0: float, v0: float, v_des: float,
              size: tuple[float, float, float], color: tuple[int, int, int]) -> TrafficSpec:
    lens, cross, vcap = [], [], []
    for sid in segs:
        seg = net.segments[sid]
        lens.append(seg.path.length)
        if seg.kind == "connector":
            cross.append((seg.node, seg.in_arm, seg.key))
            k = max(abs(x) for x in seg.path.kappa)
            vcap.append(math.sqrt(TURN_LAT_ACCEL / k) if k > 1e-3 else math.inf)
        else:
            cross.append(None)
            vcap.append(math.inf)
    cum = np.concatenate([[0.0], np.cumsum(lens)[:-1]]).tolist()
    return TrafficSpec(tuple(segs), float(s0), float(v0), float(v_des), *size, color, lens=tuple(lens),
                       cum=tuple(cum), cross=tuple(cross), vcap=tuple(vcap),
                       index={sid: k for k, sid in enumerate(segs)})


def random_route(net: RoadNetwork, start: int, s0: float, need: float, excluded: set[int],
                 rng: np.random.Generator, prefer: dict[int, int] | None = None) -> list[int]:
    """A lane/connector sequence from segment ``start`` at least ``need`` metres long (or to a dead end).

    Connectors leading into an ``excluded`` lane (blocked by a box, or kept free for the ego) are never
    taken, nor is a segment twice. ``prefer`` maps a lane to the connector to take with probability 1/2
    (leads tend to go the ego's way).
    """
    segs = [start]
    total = net.segments[start].path.length - s0
    while total < need:
        last = net.segments[segs[-1]]
        options = [c for c in last.successors if c not in segs
                   and all(n not in excluded and n not in segs for n in net.segments[c].successors)]
        if not options:
            break
        if prefer and last.id in prefer and prefer[last.id] in options and rng.random() < 0.5:
            conn = prefer[last.id]
        else:
            conn = options[int(rng.integers(len(options)))]
        nxt = net.segments[conn].successors[0]
        segs += [conn, nxt]
        total += net.segments[conn].path.length + net.segments[nxt].path.length
    return segs
