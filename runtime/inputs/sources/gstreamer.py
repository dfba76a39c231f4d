"""Jetson CSI cameras (``csi://N``) and any GStreamer pipeline (``gst://PIPELINE``) via PyGObject.

Why GStreamer: a Jetson's CSI sensors are only reachable through Argus (``nvarguscamerasrc``),
which delivers frames in NVMM (GPU) memory; ``nvvidconv`` copies them to system-memory NV12, a raw
format the preprocess converts like any other camera's. Why PyGObject rather than OpenCV: pip's
OpenCV wheels are built without GStreamer. Why the appsink runs ``max-buffers=1 drop=true
sync=false``: it then holds only the newest frame and never waits for the clock, so a slow loop
sees dropped frames (``seq`` gaps), never a growing queue or a growing delay.

URI grammar::

    csi://N[?size=1920x1080&fps=30&sensor_mode=M&flip=0]
    gst://PIPELINE

``gst://`` takes everything after it as a ``gst-launch-1.0`` pipeline, written literally
(``gst://videotestsrc ! video/x-raw,format=NV12 ! appsink``) or percent-encoded as a whole (no
spaces). A pipeline that does not end in an appsink gets ``! appsink name=vla_sink`` appended; an
appsink without caps is restricted to the raw formats read here (NV12, I420, YUY2, UYVY, RGB, BGR,
GRAY8), so a pipeline producing anything else fails to negotiate with a clear bus error.

Frame clock: a buffer's PTS, as running time plus the pipeline's base time, is a reading of the
pipeline clock; when that is GStreamer's system clock in its default monotonic mode, it is the
clock ``time.monotonic()`` reads, and a live source stamps capture there. Otherwise (or when that
reading is implausible) the capture time is the arrival time minus the pipeline's reported
latency. An ERROR or EOS on the bus ends the source with ``End(error=True)`` naming the element.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from ...errors import CameraError
from .base import CameraSource, End, Frame
from .scene import frame_shape
from .uri import invalid, query_params

#: GStreamer raw video format -> Frame.fmt.
GST_FORMATS = {"NV12": "nv12", "I420": "i420", "YUY2": "yuyv", "UYVY": "uyvy", "RGB": "rgb", "BGR": "bgr",
               "GRAY8": "gray"}
SINK_NAME = "vla_sink"
SINK_PROPS = "max-buffers=1 drop=true sync=false"
#: Caps given to an appsink that has none: only what this module can read.
SINK_CAPS = "video/x-raw,format=(string){" + ",".join(GST_FORMATS) + "}"
INSTALL_HINT = ("on Jetson: sudo apt install python3-gi gir1.2-gst-plugins-base-1.0 gstreamer1.0-tools; "
                "a virtualenv needs --system-site-packages")
START_TIMEOUT_S = 10.0  # nvarguscamerasrc takes a second or two to bring a sensor up
MAX_CLOCK_LAG_S = 2.0  # a buffer clock time further than this behind arrival is not trusted
BUFFER_OFFSET_NONE = 2**64 - 1  # GST_BUFFER_OFFSET_NONE

_CSI_PARAMS = ("size", "fps", "sensor_mode", "flip")


# ==================================================================================================
# Pure decisions: URIs, pipelines, caps, buffer layout, timestamps
# ==================================================================================================


@dataclass(frozen=True)
class CsiParams:
    """A parsed ``csi://`` URI."""

    sensor_id: int = 0
    width: int = 1920
    height: int = 1080
    fps: float = 30.0
    sensor_mode: int | None = None  # None: Argus picks the mode for the size and rate
    flip: int = 0  # nvvidconv flip-method 0..7 (1, 3, 5, 7 turn the image by 90 degrees)


