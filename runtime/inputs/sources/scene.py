"""A procedural driving scene rendered cheaply into raw camera formats (pure NumPy + OpenCV).

Why this exists: the runtime must be exercised end to end (camera -> model -> trajectory) on machines
without cameras, recorded drives or a simulator, and the frames must look enough like a road that a
driving model's outputs are plausible and can be scored against ground truth. Everything here is
deterministic given the seed and the time, and has no processes or clocks of its own; the synthetic
camera (``synthetic.py``) runs it in a child process on a real-time clock.

The world
    A flat road whose centreline curvature varies smoothly with arc length (a seeded, soft-clipped
    sum of sinusoids, gated to give straights; ``|curvature| <= 1/150 m``), 3 or 4 lanes of 3.5 m,
    white markings (solid edges, 3 m dashes every 9 m between lanes), asphalt, grass beyond the
    shoulders, haze towards the horizon and a sky with clouds. The ego drives along the centre of
    one lane at a seeded, smoothly varying speed between 8 and 16 m/s. The ego frame is x forward,
    y left, yaw counter-clockwise; ``future_path`` is what a perfect driving model would output.

Rendering
    The ground is flat and the cameras are rigid on the ego, so every output pixel looks at a fixed
    point of the ground (or a fixed direction of the sky) in the ego frame. Per rig frame we therefore
    render ONE small bird's-eye-view texture of the road around the ego (rows = ego x on a sinh grid,
    fine near the car and coarse far away; columns = ego y, also sinh-spaced), already converted
    into the output colour space and box-filtered to each cell's on-screen footprint so that far
    dashes do not alias. Each camera is then one ``cv2.remap`` through a map built once, into a
    4-channel scratch image, plus one channel shuffle (``cv2.mixChannels``/``cv2.cvtColor``) that
    writes the requested raw layout straight into the caller's buffer (e.g. a shared-memory slot).
    A 4-channel remap is used because OpenCV vectorises it (about 2x faster than remapping every
    output byte through a 1-channel atlas, and 2- or 3-channel remaps are slower still).

Colour
    YUV formats are BT.601 limited range ("TV range": Y 16..235, U/V 16..240 around 128), which is
    what USB/V4L2 cameras deliver and what OpenCV's ``COLOR_YUV2RGB_*`` conversions assume. In
    ``yuyv``/``uyvy`` U is taken from the even pixel of a pair and V from the odd one; in
    ``nv12``/``i420`` from the top-left pair of each 2x2 block. ``gray`` is full-range BT.601 luma
    (what ``COLOR_RGB2GRAY`` gives), like a monochrome sensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ...errors import CameraError
from ...geometry import to_frame
from .base import PIXEL_FORMATS

# --- Road geometry --------------------------------------------------------------------------------
LANE_WIDTH = 3.5  # m
MARK_WIDTH = 0.15  # m, painted line width
DASH_LEN, DASH_PERIOD = 3.0, 9.0  # m, inner lane lines
SHOULDER = 0.6  # m of asphalt beyond the edge lines
MAX_CURVATURE = 1.0 / 150.0  # 1/m
GRID_STEP = 0.5  # m between precomputed centreline points
CHUNK_POINTS = 8192  # centreline points added per extension (fixed, so extension is deterministic)
EGO_START_S = 150.0  # m of road behind the ego at t=0 (the BEV looks back 60 m)

# --- BEV texture (ego frame) ----------------------------------------------------------------------
BEV_X = (-60.0, 150.0)  # m, behind / ahead
BEV_Y = 60.0  # m, either side
BEV_ROWS, BEV_COLS = 448, 448
BEV_SCALE = 8.0  # m: the sinh grids are about linear within this distance of the ego
SKY_ROWS, SKY_COLS = 48, 1024  # elevation x world azimuth
FOG_DIST = 320.0  # m, exponential haze scale

# --- Colours (sRGB 0..255) ------------------------------------------------------------------------
ASPHALT = (98.0, 98.0, 102.0)
PAINT = (232.0, 232.0, 226.0)
GRASS = (76.0, 114.0, 52.0)
SKY_HORIZON = (206.0, 217.0, 228.0)
SKY_ZENITH = (88.0, 138.0, 206.0)
CLOUD = (244.0, 244.0, 248.0)

# BT.601 limited range: rows Y, U, V applied to RGB in 0..255, then the offsets.
_YUV_M = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0
_YUV_OFF = np.array([16.0, 128.0, 128.0])
_LUMA_FULL = np.array([[0.299, 0.587, 0.114]])

#: Camera yaw (degrees, left positive) for well-known names; other names are spread evenly.
KNOWN_YAWS = {
    "front": 0.0,
    "front_center": 0.0,
    "center": 0.0,
    "front_left": 55.0,
    "left": 55.0,
    "front_right": -55.0,
    "right": -55.0,
    "side_left": 90.0,
    "side_right": -90.0,
    "rear_left": 125.0,
    "rear_right": -125.0,
    "rear": 180.0,
    "back": 180.0,
}


def frame_shape(fmt: str, width: int, height: int) -> tuple[int, ...]:
    """The array shape of one raw frame, checking the size suits the format (see PIXEL_FORMATS)."""
    if fmt not in PIXEL_FORMATS:
        raise CameraError(f"unknown pixel format {fmt!r}; accepted: {', '.join(PIXEL_FORMATS)}")
    if width <= 0 or height <= 0:
        raise CameraError(f"frame size {width}x{height} must be positive")
    # Even widths keep 4:2:2 pixel pairs whole (and are what real sensors deliver for all formats).
    if width % 2:
        raise CameraError(f"frame size {width}x{height}: the width must be even")
    if fmt in ("nv12", "i420") and height % 2:
        raise CameraError(f"frame size {width}x{height}: the height must be even for {fmt}")
    if fmt in ("yuyv", "uyvy"):
        return (height, width, 2)
    if fmt in ("nv12", "i420"):
        return (height * 3 // 2, width)
    if fmt in ("rgb", "bgr"):
        return (height, width, 3)
    return (height, width)


# ==================================================================================================
# Road and ego motion
# ==================================================================================================


@dataclass(frozen=True)
class EgoPose:
    """The ego's state at one time: world pose plus the motion a vehicle bus would report."""

    t: float  # s since the start of the drive
    x: float  # m, world
    y: float  # m, world
    yaw: float  # rad, world, counter-clockwise
    speed: float  # m/s
    accel: float  # m/s^2, longitudinal
    yaw_rate: float  # rad/s, positive to the left
    s: float  # m, arc length along the road centreline


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


