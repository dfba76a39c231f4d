"""V4L2 cameras (USB/UVC webcams, capture cards, MIPI bridges that expose /dev/videoN) via linuxpy.

Why linuxpy: it wraps the V4L2 ioctls (format negotiation, mmap streaming, buffer timestamps) in
pure Python, so the runtime needs no compiled V4L2 binding and no hand-written ioctls.

Why no colour conversion here: frames go out in the camera's own raw layout (YUYV, UYVY, NV12,
GREY; see ``PIXEL_FORMATS``) and the preprocess converts them once, fused with resizing. MJPEG is the
exception: a compressed frame is of no use downstream, so it is decoded here (OpenCV, to BGR).

URI grammar (every parameter optional)::

    /dev/video0[?format=yuyv&size=1280x720&fps=30]
    v4l2:///dev/video0[?...]          also v4l2:///dev/v4l/by-id/... (names that survive a replug)

``format``: yuyv, uyvy, nv12, gray, mjpeg or the V4L2 fourcc (YUYV, UYVY, NV12, GREY, MJPG). Left
open, the camera's modes are ranked by ``choose_mode``: raw YUYV, then NV12, then MJPEG; the
largest size up to 1920x1080; the highest frame rate up to 30 fps. A mode below 15 fps is a last
resort (UVC cameras offer raw 1080p at 5 fps next to MJPEG 1080p at 30).

Frame clock: ``capture_time`` is the driver's buffer timestamp when the driver marks it
CLOCK_MONOTONIC (most do; it is the clock ``time.monotonic()`` reads), else the time the buffer
was dequeued. ``seq`` follows the driver's frame counter, so frames the driver or this source
skipped show up as gaps; only the newest ready buffer is copied, older ready ones are requeued.

Unplug: a live camera never ends. When the device vanishes, ``trouble()`` says so and the capture
thread reopens the same path every second with the same mode; ``seq`` then jumps by the frames
the outage cost (at the camera's rate), and ``trouble()`` clears with the first new frame.
"""

from __future__ import annotations

import contextlib
import errno
import math
import re
import select
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from ...errors import CameraError
from .base import CameraSource, End, Frame
from .uri import invalid, query_params

#: Raw V4L2 fourcc -> (Frame.fmt, bytes per pixel in the first plane). Delivered as they come.
RAW_FOURCCS: dict[str, tuple[str, int]] = {
    "YUYV": ("yuyv", 2),
    "UYVY": ("uyvy", 2),
    "NV12": ("nv12", 1),
    "GREY": ("gray", 1),
}
#: Compressed fourccs, decoded to BGR (some cameras announce plain JPEG rather than MJPG).
JPEG_FOURCCS = ("MJPG", "JPEG")
#: ``?format=`` spellings (case-insensitive) -> the fourcc asked of the driver.
FORMAT_NAMES = {
    "yuyv": "YUYV", "yuy2": "YUYV", "uyvy": "UYVY", "nv12": "NV12", "gray": "GREY", "grey": "GREY",
    "mjpeg": "MJPG", "mjpg": "MJPG", "jpeg": "MJPG",
}  # fmt: skip
#: Default ranking of formats, best first: raw needs no decoding; MJPEG costs a CPU decode per frame.
FORMAT_PREFERENCE = ("YUYV", "NV12", "MJPG", "JPEG", "UYVY", "GREY")
DEFAULT_MAX_SIZE = (1920, 1080)
DEFAULT_MAX_FPS = 30.0
#: A default mode slower than this is a last resort (UVC cameras offer e.g. YUYV 1080p at 5 fps).
MIN_LIVE_FPS = 15.0
FPS_TOLERANCE = 0.5  # ?fps=30 matches a mode offering 29.97

#: v4l2_buffer.flags bits (linux/videodev2.h), kept here so the pure functions need no linuxpy.
BUF_FLAG_ERROR = 0x0040
BUF_FLAG_TIMESTAMP_MASK = 0xE000
BUF_FLAG_TIMESTAMP_MONOTONIC = 0x2000
#: A driver timestamp further than this behind the dequeue time is not trusted (a bad driver clock).
MAX_DRIVER_LAG_S = 2.0

STALL_S = 1.0  # no frame for this long, after frames flowed: report trouble
REOPEN_S = 1.0  # how often a vanished device is reopened
N_BUFFERS = 4  # driver buffers: the camera keeps capturing while one is being copied out