def parse_csi_uri(uri: str) -> CsiParams:
    """``csi://0?size=1280x720&fps=60``; every mistake is a CameraError naming the bad value."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "csi":
        raise CameraError(f"camera URI {uri!r} is not a csi:// URI")
    sensor = parts.netloc or "0"
    if not re.fullmatch(r"\d{1,2}", sensor) or parts.path not in ("", "/"):
        raise CameraError(f"camera URI {uri!r}: csi:// takes the sensor number, e.g. csi://0 or csi://1?fps=60")
    seen = query_params(uri, parts.query, _CSI_PARAMS)

    def bad(key: str, accepted: str) -> CameraError:
        return invalid(uri, key, seen[key], accepted)

    def integer(key: str, lo: int, hi: int, accepted: str) -> int:
        if not re.fullmatch(r"\d{1,3}", seen[key]) or not lo <= int(seen[key]) <= hi:
            raise bad(key, accepted)
        return int(seen[key])

    kw: dict[str, Any] = {"sensor_id": int(sensor)}
    if "size" in seen:
        m = re.fullmatch(r"(\d{1,5})x(\d{1,5})", seen["size"])
        accepted = "WIDTHxHEIGHT with even sides, e.g. 1920x1080"
        if not m or not (16 <= int(m[1]) <= 8192 and 16 <= int(m[2]) <= 8192) or int(m[1]) % 2 or int(m[2]) % 2:
            raise bad("size", accepted)
        kw["width"], kw["height"] = int(m[1]), int(m[2])
    if "fps" in seen:
        try:
            fps = float(seen["fps"])
        except ValueError:
            raise bad("fps", "a frame rate in 1..240") from None
        if not (math.isfinite(fps) and 1 <= fps <= 240):
            raise bad("fps", "a frame rate in 1..240")
        kw["fps"] = fps
    if "sensor_mode" in seen:
        kw["sensor_mode"] = integer("sensor_mode", 0, 63, "a sensor mode index from the Argus mode list")
    if "flip" in seen:
        kw["flip"] = integer("flip", 0, 7, "an nvvidconv flip-method 0..7")
    return CsiParams(**kw)


def _fraction(fps: float) -> str:
    f = Fraction(fps).limit_denominator(1001)
    return f"{f.numerator}/{f.denominator}"


def csi_pipeline(params: CsiParams) -> str:
    """The gst-launch description for a CSI sensor: Argus -> NVMM NV12 -> nvvidconv -> system NV12."""
    w, h = params.width, params.height
    out_w, out_h = (h, w) if params.flip % 2 else (w, h)  # odd flip methods transpose the image
    mode = f" sensor-mode={params.sensor_mode}" if params.sensor_mode is not None else ""
    return (
        f"nvarguscamerasrc sensor-id={params.sensor_id}{mode} ! "
        f"video/x-raw(memory:NVMM),width={w},height={h},framerate={_fraction(params.fps)},format=NV12 ! "
        f"nvvidconv flip-method={params.flip} ! video/x-raw,format=NV12,width={out_w},height={out_h} ! "
        f"appsink name={SINK_NAME} {SINK_PROPS}"
    )


def gst_pipeline_from_uri(uri: str) -> str:
    """The pipeline description of a ``gst://`` URI, ending in an appsink (appended when missing)."""
    if uri[:6].lower() != "gst://":
        raise CameraError(f"camera URI {uri!r} is not a gst:// URI")
    text = uri[6:]
    if not any(c.isspace() for c in text):  # no spaces: percent-encoded as a whole (%20, %21 ...)
        text = unquote(text)
    text = text.strip()
    example = "e.g. gst://videotestsrc ! video/x-raw,format=NV12 ! appsink"
    if not text:
        raise CameraError(f"camera URI {uri!r}: gst:// needs a pipeline, {example}")
    last = text.rsplit("!", 1)[-1].split()
    if not last:
        raise CameraError(f"camera URI {uri!r}: the pipeline ends in '!'; end it in an element, {example}")
    if last[0] == "appsink":
        return text
    return f"{text} ! appsink name={SINK_NAME} {SINK_PROPS}"