class Road:
    """A seeded endless road and the ego driving it; the centreline is integrated lazily.

    The centreline is precomputed every 0.5 m in fixed chunks, so any run length works and two
    instances with the same seed agree bit for bit however far each has been extended.
    """

    def __init__(self, seed: int = 0, *, n_lanes: int | None = None) -> None:
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        self.n_lanes = int(n_lanes) if n_lanes is not None else int(rng.integers(3, 5))
        if not 1 <= self.n_lanes <= 8:
            raise ValueError(f"n_lanes must be 1..8, got {self.n_lanes}")
        self.half_width = self.n_lanes * LANE_WIDTH / 2.0
        self.ego_lane = int(rng.integers(0, self.n_lanes))  # 0 = rightmost
        self.ego_offset = -self.half_width + (self.ego_lane + 0.5) * LANE_WIDTH  # left of centre

        # Curvature: three sinusoids (bends of a few hundred m to ~2 km) gated by a slow one that
        # opens straights, soft-clipped so |k| < MAX_CURVATURE while staying smooth.
        self._k_wave = rng.uniform([1700.0, 700.0, 330.0], [2600.0, 1100.0, 520.0])
        self._k_phase = rng.uniform(0.0, 2.0 * np.pi, 3)
        w = rng.uniform(0.5, 1.0, 3)
        self._k_amp = w / w.sum()
        self._gate_wave = float(rng.uniform(1400.0, 2400.0))
        self._gate_phase = float(rng.uniform(0.0, 2.0 * np.pi))

        # Speed: 12 m/s +- 3.8 m/s from three sinusoids (periods 15..70 s), so 8 < v < 16.
        self._v_per = rng.uniform([15.0, 28.0, 45.0], [25.0, 42.0, 70.0])
        self._v_phase = rng.uniform(0.0, 2.0 * np.pi, 3)
        b = rng.uniform(0.4, 1.0, 3)
        self._v_amp = 3.8 * b / b.sum()

        self._kap = np.zeros(0)
        self._th = np.zeros(0)
        self._x = np.zeros(0)
        self._y = np.zeros(0)
        self._sig = np.zeros(0)  # arc length along the ego's lane (offset curve)
        self._extend()
        self._sig0 = float(np.interp(EGO_START_S, self._s, self._sig))

    # --- centreline -------------------------------------------------------------------------------
    def curvature(self, s: np.ndarray | float) -> np.ndarray:
        """Centreline curvature (1/m, left positive) at arc length ``s``."""
        s = np.asarray(s, dtype=np.float64)
        raw = np.zeros_like(s)
        for amp, wave, ph in zip(self._k_amp, self._k_wave, self._k_phase, strict=True):
            raw += amp * np.sin(2.0 * np.pi * s / wave + ph)
        gate = _smoothstep(0.5 + 1.5 * np.sin(2.0 * np.pi * s / self._gate_wave + self._gate_phase))
        return MAX_CURVATURE * np.tanh(1.8 * gate * raw)

    def _extend(self) -> None:
        """Append one fixed chunk of centreline (trapezoidal heading, midpoint position)."""
        n0 = self._kap.size
        kap = self.curvature(np.arange(n0, n0 + CHUNK_POINTS) * GRID_STEP)
        if n0 == 0:  # the road starts at the world origin heading along +x
            th0 = x0 = y0 = sig0 = 0.0
            prev_k = kap[0]
        else:
            th0, x0, y0, sig0 = self._th[-1], self._x[-1], self._y[-1], self._sig[-1]
            prev_k = self._kap[-1]
        step = np.full(kap.size, GRID_STEP)
        if n0 == 0:
            step[0] = 0.0  # the first point is the origin itself
        both = np.concatenate([[prev_k], kap])
        kmid = 0.5 * (both[:-1] + both[1:])
        th = th0 + np.cumsum(kmid * step)
        mid = 0.5 * (np.concatenate([[th0], th[:-1]]) + th)
        x = x0 + np.cumsum(step * np.cos(mid))
        y = y0 + np.cumsum(step * np.sin(mid))
        # The ego's lane is an offset curve: its arc length grows by (1 - k d) per centreline metre.
        sig = sig0 + np.cumsum(step * (1.0 - kmid * self.ego_offset))
        self._kap = np.concatenate([self._kap, kap])
        self._th = np.concatenate([self._th, th])
        self._x = np.concatenate([self._x, x])
        self._y = np.concatenate([self._y, y])
        self._sig = np.concatenate([self._sig, sig])
        self._s = np.arange(self._kap.size) * GRID_STEP

    def _ensure(self, s_max: float) -> None:
        while (self._kap.size - 1) * GRID_STEP < s_max:
            self._extend()

    def _ensure_sigma(self, sig_max: float) -> None:
        while self._sig[-1] < sig_max:
            self._extend()

    def centreline(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World (x, y, heading) of the road centreline at arc length(s) ``s`` >= 0."""
        s = np.asarray(s, dtype=np.float64)
        self._ensure(float(np.max(s)) + 1.0)
        u = s / GRID_STEP
        i = np.clip(np.floor(u).astype(np.int64), 0, self._kap.size - 2)
        f = u - i
        x, y, th = (a[i] * (1.0 - f) + a[i + 1] * f for a in (self._x, self._y, self._th))
        return x, y, th

    # --- ego motion -------------------------------------------------------------------------------
    def speed(self, t: np.ndarray | float) -> np.ndarray:
        """Ego speed (m/s) at time ``t``."""
        t = np.asarray(t, dtype=np.float64)
        v = np.full_like(t, 12.0)
        for amp, per, ph in zip(self._v_amp, self._v_per, self._v_phase, strict=True):
            v += amp * np.sin(2.0 * np.pi * t / per + ph)
        return v

    def _accel(self, t: np.ndarray) -> np.ndarray:
        a = np.zeros_like(t)
        for amp, per, ph in zip(self._v_amp, self._v_per, self._v_phase, strict=True):
            a += amp * (2.0 * np.pi / per) * np.cos(2.0 * np.pi * t / per + ph)
        return a

    def _distance(self, t: np.ndarray) -> np.ndarray:
        """Distance driven along the ego's lane since t=0 (closed form of the speed integral)."""
        d = 12.0 * t
        for amp, per, ph in zip(self._v_amp, self._v_per, self._v_phase, strict=True):
            w = 2.0 * np.pi / per
            d += amp / w * (np.cos(ph) - np.cos(w * t + ph))
        return d

    def _poses(self, t: np.ndarray) -> tuple[np.ndarray, ...]:
        """Vectorised ego (x, y, yaw, s) at times ``t``."""
        sig = self._sig0 + self._distance(t)
        self._ensure_sigma(float(np.max(sig)) + 400.0)
        s = np.interp(sig, self._sig, self._s)
        xc, yc, th = self.centreline(s)
        d = self.ego_offset
        return xc - d * np.sin(th), yc + d * np.cos(th), th, s

    def ego_at(self, t: float) -> EgoPose:
        """The ego's pose and motion ``t`` seconds after the start (t >= 0)."""
        ta = np.array([float(t)])
        x, y, yaw, s = self._poses(ta)
        v = float(self.speed(ta)[0])
        k = float(self.curvature(s)[0])
        yaw_rate = v * k / (1.0 - k * self.ego_offset)  # curvature of the lane, times speed
        return EgoPose(
            t=float(t),
            x=float(x[0]),
            y=float(y[0]),
            yaw=float(yaw[0]),
            speed=v,
            accel=float(self._accel(ta)[0]),
            yaw_rate=yaw_rate,
            s=float(s[0]),
        )

    def ego_poses(self, t: np.ndarray | Sequence[float]) -> np.ndarray:
        """World (x, y, yaw) of the ego at each time, shape (n, 3) float64."""
        x, y, yaw, _ = self._poses(np.asarray(t, dtype=np.float64).reshape(-1))
        return np.stack([x, y, yaw], axis=1)

    def future_path(self, t: float, n: int = 64, dt: float = 0.1) -> np.ndarray:
        """Ground-truth future poses at t+dt .. t+n*dt in the ego frame at ``t``: (n, 3) float32.

        Columns are x (forward), y (left), yaw (continuous, not wrapped); this is exactly what a perfect
        trajectory-predicting model would output for the frame captured at ``t``.
        """
        ts = float(t) + dt * np.arange(0, n + 1)
        p = self.ego_poses(ts)
        return to_frame(p[1:], p[0], out=np.empty((n, 3), dtype=np.float32))


# ==================================================================================================
# Camera rig
# ==================================================================================================


@dataclass(frozen=True)
class Camera:
    """A pinhole camera on the ego at (0, 0, mount_height): square pixels, centred principal point."""

    name: str
    yaw: float  # rad, left positive
    pitch: float  # rad, down positive
    focal: float  # px
    width: int
    height: int
    mount_height: float  # m

    def rays(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ego-frame ray directions (x, y, z) through continuous pixel coordinates (u, v)."""
        cy, sy = math.cos(self.yaw), math.sin(self.yaw)
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        a = (u - self.width / 2.0) / self.focal  # along the image's right axis
        b = (v - self.height / 2.0) / self.focal  # along the image's down axis
        # forward = (cy cp, sy cp, -sp); right = (sy, -cy, 0); down = (cy sp, sy sp, -cp)
        return cy * cp + a * sy + b * cy * sp, sy * cp - a * cy + b * sy * sp, -sp - b * cp


class Rig:
    """Named cameras sharing one size and field of view, as on a synchronised multi-camera rig."""

    def __init__(
        self,
        names: Sequence[str],
        width: int,
        height: int,
        hfov_deg: float = 100.0,
        *,
        mount_height: float = 1.5,
        pitch_deg: float = 0.0,
    ) -> None:
        names = list(names)
        if not names or len(set(names)) != len(names):
            raise CameraError(f"camera names must be non-empty and unique, got {names}")
        if width <= 0 or height <= 0:
            raise CameraError(f"frame size {width}x{height} must be positive")
        if not 10.0 <= hfov_deg <= 170.0:
            raise CameraError(f"horizontal field of view {hfov_deg} deg must be 10..170")
        focal = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        unknown = [n for n in names if n.lower() not in KNOWN_YAWS]
        cams = []
        for name in names:
            # Unknown names are spread evenly around the car, the first one looking forward.
            spread = 360.0 * unknown.index(name) / len(unknown) if name in unknown else 0.0
            yaw = KNOWN_YAWS.get(name.lower(), spread)
            yaw = (yaw + 180.0) % 360.0 - 180.0
            cams.append(Camera(name, math.radians(yaw), math.radians(pitch_deg), focal, width, height, mount_height))
        self.cameras: tuple[Camera, ...] = tuple(cams)
        self.width, self.height, self.hfov_deg = int(width), int(height), float(hfov_deg)

    @property
    def names(self) -> list[str]:
        """Camera names in rig order."""
        return [c.name for c in self.cameras]


# ==================================================================================================
# Renderer
# ==================================================================================================


def _sinh_axis(lo: float, hi: float, n: int) -> tuple[np.ndarray, float, float]:
    """Cell centres of an axis uniform in asinh(v / BEV_SCALE): fine near 0, coarse far away."""
    a0, a1 = math.asinh(lo / BEV_SCALE), math.asinh(hi / BEV_SCALE)
    return BEV_SCALE * np.sinh(np.linspace(a0, a1, n)), a0, a1


def _channels(fmt: str) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) turning RGB 0..255 into the atlas channels of a format."""
    if fmt in ("rgb", "bgr"):
        return np.eye(3), np.zeros(3)
    if fmt == "gray":
        return _LUMA_FULL, np.zeros(1)
    return _YUV_M, _YUV_OFF


class SceneRenderer:
    """Renders a rig's cameras of one road into raw frames of one pixel format.

    Construction builds the per-camera lookup maps (a few hundred ms); ``render`` then costs one
    BEV texture per call plus about 2 ms per 1280x720 camera on one core.
    """

    def __init__(self, road: Road, rig: Rig, fmt: str) -> None:
        self.road, self.rig, self.fmt = road, rig, fmt
        self.shape = frame_shape(fmt, rig.width, rig.height)
        mat, off = _channels(fmt)
        self._nch_colour = mat.shape[0]
        self._nch = 4 if self._nch_colour == 3 else 1  # 4-channel remaps are the vectorised ones
        self._colour = {
            k: (mat @ np.array(c)).astype(np.float32)
            for k, c in (("asphalt", ASPHALT), ("paint", PAINT), ("grass", GRASS))
        }
        focal = min(c.focal for c in rig.cameras)
        h = min(c.mount_height for c in rig.cameras)

        # BEV grid and the static per-cell quantities (filter widths, haze).
        self._xs, self._ax0, self._ax1 = _sinh_axis(BEV_X[0], BEV_X[1], BEV_ROWS)
        self._ys, self._ay0, self._ay1 = _sinh_axis(-BEV_Y, BEV_Y, BEV_COLS)
        cell_x = np.gradient(self._xs)
        cell_y = np.gradient(self._ys)
        X, Y = np.meshgrid(self._xs, self._ys, indexing="ij")
        d = np.hypot(X, Y) + 1e-6
        radial, tangential = d * d / (focal * h), d / focal  # on-screen footprint of one pixel
        wy = np.maximum(cell_y[None, :], np.abs(Y / d) * radial + np.abs(X / d) * tangential)
        self._inv_wy = (1.0 / wy).astype(np.float32)
        self._half_sum = ((wy + MARK_WIDTH) / 2.0).astype(np.float32)
        self._min_w = np.minimum(wy, MARK_WIDTH).astype(np.float32)
        ax = np.abs(self._xs)
        self._wx_row = np.maximum(cell_x, np.maximum(ax / focal, ax * ax / (focal * h)))
        box = np.maximum(np.maximum(X / BEV_X[1], X / BEV_X[0]), np.abs(Y) / BEV_Y)  # 0 at the ego, 1 at the edge
        clear = np.exp(-d / FOG_DIST) * (1.0 - _smoothstep((box - 0.8) / 0.2))
        self._clear = clear.astype(np.float32)
        haze = mat @ np.array(SKY_HORIZON)
        base = (1.0 - clear)[..., None] * haze + off + 0.5  # + 0.5: the uint8 cast truncates
        self._base = [np.ascontiguousarray(base[..., p], dtype=np.float32) for p in range(mat.shape[0])]
        self._row_index = (np.arange(BEV_ROWS) * (road.n_lanes + 1))[:, None].astype(np.intp)

        # Seeded texture: transverse asphalt patches and grass variation, as functions of road s.
        rng = np.random.default_rng(road.seed + 1)
        self._tex_per = rng.uniform([4.0, 11.0, 27.0], [7.0, 17.0, 41.0])
        self._tex_ph = rng.uniform(0.0, 2.0 * np.pi, (2, 3))

        # Atlas: BEV at [0:ROWS, 0:COLS], sky at [0:SKY_ROWS, COLS+1 : COLS+2+SKY_COLS]; one spare
        # row and column so bilinear taps at the last texel stay inside the image.
        self._sky_c0 = BEV_COLS + 1
        self._atlas = np.zeros((max(BEV_ROWS, SKY_ROWS) + 1, self._sky_c0 + SKY_COLS + 2, self._nch), dtype=np.uint8)
        self._el_max = self._max_elevation()
        self._sky = self._sky_texture(mat, off, rng)

        self._maps = {cam.name: self._camera_map(cam) for cam in rig.cameras}
        self._scratch = np.empty((rig.height, rig.width, self._nch), dtype=np.uint8)
        self._f32 = [np.empty((BEV_ROWS, BEV_COLS), dtype=np.float32) for _ in range(8)]

    # --- static construction ----------------------------------------------------------------------
    def _max_elevation(self) -> float:
        """Highest elevation (rad) any camera sees, so the sky rows span exactly what is visible."""
        el = 0.05
        for cam in self.rig.cameras:
            u = np.array([0.0, cam.width / 2.0, cam.width, 0.0, cam.width])
            v = np.zeros(5)
            rx, ry, rz = cam.rays(u, v)
            el = max(el, float(np.max(np.arctan2(rz, np.hypot(rx, ry)))))
        return min(el + 0.02, math.pi / 2)

    def _sky_texture(self, mat: np.ndarray, off: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """World-fixed sky (rows: elevation 0..el_max; columns: world azimuth -pi..pi) in channels."""
        el = np.linspace(0.0, self._el_max, SKY_ROWS)[:, None]
        az = np.linspace(-np.pi, np.pi, SKY_COLS, endpoint=False)[None, :]
        g = np.clip(el / 0.6, 0.0, 1.0) ** 0.7
        rgb = (1.0 - g)[..., None] * np.array(SKY_HORIZON) + g[..., None] * np.array(SKY_ZENITH)
        rgb = np.broadcast_to(rgb, (SKY_ROWS, SKY_COLS, 3)).copy()
        dens = np.zeros((SKY_ROWS, SKY_COLS))
        for _ in range(6):  # periodic in azimuth: integer harmonics
            k = rng.integers(2, 14)
            dens += (
                rng.uniform(0.3, 1.0)
                * np.sin(k * az + rng.uniform(0, 2 * np.pi))
                * np.sin(rng.uniform(6.0, 20.0) * el + rng.uniform(0, 2 * np.pi))
            )
        cover = _smoothstep((dens - 0.4) / 0.9) * _smoothstep((el - 0.03) / 0.08)
        rgb = rgb * (1.0 - 0.85 * cover[..., None]) + np.array(CLOUD) * (0.85 * cover[..., None])
        chans = rgb @ mat.T + off
        sky = np.zeros((SKY_ROWS, SKY_COLS, self._nch), dtype=np.uint8)
        sky[..., : mat.shape[0]] = np.clip(np.rint(chans), 0, 255).astype(np.uint8)
        return sky

    def _camera_map(self, cam: Camera) -> tuple[np.ndarray, np.ndarray]:
        """Float32 (map_x, map_y) from each output pixel to its atlas texel (built once)."""
        u = np.arange(cam.width, dtype=np.float64) + 0.5
        v = np.arange(cam.height, dtype=np.float64)[:, None] + 0.5
        rx, ry, rz = cam.rays(u[None, :], v)
        rx, ry, rz = np.broadcast_arrays(rx, ry, rz)
        ground = rz < -1e-4
        horiz = np.hypot(rx, ry) + 1e-12
        # Ground: hit the plane, then pull points beyond the BEV back along the ray onto its edge
        # (they are in the haze band just below the horizon).
        t = cam.mount_height / np.maximum(-rz, 1e-4)
        with np.errstate(divide="ignore", invalid="ignore"):
            tx = np.where(rx > 0, BEV_X[1] / rx, np.where(rx < 0, BEV_X[0] / rx, np.inf))
            ty = np.where(np.abs(ry) > 0, BEV_Y / np.abs(ry), np.inf)
        t = np.minimum(t, np.minimum(tx, ty) * (1.0 - 1e-9))
        gx, gy = t * rx, t * ry
        row = (np.arcsinh(gx / BEV_SCALE) - self._ax0) / (self._ax1 - self._ax0) * (BEV_ROWS - 1)
        col = (np.arcsinh(gy / BEV_SCALE) - self._ay0) / (self._ay1 - self._ay0) * (BEV_COLS - 1)
        # Sky: elevation picks the row, ego-relative azimuth the column (the texture turns with yaw).
        el = np.arctan2(rz, horiz)
        az = np.arctan2(ry, rx)
        srow = np.clip(el / self._el_max, 0.0, 1.0) * (SKY_ROWS - 1)
        scol = self._sky_c0 + (az + np.pi) / (2.0 * np.pi) * SKY_COLS
        map_x = np.where(ground, np.clip(col, 0, BEV_COLS - 1), np.clip(scol, self._sky_c0, None))
        map_y = np.where(ground, np.clip(row, 0, BEV_ROWS - 1), srow)
        return map_x.astype(np.float32), map_y.astype(np.float32)

    # --- per frame --------------------------------------------------------------------------------
    def _row_geometry(self, pose: EgoPose) -> tuple[np.ndarray, ...]:
        """Per BEV row: the centreline's ego-frame y, relative heading and arc length (1-D work)."""
        road = self.road
        s_ahead = np.arange(pose.s - 80.0, pose.s + 260.0, 1.0)
        xc, yc, th = road.centreline(s_ahead)
        c, s = math.cos(pose.yaw), math.sin(pose.yaw)
        dx, dy = xc - pose.x, yc - pose.y
        xe = c * dx + s * dy
        ye = -s * dx + c * dy
        phi = th - pose.yaw
        # The window is monotonic in ego x for |k| <= 1/150; cut it where it would stop being so.
        bad = np.nonzero(np.diff(xe) <= 0.0)[0]
        if bad.size:
            n = int(bad[0]) + 1
            xe, ye, phi, s_ahead = xe[:n], ye[:n], phi[:n], s_ahead[:n]
        yr = np.interp(self._xs, xe, ye)
        ph = np.interp(self._xs, xe, phi)
        sr = np.interp(self._xs, xe, s_ahead)
        return yr, np.cos(ph), np.sin(ph), sr

    def _dash_table(self, cphi: np.ndarray, sphi: np.ndarray, sr: np.ndarray) -> np.ndarray:
        """Paint coverage along each line per BEV row, box-filtered over the row's footprint."""
        nl = self.road.n_lanes
        lat = -self.road.half_width + LANE_WIDTH * np.arange(nl + 1)
        s_line = sr[:, None] + lat[None, :] * (sphi / np.maximum(cphi, 0.2))[:, None]
        w = self._wx_row[:, None]

        def integral(s: np.ndarray) -> np.ndarray:
            n = np.floor(s / DASH_PERIOD)
            return DASH_LEN * n + np.clip(s - DASH_PERIOD * n, 0.0, DASH_LEN)

        cov = (integral(s_line + w / 2) - integral(s_line - w / 2)) / w
        cov[:, 0] = cov[:, nl] = 1.0  # edge lines are solid
        return cov.astype(np.float32).ravel()

    def _row_shades(self, sr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Asphalt and grass brightness per BEV row (texture fixed to the road, so it moves)."""
        pa = sum(np.sin(2 * np.pi * sr / p + f) for p, f in zip(self._tex_per, self._tex_ph[0], strict=True))
        pg = sum(np.sin(2 * np.pi * sr / (1.7 * p) + f) for p, f in zip(self._tex_per, self._tex_ph[1], strict=True))
        return (0.93 + 0.023 * pa).astype(np.float32), (0.86 + 0.045 * pg).astype(np.float32)

    def _render_bev(self, pose: EgoPose) -> None:
        """Fill the atlas's BEV and sky regions for this pose."""
        yr, cphi, sphi, sr = self._row_geometry(pose)
        table = self._dash_table(cphi, sphi, sr)
        shade_a, shade_g = self._row_shades(sr)
        hw = self.road.half_width
        nl = self.road.n_lanes
        t0, t1, t2, t3, t4, t5, t6, t7 = self._f32
        f32 = np.float32

        # Lateral offset from the centreline, per cell: (y - yc(x)) * cos(phi(x)).
        np.subtract(self._ys.astype(f32)[None, :], yr.astype(f32)[:, None], out=t0)
        np.multiply(t0, cphi.astype(f32)[:, None], out=t0)  # t0 = lat
        # Road coverage (asphalt incl. shoulders), anti-aliased over the footprint.
        np.abs(t0, out=t1)  # t1 = |lat|
        np.subtract(f32(hw + SHOULDER), t1, out=t2)
        np.multiply(t2, self._inv_wy, out=t2)
        np.add(t2, f32(0.5), out=t2)
        np.maximum(t2, f32(0.0), out=t2)  # (max/min: np.clip's wrapper costs more than the work)
        np.minimum(t2, f32(1.0), out=t2)  # t2 = road
        # Nearest line k and the distance to it.
        np.add(t0, f32(hw), out=t3)  # q = lat + hw
        np.multiply(t3, f32(1.0 / LANE_WIDTH), out=t4)
        np.rint(t4, out=t4)
        np.maximum(t4, f32(0.0), out=t4)
        np.minimum(t4, f32(nl), out=t4)  # t4 = k
        np.multiply(t4, f32(LANE_WIDTH), out=t5)
        np.subtract(t3, t5, out=t3)
        np.abs(t3, out=t3)  # t3 = |dist to line|
        idx = t4.astype(np.intp)
        idx += self._row_index
        dash = np.take(table, idx)
        np.subtract(self._half_sum, t3, out=t5)
        np.maximum(t5, f32(0.0), out=t5)
        np.minimum(t5, self._min_w, out=t5)
        np.multiply(t5, self._inv_wy, out=t5)
        np.multiply(t5, dash, out=t5)  # t5 = paint coverage
        # Darker wheel paths 0.85 m either side of each lane centre.
        np.subtract(t3, f32(LANE_WIDTH / 2 - 0.85), out=t6)
        np.multiply(t6, t6, out=t6)
        np.multiply(t6, f32(-1.0 / 0.45**2), out=t6)
        np.add(t6, f32(1.0), out=t6)
        np.maximum(t6, 0.0, out=t6)
        np.multiply(t6, f32(-0.12), out=t6)
        np.add(t6, f32(1.0), out=t6)
        np.multiply(t6, shade_a[:, None], out=t6)  # t6 = asphalt shade
        # Weights: paint, asphalt, grass (haze takes the rest, baked into the base).
        np.multiply(t2, self._clear, out=t2)  # road, not hazed
        np.subtract(self._clear, t2, out=t7)
        np.multiply(t7, shade_g[:, None], out=t7)  # grass weight
        np.multiply(t2, t5, out=t5)  # paint weight
        np.subtract(t2, t5, out=t2)
        np.multiply(t2, t6, out=t2)  # asphalt weight
        ca, cp, cg = self._colour["asphalt"], self._colour["paint"], self._colour["grass"]
        for p in range(self._nch_colour):
            np.multiply(t2, ca[p], out=t0)
            np.add(t0, self._base[p], out=t0)
            np.multiply(t5, cp[p], out=t1)
            np.add(t0, t1, out=t0)
            np.multiply(t7, cg[p], out=t1)
            np.add(t0, t1, out=t0)
            np.copyto(self._atlas[:BEV_ROWS, :BEV_COLS, p], t0, casting="unsafe")

        # Sky: column c (ego-relative azimuth) shows world azimuth c + yaw; sub-texel, wrapping.
        shift = (pose.yaw / (2.0 * np.pi)) * SKY_COLS
        m = np.float32([[1.0, 0.0, shift], [0.0, 1.0, 0.0]])  # destination -> source
        dst = self._atlas[:SKY_ROWS, self._sky_c0 : self._sky_c0 + SKY_COLS + 1]
        cv2.warpAffine(
            self._sky,
            m,
            (SKY_COLS + 1, SKY_ROWS),
            dst=dst if self._nch > 1 else dst[..., 0],
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_WRAP,
        )

    def new_outputs(self) -> dict[str, np.ndarray]:
        """One correctly shaped uint8 frame buffer per camera (convenience for callers and tests)."""
        return {name: np.empty(self.shape, dtype=np.uint8) for name in self._maps}

    def render(self, t: float, outputs: Mapping[str, np.ndarray]) -> EgoPose:
        """Render the scene at time ``t`` into ``outputs`` (camera name -> frame buffer), in place.

        The buffers must have ``self.shape``, dtype uint8 and be C-contiguous (e.g. shared-memory
        slots); cameras missing from ``outputs`` are skipped. Returns the ego pose rendered.
        """
        pose = self.road.ego_at(t)
        self._render_bev(pose)
        for name, out in outputs.items():
            if name not in self._maps:
                raise ValueError(f"no camera {name!r} in this rig ({', '.join(self._maps)})")
            if out.shape != self.shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
                raise ValueError(
                    f"output for {name!r} must be C-contiguous uint8 {self.shape}, got {out.dtype} {out.shape}"
                )
            self._render_camera(name, out)
        return pose

    def _render_camera(self, name: str, out: np.ndarray) -> None:
        map_x, map_y = self._maps[name]
        if self.fmt == "gray":
            cv2.remap(self._atlas[..., 0], map_x, map_y, cv2.INTER_LINEAR, dst=out)
            return
        cv2.remap(self._atlas, map_x, map_y, cv2.INTER_LINEAR, dst=self._scratch)
        write_format(self._scratch, out, self.fmt)


def write_format(img: np.ndarray, out: np.ndarray, fmt: str) -> None:
    """Write a 4-channel scratch image (RGB+pad, YUV+pad; gray: 1 channel) as raw ``fmt`` into ``out``.

    Shared by every renderer of simulated cameras (this one and ``vla.sim.render``): 4:2:2 takes U from
    the even pixel and V from the odd one of a pair, 4:2:0 the top-left pair of each 2x2 block.
    """
    h, w = img.shape[:2]
    if fmt == "gray":
        np.copyto(out, img if img.ndim == 2 else img[..., 0])
    elif fmt == "rgb":
        cv2.cvtColor(img, cv2.COLOR_RGBA2RGB, dst=out)
    elif fmt == "bgr":
        cv2.cvtColor(img, cv2.COLOR_RGBA2BGR, dst=out)
    elif fmt in ("yuyv", "uyvy"):
        # Pixel pairs: (Y0 U V x Y1 U V x) -> Y0 U Y1 V or U Y0 V Y1.
        pairs = img.reshape(h, w // 2, 8)
        order = [0, 0, 1, 1, 4, 2, 6, 3] if fmt == "yuyv" else [1, 0, 0, 1, 6, 2, 4, 3]
        cv2.mixChannels([pairs], [out.reshape(h, w // 2, 4)], order)
    else:
        cv2.mixChannels([img], [out[:h]], [0, 0])
        even_pairs = img.reshape(h // 2, 2, w // 2, 8)[:, 0]  # top-left pair of each 2x2 block
        if fmt == "nv12":
            cv2.mixChannels([even_pairs], [out[h:].reshape(h // 2, w // 2, 2)], [1, 0, 6, 1])
        else:
            flat = out.reshape(-1)
            q = (h // 2) * (w // 2)
            u_plane = flat[h * w : h * w + q].reshape(h // 2, w // 2)
            v_plane = flat[h * w + q :].reshape(h // 2, w // 2)
            cv2.mixChannels([even_pairs], [u_plane, v_plane], [1, 0, 6, 1])
