"""The road network: a jittered grid of 4-way (some 3-way) junctions, two-way roads with two lanes
per direction, turning connectors inside the junctions, and the drivable area.

Layout (right-hand traffic). A junction is a square "box" of half size ``BOX_HALF`` around its
node; its arms leave along the axes (E, N, W, S). A road joins two arms with a cubic whose ends are
tangent to the arms, so roads between jittered nodes are gentle S-curves (centre-line radius
>= ``MIN_ROAD_RADIUS``). Boundary arms become stubs that run to the edge of the map. Lanes are
offsets of the centre line: lane 0 (inner, next to the double yellow line) and lane 1 (outer).
Connectors: straight for both lanes, left turns inner -> inner, right turns outer -> outer, as
quarter circles (radius BOX_HALF + 1.75 left, BOX_HALF - 5.25 >= 10 m right).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from .geometry import Path

LANE_WIDTH = 3.5  # m
LANES = 2  # per direction
HALF_ROAD = LANE_WIDTH * LANES  # m, centre line to the outer edge line
SHOULDER = 2.5  # m of asphalt beyond the edge line (parking)
SIDEWALK = 2.0  # m beyond the asphalt
BOX_HALF = 15.5  # m, junction half size: right-turn radius BOX_HALF - 5.25 = 10.25 m
GRID = 3  # nodes per side
SPACING = 80.0  # m between nodes
JITTER = 3.5  # m, node position jitter per axis
STUB = 45.0  # m, stub length from a boundary box to the map edge
MIN_ROAD_RADIUS = 36.0  # m, centre line; the inner lane of a curve keeps >= 30 m
SAMPLE = 0.25  # m, dense sampling of the analytic curves before resampling

ARM_DIRS = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))  # E, N, W, S
ARM_NAMES = ("east", "north", "west", "south")
TURN_NAMES = {0: "straight", 1: "left", 3: "right"}


def lane_offset(lane: int) -> float:
    """Distance of lane ``lane``'s centre to the right of the directed centre line."""
    return LANE_WIDTH * (lane + 0.5)


@dataclass
class Node:
    """A junction: centre and which arms (E, N, W, S) have a road."""

    id: int
    x: float
    y: float
    arms: tuple[bool, bool, bool, bool]


@dataclass
class Road:
    """One direction of a road: its centre line (dense points, in the direction of travel)."""

    id: int
    centre: np.ndarray  # [m, 2]
    start: tuple[int, int]  # (node, arm) it leaves, or (-1, -1) at the map edge
    end: tuple[int, int]  # (node, arm) it enters, or (-1, -1) at the map edge
    twin: int = -1  # the opposite direction
    lanes: tuple[int, ...] = ()  # segment ids, lane 0 (inner) first
    cum: np.ndarray = field(default_factory=lambda: np.zeros(1))  # arc length of the centre points

    @property
    def length(self) -> float:
        return float(self.cum[-1])

    def frame(self, sigma: float) -> tuple[float, float, float, float]:
        """(x, y, tangent x, tangent y) of the centre line at arc length ``sigma``."""
        i = int(np.clip(np.searchsorted(self.cum, sigma) - 1, 0, len(self.cum) - 2))
        t = (sigma - self.cum[i]) / max(self.cum[i + 1] - self.cum[i], 1e-9)
        p = self.centre[i] + t * (self.centre[i + 1] - self.centre[i])
        d = self.centre[i + 1] - self.centre[i]
        d = d / max(float(np.hypot(*d)), 1e-9)
        return float(p[0]), float(p[1]), float(d[0]), float(d[1])


@dataclass
class Segment:
    """A drivable lane piece: a road lane or a junction connector, with its successors."""

    id: int
    kind: str  # "lane" | "connector"
    path: Path
    road: int = -1  # lanes: the directed road
    lane: int = 0  # lanes: lane index; connectors: the lane index entered from
    node: int = -1  # connectors: the junction
    in_arm: int = -1  # connectors: the arm entered from
    out_arm: int = -1  # connectors: the arm left by
    turn: str = ""  # connectors: "straight" | "left" | "right"
    successors: tuple[int, ...] = ()
    siblings: tuple[tuple[int, float], ...] = ()  # connectors sharing the entry: (id, divergence s)

    @property
    def key(self) -> tuple[int, int, int]:
        """Connectors: (in_arm, out_arm, lane), the same for the same move at every junction."""
        return self.in_arm, self.out_arm, self.lane