def _caps_field(caps: str, key: str) -> str | None:
    m = re.search(rf"(?:^|,)\s*{key}\s*=\s*(?:\(\w+\)\s*)?\"?([^,;\"\s]+)", caps)
    return m[1] if m else None


def caps_to_format(caps: str) -> tuple[str, int, int]:
    """``video/x-raw, format=(string)NV12, width=(int)1920, height=(int)1080, ...`` -> ("nv12", 1920,
    1080). Caps this source cannot read -> CameraError saying what to add to the pipeline."""
    media = caps.split(",", 1)[0].strip()
    fix = "end the pipeline with ! videoconvert ! video/x-raw,format=BGR (or NV12) ! appsink"
    if media.startswith("video/x-raw(") or "memory:NVMM" in media:
        raise CameraError(f"frames arrive in {media[len('video/x-raw'):] or 'device'} memory, not system "
                          "memory; add ! nvvidconv ! video/x-raw,format=NV12 before the appsink")
    if media != "video/x-raw":
        raise CameraError(f"frames arrive as {media or 'unknown caps'}, not raw video; decode them in the pipeline, "
                          f"e.g. ... ! decodebin ! videoconvert ! video/x-raw,format=BGR ! appsink")
    fmt = _caps_field(caps, "format")
    if fmt not in GST_FORMATS:
        raise CameraError(f"raw video format {fmt or '(none)'} is not read here (reads {', '.join(GST_FORMATS)}); "
                          f"{fix}")
    try:
        width, height = int(_caps_field(caps, "width") or ""), int(_caps_field(caps, "height") or "")
    except ValueError:
        raise CameraError(f"caps {caps!r} carry no fixed width and height; {fix}") from None
    try:
        frame_shape(GST_FORMATS[fmt], width, height)
    except CameraError as exc:
        scale = "! videoscale ! video/x-raw,width=W,height=H"
        raise CameraError(f"{fmt} {exc}; scale it in the pipeline ({scale})") from None
    return GST_FORMATS[fmt], width, height


def _round_up(v: int, n: int) -> int:
    return (v + n - 1) // n * n


