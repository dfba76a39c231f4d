"""The route as the model's command (the L of V+L→A): which way it goes at the next junction.

``submit_route`` gives the planned route as waypoints in the rig frame (x forward, y left) at that
moment. A driving VLA is told the manoeuvre, not the map, so the route becomes one of three commands,
each a phrase the reference vocabulary knows:

- the route is resampled every ``STEP_M`` metres from the point nearest the ego (so uneven or jittery
  waypoints do not read as turns) and its direction there is the reference;
- walking along it up to ``lookahead_m``, the first point where the route's direction has turned by at
  least ``turn_deg`` from the reference is the next junction: ``"turn left"`` or ``"turn right"`` by
  the sign of that turn;
- a route that never turns that far within the look-ahead (straight, or a bend gentler than a junction)
  is ``"follow the road"``; so is a route too short to have a direction.

Defaults: 50 m look-ahead (5 s at 10 m/s, inside the reference model's 6.4 s horizon) and 45 degrees (a
junction turns 90; a 100 m radius bend turns 29 over 50 m). Pure functions.
"""

from __future__ import annotations

import math

import numpy as np

FOLLOW, LEFT, RIGHT = "follow the road", "turn left", "turn right"
STEP_M = 2.0
LOOKAHEAD_M = 50.0
TURN_DEG = 45.0


def next_turn(waypoints: np.ndarray, lookahead_m: float = LOOKAHEAD_M, turn_deg: float = TURN_DEG) -> float | None:
    """The route's signed turn (rad, left positive) at its next junction within ``lookahead_m``; 0.0 when it
    turns less than ``turn_deg`` there; None when the route has no direction (fewer than two distinct
    finite points)."""
    pts = np.asarray(waypoints, dtype=np.float64).reshape(-1, 3)[:, :2]
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if len(pts) < 2:
        return None
    seg = np.diff(pts, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    s = np.concatenate([[0.0], np.cumsum(lengths)])
    if s[-1] <= 1e-6:
        return None
    # Start at the point of the route nearest the ego (the rig origin): projections onto every segment.
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.clip(np.where(lengths > 0, -(pts[:-1] * seg).sum(axis=1) / lengths**2, 0.0), 0.0, 1.0)
    nearest = pts[:-1] + a[:, None] * seg
    k = int(np.argmin(np.hypot(nearest[:, 0], nearest[:, 1])))
    start = s[k] + a[k] * lengths[k]
    stop = min(s[-1], start + lookahead_m)
    if stop - start < STEP_M:
        return None
    grid = np.arange(start, stop + 1e-9, STEP_M)
    if grid[-1] < stop - 1e-9:
        grid = np.append(grid, stop)
    xs, ys = np.interp(grid, s, pts[:, 0]), np.interp(grid, s, pts[:, 1])
    direction = np.unwrap(np.arctan2(np.diff(ys), np.diff(xs)))
    turned = direction - direction[0]
    beyond = np.nonzero(np.abs(turned) >= math.radians(turn_deg))[0]
    return float(turned[beyond[0]]) if len(beyond) else 0.0


def route_command(waypoints: np.ndarray, lookahead_m: float = LOOKAHEAD_M, turn_deg: float = TURN_DEG) -> str:
    """``"turn left"``, ``"turn right"`` or ``"follow the road"`` for a route in the rig frame."""
    turn = next_turn(waypoints, lookahead_m, turn_deg)
    if not turn:
        return FOLLOW
    return LEFT if turn > 0 else RIGHT
