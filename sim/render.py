"""The synthetic world rendered into a rig's pinhole cameras, in the cameras' own raw pixel formats.

Why this exists: a driving policy trained and evaluated in the synthetic world must see frames made
exactly like the ones a real camera source delivers (same ``Rig`` geometry as ``synthetic://``, same
pixel formats and colour conventions), and the closed loop renders three cameras every 0.1 s tick on
one CPU core, so the renderer must cost a few milliseconds, not a GPU.

How (NumPy + OpenCV, chosen by measurement, see benchmarks/sim_render.py)
    Ground. The ground is flat and the cameras are rigid on the ego, so each output pixel looks at a
    point of the ground that is FIXED IN THE EGO FRAME. Those points are computed once per camera;
    per frame one affine ``cv2.transform`` takes them to GroundMap pixels for the ego pose and one
    ``cv2.remap`` samples the raster. Far rows would alias (thin lane markings flicker as the car
    moves), so every row reads the mip level whose texel matches the row's lateral pixel footprint
    and is supersampled along the view direction (where the footprint is long and thin) by 2-8 taps
    averaged with ``cv2.resize(INTER_AREA)``: a cheap anisotropic filter. The mip pyramid and the
    colour conversion into the output format's channels are done once, at construction.
    Haze and sky. Rows near the horizon blend towards the horizon colour with distance (a per-pixel
    weight fixed in the ego frame); above it a static sky gradient by elevation.
    Boxes. Each actor box is a solid with Lambert-shaded sides, a lighter top and a dark window band
    (vehicles only), hazed by distance, clipped at the near plane, and drawn far to near (painter's
    order; all cameras share one optical centre, so one order serves the rig) with
    ``cv2.fillConvexPoly`` at 1/16 px precision. Only faces turned towards the camera are drawn, so a
    box needs no depth sort of its own.
    Formats. Rendering happens in a 4-channel scratch image already in the format's colour space
    (RGB, or BT.601 limited-range YUV like ``synthetic://``; 1 channel for gray), then one channel
    shuffle writes the raw layout into the caller's buffer.

Frames: world x east, y north, yaw counter-clockwise; the ego frame is x forward, y left. The rig's
optical centre is at the ego pose (x, y) at the rig's mount height.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from vla.runtime.errors import VlaError
from vla.runtime.inputs.sources.base import PIXEL_FORMATS
from vla.runtime.inputs.sources.scene import (
    SKY_HORIZON,
    SKY_ZENITH,
    Camera,
    Rig,
    _channels,  # private: the format -> channel-space matrix the synthetic camera uses
    _smoothstep,  # private
    frame_shape,
    write_format,
)

#: FFmpeg's names (as in stream.py's NATIVE_FORMATS) accepted for the runtime's packed RGB formats.
FORMAT_ALIASES = {"rgb24": "rgb", "bgr24": "bgr"}

FOG_START, FOG_END = 70.0, 300.0  # m (horizontal distance): haze begins / the ground is no longer drawn
NEAR = 0.05  # m, near clipping plane (boxes)
MAX_SUPERSAMPLE = 8  # taps along the view direction in far rows
MIP_BIAS = 0.0  # added to log2(lateral footprint in texels) when choosing a row's mip level
SUPERSAMPLE_SLACK = 1.0  # texels between taps tolerated before adding one (the levels are prefiltered)
BOX_MAX_DIST = FOG_END  # m, boxes farther than this are fully hazed: skipped
SUN_AZIMUTH = 2.3  # rad, world: where the side-lighting comes from (fixed, so shading is deterministic)
WINDOW_RGB = (38.0, 46.0, 56.0)
BOX_EDGES = cv2.LINE_8  # pixel centres inside the polygon; OpenCV's LINE_AA grows a polygon by ~0.5 px
WINDOW_MIN_LENGTH = 2.5  # m: boxes at least this long and 1 m high are vehicles and get windows


class GroundLike(Protocol):
    """What the renderer reads of ``vla.sim.world.GroundMap`` (any object with these fields works)."""

    image: np.ndarray  # uint8 [H, W, 3] RGB
    x0: float
    y0: float
    res: float


def _pow2_ceil(v: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(v, 1.0)) - 1e-9))


def _camera_axes(cam: Camera) -> np.ndarray:
    """Rows: the camera's forward, right and down unit vectors in the ego frame (as ``Camera.rays``)."""
    cy, sy = math.cos(cam.yaw), math.sin(cam.yaw)
    cp, sp = math.cos(cam.pitch), math.sin(cam.pitch)
    return np.array([[cy * cp, sy * cp, -sp], [sy, -cy, 0.0], [cy * sp, sy * sp, -cp]])