def default_layout(fmt: str, width: int, height: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(plane strides, plane offsets) of a buffer without video meta: GStreamer's default layout,
    rows padded to 4 bytes (as GstVideoInfo computes them)."""
    if fmt == "nv12":
        s = _round_up(width, 4)
        return (s, s), (0, s * _round_up(height, 2))
    if fmt == "i420":
        s0, s1 = _round_up(width, 4), _round_up(_round_up(width, 2) // 2, 4)
        o1 = s0 * _round_up(height, 2)
        return (s0, s1, s1), (0, o1, o1 + s1 * (_round_up(height, 2) // 2))
    bpp = {"yuyv": 2, "uyvy": 2, "rgb": 3, "bgr": 3, "gray": 1}[fmt]
    return (_round_up(width * bpp, 4),), (0,)


def _plane(flat: np.ndarray, offset: int, stride: int, rows: int, row: int) -> np.ndarray:
    need = offset + stride * (rows - 1) + row
    if stride < row or flat.size < need:
        raise ValueError(f"a plane of {rows} rows of {row} bytes at offset {offset}, stride {stride} needs "
                         f"{need} bytes; the buffer holds {flat.size}")
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=(rows, row), strides=(stride, 1), writeable=False)


def copy_frame(
    data: Any, fmt: str, width: int, height: int, strides: tuple[int, ...], offsets: tuple[int, ...], out: np.ndarray
) -> None:
    """Copy one mapped buffer (planes at ``offsets``, rows at ``strides``) into ``out``, the contiguous
    ``PIXEL_FORMATS`` layout (``frame_shape(fmt, width, height)``), dropping row padding."""
    flat = np.frombuffer(data, dtype=np.uint8)
    rows = out.reshape(-1)  # contiguous: planes are consecutive byte ranges
    if fmt == "nv12":
        y = width * height
        rows[:y].reshape(height, width)[:] = _plane(flat, offsets[0], strides[0], height, width)
        rows[y:].reshape(height // 2, width)[:] = _plane(flat, offsets[1], strides[1], height // 2, width)
    elif fmt == "i420":
        y, c = width * height, (width // 2) * (height // 2)
        rows[:y].reshape(height, width)[:] = _plane(flat, offsets[0], strides[0], height, width)
        for i, start in ((1, y), (2, y + c)):
            plane = _plane(flat, offsets[i], strides[i], height // 2, width // 2)
            rows[start : start + c].reshape(height // 2, width // 2)[:] = plane
    else:
        row = width * {"yuyv": 2, "uyvy": 2, "rgb": 3, "bgr": 3, "gray": 1}[fmt]
        rows.reshape(height, row)[:] = _plane(flat, offsets[0], strides[0], height, row)


def next_seq(seq: int, prev_offset: int | None, offset: int) -> int:
    """The next frame number: sources that number their buffers (``offset``: v4l2src, videotestsrc)
    turn the frames the appsink dropped into gaps; others count samples."""
    if prev_offset is not None and offset != BUFFER_OFFSET_NONE and 0 < offset - prev_offset < 1_000_000:
        return seq + (offset - prev_offset)
    return seq + 1


def gst_capture_time(arrival: float, clock_ns: int | None, latency_ns: int | None) -> float:
    """Capture time on ``time.monotonic()``: the buffer's clock time (when the pipeline clock is the
    monotonic system clock) if plausible, else arrival minus the pipeline latency, else arrival."""
    if clock_ns is not None:
        t = clock_ns * 1e-9
        if arrival - MAX_CLOCK_LAG_S <= t <= arrival + 1e-3:
            return min(t, arrival)
    if latency_ns is not None and 0 < latency_ns * 1e-9 < MAX_CLOCK_LAG_S:
        return arrival - latency_ns * 1e-9
    return arrival


# ==================================================================================================
# GStreamer
# ==================================================================================================


def _short(uri: str) -> str:
    return uri if len(uri) <= 48 else uri[:45] + "..."


def import_gst(what: str) -> tuple[Any, Any]:
    """(Gst, GstVideo or None), initialised; a CameraError saying how to install them if missing."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError) as exc:  # ValueError: gi without the Gst typelib
        raise CameraError(
            f"{what} needs GStreamer with PyGObject ({INSTALL_HINT}); not importable here: {exc}"
        ) from None
    Gst.init(None)
    try:
        gi.require_version("GstVideo", "1.0")
        from gi.repository import GstVideo
    except (ImportError, ValueError):
        GstVideo = None  # no video meta: buffers are read with the default layout
    return Gst, GstVideo


def open_source(uri: str, name: str) -> GstSource:
    """``csi://N[?...]`` or ``gst://PIPELINE``; URI mistakes are reported before GStreamer is needed."""
    if uri[:4].lower() == "csi:":
        params = parse_csi_uri(uri)
        return GstSource(name, uri, csi_pipeline(params), what=f"csi://{params.sensor_id}")
    return GstSource(name, uri, gst_pipeline_from_uri(uri), what=_short(uri))


