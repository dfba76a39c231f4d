"""Streams served by PyAV (FFmpeg): ``lavfi://`` virtual sources and ``rtsp(s)://`` / ``http(s)://`` cameras.

Why PyAV rather than OpenCV's ``VideoCapture``: it exposes the FFmpeg options a live camera needs
(transport, socket timeouts, RTSP listen mode), reports errors instead of an empty read, and hands
over the decoder's native pixel format, so a camera that sends YUV costs no colour conversion here:
the preprocessing kernel converts it on the way into the model.

URI grammar::

    lavfi://GRAPH                       an FFmpeg source filter graph, URL-decoded, e.g.
                                        lavfi://testsrc2=size=640x480:rate=30,format=nv12
    rtsp[s]://[user:pass@]host[:port]/path[?transport=tcp|udp&timeout=S&listen=1]
    http[s]://host[:port]/path[?timeout=S]

``transport`` (RTSP, default ``tcp``: no lost packets, no firewall holes), ``timeout`` (seconds of
silence before a connection counts as dead, default 5) and ``listen`` (RTSP: wait for a publisher,
e.g. an encoder that pushes, instead of connecting to a server) belong to this source and are
removed from the URL FFmpeg opens; every other query parameter is the server's and is kept.

Clocks. ``lavfi`` generates frames as fast as it can, so the capture thread paces it from the
frames' pts and stamps each frame with the monotonic time it is due. A network stream's pts are on
the sender's clock (unknown offset, its own drift, reset on reconnect), so a network frame is
stamped with its arrival time after decoding: that includes the network and decoder latency, which
is the honest age of the frame as far as this host can tell.

Pixel formats. Frames decoded as yuv420p / yuvj420p (-> ``i420``; the full-range flag of yuvj420p
is not carried), nv12, yuyv422, uyvy422, rgb24, bgr24 or gray are delivered as they are, line
padding removed. Anything else (yuv422p, yuv444p, 10-bit, 4:2:0 with an odd size, ...) is converted
once per frame to bgr24 by PyAV's ``reformat`` (swscale) in the capture thread: correct but a CPU
cost, so pick a native format at the camera (or a ``format=`` filter) where it matters.

Liveness. A finite graph (``testsrc=d=2``) ends normally. A network stream never ends: on EOF or a
read error the source reports ``trouble()`` and reconnects (every second; in listen mode it waits
for the publisher to come back) until it is closed; only the first open fails loudly.

Buffers. The decode thread copies each frame out of FFmpeg's buffers into one of three
preallocated arrays (back: being written, middle: newest complete, front: handed to the consumer),
so ``newest()`` only swaps two references under a lock and never blocks on decoding.
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

import av
import numpy as np

from ...errors import CameraError
from .base import CameraSource, End, Frame

DEFAULT_TIMEOUT_S = 5.0
RECONNECT_S = 1.0
_LISTEN_POLL_S = 1  # FFmpeg's listen_timeout is whole seconds; it bounds how long close() waits
_NETWORK = ("rtsp", "rtsps", "http", "https")
_OWN_PARAMS = {"rtsp": ("transport", "timeout", "listen"), "rtsps": ("transport", "timeout", "listen"),
               "http": ("timeout",), "https": ("timeout",)}
_TRANSPORTS = ("tcp", "udp", "udp_multicast", "http", "https")
_SECRET_KEYS = re.compile(r"^(pass(word|wd)?|pwd|token|secret|key|auth|sig(nature)?|access_token)$", re.I)

#: FFmpeg pixel formats delivered as they are -> PIXEL_FORMATS key.
NATIVE_FORMATS = {
    "yuv420p": "i420",
    "yuvj420p": "i420",  # full-range (JPEG) 4:2:0; Frame has no range field, the range flag is dropped
    "nv12": "nv12",
    "yuyv422": "yuyv",
    "uyvy422": "uyvy",
    "rgb24": "rgb",
    "bgr24": "bgr",
    "gray": "gray",
}


def redact(uri: str) -> str:
    """``uri`` safe to print: ``user:password@`` becomes ``***@``, secret-looking query values ``***``."""
    if "://" not in uri:
        return uri
    scheme = uri.split("://", 1)[0]
    if scheme.lower() == "lavfi":
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_KEYS.match(k) for k, _ in pairs):
            query = urlencode([(k, "***" if _SECRET_KEYS.match(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class StreamRequest:
    """A parsed stream URI: what FFmpeg opens, with which options, and the source's own settings."""

    uri: str  # as given (may hold credentials: print ``safe_uri``)
    kind: str  # "lavfi", "rtsp", "rtsps", "http" or "https"
    url: str  # what FFmpeg opens: the graph for lavfi, else the URL without this source's params
    format: str | None  # FFmpeg input format ("lavfi"), None to let FFmpeg probe
    options: dict[str, str] = field(default_factory=dict)  # FFmpeg (format and codec) options
    timeout: float = DEFAULT_TIMEOUT_S  # seconds of silence before a connection counts as dead
    transport: str | None = None  # RTSP lower transport
    listen: bool = False  # RTSP: wait for a publisher instead of connecting to a server

    @property
    def live(self) -> bool:
        return self.kind != "lavfi"

    @property
    def safe_uri(self) -> str:
        return redact(self.uri)


