"""The world: the ego (kinematic bicycle), IDM traffic on lanes, static obstacles, and what the
metrics read (collisions, off-road, progress, time to collision).

Junction rule for other vehicles (so that crossing paths never force a collision): a vehicle near
its stop line commits to its move through the junction only when no committed vehicle drives a
conflicting move (paths that cross, merge or pass too close: ``roads.conflict_table``), no vehicle
on a conflicting move has waited longer, and the ego is neither in the junction nor due within
``EGO_DUE_S`` (+3 m) from another approach. Opposite straights, opposite lefts, right turns beside
crossing traffic... flow together. First come, first served, so it never deadlocks. The ego is not
bound by the rule (a policy drives it); the scripted expert yields to conflicting committed vehicles.
"""

from __future__ import annotations

import math

import numpy as np

from vla.runtime.errors import VlaError

from .geometry import box_corners, boxes_overlap
from .navigator import COMMAND_PHRASES, command_key
from .raster import GroundMap
from .roads import BOX_HALF, conflict_table
from .scenario import GOAL_TOLERANCE, Scenario
from .traffic import IDM_MAX_BRAKE, idm
from .vehicle import LENGTH, VehicleState, bicycle_step

CONFLICTS = conflict_table()
EGO_DUE_S = 2.5  # s: vehicles do not enter a junction the ego reaches within this
COMMIT_MARGIN = 5.0  # m added to the braking distance v^2/(2*2) within which a vehicle decides
LOOK = 80.0  # m, how far along its route a vehicle looks for a leader
OFF_ROUTE = 6.0  # m from the route path: the route tracker stops following the ego
TTC_HORIZON = 3.0  # s looked ahead by ttc()
TTC_STEP = 0.05  # s