class GstSource(CameraSource):
    """A GStreamer pipeline ending in an appsink; a daemon thread pulls samples, keeps the newest."""

    def __init__(self, name: str, uri: str, description: str, what: str = "gst://",
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.name, self.uri, self.description = name, uri, description
        self._where = f"camera '{name}': {what}"
        Gst, self._GstVideo = import_gst(f"camera '{name}': {what}")
        self._Gst = Gst
        try:
            pipeline = Gst.parse_launch(description)
        except Exception as exc:  # GLib.Error: no such element, bad property, bad syntax
            raise CameraError(f"{self._where}: GStreamer cannot build the pipeline: {_gerror_text(exc)} "
                              f"(pipeline: {description})") from None
        if not isinstance(pipeline, Gst.Pipeline):  # a single element: give it a bus and a clock
            single, pipeline = pipeline, Gst.Pipeline.new(None)
            pipeline.add(single)
        self._pipeline = pipeline
        self._sink = self._find_sink()
        self._sink.set_property("max-buffers", 1)
        self._sink.set_property("drop", True)
        self._sink.set_property("sync", False)
        self._sink.set_property("emit-signals", False)
        if self._sink.get_property("caps") is None:
            self._sink.set_property("caps", Gst.Caps.from_string(SINK_CAPS))
        self._bus = pipeline.get_bus()
        self._lock = threading.Lock()
        self._latest: np.ndarray | None = None
        self._latest_fmt, self._latest_size = "", (0, 0)
        self._latest_seq, self._latest_time = 0, 0.0
        self._out: np.ndarray | None = None
        self._frame: Frame | None = None
        self._ended: End | None = None
        self._latency_ns: int | None = None
        self._stop = threading.Event()
        try:
            self._start(start_timeout_s)
        except BaseException:
            pipeline.set_state(Gst.State.NULL)
            raise
        self._thread = threading.Thread(target=self._capture, name=f"gst-{name}", daemon=True)
        self._thread.start()

    def _find_sink(self) -> Any:
        sink = self._pipeline.get_by_name(SINK_NAME)
        if sink is not None:
            return sink
        it = self._pipeline.iterate_sinks()
        while True:
            ok, elem = it.next()
            if ok != self._Gst.IteratorResult.OK:
                break
            factory = elem.get_factory()
            if factory is not None and factory.get_name() == "appsink":
                return elem
        raise CameraError(f"{self._where}: the pipeline has no appsink; end it in '! appsink' or leave the sink out")

    def _start(self, timeout_s: float) -> None:
        Gst = self._Gst
        failed = self._pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE
        if not failed:
            ret, _, _ = self._pipeline.get_state(int(timeout_s * Gst.SECOND))
            failed = ret == Gst.StateChangeReturn.FAILURE
        if failed:
            end = self._bus_end(int(Gst.SECOND))
            why = end.reason if end else "the pipeline refused to start"
            raise CameraError(f"{self._where}: {why}")
        with contextlib.suppress(Exception):  # latency: best effort, used only to back-date arrival times
            query = Gst.Query.new_latency()
            if self._pipeline.query(query):
                live, min_ns, _ = query.parse_latency()
                self._latency_ns = int(min_ns) if live and min_ns != Gst.CLOCK_TIME_NONE else None

    def _bus_end(self, timeout_ns: int = 0) -> End | None:
        """An ERROR or EOS message on the bus, as an End naming the element; None if none is pending."""
        Gst = self._Gst
        msg = self._bus.timed_pop_filtered(timeout_ns, Gst.MessageType.ERROR | Gst.MessageType.EOS)
        if msg is None:
            return None
        source = msg.src.get_name() if msg.src is not None else "pipeline"
        if msg.type == Gst.MessageType.EOS:
            return End(f"GStreamer pipeline ended (end-of-stream from '{source}'); a camera should not end", error=True)
        err, debug = msg.parse_error()
        detail = (debug or "").strip().splitlines()
        more = f" ({detail[-1].strip()})" if detail else ""
        if "not-negotiated" in more:
            more += f"; the appsink takes raw {', '.join(GST_FORMATS)}: put ! videoconvert ! before it"
        return End(f"GStreamer element '{source}': {err.message}{more}", error=True)

    # -- capture thread ---------------------------------------------------------------------------

    def _capture(self) -> None:
        Gst = self._Gst
        seq, prev_offset = 0, None
        caps_text, layout = "", None
        timeout = int(0.1 * Gst.SECOND)
        try:
            while not self._stop.is_set():
                end = self._bus_end()
                if end is not None:
                    self._ended = end
                    return
                sample = self._sink.emit("try-pull-sample", timeout)
                if sample is None:
                    continue
                arrival = time.monotonic()
                buf, caps = sample.get_buffer(), sample.get_caps()
                text = caps.to_string() if caps is not None else ""
                if text != caps_text:
                    try:
                        layout = caps_to_format(text)
                    except CameraError as exc:
                        self._ended = End(f"GStreamer appsink: {exc}", error=True)
                        return
                    caps_text = text
                assert layout is not None
                fmt, width, height = layout
                strides, offsets = self._plane_layout(buf, fmt, width, height)
                seq = next_seq(seq, prev_offset, int(buf.offset))
                prev_offset = int(buf.offset) if buf.offset != BUFFER_OFFSET_NONE else None
                t = gst_capture_time(arrival, self._clock_ns(sample, buf), self._latency_ns)
                ok, info = buf.map(Gst.MapFlags.READ)
                if not ok:
                    continue
                try:
                    with self._lock:
                        shape = frame_shape(fmt, width, height)
                        if self._latest is None or self._latest.shape != shape:
                            self._latest = np.empty(shape, np.uint8)
                        copy_frame(info.data, fmt, width, height, strides, offsets, self._latest)
                        self._latest_fmt, self._latest_size = fmt, (width, height)
                        self._latest_seq, self._latest_time = seq, t
                except ValueError as exc:
                    self._ended = End(f"GStreamer appsink: a {fmt} {width}x{height} buffer is malformed ({exc})")
                    return
                finally:
                    buf.unmap(info)
        except Exception as exc:  # a bug or a binding mismatch: end visibly instead of dying silently
            self._ended = End(f"GStreamer capture thread failed: {type(exc).__name__}: {exc}", error=True)

    def _plane_layout(self, buf: Any, fmt: str, width: int, height: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Strides and offsets from the buffer's video meta (hardware converters pad rows), else default."""
        if self._GstVideo is not None:
            meta = self._GstVideo.buffer_get_video_meta(buf)
            if meta is not None and meta.n_planes >= 1:
                n = meta.n_planes
                return tuple(int(s) for s in meta.stride[:n]), tuple(int(o) for o in meta.offset[:n])
        return default_layout(fmt, width, height)

    def _clock_ns(self, sample: Any, buf: Any) -> int | None:
        """The buffer's PTS as a reading of the monotonic system clock, when that is the pipeline clock."""
        Gst = self._Gst
        clock = self._pipeline.get_clock()
        if clock is None or buf.pts == Gst.CLOCK_TIME_NONE or not isinstance(clock, Gst.SystemClock):
            return None
        if clock.get_property("clock-type") != Gst.ClockType.MONOTONIC:
            return None
        segment = sample.get_segment()
        running = segment.to_running_time(Gst.Format.TIME, buf.pts) if segment is not None else buf.pts
        if running in (Gst.CLOCK_TIME_NONE, -1):
            return None
        return int(self._pipeline.get_base_time()) + int(running)

    # -- CameraSource -----------------------------------------------------------------------------

    def newest(self) -> Frame | None:
        with self._lock:
            if self._latest is None or self._latest_seq == 0:
                return None
            if self._frame is not None and self._frame.seq == self._latest_seq:
                return self._frame  # nothing new: no copy, so polling is cheap
            if self._out is None or self._out.shape != self._latest.shape:
                self._out = np.empty_like(self._latest)
            np.copyto(self._out, self._latest)
            seq, t, fmt, (w, h) = self._latest_seq, self._latest_time, self._latest_fmt, self._latest_size
        self._frame = Frame(self.name, self._out, fmt, w, h, seq, t)
        return self._frame

    def ended(self) -> End | None:
        return self._ended

    def close(self) -> None:
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        self._pipeline.set_state(self._Gst.State.NULL)


def _gerror_text(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc)


__all__ = [
    "CsiParams", "GstSource", "caps_to_format", "copy_frame", "csi_pipeline", "default_layout", "gst_capture_time",
    "gst_pipeline_from_uri", "import_gst", "next_seq", "open_source", "parse_csi_uri",
]  # fmt: skip