def _ground_points(cam: Camera, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ego-frame (x, y) where pixel coordinates (u, v) meet the ground, clamped to FOG_END, and the
    unclamped horizontal distance (inf above the horizon)."""
    rx, ry, rz = np.broadcast_arrays(*cam.rays(u, v))
    horiz = np.hypot(rx, ry)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.where(rz < 0.0, cam.mount_height * horiz / -rz, np.inf)
        scale = np.minimum(dist, FOG_END) / np.maximum(horiz, 1e-12)
    return rx * scale, ry * scale, dist


@dataclass
class _Band:
    """Output rows [r0, r1) sampled from mip ``level`` with ``sy`` taps per pixel along the view."""

    r0: int
    r1: int
    level: int
    sy: int
    points: np.ndarray  # float32 [(r1-r0)*sy, W, 2] ego-frame ground points of the taps
    coords: np.ndarray  # float32, same shape: their raster coordinates this frame
    taps: np.ndarray | None  # uint8 [(r1-r0)*sy, W, C] samples before averaging (None if sy == 1)


@dataclass
class _CameraPlan:
    """Everything about one camera that does not depend on the pose (built once)."""

    cam: Camera
    axes: np.ndarray  # 3x3, rows forward / right / down
    background: np.ndarray  # uint8 [H, W, C]: sky gradient and horizon haze, in channels
    sky_rows: int  # rows [0, sky_rows) show no ground at all
    bands: list[_Band]
    fog_r0: int  # rows [fog_r0, fog_r1) blend the ground with the background
    fog_r1: int
    fog_w_ground: np.ndarray  # float32 [fog rows, W]
    fog_w_sky: np.ndarray


class WorldRenderer:
    """Renders a rig's cameras of one ground map (plus actor boxes) into raw frames of one format.

    Construction converts the ground raster to the format's channels, builds its mip pyramid and the
    per-camera sampling plans (0.1-0.4 s and ~60 MB for the world's ~3400x3400 raster); ``render``
    then costs ~2.5 ms for three 256x128 (WxH) cameras on one core (benchmarks/sim_render.py).
    One scratch image per renderer: use one renderer per thread.
    """

    def __init__(self, rig: Rig, ground: GroundLike, fmt: str = "rgb24") -> None:
        fmt = FORMAT_ALIASES.get(fmt, fmt)
        if fmt not in PIXEL_FORMATS:
            raise VlaError(f"unknown pixel format {fmt!r}; accepted: {', '.join([*PIXEL_FORMATS, *FORMAT_ALIASES])}")
        self.rig, self.fmt = rig, fmt
        self.shape = frame_shape(fmt, rig.width, rig.height)
        image = _check_ground(ground)
        self._x0, self._y0, self._res = float(ground.x0), float(ground.y0), float(ground.res)
        mat, off = _channels(fmt)
        self._mat, self._off = mat, off
        self._nch = 4 if mat.shape[0] == 3 else 1  # 4-channel remaps are OpenCV's vectorised ones

        self._plans = [self._plan(cam) for cam in rig.cameras]
        self._by_name = {p.cam.name: p for p in self._plans}
        levels = 1 + max((b.level for p in self._plans for b in p.bands), default=0)
        self._levels = self._pyramid(image, levels)
        # Beyond the raster: its own mean edge colour (the world's raster has a grass margin).
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).reshape(-1, 3).mean(0)
        self._border = self._colour(border)
        self._haze_rgb = np.array(SKY_HORIZON, dtype=np.float64)
        shape = (rig.height, rig.width, self._nch) if self._nch > 1 else (rig.height, rig.width)
        self._scratch = np.empty(shape, dtype=np.uint8)

    # --- construction -----------------------------------------------------------------------------
    def _colour(self, rgb: np.ndarray) -> tuple[float, ...]:
        """An RGB colour (0..255) in this format's channels, as OpenCV's scalar."""
        ch = [float(c) for c in np.clip(np.rint(self._mat @ np.asarray(rgb, dtype=np.float64) + self._off), 0, 255)]
        return (*ch, *[0.0] * (self._nch - len(ch)))

    def _pyramid(self, image: np.ndarray, levels: int) -> list[np.ndarray]:
        """The raster in the format's channels and ``levels`` mip levels (level k: 2^k x res)."""
        if self.fmt in ("rgb", "bgr"):
            base = cv2.cvtColor(image, cv2.COLOR_RGB2RGBA)  # BGR order is applied when writing
        elif self.fmt == "gray":
            m = np.hstack([self._mat, self._off[:, None]]).astype(np.float32)
            base = cv2.transform(image, m)
        else:
            m = np.zeros((4, 4), dtype=np.float32)
            m[:3, :3], m[:3, 3] = self._mat, self._off
            base = cv2.transform(image, m)
        out = [np.ascontiguousarray(base)]
        while len(out) < levels and min(out[-1].shape[:2]) > 1:
            out.append(cv2.pyrDown(out[-1]))
        while len(out) < levels:  # a tiny raster: reuse its coarsest level
            out.append(out[-1])
        return out

    def _plan(self, cam: Camera) -> _CameraPlan:
        """Per camera: sky background, row bands (mip level and taps) and the haze weights."""
        h, w = cam.height, cam.width
        u = np.arange(w, dtype=np.float64)[None, :] + 0.5
        v = np.arange(h, dtype=np.float64)[:, None] + 0.5
        rx, ry, rz = np.broadcast_arrays(*cam.rays(u, v))
        elevation = np.arctan2(rz, np.hypot(rx, ry))
        g = (np.clip(elevation / 0.6, 0.0, 1.0) ** 0.7)[..., None]
        sky_rgb = (1.0 - g) * np.array(SKY_HORIZON) + g * np.array(SKY_ZENITH)
        background = np.zeros((h, w, self._nch), dtype=np.uint8)
        ch = np.clip(np.rint(sky_rgb @ self._mat.T + self._off), 0, 255)
        background[..., : ch.shape[-1]] = ch
        if self._nch == 1:
            background = background[..., 0]

        _, _, dist = _ground_points(cam, u, v)
        alpha = _smoothstep((dist - FOG_START) / (FOG_END - FOG_START))  # 1 above the horizon
        ground_rows = np.nonzero((alpha < 1.0).any(axis=1))[0]
        sky_rows = int(ground_rows[0]) if ground_rows.size else h
        if (ground_rows.size and ground_rows[-1] != h - 1) or np.any(np.diff(ground_rows) != 1):
            raise VlaError(f"camera {cam.name!r} sees the ground in a non-contiguous band of rows (roll?)")
        fog_rows = np.nonzero((alpha[sky_rows:] > 0.5 / 255).any(axis=1))[0] + sky_rows
        fog_r0, fog_r1 = (sky_rows, int(fog_rows[-1]) + 1) if fog_rows.size else (sky_rows, sky_rows)
        a = alpha[fog_r0:fog_r1].astype(np.float32)

        # Per ground row, the pixel footprint on the ground at the centre column, in raster texels.
        uc = np.array([[w / 2.0, w / 2.0 + 1.0]])
        rows = np.arange(sky_rows, h, dtype=np.float64)[:, None] + 0.5
        gx, gy, _ = _ground_points(cam, uc, rows)
        lat = np.hypot(gx[:, 1] - gx[:, 0], gy[:, 1] - gy[:, 0]) / self._res
        gx2, gy2, _ = _ground_points(cam, uc[:, :1], rows + 1.0)
        lng = np.hypot(gx2[:, 0] - gx[:, 0], gy2[:, 0] - gy[:, 0]) / self._res
        specs = []
        for la, lo in zip(lat, lng, strict=True):
            level = max(0, round(math.log2(max(la, 1e-9)) + MIP_BIAS))
            texel = float(1 << level)
            sy = min(MAX_SUPERSAMPLE, _pow2_ceil(lo / texel / SUPERSAMPLE_SLACK))
            specs.append((level, sy))
        bands = []
        r = 0
        while r < len(specs):
            e = r
            while e < len(specs) and specs[e] == specs[r]:
                e += 1
            bands.append(self._band(cam, sky_rows + r, sky_rows + e, *specs[r]))
            r = e
        return _CameraPlan(cam, _camera_axes(cam), background, sky_rows, bands, fog_r0, fog_r1, 1.0 - a, a)

    def _band(self, cam: Camera, r0: int, r1: int, level: int, sy: int) -> _Band:
        u = np.arange(cam.width, dtype=np.float64)[None, :] + 0.5
        v = r0 + (np.arange((r1 - r0) * sy, dtype=np.float64)[:, None] + 0.5) / sy
        gx, gy, _ = _ground_points(cam, u, v)
        pts = np.ascontiguousarray(np.stack([gx, gy], axis=-1), dtype=np.float32)
        taps = None
        if sy > 1:
            taps = (
                np.empty((*pts.shape[:2], self._nch), np.uint8) if self._nch > 1 else np.empty(pts.shape[:2], np.uint8)
            )
        return _Band(r0, r1, level, sy, pts, np.empty_like(pts), taps)

    # --- per frame --------------------------------------------------------------------------------
    def new_outputs(self) -> dict[str, np.ndarray]:
        """One correctly shaped uint8 frame buffer per camera, in rig order."""
        return {name: np.empty(self.shape, dtype=np.uint8) for name in self.rig.names}

    def render(
        self,
        pose: Sequence[float],
        boxes: np.ndarray,
        colors: np.ndarray,
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Render the world seen from ego ``pose`` = (x, y, yaw) into ``outputs`` (camera name ->
        C-contiguous uint8 buffer of ``self.shape``), in place; cameras missing from ``outputs`` are
        skipped. ``boxes``: [N, 6] (x, y, yaw, length, width, height) in the world frame, ``colors``:
        [N, 3] RGB 0..255."""
        px, py, pyaw = _check_pose(pose)
        boxes, colors = _check_boxes(boxes, colors)
        for name, out in outputs.items():
            if name not in self._by_name:
                raise VlaError(f"no camera {name!r} in this rig ({', '.join(self.rig.names)})")
            if out.shape != self.shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
                raise VlaError(
                    f"output for {name!r} must be C-contiguous uint8 {self.shape}, got {out.dtype} {out.shape}"
                )
        c, s = math.cos(pyaw), math.sin(pyaw)
        affine = []
        for k in range(len(self._levels)):
            r = self._res * (1 << k)
            affine.append(np.array([[c / r, -s / r, (px - self._x0) / r], [s / r, c / r, (py - self._y0) / r]]))
        solids = self._solids(px, py, pyaw, boxes, colors)
        for name, out in outputs.items():
            plan = self._by_name[name]
            self._render_ground(plan, affine)
            if solids is not None:
                self._draw_boxes(plan, *solids)
            write_format(self._scratch, out, self.fmt)

    def _render_ground(self, plan: _CameraPlan, affine: list[np.ndarray]) -> None:
        img = self._scratch
        img[: plan.sky_rows] = plan.background[: plan.sky_rows]
        for b in plan.bands:
            cv2.transform(b.points, affine[b.level], dst=b.coords)
            rows = img[b.r0 : b.r1]
            dst = rows if b.taps is None else b.taps
            src = self._levels[b.level]
            cv2.remap(
                src, b.coords, None, cv2.INTER_LINEAR, dst=dst, borderMode=cv2.BORDER_CONSTANT, borderValue=self._border
            )
            if b.taps is not None:  # average the taps along the view: an exact box filter
                cv2.resize(b.taps, (rows.shape[1], rows.shape[0]), dst=rows, interpolation=cv2.INTER_AREA)
        if plan.fog_r1 > plan.fog_r0:
            band = img[plan.fog_r0 : plan.fog_r1]
            cv2.blendLinear(
                band, plan.background[plan.fog_r0 : plan.fog_r1], plan.fog_w_ground, plan.fog_w_sky, dst=band
            )

    # --- boxes ------------------------------------------------------------------------------------
    def _solids(
        self, px: float, py: float, pyaw: float, boxes: np.ndarray, colors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple]] | None:
        """Ego-frame quads of every box near enough (far first), which are visible, and their colours.

        Returns (order [n], quads [n, Q, 4, 3], visible [n, Q], colours: list of n lists of Q scalars)
        or None when there is nothing to draw.
        """
        if len(boxes) == 0:
            return None
        c, s = math.cos(pyaw), math.sin(pyaw)
        dx, dy = boxes[:, 0] - px, boxes[:, 1] - py
        ex, ey = c * dx + s * dy, -s * dx + c * dy
        dist = np.hypot(ex, ey)
        keep = np.nonzero(dist < BOX_MAX_DIST + 0.5 * boxes[:, 3])[0]
        if keep.size == 0:
            return None
        keep = keep[np.argsort(-dist[keep], kind="stable")]  # painter's order: far first
        b = boxes[keep]
        yaw = b[:, 2] - pyaw
        cy, sy = np.cos(yaw)[:, None, None], np.sin(yaw)[:, None, None]
        lx = _QUADS[None, :, :, 0] * b[:, 3, None, None] / 2.0
        ly = _QUADS[None, :, :, 1] * b[:, 4, None, None] / 2.0
        quads = np.empty((len(b), len(_QUADS), 4, 3))
        quads[..., 0] = ex[keep, None, None] + cy * lx - sy * ly
        quads[..., 1] = ey[keep, None, None] + sy * lx + cy * ly
        quads[..., 2] = _QUADS[None, :, :, 2] * b[:, 5, None, None]

        # A side face is visible when the optical centre (ego origin) is on its outer side; the top
        # when the box is lower than the camera. Windows follow their face.
        mount = self.rig.cameras[0].mount_height
        nx = np.cos(yaw[:, None] + _FACE_ANGLE[None, :])
        ny = np.sin(yaw[:, None] + _FACE_ANGLE[None, :])
        centre = quads[:, :4].mean(axis=2)
        visible = np.empty((len(b), len(_QUADS)), dtype=bool)
        visible[:, :4] = nx * centre[..., 0] + ny * centre[..., 1] < 0.0
        visible[:, 4] = b[:, 5] < mount
        vehicle = (b[:, 3] >= WINDOW_MIN_LENGTH) & (b[:, 5] >= 1.0)
        visible[:, 5:] = visible[:, :4] & vehicle[:, None]

        # Shading: sides by a fixed low sun (world azimuth), the top brightest; then distance haze.
        lambert = np.maximum(0.0, np.cos(b[:, 2, None] + _FACE_ANGLE[None, :] - SUN_AZIMUTH))
        side = 0.58 + 0.3 * lambert  # [n, 4]
        shade = np.concatenate([side, np.full((len(b), 1), 1.12), side], axis=1)
        base = np.where(
            np.arange(len(_QUADS))[None, :, None] < 5, colors[keep][:, None, :], np.array(WINDOW_RGB)[None, None, :]
        )
        rgb = np.minimum(base * shade[..., None], 255.0)
        fog = _smoothstep((dist[keep] - FOG_START) / (FOG_END - FOG_START))[:, None, None]
        rgb = (1.0 - fog) * rgb + fog * self._haze_rgb
        ch = np.clip(np.rint(rgb @ self._mat.T + self._off), 0, 255)
        pad = self._nch - ch.shape[-1] if self._nch > 1 else 0
        cols = [[(*map(float, q), *(0.0,) * pad) for q in box] for box in ch]
        return keep, quads, visible, cols

    def _draw_boxes(
        self, plan: _CameraPlan, keep: np.ndarray, quads: np.ndarray, visible: np.ndarray, cols: list
    ) -> None:
        cam = plan.cam
        rel = quads - np.array([0.0, 0.0, cam.mount_height])
        cc = rel @ plan.axes.T  # [n, Q, 4, 3] camera (forward z, right x, down y)
        z, x, y = cc[..., 0], cc[..., 1], cc[..., 2]
        # Cull whole boxes outside the view frustum (all corners beyond one plane).
        tx, ty = (cam.width / 2.0) / cam.focal, (cam.height / 2.0) / cam.focal
        zf, xf, yf = z[:, :5].reshape(len(z), -1), x[:, :5].reshape(len(z), -1), y[:, :5].reshape(len(z), -1)
        out = (
            (zf < NEAR).all(1)
            | (xf < -tx * zf).all(1)
            | (xf > tx * zf).all(1)
            | (yf < -ty * zf).all(1)
            | (yf > ty * zf).all(1)
        )
        cx, cy = cam.width / 2.0 - 0.5, cam.height / 2.0 - 0.5  # pixel centres at integers
        zs = np.maximum(z, NEAR)  # vertices behind the near plane are clipped below, not used
        pix = np.stack([cx + cam.focal * x / zs, cy + cam.focal * y / zs], axis=-1)
        fixed = np.rint(np.clip(pix, -_LIMIT, _LIMIT) * _SUB).astype(np.int32)
        front = z >= NEAR
        img = self._scratch
        for i in range(len(keep)):
            if out[i]:
                continue
            for q in np.nonzero(visible[i])[0]:
                if front[i, q].all():
                    poly = fixed[i, q]
                else:
                    poly = _clip_project(cc[i, q], cam.focal, cx, cy)
                    if poly is None:
                        continue
                cv2.fillConvexPoly(img, poly, cols[i][q], BOX_EDGES, _SHIFT)


# Box quads in unit coordinates (x * length/2, y * width/2, z * height): the four sides (front +x,
# left +y, rear -x, right -y), the top, then a window band on each side.
_SIDES = [
    [(1, -1), (1, 1)],
    [(1, 1), (-1, 1)],
    [(-1, 1), (-1, -1)],
    [(-1, -1), (1, -1)],
]
_FACE_ANGLE = np.array([0.0, math.pi / 2, math.pi, -math.pi / 2])  # outward normals (box frame)


def _quad_table() -> np.ndarray:
    quads = [[(*a, 0.0), (*b, 0.0), (*b, 1.0), (*a, 1.0)] for a, b in _SIDES]
    quads.append([(1, -1, 1), (1, 1, 1), (-1, 1, 1), (-1, -1, 1)])
    for a, b in _SIDES:
        a_in = tuple(0.85 * np.array(a) + 0.15 * np.array(b))
        b_in = tuple(0.15 * np.array(a) + 0.85 * np.array(b))
        quads.append([(*a_in, 0.55), (*b_in, 0.55), (*b_in, 0.85), (*a_in, 0.85)])
    return np.array(quads, dtype=np.float64)


_QUADS = _quad_table()  # [9, 4, 3]
_SHIFT = 4  # fractional bits of fillConvexPoly's coordinates
_SUB = float(1 << _SHIFT)
_LIMIT = 1e7  # px: projected vertices are clamped here (fixed point stays in int32; OpenCV copes)


def _clip_project(poly: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray | None:
    """Clip a camera-frame polygon (z, x, y columns) at the near plane and project it (fixed point)."""
    pts = []
    n = len(poly)
    for k in range(n):
        a, b = poly[k], poly[(k + 1) % n]
        a_in, b_in = a[0] >= NEAR, b[0] >= NEAR
        if a_in:
            pts.append(a)
        if a_in != b_in:
            t = (NEAR - a[0]) / (b[0] - a[0])
            pts.append(a + t * (b - a))
    if len(pts) < 3:
        return None
    p = np.array(pts)
    pix = np.stack([cx + focal * p[:, 1] / p[:, 0], cy + focal * p[:, 2] / p[:, 0]], axis=-1)
    return np.rint(np.clip(pix, -_LIMIT, _LIMIT) * _SUB).astype(np.int32)


# --- input checks (one-line errors) ---------------------------------------------------------------
def _check_ground(ground: GroundLike) -> np.ndarray:
    try:
        image, res = ground.image, float(ground.res)
        x0, y0 = float(ground.x0), float(ground.y0)
    except (AttributeError, TypeError, ValueError) as e:
        raise VlaError(f"ground must be a GroundMap (image, x0, y0, res): {e}") from None
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise VlaError(
            f"ground image must be uint8 [H, W, 3] RGB, got {getattr(image, 'dtype', type(image))} "
            f"{getattr(image, 'shape', '')}"
        )
    if not (res > 0 and math.isfinite(res) and math.isfinite(x0) and math.isfinite(y0)):
        raise VlaError(f"ground res must be > 0 and x0, y0 finite, got res={res} x0={x0} y0={y0}")
    if max(image.shape[:2]) >= 32767:
        raise VlaError(f"ground image {image.shape[1]}x{image.shape[0]} too large for cv2.remap (< 32767 px a side)")
    return np.ascontiguousarray(image)


def _check_pose(pose: Sequence[float]) -> tuple[float, float, float]:
    try:
        x, y, yaw = (float(v) for v in pose)
    except (TypeError, ValueError):
        raise VlaError(f"pose must be (x, y, yaw), got {pose!r}") from None
    if not all(map(math.isfinite, (x, y, yaw))):
        raise VlaError(f"pose must be finite, got {(x, y, yaw)}")
    return x, y, yaw


def _check_boxes(boxes: np.ndarray, colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(boxes, dtype=np.float64)
    c = np.asarray(colors, dtype=np.float64)
    if b.size == 0 and c.size == 0:
        return np.zeros((0, 6)), np.zeros((0, 3))
    if b.ndim != 2 or b.shape[1] != 6:
        raise VlaError(f"boxes must be [N, 6] (x, y, yaw, length, width, height), got shape {b.shape}")
    if c.shape != (len(b), 3):
        raise VlaError(f"colors must be [N, 3] RGB with one row per box: {len(b)} boxes, colors shape {c.shape}")
    if not np.isfinite(b).all():
        raise VlaError("boxes contain NaN or inf")
    if (b[:, 3:] <= 0).any():
        raise VlaError("box length, width and height must be > 0")
    return b, c