_PARAMS = ("format", "size", "fps")
_MISSING_ERRNOS = (errno.ENOENT, errno.ENODEV, errno.ENXIO)


# ==================================================================================================
# Pure decisions: URI, mode, buffer layout, timestamps
# ==================================================================================================


@dataclass(frozen=True)
class V4l2Request:
    """A parsed V4L2 camera URI: the device path and what the user asked of it (None: left open)."""

    device: str
    fourcc: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None


@dataclass(frozen=True)
class Mode:
    """One capture mode a device offers: fourcc, size, and its frame rates (highest first; empty when
    the driver does not enumerate them). ``choose_mode`` returns a Mode holding the one chosen rate."""

    fourcc: str
    width: int
    height: int
    fps: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        rates = sorted({round(float(f), 3) for f in self.fps if f and math.isfinite(f) and f > 0}, reverse=True)
        object.__setattr__(self, "fps", tuple(rates))

    def __str__(self) -> str:
        rates = "/".join(_fmt_fps(f) for f in self.fps)
        return f"{self.fourcc} {self.width}x{self.height}" + (f"@{rates}" if rates else "")


def _fmt_fps(fps: float) -> str:
    return f"{fps:.2f}".rstrip("0").rstrip(".")


def describe_modes(modes: Sequence[Mode]) -> str:
    """``YUYV 640x480@30/15, 1280x720@10; MJPG 1920x1080@30``: modes grouped by fourcc, in order."""
    groups: dict[str, list[str]] = {}
    for m in modes:
        rates = "/".join(_fmt_fps(f) for f in m.fps)
        groups.setdefault(m.fourcc, []).append(f"{m.width}x{m.height}" + (f"@{rates}" if rates else ""))
    return "; ".join(f"{fourcc} {', '.join(sizes)}" for fourcc, sizes in groups.items())


def parse_v4l2_uri(uri: str) -> V4l2Request:
    """``/dev/video0?size=1280x720`` or ``v4l2:///dev/video0?format=mjpeg``; mistakes -> CameraError."""
    if "://" in uri:
        parts = urlsplit(uri)
        if parts.scheme.lower() not in ("v4l2", "file"):
            raise CameraError(f"camera URI {uri!r} is not a V4L2 device (write /dev/videoN or v4l2:///dev/videoN)")
        if parts.netloc:
            raise CameraError(
                f"camera URI {uri!r}: put the absolute device path after '{parts.scheme}://', "
                f"e.g. {parts.scheme}:///dev/video0 (three slashes)"
            )
        path, query = unquote(parts.path), parts.query
    else:
        path, _, query = uri.partition("?")
    if not path.startswith("/") or path.rstrip("/") in ("", "/dev"):
        raise CameraError(f"camera URI {uri!r}: needs a device path such as /dev/video0")
    seen = query_params(uri, query, _PARAMS)

    def bad(key: str, accepted: str) -> CameraError:
        return invalid(uri, key, seen[key], accepted)

    kw: dict[str, Any] = {}
    if "format" in seen:
        fourcc = FORMAT_NAMES.get(seen["format"].lower())
        if fourcc is None:
            raise bad("format", "yuyv, uyvy, nv12, gray, mjpeg (or the fourcc YUYV, UYVY, NV12, GREY, MJPG)")
        kw["fourcc"] = fourcc
    if "size" in seen:
        m = re.fullmatch(r"(\d{1,5})x(\d{1,5})", seen["size"])
        if not m or not (1 <= int(m[1]) <= 16384 and 1 <= int(m[2]) <= 16384):
            raise bad("size", "WIDTHxHEIGHT, e.g. 1280x720")
        kw["width"], kw["height"] = int(m[1]), int(m[2])
    if "fps" in seen:
        try:
            fps = float(seen["fps"])
        except ValueError:
            raise bad("fps", "a frame rate in frames per second, 0 < fps <= 1000") from None
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            raise bad("fps", "a frame rate in frames per second, 0 < fps <= 1000")
        kw["fps"] = fps
    return V4l2Request(path, **kw)


def _same_format(offered: str, wanted: str) -> bool:
    return offered == wanted or (offered in JPEG_FOURCCS and wanted in JPEG_FOURCCS)