def _flag(value: str, name: str, uri: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise CameraError(f"camera URI {redact(uri)}: {name}={value!r} must be 1 or 0")


def parse_stream_uri(uri: str) -> StreamRequest:
    """Split a ``lavfi://``, ``rtsp(s)://`` or ``http(s)://`` URI into FFmpeg's URL, options and ours."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme == "lavfi":
        graph = unquote(uri.split("://", 1)[1])
        if not graph.strip():
            raise CameraError("camera URI lavfi://: no filter graph; e.g. lavfi://testsrc2=size=640x480:rate=30")
        return StreamRequest(uri, "lavfi", graph, "lavfi")
    if scheme not in _NETWORK:
        raise CameraError(f"camera URI {redact(uri)}: not a stream (lavfi://, rtsp://, rtsps://, http://, https://)")
    parts = urlsplit(uri)
    try:
        parts.port  # noqa: B018 -- raises on a malformed port
    except ValueError:
        raise CameraError(f"camera URI {redact(uri)}: the port is not a number in 0..65535") from None
    if not parts.hostname:
        raise CameraError(f"camera URI {redact(uri)}: no host; e.g. {scheme}://192.168.1.20:554/stream1")
    # Our params are removed; the server's are passed on byte for byte (no re-encoding).
    own = _OWN_PARAMS[scheme]
    params: dict[str, str] = {}
    kept: list[str] = []
    for segment in filter(None, parts.query.split("&")):
        key, _, value = segment.partition("=")
        if unquote(key).lower() in own:
            params[unquote(key).lower()] = unquote_plus(value)
        else:
            kept.append(segment)
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(kept), ""))

    try:
        timeout = float(params.get("timeout", DEFAULT_TIMEOUT_S))
    except ValueError:
        timeout = -1.0
    if not (math.isfinite(timeout) and timeout > 0):
        raise CameraError(f"camera URI {redact(uri)}: timeout={params['timeout']!r} must be a number of seconds > 0")
    listen = _flag(params.get("listen", "0"), "listen", uri)
    if listen and scheme != "rtsp":
        raise CameraError(f"camera URI {redact(uri)}: listen=1 is served for rtsp:// only")
    # Low latency: no buffering while probing, a short probe, no B-frame reordering wait in the decoder.
    options = {"fflags": "nobuffer", "flags": "low_delay", "analyzeduration": "1000000",
               "timeout": str(int(timeout * 1e6))}  # socket I/O, µs (FFmpeg 5+; was stimeout)
    transport = None
    if scheme in ("rtsp", "rtsps"):
        transport = params.get("transport", "tcp").lower()
        if transport not in _TRANSPORTS:
            raise CameraError(f"camera URI {redact(uri)}: transport={transport!r}; use one of {', '.join(_TRANSPORTS)}")
        options["rtsp_transport"] = transport
        if listen:
            # listen_timeout must be set: FFmpeg's default (-1, infinite) overflows the TCP option
            # (-1 * 1000 ms) and the open fails with ERANGE. A short one lets close() stop a wait.
            options.update(rtsp_flags="listen", listen_timeout=str(_LISTEN_POLL_S))
    return StreamRequest(uri, scheme, url, None, options, timeout, transport, listen)


def frame_layout(av_format: str, width: int, height: int) -> tuple[str, tuple[int, ...]]:
    """The PIXEL_FORMATS key and array shape a decoded frame of ``av_format`` is delivered in.

    Native formats pass through; anything else (and 4:2:0 / 4:2:2 with odd sizes, which the packed
    layouts cannot hold) is converted to ``bgr``. ``fmt == "bgr"`` with ``av_format != "bgr24"``
    therefore means "convert".
    """
    fmt = NATIVE_FORMATS.get(av_format, "bgr")
    if (fmt in ("i420", "nv12") and (width % 2 or height % 2)) or (fmt in ("yuyv", "uyvy") and width % 2):
        fmt = "bgr"
    shapes = {"i420": (height * 3 // 2, width), "nv12": (height * 3 // 2, width), "yuyv": (height, width, 2),
              "uyvy": (height, width, 2), "rgb": (height, width, 3), "bgr": (height, width, 3),
              "gray": (height, width)}
    return fmt, shapes[fmt]


def _plane_rows(fmt: str, width: int, height: int) -> list[tuple[int, int]]:
    """(rows, bytes per row) of each plane of ``fmt``, in the order they follow each other in the array."""
    if fmt == "i420":
        return [(height, width), (height // 2, width // 2), (height // 2, width // 2)]
    if fmt == "nv12":
        return [(height, width), (height // 2, width)]
    bpp = {"yuyv": 2, "uyvy": 2, "rgb": 3, "bgr": 3, "gray": 1}[fmt]
    return [(height, width * bpp)]


def copy_frame(frame: av.VideoFrame, fmt: str, out: np.ndarray) -> None:
    """Copy ``frame``'s planes into ``out`` (shaped by ``frame_layout``), dropping line padding."""
    flat = out.reshape(-1)
    offset = 0
    for plane, (rows, nbytes) in zip(frame.planes, _plane_rows(fmt, frame.width, frame.height), strict=True):
        stride = plane.line_size
        src = np.frombuffer(plane, np.uint8, count=stride * rows).reshape(rows, stride)[:, :nbytes]
        np.copyto(flat[offset:offset + rows * nbytes].reshape(rows, nbytes), src)
        offset += rows * nbytes


def _describe(exc: BaseException, req: StreamRequest) -> str:
    """An FFmpeg error as one line without the URL's credentials (PyAV appends the URL)."""
    if isinstance(exc, av.ExitError):  # PyAV's timeout interrupted FFmpeg ("Immediate exit requested")
        return f"no data within {req.timeout:g} s"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    parts = urlsplit(req.uri) if req.live else None
    for secret in (req.uri, req.url, parts.password if parts else None):
        if secret and len(secret) >= 4:  # a very short password would garble the text, not leak much
            text = text.replace(secret, redact(secret) if "://" in secret else "***")
    return " ".join(text.split())


def _bind_check(req: StreamRequest, name: str) -> None:
    """Listen mode binds in the capture thread; fail at open, not later, if the port cannot be had."""
    parts = urlsplit(req.url)
    host, port = parts.hostname or "0.0.0.0", parts.port or 554
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # FFmpeg's listener sets it too
            sock.bind(infos[0][4])
    except OSError as exc:
        raise CameraError(f"camera '{name}': {req.safe_uri}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          "use a free local port (ports below 1024 need root)") from exc


def open_source(uri: str, name: str) -> StreamSource:
    """``lavfi://GRAPH``, ``rtsp[s]://…`` or ``http[s]://…`` (see the module docstring)."""
    return StreamSource(name, uri)


class StreamSource(CameraSource):
    """One PyAV-decoded stream; a capture thread keeps only the newest frame."""

    def __init__(self, name: str, uri: str) -> None:
        self.name, self.uri = name, uri
        self.request = req = parse_stream_uri(uri)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Triple buffer: the thread writes "back", publishes it as "mid"; newest() swaps mid to front.
        self._mid: np.ndarray | None = None
        self._mid_meta: tuple[str, int, int, int, float] | None = None  # fmt, width, height, seq, time
        self._front: np.ndarray | None = None
        self._frame: Frame | None = None
        self._ended: End | None = None
        self._trouble: str | None = None
        self._seq = -1
        self._container: av.container.InputContainer | None = None
        self.corrupt_packets = 0  # packets the decoder rejected (counted, not fatal)
        if req.listen:
            _bind_check(req, name)
            self._trouble = f"{req.safe_uri}: waiting for a publisher to connect (listen mode)"
        else:
            start = time.monotonic()
            try:
                self._container = self._open()
            except (av.FFmpegError, OSError) as exc:
                why = _describe(exc, req)
                if req.live and time.monotonic() - start >= 0.9 * req.timeout and "within" not in why:
                    why = f"no answer within {req.timeout:g} s ({why})"  # FFmpeg's timeouts say "invalid data"
                what = "check the filter graph (FFmpeg syntax)" if req.kind == "lavfi" else \
                    "check the address, the credentials and that the camera is streaming"
                raise CameraError(f"camera '{name}': cannot open {req.safe_uri}: {why}; {what}") from exc
            if not self._container.streams.video:
                self._container.close()
                raise CameraError(f"camera '{name}': {req.safe_uri} has no video stream")
        run = self._run_live if req.live else self._run_lavfi
        self._thread = threading.Thread(target=run, name=f"stream-{name}", daemon=True)
        self._thread.start()

    # -- opening and decoding (capture thread, except the first open) --------------------------

    def _open(self) -> av.container.InputContainer:
        req = self.request
        if req.kind == "lavfi":
            return av.open(req.url, format="lavfi")
        # PyAV's timeout is an interrupt callback: it bounds the open (connect, handshake, probe)
        # and each packet read even where the protocol's own socket timeout does not apply.
        open_s = req.timeout + (_LISTEN_POLL_S if req.listen else 0)
        return av.open(req.url, format=req.format, options=dict(req.options), timeout=(open_s, req.timeout))

    def _frames(self, container: av.container.InputContainer) -> Callable[[], av.VideoFrame | None]:
        """A reader of decoded frames that skips packets the decoder rejects; None at end of stream."""
        stream = container.streams.video[0]
        packets = container.demux(stream)
        pending: list[av.VideoFrame] = []

        def read() -> av.VideoFrame | None:
            while not pending:
                packet = next(packets, None)
                if packet is None:
                    return None
                try:
                    pending.extend(packet.decode())
                except av.InvalidDataError:  # a damaged packet: the next keyframe repairs the picture
                    self.corrupt_packets += 1
            return pending.pop(0)

        return read

    def _prepare(self, frame: av.VideoFrame, back: np.ndarray | None) -> tuple[np.ndarray, str]:
        """Copy (converting once if not native) ``frame`` into ``back``, reallocated on a size change."""
        fmt, shape = frame_layout(frame.format.name, frame.width, frame.height)
        if fmt == "bgr" and frame.format.name != "bgr24":
            frame = frame.reformat(format="bgr24")
        if back is None or back.shape != shape:
            back = np.empty(shape, np.uint8)
        copy_frame(frame, fmt, back)
        return back, fmt

    def _publish(self, back: np.ndarray, fmt: str, frame: av.VideoFrame, seq: int, t: float) -> np.ndarray | None:
        """Make ``back`` the newest frame; returns the buffer to write next."""
        with self._lock:
            back, self._mid = self._mid, back
            self._mid_meta = (fmt, frame.width, frame.height, seq, t)
            self._trouble = None
        return back

    def _run_lavfi(self) -> None:
        container, req = self._container, self.request
        assert container is not None
        back: np.ndarray | None = None
        count, anchor, first_pts = 0, time.monotonic(), None
        rate = float(container.streams.video[0].average_rate or 30)
        due = anchor
        try:
            read = self._frames(container)
            while not self._stop.is_set():
                frame = read()
                if frame is None:
                    # The last frame stays the newest for its frame period, as a camera's would.
                    if self._stop.wait(max(0.0, due + 1.0 / rate - time.monotonic())):
                        return
                    self._ended = End(f"end of lavfi graph {req.url!r} after {count} frames", error=False)
                    return
                back, fmt = self._prepare(frame, back)
                # Due time from pts: lavfi runs as fast as it can, a camera runs at its rate.
                if frame.time is not None:
                    first_pts = frame.time if first_pts is None else first_pts
                    offset = frame.time - first_pts
                else:
                    offset = count / rate
                due = anchor + offset
                now = time.monotonic()
                if now - due > 1.0:  # fell far behind (an expensive graph, a stalled host): re-anchor
                    anchor, due = now - offset, now
                if due > now and self._stop.wait(due - now):
                    return
                back = self._publish(back, fmt, frame, count, due)
                count += 1
        except (av.FFmpegError, OSError) as exc:
            self._ended = End(f"lavfi graph {req.url!r} failed after {count} frames: {_describe(exc, req)}")
        finally:
            container.close()

    def _run_live(self) -> None:
        req = self.request
        container = self._container
        back: np.ndarray | None = None
        retry = "listening for the publisher to reconnect" if req.listen else \
            f"reconnecting every {RECONNECT_S:g} s"
        while not self._stop.is_set():
            if container is None:
                try:
                    container = self._open()
                except (av.FFmpegError, OSError) as exc:
                    if req.listen and isinstance(exc, (TimeoutError, av.ExitError)):
                        continue  # no publisher within the listen poll: keep waiting, trouble as it was
                    with self._lock:
                        self._trouble = f"{req.kind} stream lost ({_describe(exc, req)}); {retry}"
                    self._stop.wait(RECONNECT_S)
                    continue
            reason = "end of stream" if container.streams.video else "no video stream"
            try:
                read = self._frames(container) if container.streams.video else lambda: None
                while not self._stop.is_set():
                    frame = read()
                    if frame is None:
                        break
                    back, fmt = self._prepare(frame, back)
                    self._seq += 1
                    # Arrival time: the sender's pts are on its own clock (see module docstring).
                    back = self._publish(back, fmt, frame, self._seq, time.monotonic())
            except (av.FFmpegError, OSError) as exc:
                reason = _describe(exc, req)
            finally:
                with contextlib.suppress(av.FFmpegError, OSError):
                    container.close()
                container = None
            if self._stop.is_set():
                return
            with self._lock:
                self._trouble = f"{req.kind} stream lost ({reason}); {retry}"
            if not req.listen:
                self._stop.wait(RECONNECT_S)

    # -- the consumer's side -------------------------------------------------------------------

    def newest(self) -> Frame | None:
        with self._lock:
            meta = self._mid_meta
            if meta is None:
                return None
            if self._frame is not None and self._frame.seq == meta[3]:
                return self._frame  # nothing new since the last call
            self._front, self._mid = self._mid, self._front
            data = self._front
        assert data is not None
        fmt, width, height, seq, t = meta
        self._frame = Frame(self.name, data, fmt, width, height, seq, t)
        return self._frame

    def ended(self) -> End | None:
        return self._ended

    def trouble(self) -> str | None:
        return self._trouble

    def close(self) -> None:
        """Stop the thread; it closes the container itself (a read in flight is not interruptible
        from outside, so a thread still blocked after 2 s is left to time out on its own)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