class World:
    """One running scenario. ``step`` advances it; the queries read the state after the last step."""

    dt: float = 0.05

    def __init__(self, scenario: Scenario) -> None:
        if not isinstance(scenario, Scenario):
            raise VlaError(f"World needs a Scenario (from make_scenario), got {type(scenario).__name__}")
        self.scenario = scenario
        self.t = 0.0
        self.dt = World.dt
        st = scenario.ego_start
        self.ego = VehicleState(st.x, st.y, st.yaw, st.speed, st.accel, st.curvature, st.length, st.width)
        specs = scenario.traffic
        self._k = [0] * len(specs)
        self._s = [sp.s0 for sp in specs]
        self._v = [sp.v0 for sp in specs]
        self._on = [True] * len(specs)
        self._commit = [-1] * len(specs)  # node committed to, -1 none
        self._commit_arm = [-1] * len(specs)
        self._commit_k = [-1] * len(specs)  # route index of that junction's connector
        self._commit_move: list[tuple[int, int, int]] = [(-1, -1, -1)] * len(specs)
        self._want_move: list[tuple[int, int, int]] = [(-1, -1, -1)] * len(specs)
        self._wait = [math.inf] * len(specs)  # since when a vehicle waits at its next junction
        self._want = [-1] * len(specs)  # the junction it waits at
        self._want_arm = [-1] * len(specs)
        self._px: list[float] = [0.0] * len(specs)
        self._py: list[float] = [0.0] * len(specs)
        self._pyaw: list[float] = [0.0] * len(specs)
        self._traffic_poses()
        route = scenario.route
        _, _, self._route_i = route.path.project(st.x, st.y, int(route.s_start / route.path.ds))
        self._route_s = route.s_start
        self._route_lat = 0.0
        self._route_max = route.s_start
        n_nodes = len(scenario.network.nodes)
        self._ego_arm = [-1] * n_nodes
        self._ego_block = [False] * n_nodes
        self._ego_lanes: list[tuple[int, float]] = []
        self._collided: list[str] = []
        self._offroad = False
        self._goal = False
        self._lite = False  # look-ahead copies skip the ego's safety bookkeeping
        self._update_ego()
        self._check_ego()

    # -- time --------------------------------------------------------------------------------------
    def step(self, dt: float, accel: float, curvature: float) -> None:
        """Advance by ``dt`` seconds with the ego commanded (accel m/s^2, curvature 1/m)."""
        try:
            dt, accel, curvature = float(dt), float(accel), float(curvature)
        except (TypeError, ValueError) as exc:
            raise VlaError(f"World.step needs numbers (dt, accel, curvature): {exc}") from None
        if not (math.isfinite(dt) and dt > 0):
            raise VlaError(f"World.step: dt must be a positive number of seconds, got {dt}")
        if not (math.isfinite(accel) and math.isfinite(curvature)):
            raise VlaError(f"World.step: accel and curvature must be finite, got {accel}, {curvature}")
        n = max(1, math.ceil(dt / self.dt - 1e-9))
        h = dt / n
        for _ in range(n):
            self._traffic_step(h)
            bicycle_step(self.ego, accel, curvature, h)
            self.t += h
            self._update_ego()
            if not self._lite:
                self._check_ego()

    def copy(self) -> World:
        """An independent copy sharing the immutable scenario (and its cached raster)."""
        w = World.__new__(World)
        w.__dict__.update(self.__dict__)
        e = self.ego
        w.ego = VehicleState(e.x, e.y, e.yaw, e.speed, e.accel, e.curvature, e.length, e.width)
        for name in ("_k", "_s", "_v", "_on", "_commit", "_commit_arm", "_commit_k", "_commit_move", "_want_move",
                     "_wait", "_want", "_want_arm", "_px", "_py", "_pyaw", "_ego_arm", "_ego_block", "_collided"):
            setattr(w, name, list(getattr(self, name)))
        return w

    # -- queries -----------------------------------------------------------------------------------
    def command(self) -> str:
        """The navigator's phrase for the ego's position on its route."""
        return COMMAND_PHRASES[command_key(self.scenario.route, self._route_s)]

    def ground(self) -> GroundMap:
        return self.scenario.ground()

    def boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """Every other actor: float32 [N, 6] (x, y, yaw, length, width, height), uint8 [N, 3] RGB."""
        specs = self.scenario.traffic
        live = [i for i in range(len(specs)) if self._on[i]]
        ob, ob_col = self.scenario.obstacle_arrays()
        veh = np.array([[self._px[i], self._py[i], self._pyaw[i], specs[i].length, specs[i].width, specs[i].height]
                        for i in live], dtype=np.float64).reshape(-1, 6)
        col = np.array([specs[i].color for i in live], dtype=np.uint8).reshape(-1, 3)
        return np.concatenate([veh, ob]).astype(np.float32), np.concatenate([col, ob_col])

    def progress(self) -> float:
        """Route completion 0..1: the farthest point reached along the route (arriving = 1)."""
        r = self.scenario.route
        return float(min(1.0, max(0.0, (self._route_max - r.s_start) / max(r.length - GOAL_TOLERANCE, 1e-6))))

    def collision(self) -> str | None:
        """The first actor the ego hit ("vehicle 3", "obstacle 0"), None if none."""
        return self._collided[0] if self._collided else None

    def collisions(self) -> list[str]:
        """Every distinct actor the ego has hit, in order."""
        return list(self._collided)

    def offroad(self) -> bool:
        """Whether part of the ego's box is off the asphalt now."""
        return self._offroad

    def done(self) -> str | None:
        if self._collided:
            return "collision"
        if self._goal:
            return "goal"
        if self.t >= self.scenario.duration_s - 1e-6:
            return "timeout"
        return None

    def route_position(self) -> tuple[float, float]:
        """(arc length, lateral offset left +) of the ego's centre on its route path."""
        return self._route_s, self._route_lat

    def intersection_users(self, node: int) -> list[tuple[int, int, tuple[int, int, int]]]:
        """(vehicle, approach arm, move (in_arm, out_arm, lane)) of every vehicle committed to ``node``."""
        return [(i, self._commit_arm[i], self._commit_move[i]) for i in range(len(self._commit))
                if self._commit[i] == node]

    def traffic_states(self) -> list[tuple[int, float, float, float, float]]:
        """(vehicle, x, y, yaw, speed) of every vehicle still on the map."""
        return [(i, self._px[i], self._py[i], self._pyaw[i], self._v[i]) for i in range(len(self._on)) if self._on[i]]

    def ttc(self) -> float:
        """Time to collision (s): when the ego's box first overlaps another actor's, both moving on
        (inf if not within ``TTC_HORIZON``).

        Forward simulation as NAVSIM's TTC does: other actors keep speed and heading; the ego keeps
        its speed and steers back toward straight at its steering-rate limit (it has no plan here; a
        constant-curvature guess would run it off every turn exit into whatever stands there).
        """
        e = self.ego
        me = (e.x, e.y, e.yaw, e.length, e.width)
        reach = TTC_HORIZON * e.speed + e.length
        near = []
        for x, y, yaw, length, width, speed in self._actors():
            r = reach + TTC_HORIZON * speed + length
            if abs(x - e.x) < r and abs(y - e.y) < r:
                if boxes_overlap(me, (x, y, yaw, length, width)):
                    return 0.0
                near.append((x, y, yaw, length, width, speed, math.cos(yaw) * speed, math.sin(yaw) * speed))
        if not near:
            return math.inf
        ghost = VehicleState(e.x, e.y, e.yaw, e.speed, 0.0, e.curvature, e.length, e.width)
        t = 0.0
        while t < TTC_HORIZON - 1e-9:
            bicycle_step(ghost, 0.0, 0.0, TTC_STEP)
            t += TTC_STEP
            mine = (ghost.x, ghost.y, ghost.yaw, ghost.length, ghost.width)
            for x, y, yaw, length, width, _, vx, vy in near:
                if boxes_overlap(mine, (x + vx * t, y + vy * t, yaw, length, width)):
                    return t
        return math.inf

    # -- internals ---------------------------------------------------------------------------------
    def _actors(self) -> list[tuple[float, float, float, float, float, float]]:
        """(x, y, yaw, length, width, speed) of every live vehicle and obstacle."""
        specs = self.scenario.traffic
        out = [(self._px[i], self._py[i], self._pyaw[i], specs[i].length, specs[i].width, self._v[i])
               for i in range(len(specs)) if self._on[i]]
        out += [(o.x, o.y, o.yaw, o.length, o.width, 0.0) for o in self.scenario.obstacles]
        return out

    def _traffic_poses(self) -> None:
        segs = self.scenario.network.segments
        for i, sp in enumerate(self.scenario.traffic):
            if self._on[i]:
                self._px[i], self._py[i], self._pyaw[i] = segs[sp.segs[self._k[i]]].path.pose(self._s[i])

    def _blocked(self, i: int, node: int, arm: int, move: tuple[int, int, int]) -> bool:
        """Whether vehicle ``i`` (approaching ``node`` from ``arm`` to drive ``move``) must wait: the ego
        is in the junction or due from another approach (its path is unknown: a policy drives it), a
        vehicle on a conflicting move has committed, or one on a conflicting move has waited longer
        (first come, first served: no stream starves another; the order has no cycles, so no deadlock).
        """
        if self._ego_block[node] and self._ego_arm[node] != arm:
            return True
        conflict = CONFLICTS
        commit, cmove = self._commit, self._commit_move
        for j in range(len(commit)):
            if commit[j] == node and j != i and conflict[move, cmove[j]]:
                return True
        mine = (self._wait[i], i)
        want, wmove, wait = self._want, self._want_move, self._wait
        return any(want[j] == node and j != i and conflict[move, wmove[j]] and (wait[j], j) < mine
                   for j in range(len(want)))

    def _traffic_step(self, h: float) -> None:
        specs = self.scenario.traffic
        n = len(specs)
        if n == 0:
            return
        on, K, S, V = self._on, self._k, self._s, self._v
        sib = self.scenario.siblings()
        assoc: list[tuple[tuple[int, float], ...]] = []
        for j in range(n):
            if not on[j]:
                assoc.append(())
                continue
            seg = specs[j].segs[K[j]]
            sj = S[j]
            extra = tuple((o, sj) for o, div in sib[seg] if sj < div)
            assoc.append(((seg, sj), *extra))
        ego = self.ego
        ego_lanes = self._ego_lanes
        acc = [0.0] * n
        for i in range(n):
            if not on[i]:
                continue
            sp = specs[i]
            k, s, v = K[i], S[i], V[i]
            cum, index = sp.cum, sp.index
            base = cum[k] + s
            half = 0.5 * sp.length
            gap, v_lead = math.inf, 0.0
            for j in range(n):
                if j == i or not on[j]:
                    continue
                for seg, sj in assoc[j]:
                    kk = index.get(seg)
                    if kk is None or kk < k:
                        continue
                    d = cum[kk] + sj - base
                    if 0.0 < d < LOOK:
                        g = d - half - 0.5 * specs[j].length
                        if g < gap:
                            gap, v_lead = g, V[j]
            for seg, se in ego_lanes:
                kk = index.get(seg)
                if kk is None or kk < k:
                    continue
                d = cum[kk] + se - base
                if 0.0 < d < LOOK:
                    g = d - half - 0.5 * ego.length
                    if g < gap:
                        gap, v_lead = g, ego.speed
            v0 = min(sp.v_des, sp.vcap[k])
            last = len(sp.segs) - 1
            if k < last:
                cap = sp.vcap[k + 1]
                if cap < v0:
                    v0 = min(v0, math.sqrt(cap * cap + 3.0 * max(sp.lens[k] - s, 0.0)))
            a = idm(v, v0, gap, v_lead)
            if k < last and sp.cross[k + 1] is not None:
                node, arm, move = sp.cross[k + 1]
                if self._commit[i] != node:
                    d_front = sp.lens[k] - s - half
                    deciding = d_front < v * v / 4.0 + COMMIT_MARGIN
                    if deciding and self._want[i] != node:
                        self._want[i], self._want_arm[i], self._wait[i] = node, arm, self.t
                        self._want_move[i] = move
                    if self._blocked(i, node, arm, move):
                        a = min(a, idm(v, v0, d_front - 1.0, 0.0, s0=0.5))
                    elif deciding:
                        self._commit[i], self._commit_arm[i], self._commit_k[i] = node, arm, k + 1
                        self._commit_move[i] = move
                        self._want[i], self._wait[i] = -1, math.inf
            ck = self._commit_k[i]
            if self._commit[i] >= 0 and (k > ck + 1 or (k == ck + 1 and s > half + 0.5)):
                self._commit[i] = -1
            acc[i] = max(a, -IDM_MAX_BRAKE)
        for i in range(n):
            if not on[i]:
                continue
            sp = specs[i]
            v = V[i]
            v1 = v + acc[i] * h
            if v1 < 0.0:
                v1 = 0.0
            s = S[i] + 0.5 * (v + v1) * h
            V[i] = v1
            k = K[i]
            while s >= sp.lens[k]:
                s -= sp.lens[k]
                k += 1
                if k >= len(sp.segs):
                    on[i] = False
                    self._commit[i] = self._want[i] = -1
                    break
            if on[i]:
                K[i], S[i] = k, s
        self._traffic_poses()

    def _update_ego(self) -> None:
        """Route position, lanes under the ego, and which junctions the ego blocks."""
        e = self.ego
        sc = self.scenario
        path = sc.route.path
        # The tracker moves along the route at most a few metres per step, so a car far off its
        # route cannot be matched to some distant stretch of it.
        reach = int((e.speed * self.dt + 3.0) / path.ds) + 1
        s, lat, i = path.project(e.x, e.y, self._route_i, reach)
        at = i * path.ds
        beside = abs(s - at) <= path.ds
        if abs(lat) < OFF_ROUTE:
            self._route_i, self._route_s = i, min(max(s, at - path.ds), at + path.ds)
        else:  # off the route: the tracker waits where the ego left it
            s, lat, _ = path.project(e.x, e.y, self._route_i, 0)
        self._route_lat = lat
        if beside and abs(lat) < 3.5 and s > self._route_max:
            self._route_max = s
        self._ego_lanes = sc.lanes_at(e.x, e.y)
        c, sn = math.cos(e.yaw), math.sin(e.yaw)
        reach = EGO_DUE_S * e.speed + 3.0
        for node in sc.network.nodes:
            dx, dy = e.x - node.x, e.y - node.y
            ax, ay = abs(dx) - BOX_HALF, abs(dy) - BOX_HALF
            out = math.hypot(max(ax, 0.0), max(ay, 0.0))
            if out > reach + 0.5 * LENGTH + 1.0:
                self._ego_block[node.id] = False
                continue
            gap = out - 0.5 * LENGTH
            approaching = -(c * dx + sn * dy) > 0.0
            if out > 0.0 and approaching:
                self._ego_arm[node.id] = (0 if dx > 0 else 2) if ax > ay else (1 if dy > 0 else 3)
            self._ego_block[node.id] = out == 0.0 or gap <= 0.5 or (approaching and gap <= reach)
        r = sc.route
        if (not self._goal and abs(s - r.s_goal) <= GOAL_TOLERANCE and e.speed < 0.3
                and abs(lat) < 2.0):
            self._goal = True

    def _check_ego(self) -> None:
        """Collisions (accumulated) and off-road (now) for the ego's box."""
        e = self.ego
        mask = self.scenario.mask()
        corners = box_corners(e.x, e.y, e.yaw, e.length, e.width)
        pts = corners + [((corners[i][0] + corners[i - 1][0]) / 2, (corners[i][1] + corners[i - 1][1]) / 2)
                         for i in range(4)]
        self._offroad = not all(mask.drivable(px, py) for px, py in pts)
        me = (e.x, e.y, e.yaw, e.length, e.width)
        specs = self.scenario.traffic
        for i, sp in enumerate(specs):
            if self._on[i] and abs(self._px[i] - e.x) < 6.0 and abs(self._py[i] - e.y) < 6.0:
                name = f"vehicle {i}"
                if name not in self._collided and boxes_overlap(
                        me, (self._px[i], self._py[i], self._pyaw[i], sp.length, sp.width)):
                    self._collided.append(name)
        for i, o in enumerate(self.scenario.obstacles):
            if abs(o.x - e.x) < 6.0 and abs(o.y - e.y) < 6.0:
                name = f"obstacle {i}"
                if name not in self._collided and boxes_overlap(me, (o.x, o.y, o.yaw, o.length, o.width)):
                    self._collided.append(name)