def _default_fps(rates: tuple[float, ...]) -> float | None:
    """The highest rate up to 30 fps, else the lowest offered; None when the driver lists none."""
    if not rates:
        return None
    upto = [f for f in rates if f <= DEFAULT_MAX_FPS + 1e-6]
    return max(upto) if upto else min(rates)


def _default_rank(m: Mode) -> tuple[Any, ...]:
    fps = _default_fps(m.fps)
    live = fps is None or fps >= MIN_LIVE_FPS
    fits = m.width <= DEFAULT_MAX_SIZE[0] and m.height <= DEFAULT_MAX_SIZE[1]
    area = m.width * m.height
    return (not live, FORMAT_PREFERENCE.index(m.fourcc), not fits, -area if fits else area, -(fps or 0.0))


def choose_mode(request: V4l2Request, offered: Sequence[Mode]) -> Mode:
    """The mode to open: what the request pins, the rest by the default ranking (see module doc).

    The result holds the single frame rate to ask for (none when the driver lists no rates and the
    request names none). Nothing suitable -> CameraError listing what the device does offer.
    """
    where = request.device
    usable = [m for m in offered if m.fourcc in RAW_FOURCCS or m.fourcc in JPEG_FOURCCS]
    if not usable:
        listed = describe_modes(offered) or "no capture modes at all"
        raise CameraError(f"{where} offers no format this runtime reads (YUYV, UYVY, NV12, GREY, MJPG); "
                          f"it offers {listed}")
    cands = usable
    if request.fourcc:
        cands = [m for m in cands if _same_format(m.fourcc, request.fourcc)]
    if request.width is not None:
        cands = [m for m in cands if (m.width, m.height) == (request.width, request.height)]
    if request.fps is not None:
        fps = request.fps
        cands = [m for m in cands if not m.fps or any(abs(f - fps) <= FPS_TOLERANCE for f in m.fps)]
    if not cands:
        wanted = " ".join(
            p for p in (
                f"{request.width}x{request.height}" if request.width is not None else "",
                request.fourcc or "",
                f"at {_fmt_fps(request.fps)} fps" if request.fps is not None else "",
            ) if p
        )  # fmt: skip
        raise CameraError(f"{where} offers no {wanted}; it offers {describe_modes(usable)}")
    best = min(cands, key=_default_rank)
    want = request.fps
    if want is not None:
        rate: float | None = min(best.fps, key=lambda f: abs(f - want)) if best.fps else want
    else:
        rate = _default_fps(best.fps)
    return replace(best, fps=(rate,) if rate else ())


def frame_array(
    buffer: bytes | bytearray | memoryview | Any, fourcc: str, width: int, height: int, bytesperline: int = 0
) -> np.ndarray:
    """A read-only view of one raw frame in a driver buffer, padding cut off (no copy).

    ``bytesperline`` is the driver's row pitch (0: unpadded). Shapes follow ``PIXEL_FORMATS``:
    YUYV/UYVY (H, W, 2), NV12 (H*3/2, W) with the UV plane at the same pitch, GREY (H, W).
    """
    if fourcc not in RAW_FOURCCS:
        raise ValueError(f"{fourcc!r} is not a raw format this source delivers ({', '.join(RAW_FOURCCS)})")
    _, bpp = RAW_FOURCCS[fourcc]
    if width <= 0 or height <= 0 or (fourcc == "NV12" and (width % 2 or height % 2)):
        raise ValueError(f"{fourcc} frame size {width}x{height} is not valid")
    row = width * bpp
    stride = bytesperline or row
    if stride < row:
        raise ValueError(f"{fourcc} {width}x{height}: bytesperline {stride} is less than a row ({row} bytes)")
    rows = height * 3 // 2 if fourcc == "NV12" else height
    flat = np.frombuffer(buffer, dtype=np.uint8)
    need = stride * (rows - 1) + row
    if flat.size < need:
        raise ValueError(f"{fourcc} {width}x{height} frame needs {need} bytes, the buffer holds {flat.size}")
    if bpp == 2:
        shape, strides = (rows, width, 2), (stride, 2, 1)
    else:
        shape, strides = (rows, width), (stride, 1)
    return np.lib.stride_tricks.as_strided(flat, shape=shape, strides=strides, writeable=False)