def offset_points(centre: np.ndarray, offsets: np.ndarray | float) -> np.ndarray:
    """Points at ``offsets`` metres to the RIGHT of the centre polyline."""
    d = np.gradient(centre, axis=0)
    d /= np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-12)[:, None]
    left = np.stack([-d[:, 1], d[:, 0]], axis=1)
    return centre - left * np.asarray(offsets, dtype=np.float64).reshape(-1, 1)


def _cubic_road(p0: np.ndarray, p1: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Dense centre line from p0 to p1, tangent to ``direction`` at both ends (Hermite S-curve)."""
    normal = np.array([-direction[1], direction[0]])
    along = float((p1 - p0) @ direction)
    side = float((p1 - p0) @ normal)
    m = max(math.ceil(along / SAMPLE), 2) + 1
    u = np.linspace(0.0, 1.0, m)
    return p0 + np.outer(u * along, direction) + np.outer(side * (3 * u**2 - 2 * u**3), normal)


class RoadNetwork:
    """Nodes, directed roads, lane/connector segments and the drivable polygons of one map."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.nodes: list[Node] = []
        self.roads: list[Road] = []
        self.segments: list[Segment] = []
        self.road_at: dict[tuple[int, int], tuple[int, int]] = {}  # (node, arm) -> (out road, in road)
        self.connector: dict[tuple[int, int, int, int], int] = {}  # (node, in_arm, out_arm, lane) -> seg
        self._build(rng)

    # -- construction ----------------------------------------------------------------------------
    def _build(self, rng: np.random.Generator) -> None:
        grid = {}
        for j in range(GRID):
            for i in range(GRID):
                x = i * SPACING + rng.uniform(-JITTER, JITTER)
                y = j * SPACING + rng.uniform(-JITTER, JITTER)
                grid[i, j] = len(grid)
                self.nodes.append(Node(len(self.nodes), float(x), float(y), (True,) * 4))
        edges = [((i, j), (i + 1, j), 0) for j in range(GRID) for i in range(GRID - 1)]
        edges += [((i, j), (i, j + 1), 1) for j in range(GRID - 1) for i in range(GRID)]
        arms = {k: [True] * 4 for k in grid}
        # Some junctions become T's: drop up to two inner edges, keeping every node at >= 3 arms.
        order = rng.permutation(len(edges))
        to_drop, dropped = int(rng.integers(0, 3)), 0
        for e in order:
            if dropped >= to_drop:
                break
            a, b, axis = edges[e]
            arm_a, arm_b = (0, 2) if axis == 0 else (1, 3)
            if sum(arms[a]) > 3 and sum(arms[b]) > 3:
                arms[a][arm_a] = arms[b][arm_b] = False
                edges[e] = None  # type: ignore[call-overload]
                dropped += 1
        for k, n in grid.items():
            self.nodes[n].arms = tuple(arms[k])  # type: ignore[assignment]
        for e in edges:
            if e is None:
                continue
            a, b, axis = e
            arm_a, arm_b = (0, 2) if axis == 0 else (1, 3)
            self._add_road_pair(grid[a], arm_a, grid[b], arm_b)
        for (i, j), n in grid.items():
            boundary = {0: i == GRID - 1, 1: j == GRID - 1, 2: i == 0, 3: j == 0}
            for arm, on_edge in boundary.items():
                if on_edge:
                    self._add_stub(n, arm)
        for road in self.roads:
            road.lanes = tuple(self._add_lane(road, k) for k in range(LANES))
        for node in self.nodes:
            self._add_connectors(node)
        self._link()

    def _arm_point(self, node: int, arm: int, extra: float = 0.0) -> np.ndarray:
        n = self.nodes[node]
        d = ARM_DIRS[arm]
        return np.array([n.x + d[0] * (BOX_HALF + extra), n.y + d[1] * (BOX_HALF + extra)])

    def _new_road(self, centre: np.ndarray, start: tuple[int, int], end: tuple[int, int]) -> Road:
        cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(centre, axis=0).T))])
        road = Road(len(self.roads), centre, start, end, cum=cum)
        self.roads.append(road)
        return road

    def _add_road_pair(self, a: int, arm_a: int, b: int, arm_b: int) -> None:
        centre = _cubic_road(self._arm_point(a, arm_a), self._arm_point(b, arm_b), np.array(ARM_DIRS[arm_a]))
        fwd = self._new_road(centre, (a, arm_a), (b, arm_b))
        bwd = self._new_road(centre[::-1].copy(), (b, arm_b), (a, arm_a))
        fwd.twin, bwd.twin = bwd.id, fwd.id
        self.road_at[a, arm_a] = (fwd.id, bwd.id)
        self.road_at[b, arm_b] = (bwd.id, fwd.id)

    def _add_stub(self, node: int, arm: int) -> None:
        p0, p1 = self._arm_point(node, arm), self._arm_point(node, arm, STUB)
        m = int(STUB / SAMPLE) + 1
        centre = np.linspace(p0, p1, m)
        out = self._new_road(centre, (node, arm), (-1, -1))
        inn = self._new_road(centre[::-1].copy(), (-1, -1), (node, arm))
        out.twin, inn.twin = inn.id, out.id
        self.road_at[node, arm] = (out.id, inn.id)

    def _add_lane(self, road: Road, lane: int) -> int:
        seg = Segment(len(self.segments), "lane", Path(offset_points(road.centre, lane_offset(lane))),
                      road=road.id, lane=lane)
        self.segments.append(seg)
        return seg.id

    def _add_connectors(self, node: Node) -> None:
        for a in range(4):
            if not node.arms[a]:
                continue
            in_road = self.roads[self.road_at[node.id, a][1]]
            for b in range(4):
                turn = (b - (a + 2)) % 4
                if b == a or not node.arms[b] or turn == 2:
                    continue
                out_road = self.roads[self.road_at[node.id, b][0]]
                lanes = (0, 1) if turn == 0 else ((0,) if turn == 1 else (1,))
                for k in lanes:
                    p_in = self.segments[in_road.lanes[k]].path
                    p_out = self.segments[out_road.lanes[k]].path
                    start = np.array([p_in.x[-1], p_in.y[-1]])
                    end = np.array([p_out.x[0], p_out.y[0]])
                    pts = _connector_points(start, end, ARM_DIRS[(a + 2) % 4], turn)
                    seg = Segment(len(self.segments), "connector", Path(pts), lane=k, node=node.id, in_arm=a,
                                  out_arm=b, turn=TURN_NAMES[turn])
                    self.segments.append(seg)
                    self.connector[node.id, a, b, k] = seg.id

    def _link(self) -> None:
        """Successors (lane -> its connectors -> the next lane) and connector siblings."""
        succ: dict[int, list[int]] = {s.id: [] for s in self.segments}
        for (node, a, b, k), cid in self.connector.items():
            in_lane = self.roads[self.road_at[node, a][1]].lanes[k]
            out_lane = self.roads[self.road_at[node, b][0]].lanes[k]
            succ[in_lane].append(cid)
            succ[cid].append(out_lane)
        for seg in self.segments:
            seg.successors = tuple(sorted(succ[seg.id]))
        groups: dict[tuple[int, int, int], list[Segment]] = {}
        for seg in self.segments:
            if seg.kind == "connector":
                groups.setdefault((seg.node, seg.in_arm, seg.lane), []).append(seg)
        for group in groups.values():
            for seg in group:
                seg.siblings = tuple((o.id, _divergence(seg.path, o.path)) for o in group if o.id != seg.id)

    # -- queries ---------------------------------------------------------------------------------
    def out_road(self, node: int, arm: int) -> Road:
        return self.roads[self.road_at[node, arm][0]]

    def in_road(self, node: int, arm: int) -> Road:
        return self.roads[self.road_at[node, arm][1]]

    def undirected(self) -> list[Road]:
        """One road per pair of directions (for drawing)."""
        return [r for r in self.roads if r.id < r.twin]

    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of everything drawn, sidewalks included."""
        pts = np.concatenate([r.centre for r in self.roads])
        pad = HALF_ROAD + SHOULDER + SIDEWALK
        return (float(pts[:, 0].min() - pad), float(pts[:, 1].min() - pad),
                float(pts[:, 0].max() + pad), float(pts[:, 1].max() + pad))


def _connector_points(start: np.ndarray, end: np.ndarray, heading: tuple[float, float], turn: int) -> np.ndarray:
    """A straight line or a quarter circle from ``start`` (travelling along ``heading``) to ``end``."""
    if turn == 0:
        m = max(int(np.hypot(*(end - start)) / SAMPLE), 2) + 1
        return np.linspace(start, end, m)
    h = np.array(heading)
    left = np.array([-h[1], h[0]])
    side = left if turn == 1 else -left
    radius = abs(float((end - start) @ h))
    centre = start + side * radius
    a0 = math.atan2(start[1] - centre[1], start[0] - centre[0])
    sweep = (math.pi / 2) * (1 if turn == 1 else -1)
    m = max(int(radius * math.pi / 2 / SAMPLE), 8) + 1
    ang = a0 + np.linspace(0.0, sweep, m)
    return centre + radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)


def _divergence(a: Path, b: Path, clearance: float = 2.4) -> float:
    """Arc length after which two connectors from one lane are ``clearance`` apart (sideways)."""
    n = min(a.n, b.n)
    gap = np.hypot(*(a.xy[:n] - b.xy[:n]).T)
    far = np.nonzero(gap > clearance)[0]
    return float(far[0] * a.ds) if len(far) else a.length


CONFLICT_CAR = (5.2, 2.2)  # m, the largest car (with a margin) swept along both connectors


def _canonical_connectors() -> dict[tuple[int, int, int], np.ndarray]:
    """Every connector of a 4-way junction centred on the origin, by (in_arm, out_arm, lane)."""
    out = {}
    for a in range(4):
        h = ARM_DIRS[(a + 2) % 4]
        for b in range(4):
            turn = (b - (a + 2)) % 4
            if b == a or turn == 2:
                continue
            hb = ARM_DIRS[b]
            for k in ((0, 1) if turn == 0 else ((0,) if turn == 1 else (1,))):
                off = lane_offset(k)
                start = np.array(ARM_DIRS[a]) * BOX_HALF + np.array([h[1], -h[0]]) * off
                end = np.array(hb) * BOX_HALF + np.array([hb[1], -hb[0]]) * off
                out[a, b, k] = _connector_points(start, end, h, turn)
    return out


@lru_cache(maxsize=1)
def conflict_table() -> dict[tuple[tuple[int, int, int], tuple[int, int, int]], bool]:
    """Which pairs of junction moves cannot be driven at the same time: some pose of a car on one
    overlaps some pose of a car on the other (paths that cross, merge, or pass too close). Moves
    from one approach never conflict: lane discipline keeps them apart and followers follow.
    Computed once for the canonical junction (every junction is one, up to translation)."""
    from .geometry import boxes_overlap

    conns = _canonical_connectors()
    poses = {}
    for key, pts in conns.items():
        step = max(1, round(1.0 / SAMPLE))
        p = pts[::step]
        d = np.gradient(p, axis=0)
        poses[key] = [(float(x), float(y), float(math.atan2(dy, dx))) for (x, y), (dx, dy) in zip(p, d, strict=True)]
    table = {}
    keys = sorted(conns)
    length, width = CONFLICT_CAR
    reach = math.hypot(length, width)
    for i, k1 in enumerate(keys):
        table[k1, k1] = False  # one car after another on the same move: car following
        for k2 in keys[i + 1:]:
            hit = False
            if k1[0] != k2[0]:
                a1, a2 = np.asarray(poses[k1])[:, :2], np.asarray(poses[k2])[:, :2]
                close = np.argwhere(np.hypot(*(a1[:, None, :] - a2[None, :, :]).transpose(2, 0, 1)) < reach)
                hit = any(boxes_overlap((*poses[k1][m], length, width), (*poses[k2][n], length, width))
                          for m, n in close.tolist())
            table[k1, k2] = table[k2, k1] = hit
    return table
