"""Planar geometry the world needs on its hot paths: uniform-arc-length paths and oriented boxes.

Why uniform sampling: a pose lookup by arc length is then an index computation (O(1)), and a
projection is a few tangent steps from a hint. The world and the expert call these thousands of
times per simulated second, so they use Python floats (lists), not numpy scalars.
"""

from __future__ import annotations

import math

import numpy as np

TWO_PI = 2.0 * math.pi


def wrap(angle: float) -> float:
    """``angle`` in (-pi, pi]."""
    return (angle + math.pi) % TWO_PI - math.pi


def smoothstep5(u: float | np.ndarray) -> float | np.ndarray:
    """Quintic 0 -> 1 ramp with zero slope and curvature at both ends (lane-change profiles)."""
    u = np.clip(u, 0.0, 1.0)
    return u * u * u * (10.0 - 15.0 * u + 6.0 * u * u)


class Path:
    """A polyline resampled at (nearly) ``ds`` uniform arc-length steps.

    ``x``, ``y``, ``yaw``, ``kappa`` are Python lists (fast scalar access); ``xy`` is the same points
    as a float64 ``[n, 2]`` array for vectorised queries.
    """

    __slots__ = ("c", "ds", "kappa", "length", "n", "sn", "x", "xy", "y", "yaw")

    def __init__(self, points: np.ndarray, ds: float = 0.5) -> None:
        pts = np.asarray(points, dtype=np.float64)
        step = np.hypot(*np.diff(pts, axis=0).T)
        keep = np.concatenate([[True], step > 1e-9])
        pts = pts[keep]
        if len(pts) < 2:
            raise ValueError("a path needs two distinct points")
        cum = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(pts, axis=0).T))])
        length = float(cum[-1])
        n = max(2, math.ceil(length / ds) + 1)
        s = np.linspace(0.0, length, n)
        x = np.interp(s, cum, pts[:, 0])
        y = np.interp(s, cum, pts[:, 1])
        step = length / (n - 1)
        dx, dy = np.gradient(x, step), np.gradient(y, step)
        yaw = np.unwrap(np.arctan2(dy, dx))
        kappa = np.gradient(yaw, step)
        self.ds, self.length, self.n = step, length, n
        self.xy = np.stack([x, y], axis=1)
        self.x, self.y = x.tolist(), y.tolist()
        self.yaw, self.kappa = yaw.tolist(), kappa.tolist()
        self.c, self.sn = np.cos(yaw).tolist(), np.sin(yaw).tolist()

    def pose(self, s: float) -> tuple[float, float, float]:
        """(x, y, yaw) at arc length ``s``; beyond either end the end tangent is extended."""
        n1 = self.n - 1
        f = s / self.ds
        if f <= 0.0:
            return self.x[0] + s * self.c[0], self.y[0] + s * self.sn[0], self.yaw[0]
        if f >= n1:
            e = s - self.length
            return self.x[n1] + e * self.c[n1], self.y[n1] + e * self.sn[n1], self.yaw[n1]
        i = int(f)
        t = f - i
        x, y, yaw = self.x, self.y, self.yaw
        return x[i] + t * (x[i + 1] - x[i]), y[i] + t * (y[i + 1] - y[i]), yaw[i] + t * (yaw[i + 1] - yaw[i])

    def project(self, px: float, py: float, hint: int = 0, reach: int | None = None) -> tuple[float, float, int]:
        """(s, lateral offset (left +), sample index) of the point, by tangent steps from ``hint``.

        Local: it finds the nearest stretch around ``hint`` (within ``reach`` samples of it if given),
        which is what a tracker needs (a global search would jump between the two sides of a loop).
        ``s`` is more than ``ds`` from ``index * ds`` when the point is not beside that stretch.
        """
        n1 = self.n - 1
        i = min(max(hint, 0), n1)
        lo, hi = (0, n1) if reach is None else (max(i - reach, 0), min(i + reach, n1))
        ds = self.ds
        d = 0.0
        for _ in range(6):
            dx, dy = px - self.x[i], py - self.y[i]
            d = dx * self.c[i] + dy * self.sn[i]
            j = min(max(i + round(d / ds), lo), hi)
            if j == i:
                break
            i = j
        dx, dy = px - self.x[i], py - self.y[i]
        d = dx * self.c[i] + dy * self.sn[i]
        lat = -dx * self.sn[i] + dy * self.c[i]
        return i * ds + d, lat, i


def box_corners(x: float, y: float, yaw: float, length: float, width: float) -> list[tuple[float, float]]:
    """The four corners of a box centred on (x, y), counter-clockwise from front-left."""
    c, s = math.cos(yaw), math.sin(yaw)
    hl, hw = 0.5 * length, 0.5 * width
    return [
        (x + c * hl - s * hw, y + s * hl + c * hw),
        (x - c * hl - s * hw, y - s * hl + c * hw),
        (x - c * hl + s * hw, y - s * hl - c * hw),
        (x + c * hl + s * hw, y + s * hl - c * hw),
    ]


def boxes_overlap(a: tuple[float, float, float, float, float], b: tuple[float, float, float, float, float]) -> bool:
    """Whether two oriented boxes (x, y, yaw, length, width) overlap (separating-axis test).

    Touching edges count as no overlap, so two cars exactly bumper to bumper do not collide.
    """
    ax, ay, ayaw, al, aw = a
    bx, by, byaw, bl, bw = b
    dx, dy = bx - ax, by - ay
    ca, sa, cb, sb = math.cos(ayaw), math.sin(ayaw), math.cos(byaw), math.sin(byaw)
    for ux, uy in ((ca, sa), (-sa, ca), (cb, sb), (-sb, cb)):
        ra = 0.5 * al * abs(ux * ca + uy * sa) + 0.5 * aw * abs(-ux * sa + uy * ca)
        rb = 0.5 * bl * abs(ux * cb + uy * sb) + 0.5 * bw * abs(-ux * sb + uy * cb)
        if abs(dx * ux + dy * uy) >= ra + rb:
            return False
    return True
