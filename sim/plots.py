"""Pictures of closed-loop runs: a top-down view of one scenario, and score against latency sweeps.

Why: a failed scenario is understood at a glance from above (where the ego went against the route,
what it hit), and a precision sweep is read as a curve. matplotlib is imported only inside these
functions, through its object-oriented API on the Agg canvas (no pyplot global state, no display), so
the vehicle install, which does not have it, can still import the rest of ``vla.sim``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vla.runtime.errors import VlaError

if TYPE_CHECKING:
    from .render import GroundLike

TOPDOWN_WIDTH_PX = 800
MARGIN_M = 15.0


def _figure(width_in: float, height_in: float) -> tuple[Any, Any]:
    """A matplotlib Figure with an Agg canvas, or a one-line error naming the extra to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise VlaError("plotting needs matplotlib, from the sim extra: pip install 'vla-runtime[sim]'") from None
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _points(a: np.ndarray | Sequence, cols: int, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, cols))
    if arr.ndim != 2 or arr.shape[1] < cols:
        raise VlaError(f"{what} must be an array [N, {cols}], got shape {arr.shape}")
    if not np.isfinite(arr[:, :cols]).all():
        raise VlaError(f"{what} contains NaN or inf")
    return arr


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """World corners [K, 4, 2] of boxes [K, >=5] (x, y, yaw, length, width), counter-clockwise."""
    b = np.asarray(boxes, dtype=np.float64)
    c, s = np.cos(b[:, 2]), np.sin(b[:, 2])
    sign = np.array([[1, -1], [1, 1], [-1, 1], [-1, -1]], dtype=np.float64)
    lx = sign[None, :, 0] * b[:, 3, None] / 2.0
    ly = sign[None, :, 1] * b[:, 4, None] / 2.0
    x = b[:, 0, None] + c[:, None] * lx - s[:, None] * ly
    y = b[:, 1, None] + s[:, None] * lx + c[:, None] * ly
    return np.stack([x, y], axis=-1)


def topdown_png(
    path: str | Path,
    ground: GroundLike,
    route_xy: np.ndarray,
    trace: np.ndarray,
    boxes: np.ndarray,
    title: str,
    marks: Sequence[tuple[float, float, str]] = (),
) -> Path:
    """Draw one scenario from above and write it as a PNG about 800 px wide; returns the path.

    The ground raster is cropped to the route, the ego trace (x, y, yaw rows; coloured by time) and
    the marks, plus a margin; the route is a dashed line, boxes are outlined rectangles, marks
    (collision / off-road points) are labelled crosses.
    """
    route = _points(route_xy, 2, "route_xy")
    tr = _points(trace, 2, "trace")
    bx = _points(boxes, 5, "boxes")
    mk = [(float(x), float(y), str(label)) for x, y, label in marks]
    image = np.asarray(ground.image)
    res, x0, y0 = float(ground.res), float(ground.x0), float(ground.y0)
    pts = [route[:, :2], tr[:, :2], np.array([(x, y) for x, y, _ in mk]).reshape(-1, 2)]
    pts = np.concatenate(pts)
    if len(pts) == 0:
        raise VlaError("topdown_png needs a route, a trace or marks to frame")
    lo, hi = pts.min(0) - MARGIN_M, pts.max(0) + MARGIN_M
    # Widen the shorter side so the view's aspect stays within 0.4..1.6 (a straight drive stays legible).
    centre, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    half = np.maximum(half, [half[1] / 1.6, half[0] * 0.4])
    lo, hi = centre - half, centre + half
    aspect = float(half[1] / half[0])
    # Crop the raster (row grows with y; drawn with origin="lower" so north is up).
    h, w = image.shape[:2]
    c0 = int(np.clip(math.floor((lo[0] - x0) / res), 0, w - 1))
    c1 = int(np.clip(math.ceil((hi[0] - x0) / res) + 1, c0 + 1, w))
    r0 = int(np.clip(math.floor((lo[1] - y0) / res), 0, h - 1))
    r1 = int(np.clip(math.ceil((hi[1] - y0) / res) + 1, r0 + 1, h))
    crop = image[r0:r1, c0:c1]
    extent = (x0 + (c0 - 0.5) * res, x0 + (c1 - 0.5) * res, y0 + (r0 - 0.5) * res, y0 + (r1 - 0.5) * res)

    fig, ax = _figure(TOPDOWN_WIDTH_PX / 100.0, TOPDOWN_WIDTH_PX / 100.0 * aspect * 0.85 + 0.6)
    ax.imshow(crop, origin="lower", extent=extent, interpolation="antialiased")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal", adjustable="box")
    if len(route):
        ax.plot(route[:, 0], route[:, 1], "--", color="#1f4fd1", lw=1.6, label="route")
    for corners in box_corners(bx) if len(bx) else ():
        ax.fill(corners[:, 0], corners[:, 1], facecolor="#ff8c1a55", edgecolor="#c45a00", lw=1.0)
    if len(tr):
        sc = ax.scatter(tr[:, 0], tr[:, 1], c=np.arange(len(tr)), cmap="viridis", s=6, zorder=3, label="ego")
        fig.colorbar(sc, ax=ax, fraction=0.035, pad=0.01, label="tick")
        ax.plot(tr[0, 0], tr[0, 1], "o", color="white", mec="black", ms=6, zorder=4)
    for x, y, label in mk:
        ax.plot(x, y, "x", color="red", ms=12, mew=3, zorder=5)
        ax.annotate(
            label,
            (x, y),
            xytext=(6, 6),
            textcoords="offset points",
            color="red",
            fontsize=10,
            fontweight="bold",
            zorder=5,
        )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("x (m, east)")
    ax.set_ylabel("y (m, north)")
    if len(route) or len(tr):
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def sweep_plot(
    path: str | Path,
    rows: Sequence[dict[str, Any]],
    x: str = "latency_ms",
    y: str = "score",
    line: str = "precision",
) -> Path:
    """Plot ``y`` against ``x``, one line with markers per value of ``line``; returns the PNG path."""
    if not rows:
        raise VlaError("sweep_plot needs at least one row")
    groups: dict[str, list[tuple[float, float]]] = {}
    for i, r in enumerate(rows):
        try:
            px, py = float(r[x]), float(r[y])
        except KeyError as e:
            raise VlaError(f"sweep row {i} has no {e.args[0]!r} (keys: {', '.join(map(str, r))})") from None
        except (TypeError, ValueError):
            raise VlaError(f"sweep row {i}: {x} and {y} must be numbers, got {r[x]!r}, {r[y]!r}") from None
        groups.setdefault(str(r.get(line, "?")), []).append((px, py))
    fig, ax = _figure(8.0, 5.0)
    for name, pts in groups.items():
        arr = np.array(sorted(pts))
        ax.plot(arr[:, 0], arr[:, 1], "-o", label=name, ms=5)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(f"{y} vs {x} by {line}")
    ax.grid(True, alpha=0.3)
    ax.legend(title=line)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
