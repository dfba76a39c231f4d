"""PyAV streams (lavfi, RTSP, HTTP), image folders and truncated video files: real parts, no mocks.

lavfi frames are checked against PyAV decoding the same graph on its own, and against colours
whose YUV values are known; RTSP runs over loopback with a publisher process pushing into a
listen-mode source; HTTP reconnects are tested against a local server streaming an MPEG-TS.
Frames are small and rates high so that the whole file stays well under 30 s on two cores.
"""

from __future__ import annotations

import contextlib
import io
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from vla.runtime.errors import CameraError
from vla.runtime.inputs.sources import images, open_cameras, stream, video
from vla.runtime.inputs.sources.base import PIXEL_FORMATS, CameraSource, Frame

# Encoders a loopback publisher can use: mpeg4 is FFmpeg's own, libx264 needs the external library.
ENCODER = next((c for c in ("mpeg4", "libx264") if c in av.codecs_available), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def collect(src: CameraSource, seconds: float) -> list[tuple[float, Frame, np.ndarray]]:
    """(arrival time, frame, copy of its pixels) for every new frame seen while polling every 2 ms."""
    seen: list[tuple[float, Frame, np.ndarray]] = []
    end, last = time.monotonic() + seconds, None
    while time.monotonic() < end and not src.ended():
        f = src.newest()
        if f is not None and f.seq != last:
            last = f.seq
            seen.append((time.monotonic(), f, f.data.copy()))
        time.sleep(0.002)
    return seen


@contextlib.contextmanager
def opened(uri: str, module=stream) -> Iterator[CameraSource]:
    src = module.open_source(uri, "front")
    try:
        yield src
    finally:
        src.close()


def as_array(frame: av.VideoFrame, fmt: str | None) -> np.ndarray:
    if frame.format.name == "uyvy422" and fmt is None:  # PyAV's to_ndarray has no uyvy422: read the plane
        rows = np.frombuffer(bytes(frame.planes[0]), np.uint8).reshape(frame.height, -1)
        return rows[:, :frame.width * 2].reshape(frame.height, frame.width, 2)
    return frame.to_ndarray(format=fmt) if fmt else frame.to_ndarray()


def reference_frames(graph: str, count: int, fmt: str | None = None) -> list[np.ndarray]:
    """The first ``count`` frames of ``graph`` as PyAV's own ``to_ndarray`` gives them."""
    with av.open(graph, format="lavfi") as c:
        out = []
        for frame in c.decode(video=0):
            out.append(as_array(frame, fmt))
            if len(out) == count:
                return out
    raise AssertionError(f"{graph} gave only {len(out)} frames")


# -- pure helpers ------------------------------------------------------------------------------


def test_parse_rtsp_defaults_and_own_params_removed():
    req = stream.parse_stream_uri("rtsp://cam.local:8554/live?channel=1&transport=udp&q=a%2Fb+c&timeout=2.5")
    assert req.kind == "rtsp" and req.live and not req.listen
    assert req.url == "rtsp://cam.local:8554/live?channel=1&q=a%2Fb+c"  # the server's params stay, as written
    assert req.options["rtsp_transport"] == "udp" and req.transport == "udp"
    assert req.options["timeout"] == "2500000" and req.timeout == 2.5  # FFmpeg: microseconds
    default = stream.parse_stream_uri("rtsp://cam.local/live")
    assert default.options["rtsp_transport"] == "tcp" and default.timeout == stream.DEFAULT_TIMEOUT_S
    assert default.url == "rtsp://cam.local/live" and default.format is None


def test_parse_listen_http_and_lavfi():
    req = stream.parse_stream_uri("rtsp://0.0.0.0:8554/cam?listen=1")
    assert req.listen and req.url == "rtsp://0.0.0.0:8554/cam"
    assert req.options["rtsp_flags"] == "listen" and int(req.options["listen_timeout"]) > 0
    http = stream.parse_stream_uri("https://u:p@host/mjpg?transport=x&listen=1&timeout=3")
    assert http.url == "https://u:p@host/mjpg?transport=x&listen=1"  # the server's params, not ours
    assert not http.listen
    assert "rtsp_transport" not in http.options and http.timeout == 3
    lav = stream.parse_stream_uri("lavfi://testsrc2=size=64x48:rate=30,format=nv12%20")
    assert (lav.kind, lav.url, lav.format, lav.live) == ("lavfi", "testsrc2=size=64x48:rate=30,format=nv12 ", "lavfi",
                                                         False)


@pytest.mark.parametrize("uri, needle", [
    ("rtsp://h/x?transport=carrier-pigeon", "transport="),
    ("rtsp://h/x?timeout=0", "timeout="),
    ("rtsp://h/x?timeout=abc", "timeout="),
    ("rtsp://h/x?listen=maybe", "listen="),
    ("rtsps://h/x?listen=1", "rtsps://h/x?listen=1: listen=1 is served for rtsp:// only"),
    ("rtsp:///x", "no host"),
    ("rtsp://h:70000/x", "port"),
    ("lavfi://", "no filter graph"),
    ("rtsp://user:hunter2@h/x?timeout=-1", "rtsp://***@h/x"),
])
def test_parse_errors_name_the_problem(uri, needle):
    with pytest.raises(CameraError) as err:
        stream.parse_stream_uri(uri)
    assert needle in str(err.value) and "hunter2" not in str(err.value) and "\n" not in str(err.value)


def test_redact():
    assert stream.redact("rtsp://admin:s3cret@10.0.0.2:554/h264") == "rtsp://***@10.0.0.2:554/h264"
    assert stream.redact("http://cam/x.mjpg?user=a&password=pw&res=hd") == "http://cam/x.mjpg?user=a&password=***&res=hd"
    assert stream.redact("rtsp://10.0.0.2/x") == "rtsp://10.0.0.2/x"
    assert stream.redact("lavfi://testsrc") == "lavfi://testsrc"


@pytest.mark.parametrize("av_fmt, w, h, fmt, shape", [
    ("yuv420p", 64, 48, "i420", (72, 64)),
    ("yuvj420p", 64, 48, "i420", (72, 64)),
    ("nv12", 64, 48, "nv12", (72, 64)),
    ("yuyv422", 64, 48, "yuyv", (48, 64, 2)),
    ("uyvy422", 66, 49, "uyvy", (49, 66, 2)),
    ("rgb24", 3, 2, "rgb", (2, 3, 3)),
    ("bgr24", 3, 2, "bgr", (2, 3, 3)),
    ("gray", 5, 3, "gray", (3, 5)),
    ("yuv420p", 65, 48, "bgr", (48, 65, 3)),  # odd sizes do not fit the packed 4:2:0 layout: converted
    ("yuyv422", 65, 48, "bgr", (48, 65, 3)),
    ("yuv444p", 64, 48, "bgr", (48, 64, 3)),
    ("p010le", 64, 48, "bgr", (48, 64, 3)),
])
def test_frame_layout(av_fmt, w, h, fmt, shape):
    assert stream.frame_layout(av_fmt, w, h) == (fmt, shape)
    assert fmt in PIXEL_FORMATS


# -- lavfi -------------------------------------------------------------------------------------

# 66x50: FFmpeg pads every line (and the 33-pixel chroma lines) to its alignment, so the copy must
# drop the padding; 65x49 cannot be packed as 4:2:0 and takes the bgr conversion.
@pytest.mark.parametrize("graph, fmt, ref_fmt", [
    ("testsrc2=size=66x50:rate=50", "i420", None),
    ("testsrc2=size=66x50:rate=50,format=nv12", "nv12", None),
    ("testsrc2=size=66x50:rate=50,format=yuyv422", "yuyv", None),
    ("testsrc2=size=66x50:rate=50,format=uyvy422", "uyvy", None),
    ("testsrc=size=66x50:rate=50", "rgb", None),
    ("testsrc=size=66x50:rate=50,format=bgr24", "bgr", None),
    ("testsrc2=size=66x50:rate=50,format=gray", "gray", None),
    ("testsrc2=size=66x50:rate=50,format=yuv444p", "bgr", "bgr24"),
    ("testsrc=size=65x49:rate=50,format=yuv420p", "bgr", "bgr24"),
])
def test_lavfi_frames_match_pyav(graph, fmt, ref_fmt):
    w, h = map(int, graph.split("size=")[1][:5].split("x"))
    with opened(f"lavfi://{graph}") as src:
        seen = collect(src, 0.25)
    assert len(seen) >= 5
    ref = reference_frames(graph, seen[-1][1].seq + 1, ref_fmt)
    shape = {"i420": (h * 3 // 2, w), "nv12": (h * 3 // 2, w), "yuyv": (h, w, 2), "uyvy": (h, w, 2),
             "gray": (h, w)}.get(fmt, (h, w, 3))
    for _, frame, pixels in seen:
        assert (frame.fmt, frame.width, frame.height) == (fmt, w, h)
        assert pixels.dtype == np.uint8 and pixels.shape == shape
        np.testing.assert_array_equal(pixels, ref[frame.seq], err_msg=f"frame {frame.seq}")
    assert len({p.tobytes() for _, _, p in seen}) > 1  # the pattern moves: a wrong seq would not match


# color 0x204060: R=32 G=64 B=96 -> BT.601 limited range Y 66, U(Cb) 147, V(Cr) 112, which FFmpeg's
# default RGB -> YUV conversion gives; U != V shows the planes / interleaving are in the right order.
# gray is full-range luma: 0.299 R + 0.587 G + 0.114 B = 58.
Y, U, V = 66, 147, 112
KNOWN = {
    "rgb24": ("rgb", lambda h, w: np.broadcast_to([32, 64, 96], (h, w, 3))),
    "bgr24": ("bgr", lambda h, w: np.broadcast_to([96, 64, 32], (h, w, 3))),
    "gray": ("gray", lambda h, w: np.full((h, w), 58)),
    "yuv420p": ("i420", lambda h, w: np.concatenate([np.full(h * w, Y), np.full(h * w // 4, U),
                                                     np.full(h * w // 4, V)]).reshape(h * 3 // 2, w)),
    "nv12": ("nv12", lambda h, w: np.concatenate([np.full(h * w, Y), np.tile([U, V], h * w // 4)]).reshape(-1, w)),
    "yuyv422": ("yuyv", lambda h, w: np.tile([Y, U, Y, V], h * w // 2).reshape(h, w, 2)),
    "uyvy422": ("uyvy", lambda h, w: np.tile([U, Y, V, Y], h * w // 2).reshape(h, w, 2)),
}


@pytest.mark.parametrize("av_fmt", list(KNOWN))
def test_lavfi_known_colour_in_every_native_format(av_fmt):
    fmt, expect = KNOWN[av_fmt]
    with opened(f"lavfi://color=c=0x204060:size=36x20:rate=50,format={av_fmt}") as src:
        frame = wait_for(src.newest, 2.0, "a frame")
        assert frame.fmt == fmt and frame.data.shape == stream.frame_layout(av_fmt, 36, 20)[1]
        diff = np.abs(frame.data.astype(int) - expect(20, 36))
        assert diff.max() <= 2, f"{av_fmt}: off by {diff.max()}"


def test_lavfi_is_paced_in_real_time_from_pts():
    with opened("lavfi://testsrc2=size=64x48:rate=20") as src:
        t0 = time.monotonic()
        seen = collect(src, 1.0)
    assert 17 <= len(seen) <= 23, len(seen)  # 1 s at 20 fps, not as fast as lavfi can generate
    seqs = [f.seq for _, f, _ in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # polled fast enough: no gaps
    times = np.array([f.capture_time for _, f, _ in seen])
    assert np.allclose(np.diff(times), 0.05, atol=1e-6)  # due times from pts: exactly 1/rate apart
    assert abs(times[0] - t0) < 0.1
    lag = np.array([arrived - f.capture_time for arrived, f, _ in seen])
    assert lag.min() > -0.002 and np.median(lag) < 0.01, lag  # published when due, not early or late


def test_newest_only_slow_reader_sees_gaps_not_a_queue():
    with opened("lavfi://testsrc2=size=64x48:rate=100") as src:
        first = wait_for(src.newest, 2.0, "a frame")
        assert src.newest() is first or src.newest().seq > first.seq
        kept = first.data.copy()
        time.sleep(0.1)  # ~10 newer frames arrive meanwhile
        np.testing.assert_array_equal(first.data, kept)  # the consumer's buffer is never written to
        seqs = []
        for _ in range(4):
            time.sleep(0.2)
            f = src.newest()
            assert time.monotonic() - f.capture_time < 0.05  # the newest, not an old queued frame
            seqs.append(f.seq)
        assert min(np.diff(seqs)) >= 12, seqs  # ~20 frames dropped between reads
        again = src.newest()
        if again.seq == seqs[-1]:
            assert again is f  # nothing new: the same object, no copy


def test_lavfi_same_object_while_nothing_new():
    with opened("lavfi://testsrc2=size=64x48:rate=4") as src:
        f = wait_for(src.newest, 2.0, "a frame")
        assert all(src.newest() is f for _ in range(100))


def test_finite_lavfi_graph_ends_normally():
    with opened("lavfi://testsrc=d=0.5:rate=20:size=64x48") as src:
        end = wait_for(src.ended, 3.0, "the end of the graph")
        assert end.error is False and "after 10 frames" in end.reason
        assert src.newest().seq == 9 and src.trouble() is None


def test_bad_lavfi_graph_is_a_one_line_camera_error():
    with pytest.raises(CameraError) as err:
        stream.open_source("lavfi://nosuchsource=size=64x48", "front")
    msg = str(err.value)
    assert "lavfi://nosuchsource" in msg and "filter graph" in msg and "\n" not in msg


def test_registry_routes_lavfi_and_folders(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8), np.uint8))
    cams = open_cameras(["front=lavfi://testsrc2=size=32x24:rate=30", f"rear={tmp_path}"], ["front", "rear"])
    try:
        assert isinstance(cams["front"], stream.StreamSource)
        assert isinstance(cams["rear"], images.ImageFolderSource)
    finally:
        for c in cams.values():
            c.close()


# -- RTSP over loopback ------------------------------------------------------------------------

PUBLISHER = r"""
import sys, time, av
url, codec = sys.argv[1], sys.argv[2]
while True:  # like an encoder: retry until the listener takes the connection
    try:
        src = av.open("testsrc=size=160x120:rate=25", format="lavfi")
        out = av.open(url, "w", format="rtsp", options={"rtsp_transport": "tcp"})
        st = out.add_stream(codec, rate=25)
        st.width, st.height, st.pix_fmt = 160, 120, "yuv420p"
        t0 = time.monotonic()
        for n, frame in enumerate(src.decode(video=0)):
            frame = frame.reformat(format="yuv420p")
            frame.pts = n
            for packet in st.encode(frame):
                out.mux(packet)  # the first mux connects (RTSP ANNOUNCE/SETUP/RECORD)
            time.sleep(max(0.0, t0 + (n + 1) / 25 - time.monotonic()))
    except (av.FFmpegError, OSError):
        time.sleep(0.1)
"""


def publisher(url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PUBLISHER, url, ENCODER], stderr=subprocess.DEVNULL)


@pytest.mark.skipif(ENCODER is None, reason="this PyAV build has neither mpeg4 nor libx264")
def test_rtsp_listen_loopback_loses_and_regains_the_publisher():
    url = f"rtsp://127.0.0.1:{free_port()}/cam"
    procs: list[subprocess.Popen] = []
    try:
        with opened(url + "?listen=1&timeout=2") as src:
            assert "waiting for a publisher" in src.trouble() and src.newest() is None
            procs.append(publisher(url))
            frame = wait_for(lambda: (f := src.newest()) is not None and f.seq >= 3 and f, 8.0, "first frames")
            assert (frame.fmt, frame.width, frame.height, frame.data.shape) == ("i420", 160, 120, (180, 160))
            assert src.trouble() is None and src.ended() is None
            assert time.monotonic() - frame.capture_time < 0.5  # stamped on arrival, on this host's clock

            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait()
            trouble = wait_for(src.trouble, 3.0, "trouble after the publisher died")
            assert "rtsp stream lost" in trouble and "publisher" in trouble, trouble
            last = src.newest().seq
            time.sleep(0.5)
            assert src.newest().seq == last and src.ended() is None  # no new frames, and a live source never ends

            procs.append(publisher(url))
            resumed = wait_for(lambda: (f := src.newest()).seq > last + 3 and f, 8.0, "frames after reconnect")
            assert (resumed.width, resumed.height) == (160, 120)
            assert src.trouble() is None
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_closed_port_fails_fast_without_the_password():
    start = time.monotonic()
    with pytest.raises(CameraError) as err:
        stream.open_source("rtsp://user:secret@127.0.0.1:1/x?timeout=2", "front")
    msg = str(err.value)
    assert time.monotonic() - start < 2.5
    assert "secret" not in msg and "\n" not in msg, msg
    assert "rtsp://***@127.0.0.1:1/x" in msg and "refused" in msg.lower(), msg


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_silent_server_times_out(scheme):
    with socket.socket() as server:  # accepts the connection, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        start = time.monotonic()
        with pytest.raises(CameraError) as err:
            stream.open_source(f"{scheme}://127.0.0.1:{server.getsockname()[1]}/x?timeout=1", "front")
    assert 0.8 < time.monotonic() - start < 3.0
    assert "within 1 s" in str(err.value), err.value


def test_listen_on_a_port_in_use_fails_at_open():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(CameraError, match=r"cannot listen on 127\.0\.0\.1"):
            stream.open_source(f"rtsp://127.0.0.1:{busy.getsockname()[1]}/cam?listen=1", "front")


# -- HTTP: a client-side reconnect ----------------------------------------------------------


def mpegts_clip(frames: int, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out, av.open(f"testsrc=size={size[0]}x{size[1]}:rate=25",
                                                            format="lavfi") as src:
        st = out.add_stream("mpeg4", rate=25)
        st.width, st.height, st.pix_fmt = *size, "yuv420p"
        for n, frame in enumerate(src.decode(video=0)):
            if n == frames:
                break
            frame = frame.reformat(format="yuv420p")
            frame.pts = n
            for packet in st.encode(frame):
                out.mux(packet)
        for packet in st.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.skipif("mpeg4" not in av.codecs_available, reason="no mpeg4 encoder in this PyAV build")
def test_http_stream_end_is_trouble_and_reconnects():
    clip = mpegts_clip(20, (96, 64))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # a live stream: sent over ~0.5 s, then the server hangs up
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            step = len(clip) // 10 + 1
            for i in range(0, len(clip), step):
                self.wfile.write(clip[i:i + step])
                self.wfile.flush()
                time.sleep(0.05)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with opened(f"http://127.0.0.1:{server.server_address[1]}/cam.ts?timeout=2") as src:
            first = wait_for(src.newest, 5.0, "frames")
            assert (first.fmt, first.width, first.height) == ("i420", 96, 64)
            trouble = wait_for(src.trouble, 5.0, "trouble at the end of the stream")
            # The server hanging up reads as EOF or as an I/O error, depending on where FFmpeg is.
            assert trouble.startswith("http stream lost (") and trouble.endswith("reconnecting every 1 s"), trouble
            assert src.ended() is None
            n1 = src.newest().seq
            wait_for(lambda: src.newest().seq > n1 and src.trouble() is None, 4.0, "frames after reconnect")
            server.shutdown()
            server.server_close()
            trouble = wait_for(lambda: (t := src.trouble()) and "refused" in t.lower() and t, 5.0, "refused")
            assert "reconnecting" in trouble
    finally:
        server.shutdown()
        server.server_close()


# -- image folders -----------------------------------------------------------------------------


def write_frames(folder: Path, values: list[int], size: tuple[int, int] = (32, 24)) -> None:
    for v in values:
        cv2.imwrite(str(folder / f"frame{v}.png"), np.full((size[1], size[0]), v, np.uint8))


def test_image_folder_natural_order_pacing_and_end(tmp_path):
    write_frames(tmp_path, [1, 2, 3, 10, 11, 20])
    (tmp_path / "notes.txt").write_text("not an image")
    with opened(f"file://{tmp_path}?fps=20", images) as src:
        t0 = time.monotonic()
        seen = collect(src, 2.0)
        end = wait_for(src.ended, 1.0, "the end of the folder")
    assert [int(p[0, 0]) for _, _, p in seen] == [1, 2, 3, 10, 11, 20]  # frame2 before frame10
    assert [f.seq for _, f, _ in seen] == list(range(6))
    assert all(f.fmt == "gray" and f.data.shape == (24, 32) for _, f, _ in seen)
    assert np.allclose(np.diff([f.capture_time for _, f, _ in seen]), 0.05, atol=1e-6)
    assert seen[-1][0] - t0 == pytest.approx(0.25, abs=0.05)  # paced at 20 fps, not all at once
    assert end.error is False and end.reason == "end of image folder after 6 frames"


def test_image_folder_loops(tmp_path):
    write_frames(tmp_path, [5, 6, 7])
    with opened(f"{tmp_path}?fps=50&loop=1", images) as src:
        seen = collect(src, 0.4)
        assert src.ended() is None
    values = [int(p[0, 0]) for _, _, p in seen]
    assert len(values) >= 15 and values[:9] == [5, 6, 7] * 3


def test_image_folder_skips_and_reports_a_corrupt_image(tmp_path):
    write_frames(tmp_path, [1, 2, 4, 5])
    (tmp_path / "frame3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with opened(f"{tmp_path}?fps=20", images) as src:
        seen, troubles = [], set()
        while not src.ended():
            f = src.newest()
            if f is not None and (not seen or seen[-1][0] != f.seq):
                seen.append((f.seq, int(f.data[0, 0])))
            if t := src.trouble():
                troubles.add(t)
            time.sleep(0.002)
        end = src.ended()
        assert seen == [(0, 1), (1, 2), (3, 4), (4, 5)]  # a seq gap where the bad file was
        assert any("frame3.png" in t and "1 so far" in t for t in troubles), troubles
        assert end.error is False and "after 4 frames" in end.reason and "1 unreadable" in end.reason
        time.sleep(images.TROUBLE_S + 0.1)
        assert src.trouble() is None  # reported for a second, then cleared


def test_image_folder_all_unreadable_ends_in_error(tmp_path):
    for i in range(3):
        (tmp_path / f"f{i}.jpg").write_bytes(b"garbage")
    with opened(str(tmp_path) + "?fps=50", images) as src:
        end = wait_for(src.ended, 2.0, "the end")
    assert end.error is True and "none of its 3 images" in end.reason


def test_image_channels_and_sizes(tmp_path):
    bgra = np.zeros((10, 12, 4), np.uint8)
    bgra[..., 0], bgra[..., 3] = 200, 50
    cv2.imwrite(str(tmp_path / "a1.png"), bgra)
    cv2.imwrite(str(tmp_path / "a2.png"), np.full((6, 8), 4096 * 3, np.uint16))  # 16-bit gray
    cv2.imwrite(str(tmp_path / "a3.jpg"), np.full((14, 16, 3), 128, np.uint8))
    with opened(f"{tmp_path}?fps=50", images) as src:
        seen = collect(src, 0.3)
    got = [(f.fmt, f.data.shape, int(p.reshape(-1)[0])) for _, f, p in seen]
    assert got[0] == ("bgr", (10, 12, 3), 200) and got[1] == ("gray", (6, 8), 48)
    assert got[2][:2] == ("bgr", (14, 16, 3)) and abs(got[2][2] - 128) <= 2  # a new size, delivered as is


@pytest.mark.parametrize("make", ["empty", "no images", "missing"])
def test_image_folder_open_errors(tmp_path, make):
    folder = tmp_path / "frames"
    if make != "missing":
        folder.mkdir()
    if make == "no images":
        (folder / "readme.txt").write_text("x")
    with pytest.raises(CameraError) as err:
        images.open_source(str(folder), "front")
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_natural_key():
    names = ["f10.png", "f2.png", "F1.png", "f2b.png", "g.png", "f02.png"]
    assert sorted(names, key=images.natural_key) == ["F1.png", "f02.png", "f2.png", "f2b.png", "f10.png", "g.png"]


# -- video files -------------------------------------------------------------------------------


def write_avi(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 100, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 2 * i, np.uint8))
    writer.release()


def test_truncated_video_ends_in_error_and_a_complete_one_does_not(tmp_path):
    clip, cut = tmp_path / "clip.avi", tmp_path / "cut.avi"
    write_avi(clip, 60)
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with opened(str(clip), video) as src:
        assert src.frame_count == 60
        end = wait_for(src.ended, 3.0, "the end of the complete file")
        assert end.error is False and end.reason == "end of video file after 60 frames"
    with opened(str(cut), video) as src:
        end = wait_for(src.ended, 3.0, "the end of the cut file")
        assert end.error is True and "truncated or corrupt" in end.reason and "of 60 frames" in end.reason
        assert 10 < src.newest().seq < 50
    with opened(f"{cut}?loop=1", video) as src:  # looping does not hide a truncated file
        end = wait_for(src.ended, 3.0, "the end of the cut file, looped")
        assert end.error is True and "truncated" in end.reason