def driver_time_to_monotonic(secs: int, usecs: int, flags: int, arrival: float) -> float:
    """A buffer's capture time on ``time.monotonic()``: the driver's timestamp when the driver marks it
    CLOCK_MONOTONIC and it is plausible (not after ``arrival``, the dequeue time, nor more than
    MAX_DRIVER_LAG_S before it), else ``arrival``."""
    if flags & BUF_FLAG_TIMESTAMP_MASK != BUF_FLAG_TIMESTAMP_MONOTONIC:
        return arrival
    t = secs + usecs * 1e-6
    if not (arrival - MAX_DRIVER_LAG_S <= t <= arrival + 1e-3):
        return arrival
    return min(t, arrival)


def output_layout(mode: Mode) -> tuple[str, tuple[int, ...]]:
    """(Frame.fmt, array shape) of the frames a mode delivers."""
    if mode.fourcc in JPEG_FOURCCS:
        return "bgr", (mode.height, mode.width, 3)
    fmt, bpp = RAW_FOURCCS[mode.fourcc]
    if mode.fourcc == "NV12":
        return fmt, (mode.height * 3 // 2, mode.width)
    return fmt, (mode.height, mode.width, 2) if bpp == 2 else (mode.height, mode.width)


# ==================================================================================================
# The device, through linuxpy
# ==================================================================================================


class DriverStamp(NamedTuple):
    """What the driver says about one dequeued buffer."""

    sequence: int
    secs: int
    usecs: int
    flags: int
    bytesused: int


class Session(Protocol):
    """One open, streaming device. The capture thread owns it; tests substitute a fake."""

    mode: Mode  # negotiated: the driver's size and fourcc, the rate asked for
    bytesperline: int

    def wait(self, timeout: float) -> bool:
        """True when a buffer is ready; raises OSError when the device is gone."""
        ...

    def read(self, handle: Callable[[memoryview, DriverStamp], None]) -> bool:
        """Hand the newest ready buffer to ``handle`` (valid during the call only); False if none."""
        ...

    def close(self) -> None: ...


class DeviceMissing(CameraError):
    """The device path does not exist (yet): the reopen loop keeps trying quietly."""


def linuxpy_video() -> ModuleType:
    """``linuxpy.video.device``, or a CameraError saying how to get it."""
    try:
        from linuxpy.video import device
    except Exception as exc:  # ImportError, or linuxpy refusing a non-Linux platform
        raise CameraError(f"V4L2 cameras need the linuxpy package (pip install linuxpy; Linux only); "
                          f"not importable here: {exc}") from None
    return device


def device_modes(device: Any) -> list[Mode]:
    """Every capture mode an open ``linuxpy`` Device offers (discrete sizes; common sizes within a
    stepwise range). Formats linuxpy does not know are skipped."""
    vd = linuxpy_video()
    modes: list[Mode] = []
    for image_format in device.info.buffer_formats(vd.BufferType.VIDEO_CAPTURE):
        pixel_format = image_format.pixel_format
        fourcc = vd.human_pixel_format(int(pixel_format))
        try:
            sizes = device.info.format_frame_sizes(pixel_format)
        except OSError:
            sizes = []
        dims: list[tuple[int, int]] = []
        for size in sizes:
            if size.type == vd.FrameSizeType.DISCRETE:
                dims.append((size.info.width, size.info.height))
            else:
                dims.extend(_stepwise_sizes(size.info))
        if not sizes:  # a driver without ENUM_FRAMESIZES: its current size is what it offers
            with contextlib.suppress(OSError):
                cur = device.get_format(vd.BufferType.VIDEO_CAPTURE)
                if int(cur.pixel_format) == int(pixel_format):
                    dims.append((cur.width, cur.height))
        modes.extend(Mode(fourcc, w, h, _frame_rates(device, pixel_format, w, h)) for w, h in dims)
    return modes


_COMMON_SIZES = ((3840, 2160), (1920, 1080), (1280, 720), (640, 480), (320, 240))
_COMMON_RATES = (60.0, 30.0, 25.0, 15.0, 10.0, 5.0)


def _stepwise_sizes(info: Any) -> list[tuple[int, int]]:
    def fits(v: int, lo: int, hi: int, step: int) -> bool:
        return lo <= v <= hi and (v - lo) % max(step, 1) == 0

    dims = [
        (w, h) for w, h in _COMMON_SIZES
        if fits(w, info.min_width, info.max_width, info.step_width)
        and fits(h, info.min_height, info.max_height, info.step_height)
    ]  # fmt: skip
    if (info.max_width, info.max_height) not in dims:
        dims.insert(0, (info.max_width, info.max_height))
    return dims


def _frame_rates(device: Any, pixel_format: Any, width: int, height: int) -> tuple[float, ...]:
    vd = linuxpy_video()
    rates: set[float] = set()
    try:
        intervals = device.info.fps_intervals(pixel_format, width, height)
    except OSError:
        return ()
    for it in intervals:
        hi, lo = float(it.max_fps or 0), float(it.min_fps or 0)
        rates.update(f for f in (hi, lo) if f > 0)
        if it.type != vd.FrameIntervalType.DISCRETE and hi > 0:
            rates.update(f for f in _COMMON_RATES if lo <= f <= hi)
    return tuple(rates)


class LinuxpySession:
    """Opens a device, negotiates the chosen mode and streams through mmap buffers (or read())."""

    def __init__(self, request: V4l2Request, camera: str, n_buffers: int = N_BUFFERS) -> None:
        vd = linuxpy_video()
        path = request.device
        where = f"camera '{camera}': {path}"
        self._vd, self._count, self._camera = vd, 0, camera
        self.device = vd.Device(path)  # non-blocking: the capture thread waits in select() with a timeout
        try:
            self.device.open()
        except OSError as exc:
            raise _open_error(where, path, exc) from None
        try:
            self._start(request, where, n_buffers)
        except BaseException:
            self.close()
            raise

    def _start(self, request: V4l2Request, where: str, n_buffers: int) -> None:
        vd, dev = self._vd, self.device
        try:
            caps = dev.info.device_capabilities
            card = dev.info.card
            if vd.Capability.VIDEO_CAPTURE not in caps:
                if vd.Capability.VIDEO_CAPTURE_MPLANE in caps:
                    why = ("uses the multi-planar V4L2 API, which this source does not read; "
                           f"try gst://v4l2src device={request.device} ! videoconvert ! appsink")
                elif vd.Capability.META_CAPTURE in caps:
                    why = (f"is a metadata node of '{card}', not its video; the video node is usually the one "
                           "before it (vla-run --list-cameras)")
                else:
                    why = f"('{card}') is not a video capture device (vla-run --list-cameras lists cameras)"
                raise CameraError(f"{where} {why}")
            try:
                mode = choose_mode(request, device_modes(dev))
            except CameraError as exc:
                raise CameraError(f"camera '{self._camera}': {exc}") from None
            self.capture = vd.VideoCapture(dev, size=n_buffers)
            self.capture.set_format(mode.width, mode.height, mode.fourcc)
            got = self.capture.get_format()
            got_fourcc = vd.human_pixel_format(int(got.pixel_format))
            if not _same_format(got_fourcc, mode.fourcc) or (got.width, got.height) != (mode.width, mode.height):
                raise CameraError(f"{where}: asked for {mode.fourcc} {mode.width}x{mode.height}, the driver set "
                                  f"{got_fourcc} {got.width}x{got.height}; pick one of its modes "
                                  "(vla-run --list-cameras)")
            if mode.fps:
                with contextlib.suppress(OSError):  # drivers without S_PARM run at their one rate
                    self.capture.set_fps(mode.fps[0])
            with contextlib.suppress(OSError, ZeroDivisionError):
                rate = float(self.capture.get_fps())
                mode = replace(mode, fps=(rate,)) if rate > 0 else mode
            self.mode = replace(mode, fourcc=got_fourcc)
            self.bytesperline = int(got.bytes_per_line)
            self.capture.open()  # request + mmap buffers, queue them, stream on
        except OSError as exc:
            raise _open_error(where, request.device, exc) from None

    def wait(self, timeout: float) -> bool:
        ready, _, failed = select.select([self.device], [], [self.device], timeout)
        return bool(ready or failed)  # an unplugged device polls as ready; the dequeue then raises

    def read(self, handle: Callable[[memoryview, DriverStamp], None]) -> bool:
        source = self.capture.buffer
        queue = getattr(source, "queue", None)
        if queue is None:  # read()-only driver: one frame per read, stamped on arrival
            frame = source.raw_read()
            self._count += 1
            handle(memoryview(frame.data), DriverStamp(self._count, 0, 0, 0, len(frame.data)))
            return True
        held = None
        while True:  # drain: keep the newest ready buffer, hand the older ones straight back
            try:
                buf = queue.dequeue()
            except BlockingIOError:
                break
            if held is not None:
                queue.enqueue(held)
            held = buf
        if held is None:
            return False
        try:
            ts = held.timestamp
            stamp = DriverStamp(held.sequence, ts.secs, ts.usecs, held.flags, held.bytesused)
            handle(memoryview(source.buffers[held.index])[: held.bytesused], stamp)
        finally:
            queue.enqueue(held)
        return True

    def close(self) -> None:
        capture = getattr(self, "capture", None)
        if capture is not None and capture.buffer is not None:
            try:
                capture.close()  # stream off, unmap, free the buffers
            except (OSError, ValueError, BufferError):  # the device is gone: release what is ours
                with contextlib.suppress(Exception):
                    capture.disarm()
        with contextlib.suppress(OSError):
            self.device.close()


def _open_error(where: str, path: str, exc: OSError) -> CameraError:
    if exc.errno in _MISSING_ERRNOS:
        return DeviceMissing(f"{where}: no such device ({exc.strerror}); `ls /dev/video*` lists the cameras, "
                             "`vla-run --list-cameras` what they offer")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return CameraError(f"{where}: permission denied; add your user to the 'video' group "
                           "(sudo usermod -aG video $USER, then log in again)")
    if exc.errno == errno.EBUSY:
        return CameraError(f"{where}: busy, another program is streaming from it (`fuser {path}` names it); "
                           "close it or pick another camera")
    return CameraError(f"{where}: cannot start capture ({exc}); `vla-run --list-cameras` shows the device")


# ==================================================================================================
# The source
# ==================================================================================================


def open_source(uri: str, name: str) -> V4l2Source:
    """``/dev/video0[?format=&size=&fps=]`` or ``v4l2:///dev/video0[?...]``."""
    return V4l2Source(name, uri, parse_v4l2_uri(uri))


class V4l2Source(CameraSource):
    """A V4L2 camera: a daemon thread dequeues frames and keeps only the newest."""

    def __init__(
        self,
        name: str,
        uri: str,
        request: V4l2Request,
        open_session: Callable[[], Session] | None = None,
        reopen_s: float = REOPEN_S,
        stall_s: float = STALL_S,
    ) -> None:
        self.name, self.uri, self.request = name, uri, request
        self.reopen_s, self.stall_s = reopen_s, stall_s
        self._open_session: Callable[[], Session] = open_session or (lambda: LinuxpySession(request, name))
        self._session: Session | None = self._open_session()  # open errors reach the caller
        self.mode = self._session.mode
        fmt, shape = output_layout(self.mode)
        self._lock = threading.Lock()
        self._latest = np.zeros(shape, np.uint8)
        self._latest_fmt, self._latest_size = fmt, (self.mode.width, self.mode.height)
        self._latest_seq, self._latest_time = 0, 0.0
        self._out = np.empty_like(self._latest)
        self._frame: Frame | None = None
        self._trouble: str | None = None
        self._ended: End | None = None
        # Capture-thread state: Frame.seq = _seq_base + (driver sequence - _seq0).
        self._seq0: int | None = None
        self._seq_base = 1
        self._last_frame_at = time.monotonic()  # for stall reports; reset when a session opens
        self._skipped: str | None = None  # why the latest buffers were dropped, if they were
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture, name=f"v4l2-{name}", daemon=True)
        self._thread.start()

    # -- capture thread ---------------------------------------------------------------------------

    def _capture(self) -> None:
        path = self.request.device
        gone_why, gone_at = "", 0.0
        try:
            while not self._stop.is_set():
                if self._session is None:
                    try:
                        self._session = self._open_session()
                    except CameraError as exc:
                        why = f"device {path} gone ({gone_why}); reopening every {self.reopen_s:g} s"
                        self._trouble = why if isinstance(exc, DeviceMissing) else f"{why}; last try: {exc}"
                        self._stop.wait(self.reopen_s)
                        continue
                    # The outage cost frames at the camera's rate: show them as a seq gap.
                    rate = self._session.mode.fps[0] if self._session.mode.fps else 30.0
                    self._seq_base = self._latest_seq + max(1, round((time.monotonic() - gone_at) * rate))
                    self._seq0, self._last_frame_at = None, time.monotonic()
                try:
                    if self._session.wait(0.2):
                        self._session.read(self._store)
                    elif time.monotonic() - self._last_frame_at > self.stall_s:
                        late = time.monotonic() - self._last_frame_at
                        why = f"its buffers were {self._skipped}" if self._skipped else "camera stalled?"
                        self._trouble = f"no frame from {path} for {late:.1f} s ({why})"
                except BlockingIOError:  # a spurious wake-up: nothing to read after all
                    continue
                except OSError as exc:
                    gone_why, gone_at = str(exc), time.monotonic()
                    self._trouble = f"device {path} gone ({exc}); reopening every {self.reopen_s:g} s"
                    session, self._session = self._session, None
                    session.close()
                    self._stop.wait(self.reopen_s)
        except Exception as exc:  # a bug or a driver linuxpy cannot handle: nothing will restart this thread
            self._ended = End(f"V4L2 capture of {path} failed: {type(exc).__name__}: {exc}", error=True)
        finally:
            if self._session is not None:
                self._session.close()
                self._session = None

    def _store(self, data: memoryview, stamp: DriverStamp) -> None:
        """Copy one dequeued buffer into the newest-frame slot (runs while the driver buffer is held)."""
        arrival = time.monotonic()
        if stamp.flags & BUF_FLAG_ERROR:
            self._skipped = "flagged corrupt by the driver"  # e.g. a USB transfer error: its seq becomes a gap
            return
        assert self._session is not None
        mode = self._session.mode
        if self._seq0 is None:
            self._seq0 = stamp.sequence
        seq = self._seq_base + ((stamp.sequence - self._seq0) & 0xFFFFFFFF)  # u32 counter wraps
        try:
            if mode.fourcc in JPEG_FOURCCS:
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                if img is None or img.ndim != 3:
                    self._skipped = "JPEGs OpenCV cannot decode"  # e.g. truncated: skip it
                    return
                fmt, size = "bgr", (img.shape[1], img.shape[0])
            else:
                img = frame_array(data, mode.fourcc, mode.width, mode.height, self._session.bytesperline)
                fmt, size = RAW_FOURCCS[mode.fourcc][0], (mode.width, mode.height)
        except ValueError as exc:
            self._skipped = f"unreadable ({exc})"  # e.g. a short buffer: skip it
            return
        t = driver_time_to_monotonic(stamp.secs, stamp.usecs, stamp.flags, arrival)
        with self._lock:
            if img.shape == self._latest.shape:
                np.copyto(self._latest, img)
            else:  # a size change after a reopen: keep it, the consumer re-plans
                self._latest = np.array(img)
            self._latest_fmt, self._latest_size = fmt, size
            self._latest_seq, self._latest_time = seq, t
        del img  # drop the view of the driver buffer before it is requeued
        self._last_frame_at, self._skipped, self._trouble = arrival, None, None

    # -- CameraSource -----------------------------------------------------------------------------

    def newest(self) -> Frame | None:
        with self._lock:
            if self._latest_seq == 0:
                return None
            if self._frame is not None and self._frame.seq == self._latest_seq:
                return self._frame  # nothing new: no copy, so polling is cheap
            if self._out.shape != self._latest.shape:
                self._out = np.empty_like(self._latest)
            np.copyto(self._out, self._latest)
            seq, t, fmt, (w, h) = self._latest_seq, self._latest_time, self._latest_fmt, self._latest_size
        self._frame = Frame(self.name, self._out, fmt, w, h, seq, t)
        return self._frame

    def trouble(self) -> str | None:
        return self._trouble

    def ended(self) -> End | None:
        return self._ended  # only a failed capture thread; an unplugged camera is trouble(), not an end

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)


__all__ = [
    "DriverStamp", "LinuxpySession", "Mode", "V4l2Request", "V4l2Source", "choose_mode", "describe_modes",
    "device_modes", "driver_time_to_monotonic", "frame_array", "open_source", "output_layout", "parse_v4l2_uri",
]  # fmt: skip
