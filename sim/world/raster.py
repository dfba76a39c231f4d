"""The top-down ground raster (what the cameras see of the ground) and the drivable-area mask.

Both are drawn from the same polygons, so "off-road" means exactly "off the asphalt in the picture".
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .roads import BOX_HALF, HALF_ROAD, LANE_WIDTH, SHOULDER, SIDEWALK, RoadNetwork, offset_points

RES = 0.1  # m/px of the ground image
MASK_RES = 0.2  # m/px of the drivable mask
MARGIN = 8.0  # m of grass around everything

GRASS = (86, 118, 60)
SIDEWALK_RGB = (168, 166, 160)
ASPHALT = (70, 70, 74)
WHITE = (232, 232, 228)
YELLOW = (226, 184, 40)

LINE_W = 0.15  # m, lane lines
STOP_W = 0.4  # m, stop lines
DASH, GAP = 3.0, 6.0  # m, dashed lane divider
_SHIFT = 2  # fixed-point bits for cv2 (sub-pixel polygon vertices)


@dataclass(frozen=True)
class GroundMap:
    """The ground as an RGB image. ``col = (x - x0) / res``, ``row = (y - y0) / res`` (row grows with y)."""

    image: np.ndarray  # uint8 [H, W, 3]
    x0: float
    y0: float
    res: float


class _Canvas:
    """World-coordinate polygon filling on an image whose pixel (0, 0) centre is at (x0, y0)."""

    def __init__(self, image: np.ndarray, x0: float, y0: float, res: float) -> None:
        self.image, self.x0, self.y0, self.res = image, x0, y0, res

    def fill(self, polys: list[np.ndarray], color: tuple[int, ...] | int) -> None:
        if not polys:
            return
        scale = (1 << _SHIFT) / self.res
        pix = [np.round((p - (self.x0, self.y0)) * scale).astype(np.int32) for p in polys]
        cv2.fillPoly(self.image, pix, color, lineType=cv2.LINE_8, shift=_SHIFT)


def _strip(centre: np.ndarray, a: float, b: float) -> np.ndarray:
    """Polygon between offsets ``a`` and ``b`` (to the right) of a centre polyline."""
    return np.concatenate([offset_points(centre, a), offset_points(centre, b)[::-1]])


def _square(x: float, y: float, half: float) -> np.ndarray:
    return np.array([[x - half, y - half], [x + half, y - half], [x + half, y + half], [x - half, y + half]])


def _asphalt_polys(net: RoadNetwork) -> list[np.ndarray]:
    edge = HALF_ROAD + SHOULDER
    polys = [_strip(r.centre, -edge, edge) for r in net.undirected()]
    return polys + [_square(n.x, n.y, BOX_HALF) for n in net.nodes]


def _dashes(centre: np.ndarray, cum: np.ndarray, offset: float) -> list[np.ndarray]:
    out = []
    s = 0.5 * GAP
    while s < cum[-1]:
        i0, i1 = np.searchsorted(cum, [s, min(s + DASH, cum[-1])])
        if i1 - i0 >= 1:
            out.append(_strip(centre[i0:i1 + 1], offset - LINE_W / 2, offset + LINE_W / 2))
        s += DASH + GAP
    return out


def _marking_polys(net: RoadNetwork) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(white polygons, yellow polygons)."""
    white, yellow = [], []
    for r in net.undirected():
        c = r.centre
        for side in (-1.0, 1.0):
            white.append(_strip(c, side * HALF_ROAD - LINE_W / 2, side * HALF_ROAD + LINE_W / 2))
            for k in range(1, 2 * 0 + 2):  # one divider between the two lanes of a direction
                white += _dashes(c, r.cum, side * LANE_WIDTH * k)
            yellow.append(_strip(c, side * 0.15 - 0.06, side * 0.15 + 0.06))
    for r in net.roads:  # stop lines where a directed road enters a junction
        if r.end[0] < 0:
            continue
        n = len(r.centre)
        tail = r.centre[max(0, np.searchsorted(r.cum, r.cum[-1] - STOP_W) - 1):n]
        white.append(_strip(tail, 0.3, HALF_ROAD))
    return white, yellow


def build_ground(net: RoadNetwork, res: float = RES) -> GroundMap:
    """Draw the map: grass, sidewalks, asphalt, lane lines, double yellow centre lines, stop lines."""
    xmin, ymin, xmax, ymax = net.bounds()
    x0, y0 = xmin - MARGIN, ymin - MARGIN
    w = int(np.ceil((xmax + MARGIN - x0) / res)) + 1
    h = int(np.ceil((ymax + MARGIN - y0) / res)) + 1
    image = np.empty((h, w, 3), dtype=np.uint8)
    image[:] = GRASS
    canvas = _Canvas(image, x0, y0, res)
    walk = HALF_ROAD + SHOULDER + SIDEWALK
    canvas.fill([_strip(r.centre, -walk, walk) for r in net.undirected()]
                + [_square(n.x, n.y, BOX_HALF + SIDEWALK) for n in net.nodes], SIDEWALK_RGB)
    canvas.fill(_asphalt_polys(net), ASPHALT)
    white, yellow = _marking_polys(net)
    canvas.fill(yellow, YELLOW)
    canvas.fill(white, WHITE)
    return GroundMap(image=image, x0=float(x0), y0=float(y0), res=float(res))


@dataclass(frozen=True)
class DrivableMask:
    """Asphalt as a flat byte string (fast point lookups from Python): 1 drivable, 0 not."""

    data: bytes
    width: int
    height: int
    x0: float
    y0: float
    res: float

    def drivable(self, x: float, y: float) -> bool:
        col = int((x - self.x0) / self.res + 0.5)
        row = int((y - self.y0) / self.res + 0.5)
        if col < 0 or row < 0 or col >= self.width or row >= self.height:
            return False
        return self.data[row * self.width + col] != 0


def build_mask(net: RoadNetwork, res: float = MASK_RES) -> DrivableMask:
    xmin, ymin, xmax, ymax = net.bounds()
    x0, y0 = xmin - MARGIN, ymin - MARGIN
    w = int(np.ceil((xmax + MARGIN - x0) / res)) + 1
    h = int(np.ceil((ymax + MARGIN - y0) / res)) + 1
    mask = np.zeros((h, w), dtype=np.uint8)
    _Canvas(mask, x0, y0, res).fill(_asphalt_polys(net), 1)
    return DrivableMask(mask.tobytes(), w, h, float(x0), float(y0), float(res))
