"""V4L2 and GStreamer camera sources, and the camera probe.

The decisions (URI grammar, mode choice, buffer layouts, timestamps, pipelines, caps) are pure and
tested here against independently built expectations. The V4L2 capture thread runs against a
scripted fake device session (frames, unplug, failed and successful reopens). Tests that need a
real /dev/video* device or GStreamer with PyGObject skip, saying why, where those are absent.
"""

from __future__ import annotations

import errno
import re
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from glob import glob
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from vla.runtime.errors import CameraError
from vla.runtime.inputs.sources import gstreamer as gst
from vla.runtime.inputs.sources import open_cameras, probe, v4l2
from vla.runtime.inputs.sources.base import PIXEL_FORMATS
from vla.runtime.inputs.sources.scene import frame_shape
from vla.runtime.inputs.sources.v4l2 import DriverStamp, Mode, V4l2Request


def _gst_importable() -> bool:
    try:
        gst.import_gst("test")
    except CameraError:
        return False
    return True


HAVE_GST = _gst_importable()
NO_GST = "GStreamer with PyGObject (gi, Gst) is not importable here"
VIDEO_NODES = sorted(glob("/dev/video*"))

# ==================================================================================================
# V4L2: URI grammar
# ==================================================================================================


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("/dev/video0", V4l2Request("/dev/video0")),
        ("v4l2:///dev/video2", V4l2Request("/dev/video2")),
        ("file:///dev/video1?format=nv12", V4l2Request("/dev/video1", fourcc="NV12")),
        ("/dev/video0?format=YUYV&size=1280x720&fps=30", V4l2Request("/dev/video0", "YUYV", 1280, 720, 30.0)),
        ("v4l2:///dev/video0?format=MJPG&fps=7.5", V4l2Request("/dev/video0", "MJPG", fps=7.5)),
        ("/dev/video0?format=mjpeg", V4l2Request("/dev/video0", "MJPG")),
        ("/dev/video0?format=gray", V4l2Request("/dev/video0", "GREY")),
        ("/dev/video0?format=uyvy&size=640x480", V4l2Request("/dev/video0", "UYVY", 640, 480)),
        ("v4l2:///dev/v4l/by-id/usb-cam-video-index0", V4l2Request("/dev/v4l/by-id/usb-cam-video-index0")),
    ],
)
def test_v4l2_uris_parse(uri, expected):
    assert v4l2.parse_v4l2_uri(uri) == expected


@pytest.mark.parametrize(
    "uri, needles",
    [
        ("/dev/video0?format=h264", ["'h264'", "yuyv", "MJPG"]),
        ("/dev/video0?size=1280", ["'1280'", "WIDTHxHEIGHT"]),
        ("/dev/video0?size=0x480", ["'0x480'"]),
        ("/dev/video0?fps=fast", ["'fast'", "frame rate"]),
        ("/dev/video0?fps=0", ["fps='0'"]),
        ("/dev/video0?fps=nan", ["'nan'"]),
        ("/dev/video0?exposure=3", ["'exposure'", "format, size, fps"]),
        ("/dev/video0?fps=30&fps=15", ["'fps' is given twice"]),
        ("v4l2://dev/video0", ["v4l2:///dev/video0", "three slashes"]),
        ("v4l2://", ["device path"]),
        ("rtsp://cam/stream", ["not a V4L2 device"]),
    ],
)
def test_bad_v4l2_uris_name_the_bad_value(uri, needles):
    with pytest.raises(CameraError) as err:
        v4l2.parse_v4l2_uri(uri)
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


# ==================================================================================================
# V4L2: mode choice
# ==================================================================================================

# A typical UVC webcam: raw YUYV is slow at large sizes, MJPEG is fast at every size.
UVC = [
    Mode("YUYV", 640, 480, [30, 15]),
    Mode("YUYV", 1280, 720, [10]),
    Mode("YUYV", 1920, 1080, [5]),
    Mode("MJPG", 1920, 1080, [30, 15]),
    Mode("MJPG", 1280, 720, [60, 30]),
    Mode("H264", 1920, 1080, [30]),  # not read here: never chosen, never listed as an offer
]


def _req(**kw) -> V4l2Request:
    return V4l2Request("/dev/video0", **kw)


def test_mode_lists_rates_highest_first_and_prints_like_v4l2_ctl():
    m = Mode("YUYV", 640, 480, [15, 30, 29.97002997])
    assert m.fps == (30.0, 29.97, 15.0)
    assert str(m) == "YUYV 640x480@30/29.97/15"
    assert str(Mode("GREY", 752, 480)) == "GREY 752x480"
    assert v4l2.describe_modes(UVC[:4]) == "YUYV 640x480@30/15, 1280x720@10, 1920x1080@5; MJPG 1920x1080@30/15"


def test_default_mode_prefers_raw_yuyv_at_a_live_rate():
    assert v4l2.choose_mode(_req(), UVC) == Mode("YUYV", 640, 480, [30])


def test_default_mode_ranks_nv12_then_mjpeg_then_size_then_rate():
    offered = [Mode("MJPG", 1920, 1080, [30]), Mode("NV12", 1280, 720, [30]), Mode("NV12", 640, 480, [60, 30])]
    assert v4l2.choose_mode(_req(), offered) == Mode("NV12", 1280, 720, [30])
    offered = [Mode("MJPG", 1280, 720, [30]), Mode("MJPG", 3840, 2160, [30]), Mode("MJPG", 1920, 1080, [60, 30, 15])]
    assert v4l2.choose_mode(_req(), offered) == Mode("MJPG", 1920, 1080, [30])  # <= 1080p, <= 30 fps
    offered = [Mode("UYVY", 640, 480, [30]), Mode("MJPG", 640, 480, [30]), Mode("GREY", 640, 480, [30])]
    assert v4l2.choose_mode(_req(), offered).fourcc == "MJPG"


def test_default_mode_beyond_the_limits_takes_the_nearest():
    assert v4l2.choose_mode(_req(), [Mode("YUYV", 3840, 2160, [60, 45])]) == Mode("YUYV", 3840, 2160, [45])
    big = [Mode("YUYV", 4096, 3072, [30]), Mode("YUYV", 3840, 2160, [30])]
    assert v4l2.choose_mode(_req(), big) == Mode("YUYV", 3840, 2160, [30])


def test_default_mode_avoids_slideshow_rates():
    # YUYV 1080p at 5 fps loses to MJPEG 1080p at 30 when 1080p is asked for.
    assert v4l2.choose_mode(_req(width=1920, height=1080), UVC) == Mode("MJPG", 1920, 1080, [30])
    # ...but a slow raw mode is still taken when it is the only one.
    assert v4l2.choose_mode(_req(), [Mode("YUYV", 1920, 1080, [5])]) == Mode("YUYV", 1920, 1080, [5])


def test_requested_format_size_and_rate_are_honoured():
    assert v4l2.choose_mode(_req(fourcc="MJPG"), UVC) == Mode("MJPG", 1920, 1080, [30])
    assert v4l2.choose_mode(_req(fourcc="MJPG", fps=60), UVC) == Mode("MJPG", 1280, 720, [60])
    assert v4l2.choose_mode(_req(fourcc="YUYV", width=1280, height=720), UVC) == Mode("YUYV", 1280, 720, [10])
    assert v4l2.choose_mode(_req(width=640, height=480, fps=15), UVC) == Mode("YUYV", 640, 480, [15])
    assert v4l2.choose_mode(_req(fps=29.97), UVC).fps == (30.0,)  # within tolerance of 30


def test_mjpeg_request_accepts_a_jpeg_fourcc():
    assert v4l2.choose_mode(_req(fourcc="MJPG"), [Mode("JPEG", 640, 480, [30])]) == Mode("JPEG", 640, 480, [30])


def test_drivers_that_list_no_rates_get_the_requested_one():
    assert v4l2.choose_mode(_req(), [Mode("GREY", 752, 480)]) == Mode("GREY", 752, 480)
    assert v4l2.choose_mode(_req(fps=60), [Mode("GREY", 752, 480)]) == Mode("GREY", 752, 480, [60])


@pytest.mark.parametrize(
    "request_, needle",
    [
        (_req(fourcc="MJPG", width=640, height=480), "offers no 640x480 MJPG;"),
        (_req(width=1920, height=1200), "offers no 1920x1200;"),
        (_req(fourcc="NV12"), "offers no NV12;"),
        (_req(fourcc="YUYV", fps=60), "offers no YUYV at 60 fps;"),
    ],
)
def test_modes_not_offered_are_errors_listing_the_offers(request_, needle):
    with pytest.raises(CameraError) as err:
        v4l2.choose_mode(request_, UVC)
    msg = str(err.value)
    assert msg.startswith("/dev/video0 offers no"), msg
    assert needle in msg, msg
    assert "it offers YUYV 640x480@30/15, 1280x720@10, 1920x1080@5; MJPG 1920x1080@30/15, 1280x720@60/30" in msg
    assert "H264" not in msg


def test_a_device_with_no_readable_format_says_what_it_has():
    with pytest.raises(CameraError, match=r"offers no format this runtime reads .*it offers H264 1920x1080@30"):
        v4l2.choose_mode(_req(), [Mode("H264", 1920, 1080, [30])])


# ==================================================================================================
# V4L2: buffer layout and timestamps
# ==================================================================================================


def _padded(rows: np.ndarray, stride: int, fill: int = 0xEE) -> bytes:
    """A driver-style buffer: each row of ``rows`` (2-D uint8) at ``stride`` bytes, padding = fill."""
    n, row = rows.shape
    buf = bytearray([fill]) * (stride * n)
    for r in range(n):
        buf[r * stride : r * stride + row] = rows[r].tobytes()
    return bytes(buf)


@pytest.mark.parametrize("fourcc", ["YUYV", "UYVY", "NV12", "GREY"])
@pytest.mark.parametrize("pad", [0, 64])
def test_frame_array_cuts_row_padding(fourcc, pad):
    rng = np.random.default_rng(1)
    w, h = 38, 22
    fmt, bpp = v4l2.RAW_FOURCCS[fourcc]
    expected = rng.integers(0, 255, frame_shape(fmt, w, h), dtype=np.uint8)
    rows = expected.reshape(expected.shape[0], -1)  # (rows, w*bpp): Y rows then UV rows for NV12
    stride = w * bpp + pad
    buf = _padded(rows, stride)
    arr = v4l2.frame_array(buf, fourcc, w, h, stride if pad else 0)
    assert arr.shape == expected.shape and arr.dtype == np.uint8
    np.testing.assert_array_equal(arr, expected)
    assert not arr.flags.writeable  # a view of the driver's buffer, never written
    assert 0xEE not in np.unique(arr) or 0xEE in np.unique(expected)


def test_frame_array_reads_a_last_row_without_trailing_padding():
    img = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)
    buf = _padded(img, 8)[:-2]  # drivers may end the buffer right after the last pixel
    np.testing.assert_array_equal(v4l2.frame_array(buf, "GREY", 6, 4, 8), img)


@pytest.mark.parametrize(
    "args, needle",
    [
        ((bytes(100), "YUYV", 8, 8, 0), "needs 128 bytes"),
        ((bytes(1000), "YUYV", 8, 8, 10), "bytesperline 10 is less than a row (16 bytes)"),
        ((bytes(1000), "MJPG", 8, 8, 0), "'MJPG' is not a raw format"),
        ((bytes(1000), "NV12", 8, 7, 0), "NV12 frame size 8x7"),
    ],
)
def test_frame_array_refuses_inconsistent_buffers(args, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        v4l2.frame_array(*args)


MONO = v4l2.BUF_FLAG_TIMESTAMP_MONOTONIC


@pytest.mark.parametrize(
    "secs, usecs, flags, arrival, expected",
    [
        (1000, 250_000, MONO, 1000.3, 1000.25),
        (1000, 250_000, MONO | 0x10000 | 0x1, 1000.3, 1000.25),  # start-of-exposure stamp, other bits set
        (1000, 250_000, 0x4000, 1000.3, 1000.3),  # TIMESTAMP_COPY: not a capture time
        (1000, 250_000, 0, 1000.3, 1000.3),  # TIMESTAMP_UNKNOWN
        (990, 0, MONO, 1000.3, 1000.3),  # 10 s old: a broken driver clock
        (1001, 0, MONO, 1000.3, 1000.3),  # after the dequeue: impossible
        (0, 0, MONO, 1000.3, 1000.3),  # never filled in
    ],
)
def test_driver_timestamps_become_monotonic_capture_times(secs, usecs, flags, arrival, expected):
    assert v4l2.driver_time_to_monotonic(secs, usecs, flags, arrival) == pytest.approx(expected, abs=1e-9)


# ==================================================================================================
# V4L2: the capture thread, against a scripted fake session
# ==================================================================================================


class FakeSession:
    """A device session the test feeds: frames (data, DriverStamp) or an OSError to raise."""

    def __init__(self, mode: Mode, bytesperline: int = 0) -> None:
        self.mode, self.bytesperline = mode, bytesperline
        self.items: list[tuple[bytes, DriverStamp] | OSError] = []
        self.closed = False

    def feed(self, *items: tuple[bytes, DriverStamp] | OSError) -> None:
        self.items.extend(items)

    def wait(self, timeout: float) -> bool:
        if not self.items:
            time.sleep(min(timeout, 0.005))
            return False
        if isinstance(self.items[0], OSError):
            raise self.items.pop(0)
        return True

    def read(self, handle: Callable[[memoryview, DriverStamp], None]) -> bool:
        item = self.items.pop(0)
        assert not isinstance(item, OSError)
        data, stamp = item
        handle(memoryview(data), stamp)
        return True

    def close(self) -> None:
        self.closed = True


def _stamp(seq: int, t: float | None = None, flags: int = MONO, n: int = 0) -> DriverStamp:
    t = time.monotonic() - 0.01 if t is None else t
    return DriverStamp(seq, int(t), round((t - int(t)) * 1e6), flags, n)


def _until(cond: Callable[[], object], timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def _source(*sessions_or_errors, **kw) -> v4l2.V4l2Source:
    script = list(sessions_or_errors)

    def opener():
        item = script.pop(0)
        if callable(item):
            item = item()
        if isinstance(item, Exception):
            raise item
        return item

    return v4l2.V4l2Source("front", "/dev/video0", V4l2Request("/dev/video0"), open_session=opener, **kw)


def test_newest_frame_seq_and_driver_time_with_padded_yuyv():
    w, h, stride = 8, 4, 24
    sess = FakeSession(Mode("YUYV", w, h, [30]), bytesperline=stride)
    src = _source(sess)
    try:
        assert src.newest() is None  # nothing captured yet
        imgs = [np.full((h, w, 2), v, np.uint8) for v in (10, 20, 30)]
        t_last = time.monotonic() - 0.02
        sess.feed((_padded(imgs[0].reshape(h, -1), stride), _stamp(100)),
                  (_padded(imgs[1].reshape(h, -1), stride), _stamp(101)),
                  (_padded(imgs[2].reshape(h, -1), stride), _stamp(104, t_last)))
        _until(lambda: src.newest() is not None and src.newest().seq == 5)
        f = src.newest()
        assert (f.camera, f.fmt, f.width, f.height, f.data.shape) == ("front", "yuyv", w, h, (h, w, 2))
        np.testing.assert_array_equal(f.data, imgs[2])
        assert f.seq == 5  # driver 100 -> 1; 104 -> 5: the gap of 3 shows the camera dropped frames
        assert f.capture_time == pytest.approx(t_last, abs=2e-6)  # the driver's stamp, not arrival
        assert src.newest() is f  # nothing new: the same object, no copy
        assert src.trouble() is None
    finally:
        src.close()
    assert sess.closed and not src._thread.is_alive()


def test_unplug_sets_trouble_reopens_and_clears_it():
    mode = Mode("GREY", 4, 2, [30])
    first, second = FakeSession(mode), FakeSession(mode)
    release = threading.Event()

    def slow_second():
        release.wait(2.0)
        return second

    src = _source(first, v4l2.DeviceMissing("gone"), CameraError("permission denied"), slow_second, reopen_s=0.02)
    try:
        first.feed((bytes([1] * 8), _stamp(7)), OSError(errno.ENODEV, "No such device"))
        _until(lambda: (src.trouble() or "").endswith("last try: permission denied"))
        assert src.trouble() == ("device /dev/video0 gone ([Errno 19] No such device); reopening every 0.02 s; "
                                 "last try: permission denied")
        assert first.closed
        assert src.newest().seq == 1  # the last frame before the unplug is still served
        second.feed((bytes([2] * 8), _stamp(0)), (bytes([3] * 8), _stamp(1)))
        release.set()
        _until(lambda: src.newest().data[0, 0] == 3)
        f = src.newest()
        assert src.trouble() is None
        assert f.seq >= 3  # the outage counts as lost frames: a gap after seq 1
        np.testing.assert_array_equal(f.data, np.full((2, 4), 3, np.uint8))
    finally:
        release.set()
        src.close()
    assert second.closed


def test_a_stalled_camera_is_trouble_until_frames_return():
    sess = FakeSession(Mode("GREY", 4, 2, [30]))
    src = _source(sess, stall_s=0.05)
    try:
        sess.feed((bytes(8), _stamp(0)))
        _until(lambda: src.newest() is not None)
        _until(lambda: src.trouble() is not None)
        assert src.trouble().startswith("no frame from /dev/video0 for ")
        assert src.trouble().endswith(" s (camera stalled?)")
        sess.feed((bytes(8), _stamp(1, flags=MONO | v4l2.BUF_FLAG_ERROR)))  # buffers arrive, all corrupt
        _until(lambda: (src.trouble() or "").endswith("(its buffers were flagged corrupt by the driver)"))
        sess.feed((bytes(8), _stamp(2)))
        _until(lambda: src.newest().seq == 3)
        assert src.trouble() is None
    finally:
        src.close()


def test_mjpeg_is_decoded_and_bad_buffers_are_skipped():
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = (255, 0, 0)  # blue left half, red right half (BGR)
    img[:, 32:] = (0, 0, 255)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    sess = FakeSession(Mode("MJPG", 64, 48, [30]))
    src = _source(sess)
    try:
        sess.feed((jpeg.tobytes(), _stamp(0)))
        _until(lambda: src.newest() is not None)
        f = src.newest()
        assert (f.fmt, f.data.shape, f.width, f.height, f.seq) == ("bgr", (48, 64, 3), 64, 48, 1)
        assert np.abs(f.data.astype(int) - img).mean() < 4
        # A truncated JPEG and a buffer the driver flags as corrupt are skipped; the next good one shows the gap.
        sess.feed((jpeg.tobytes()[:40], _stamp(1)), (jpeg.tobytes(), _stamp(2, flags=MONO | v4l2.BUF_FLAG_ERROR)),
                  (jpeg.tobytes(), _stamp(3)))
        _until(lambda: src.newest().seq != 1)
        assert src.newest().seq == 4
    finally:
        src.close()


def test_a_crashed_capture_thread_ends_the_source():
    class Broken(FakeSession):
        def read(self, handle):
            raise RuntimeError("driver returned nonsense")

    sess = Broken(Mode("GREY", 4, 2, [30]))
    src = _source(sess)
    try:
        sess.feed((bytes(8), _stamp(0)))
        _until(src.ended)
        assert src.ended().error
        assert src.ended().reason == "V4L2 capture of /dev/video0 failed: RuntimeError: driver returned nonsense"
    finally:
        src.close()
    assert sess.closed


def test_device_modes_reads_linuxpy_enumerations():
    """device_modes against linuxpy's own record types: discrete, stepwise and unlisted sizes and rates."""
    vd = v4l2.linuxpy_video()
    pf = vd.PixelFormat
    discrete = vd.raw.v4l2_frmsize_discrete(640, 480)
    stepwise = vd.raw.v4l2_frmsize_stepwise(16, 1920, 16, 16, 1080, 8)

    def rate(kind, fmt, w, h, lo, hi):
        return vd.FrameType(kind, fmt, w, h, Fraction(lo), Fraction(hi), Fraction(1))

    class Info:
        def buffer_formats(self, buffer_type):
            assert buffer_type == vd.BufferType.VIDEO_CAPTURE
            return [vd.ImageFormat(buffer_type, name, 0, fmt) for name, fmt in
                    (("YUYV", pf.YUYV), ("NV12", pf.NV12), ("GREY", pf.GREY))]  # fmt: skip

        def format_frame_sizes(self, fmt):
            if fmt == pf.YUYV:
                return [vd.FrameSize(0, fmt, vd.FrameSizeType.DISCRETE, discrete)]
            if fmt == pf.NV12:
                return [vd.FrameSize(0, fmt, vd.FrameSizeType.STEPWISE, stepwise)]
            return []  # a driver without ENUM_FRAMESIZES

        def fps_intervals(self, fmt, w, h):
            if fmt == pf.YUYV:
                return [rate(vd.FrameIntervalType.DISCRETE, fmt, w, h, n, n) for n in (30, 15)]
            if fmt == pf.NV12:
                return [rate(vd.FrameIntervalType.STEPWISE, fmt, w, h, 1, 60)]
            return [rate(vd.FrameIntervalType.DISCRETE, fmt, w, h, 0, 0)]  # linuxpy's "none listed"

    class Device:
        info = Info()

        def get_format(self, buffer_type):
            return vd.Format(752, 480, pf.GREY, 752 * 480, 752)

    stepped = (60, 30, 25, 15, 10, 5, 1)
    assert v4l2.device_modes(Device()) == [
        Mode("YUYV", 640, 480, [30, 15]),
        *(Mode("NV12", w, h, stepped) for w, h in ((1920, 1080), (1280, 720), (640, 480), (320, 240))),
        Mode("GREY", 752, 480),
    ]


def test_session_read_hands_over_the_newest_ready_buffer_and_requeues_every_one():
    vd = v4l2.linuxpy_video()
    ready = []
    for index, seq in enumerate((5, 6, 7)):
        b = vd.raw.v4l2_buffer()
        b.index, b.sequence, b.bytesused, b.flags = index, seq, 3, MONO
        b.timestamp.secs, b.timestamp.usecs = 100, seq
        ready.append(b)
    requeued: list[int] = []

    class Queue:
        def dequeue(self):
            if not ready:
                raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
            return ready.pop(0)

        def enqueue(self, buf):
            requeued.append(buf.index)

    mapped = SimpleNamespace(queue=Queue(), buffers=[bytearray(b"aaaa"), bytearray(b"bbbb"), bytearray(b"cccc")])
    session = object.__new__(v4l2.LinuxpySession)
    session.capture = SimpleNamespace(buffer=mapped)
    got = []
    assert session.read(lambda data, stamp: got.append((bytes(data), stamp)))
    assert got == [(b"ccc", DriverStamp(7, 100, 7, MONO, 3))]  # only the newest, cut to bytesused
    assert requeued == [0, 1, 2]  # the older two straight away, the newest after the copy
    assert not session.read(lambda data, stamp: got.append(stamp))  # nothing ready
    assert len(got) == 1


def test_v4l2_output_layout_matches_pixel_formats():
    assert v4l2.output_layout(Mode("NV12", 64, 48)) == ("nv12", (72, 64))
    assert v4l2.output_layout(Mode("YUYV", 64, 48)) == ("yuyv", (48, 64, 2))
    assert v4l2.output_layout(Mode("UYVY", 64, 48)) == ("uyvy", (48, 64, 2))
    assert v4l2.output_layout(Mode("GREY", 64, 48)) == ("gray", (48, 64))
    assert v4l2.output_layout(Mode("MJPG", 64, 48)) == ("bgr", (48, 64, 3))
    for fmt, shape in (v4l2.output_layout(Mode(f, 64, 48)) for f in ("NV12", "YUYV", "UYVY", "GREY")):
        assert fmt in PIXEL_FORMATS and shape == frame_shape(fmt, 64, 48)


@pytest.mark.skipif(bool(VIDEO_NODES), reason="this machine has V4L2 devices")
@pytest.mark.parametrize("uri", ["/dev/video0", "v4l2:///dev/video0?format=yuyv", "/dev/video0?size=640x480"])
def test_absent_device_is_a_one_line_error_naming_it(uri):
    with pytest.raises(CameraError) as err:
        open_cameras([f"front={uri}"], ["front"])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("camera 'front': /dev/video0: no such device"), msg
    assert "--list-cameras" in msg


@pytest.mark.skipif(not VIDEO_NODES, reason="no V4L2 device on this machine")
def test_a_real_v4l2_camera_delivers_frames():
    for path in VIDEO_NODES:
        try:
            src = v4l2.open_source(path, "cam")
        except CameraError:
            continue  # metadata or codec nodes, busy devices: try the next node
        try:
            _until(lambda s=src: s.newest() is not None and s.newest().seq >= 2, timeout=5.0)
            f = src.newest()
            assert f.fmt in PIXEL_FORMATS
            assert f.data.shape == frame_shape(f.fmt, f.width, f.height)
            assert f.seq >= 2
            assert time.monotonic() - 5.0 < f.capture_time <= time.monotonic()
        finally:
            src.close()
        return
    pytest.skip(f"none of {', '.join(VIDEO_NODES)} opened as a camera")


# ==================================================================================================
# GStreamer: URIs, pipelines, caps, layouts
# ==================================================================================================


def test_csi_uris_parse():
    assert gst.parse_csi_uri("csi://0") == gst.CsiParams(0, 1920, 1080, 30.0, None, 0)
    assert gst.parse_csi_uri("csi://1?size=1280x720&fps=60&sensor_mode=4&flip=2") == gst.CsiParams(
        1, 1280, 720, 60.0, 4, 2
    )


@pytest.mark.parametrize(
    "uri, needle",
    [
        ("csi://front", "csi://0"),
        ("csi://0?size=1920", "size='1920'"),
        ("csi://0?size=1921x1080", "size='1921x1080'"),
        ("csi://0?fps=500", "fps='500'"),
        ("csi://0?flip=9", "flip='9'"),
        ("csi://0?sensor_mode=-1", "sensor_mode='-1'"),
        ("csi://0?gain=2", "unknown parameter 'gain'"),
    ],
)
def test_bad_csi_uris_name_the_bad_value(uri, needle):
    with pytest.raises(CameraError) as err:
        gst.parse_csi_uri(uri)
    assert needle in str(err.value), str(err.value)
    # open_source checks the URI before it needs GStreamer: the same error with or without it.
    with pytest.raises(CameraError) as err2:
        gst.open_source(uri, "front")
    assert str(err2.value) == str(err.value)


def test_csi_pipeline_goes_from_argus_nvmm_to_system_nv12_in_a_dropping_appsink():
    p = gst.csi_pipeline(gst.parse_csi_uri("csi://1?size=1280x720&fps=60&sensor_mode=4"))
    elems = [e.strip() for e in p.split("!")]
    assert elems[0] == "nvarguscamerasrc sensor-id=1 sensor-mode=4"
    assert elems[1] == "video/x-raw(memory:NVMM),width=1280,height=720,framerate=60/1,format=NV12"
    assert elems[2] == "nvvidconv flip-method=0"
    assert elems[3] == "video/x-raw,format=NV12,width=1280,height=720"
    assert elems[4] == "appsink name=vla_sink max-buffers=1 drop=true sync=false"
    default = gst.csi_pipeline(gst.parse_csi_uri("csi://0?fps=29.97"))
    assert "sensor-mode" not in default and "framerate=2997/100" in default
    turned = gst.csi_pipeline(gst.parse_csi_uri("csi://0?size=1280x720&flip=1"))
    assert "flip-method=1 ! video/x-raw,format=NV12,width=720,height=1280 !" in turned  # 90 degrees: W, H swap


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("gst://videotestsrc ! video/x-raw,format=NV12 ! appsink",
         "videotestsrc ! video/x-raw,format=NV12 ! appsink"),
        ("gst://videotestsrc ! appsink name=mine drop=true", "videotestsrc ! appsink name=mine drop=true"),
        ("gst://v4l2src device=/dev/video0 ! videoconvert",
         "v4l2src device=/dev/video0 ! videoconvert ! appsink name=vla_sink max-buffers=1 drop=true sync=false"),
        ("gst://videotestsrc%20!%20video%2Fx-raw%2Cformat%3DNV12%20!%20appsink",
         "videotestsrc ! video/x-raw,format=NV12 ! appsink"),
        ("GST://videotestsrc", "videotestsrc ! appsink name=vla_sink max-buffers=1 drop=true sync=false"),
        # Literal pipelines keep their percent signs (a file pattern is not an escape).
        ("gst://multifilesrc location=img%05d.jpg ! jpegdec ! appsink",
         "multifilesrc location=img%05d.jpg ! jpegdec ! appsink"),
        ("gst://videotestsrc ! appsinkfoo", "videotestsrc ! appsinkfoo ! appsink name=vla_sink max-buffers=1 "
         "drop=true sync=false"),
    ],
)  # fmt: skip
def test_gst_uris_decode_to_pipelines_ending_in_an_appsink(uri, expected):
    assert gst.gst_pipeline_from_uri(uri) == expected


@pytest.mark.parametrize("uri, needle", [("gst://", "needs a pipeline"), ("gst://  ", "needs a pipeline"),
                                         ("gst://videotestsrc !", "ends in '!'")])  # fmt: skip
def test_bad_gst_uris(uri, needle):
    with pytest.raises(CameraError, match=needle):
        gst.gst_pipeline_from_uri(uri)


@pytest.mark.parametrize(
    "caps, expected",
    [
        ("video/x-raw, format=(string)NV12, width=(int)1920, height=(int)1080, framerate=(fraction)30/1",
         ("nv12", 1920, 1080)),
        ("video/x-raw, format=(string)I420, width=(int)640, height=(int)480", ("i420", 640, 480)),
        ("video/x-raw, format=(string)YUY2, width=(int)640, height=(int)480", ("yuyv", 640, 480)),
        ("video/x-raw, format=(string)UYVY, width=(int)640, height=(int)480", ("uyvy", 640, 480)),
        ("video/x-raw, format=(string)RGB, width=(int)320, height=(int)240", ("rgb", 320, 240)),
        ("video/x-raw, format=(string)BGR, width=(int)320, height=(int)240", ("bgr", 320, 240)),
        ("video/x-raw, width=(int)320, height=(int)240, format=(string)GRAY8, pixel-aspect-ratio=(fraction)1/1",
         ("gray", 320, 240)),
        ("video/x-raw,format=NV12,width=64,height=48", ("nv12", 64, 48)),
    ],
)  # fmt: skip
def test_caps_give_format_and_size(caps, expected):
    assert gst.caps_to_format(caps) == expected


@pytest.mark.parametrize(
    "caps, needles",
    [
        ("video/x-raw(memory:NVMM), format=(string)NV12, width=(int)1920, height=(int)1080",
         ["(memory:NVMM)", "nvvidconv"]),
        ("image/jpeg, width=(int)1920, height=(int)1080", ["image/jpeg", "decode"]),
        ("video/x-raw, format=(string)RGBA, width=(int)640, height=(int)480", ["RGBA", "videoconvert"]),
        ("video/x-raw, format=(string)NV12", ["no fixed width and height"]),
        ("video/x-raw, format=(string)NV12, width=(int)640, height=(int)481", ["640x481", "videoscale"]),
    ],
)  # fmt: skip
def test_unreadable_caps_say_what_to_add(caps, needles):
    with pytest.raises(CameraError) as err:
        gst.caps_to_format(caps)
    for needle in needles:
        assert needle in str(err.value), str(err.value)


def test_default_layout_pads_rows_to_four_bytes():
    assert gst.default_layout("nv12", 322, 240) == ((324, 324), (0, 324 * 240))
    assert gst.default_layout("i420", 322, 242) == ((324, 164, 164), (0, 324 * 242, 324 * 242 + 164 * 121))
    assert gst.default_layout("rgb", 321, 10) == ((964,), (0,))
    assert gst.default_layout("yuyv", 320, 10) == ((640,), (0,))
    assert gst.default_layout("gray", 318, 10) == ((320,), (0,))


def _planar_buffer(planes: list[np.ndarray], strides: list[int], offsets: list[int], fill: int = 0xEE) -> bytes:
    """Planes (2-D uint8) written row by row at the given strides and offsets; the gaps hold ``fill``."""
    size = max(o + s * p.shape[0] for p, s, o in zip(planes, strides, offsets, strict=True))
    buf = bytearray([fill]) * size
    for p, s, o in zip(planes, strides, offsets, strict=True):
        for r in range(p.shape[0]):
            buf[o + r * s : o + r * s + p.shape[1]] = p[r].tobytes()
    return bytes(buf)


@pytest.mark.parametrize("fmt", ["nv12", "i420", "yuyv", "uyvy", "rgb", "bgr", "gray"])
@pytest.mark.parametrize("layout", ["default", "pitched"])
def test_copy_frame_packs_planes_into_the_documented_layout(fmt, layout):
    rng = np.random.default_rng(7)
    w, h = 30, 10
    if fmt == "nv12":
        planes = [rng.integers(0, 255, (h, w), np.uint8), rng.integers(0, 255, (h // 2, w), np.uint8)]
    elif fmt == "i420":
        planes = [rng.integers(0, 255, (h, w), np.uint8)] + [rng.integers(0, 255, (h // 2, w // 2), np.uint8)] * 2
        planes[2] = planes[2][::-1].copy()  # U and V differ
    else:
        bpp = {"yuyv": 2, "uyvy": 2, "rgb": 3, "bgr": 3, "gray": 1}[fmt]
        planes = [rng.integers(0, 255, (h, w * bpp), np.uint8)]
    if layout == "default":
        strides, offsets = gst.default_layout(fmt, w, h)
    else:  # a hardware converter's video meta: 256-byte pitch, planes 4 KiB apart
        strides = (256,) * len(planes)
        offsets = tuple(4096 * i for i in range(len(planes)))
    buf = _planar_buffer(planes, list(strides), list(offsets))
    out = np.zeros(frame_shape(fmt, w, h), np.uint8)
    gst.copy_frame(buf, fmt, w, h, strides, offsets, out)
    expected = np.concatenate([p.reshape(-1) for p in planes]).reshape(out.shape)
    np.testing.assert_array_equal(out, expected)


def test_copy_frame_refuses_a_short_buffer():
    with pytest.raises(ValueError, match="needs"):
        gst.copy_frame(bytes(100), "gray", 30, 10, (32,), (0,), np.zeros((10, 30), np.uint8))


def test_seq_follows_buffer_offsets_and_counts_otherwise():
    none = gst.BUFFER_OFFSET_NONE
    assert gst.next_seq(5, 100, 101) == 6
    assert gst.next_seq(5, 100, 104) == 9  # the appsink dropped 3 frames
    assert gst.next_seq(5, None, 100) == 6  # the first offset seen
    assert gst.next_seq(5, 100, none) == 6
    assert gst.next_seq(5, 100, 100) == 6  # offsets that do not advance: count samples
    assert gst.next_seq(5, 100, 3) == 6


def test_gst_capture_time_prefers_a_plausible_clock_time():
    assert gst.gst_capture_time(100.0, 99_950_000_000, 20_000_000) == pytest.approx(99.95)
    assert gst.gst_capture_time(100.0, 90_000_000_000, 20_000_000) == pytest.approx(99.98)  # stale: latency
    assert gst.gst_capture_time(100.0, 101_000_000_000, None) == 100.0  # in the future: arrival
    assert gst.gst_capture_time(100.0, None, 33_000_000) == pytest.approx(99.967)
    assert gst.gst_capture_time(100.0, None, None) == 100.0


@pytest.mark.skipif(HAVE_GST, reason="GStreamer with PyGObject is importable here")
@pytest.mark.parametrize("uri, what", [("csi://0", "csi://0"), ("csi://1?fps=60", "csi://1"),
                                       ("gst://videotestsrc ! appsink", "gst://videotestsrc")])  # fmt: skip
def test_without_pygobject_gstreamer_uris_are_one_line_install_hints(uri, what):
    with pytest.raises(CameraError) as err:
        open_cameras([uri], ["front"])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"camera 'front': {what}"), msg
    assert "needs GStreamer with PyGObject" in msg
    assert "sudo apt install python3-gi gir1.2-gst-plugins-base-1.0 gstreamer1.0-tools" in msg
    assert "not importable here: " in msg


# ==================================================================================================
# GStreamer: a real pipeline (videotestsrc), where PyGObject and GStreamer are installed
# ==================================================================================================


@pytest.mark.skipif(not HAVE_GST, reason=NO_GST)
def test_default_layout_matches_gstreamer_video_info():
    Gst, GstVideo = gst.import_gst("test")
    if GstVideo is None:
        pytest.skip("GstVideo typelib missing")
    names = {v: k for k, v in gst.GST_FORMATS.items()}
    for fmt in gst.GST_FORMATS.values():
        for w, h in ((2, 2), (318, 240), (322, 242), (641, 480) if fmt not in ("nv12", "i420", "yuyv", "uyvy")
                     else (642, 480)):  # fmt: skip
            info = GstVideo.VideoInfo.new_from_caps(Gst.Caps.from_string(
                f"video/x-raw,format={names[fmt]},width={w},height={h},framerate=30/1"))
            n = info.finfo.n_planes
            assert gst.default_layout(fmt, w, h) == (tuple(info.stride[:n]), tuple(info.offset[:n])), (fmt, w, h)


@pytest.mark.skipif(not HAVE_GST, reason=NO_GST)
def test_videotestsrc_delivers_live_nv12_frames():
    uri = "gst://videotestsrc is-live=true pattern=white ! video/x-raw,format=NV12,width=322,height=240,framerate=60/1"
    src = gst.open_source(uri, "front")
    try:
        _until(lambda: src.newest() is not None and src.newest().seq >= 3, timeout=5.0)
        f = src.newest()
        assert (f.fmt, f.width, f.height, f.data.shape) == ("nv12", 322, 240, (360, 322))
        assert abs(int(np.median(f.data[:240])) - 235) <= 1  # white, limited-range luma
        assert abs(int(np.median(f.data[240:])) - 128) <= 1  # neutral chroma
        assert time.monotonic() - 1.0 < f.capture_time <= time.monotonic()
        seq = f.seq
        _until(lambda: src.newest().seq > seq)
        assert src.ended() is None
    finally:
        src.close()


@pytest.mark.skipif(not HAVE_GST, reason=NO_GST)
def test_gstreamer_eos_and_negotiation_errors_end_the_source():
    src = gst.open_source("gst://videotestsrc is-live=true num-buffers=3 ! video/x-raw,format=GRAY8,width=64,height=48",
                          "front")
    try:
        _until(src.ended, timeout=5.0)
        assert src.ended().error and "end-of-stream" in src.ended().reason
        assert src.newest().fmt == "gray" and src.newest().data.shape == (48, 64)
    finally:
        src.close()
    # RGBA is not read here: the appsink's caps make negotiation fail, reported with a fix.
    try:
        src = gst.open_source("gst://videotestsrc is-live=true ! video/x-raw,format=RGBA,width=64,height=48", "front")
    except CameraError as exc:
        why = str(exc)
    else:
        try:
            _until(src.ended, timeout=5.0)
            why = src.ended().reason
        finally:
            src.close()
    assert "not-negotiated" in why and "videoconvert" in why and "videotestsrc" in why, why


# ==================================================================================================
# Probe: vla-run --list-cameras
# ==================================================================================================

KINDS = {
    "synthetic://": "built in",
    "/dev/videoN, v4l2://": "linuxpy",
    "csi://, gst://": "GStreamer",
    "rtsp://, http(s)://, lavfi://": "PyAV",
    "video files (PATH, file://)": "OpenCV",
    "image folders (DIR)": "OpenCV",
}


def test_backend_report_covers_every_uri_kind():
    report = probe.backend_report()
    assert [k for k, _, _ in report] == list(KINDS)
    for kind, lib, status in report:
        assert lib.startswith(KINDS[kind]) or KINDS[kind] in lib, (kind, lib)
        assert status == "available" or status.startswith("missing: "), status
    by_kind = {k: s for k, _, s in report}
    assert by_kind["synthetic://"] == "available"
    assert by_kind["/dev/videoN, v4l2://"] == "available"  # linuxpy is a dependency on Linux
    if HAVE_GST:
        assert by_kind["csi://, gst://"] == "available"
    else:
        assert by_kind["csi://, gst://"].startswith("missing: ") and "python3-gi" in by_kind["csi://, gst://"]


@pytest.mark.skipif(bool(VIDEO_NODES), reason="this machine has V4L2 devices")
def test_camera_list_on_a_machine_without_cameras():
    text = probe.format_camera_list(probe.list_v4l2_devices(), probe.backend_report())
    assert "no V4L2 devices (/dev/video* absent)" in text
    for kind, lib in KINDS.items():
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(kind)), None)
        assert line is not None, f"{kind} missing from\n{text}"
        assert lib in line and ("available" in line or "missing: " in line), line
    assert "Traceback" not in text


def test_camera_list_shows_modes_notes_and_errors():
    devices = [
        probe.DeviceInfo("/dev/video0", "uvcvideo", "HD Webcam", "usb-0000:00:14.0-1", UVC),
        probe.DeviceInfo(
            "/dev/video1", "uvcvideo", "HD Webcam", "usb-0000:00:14.0-1", note="metadata node, not a camera"
        ),
        probe.DeviceInfo("/dev/video2", error="permission denied (add your user to the 'video' group: ...)"),
    ]
    lines = probe.format_camera_list(devices, [("synthetic://", "built in", "available")]).splitlines()
    assert lines[0] == "V4L2 devices:"
    assert lines[1] == "  /dev/video0  HD Webcam (uvcvideo, usb-0000:00:14.0-1)"
    assert lines[2].split() == ["YUYV", "640x480@30/15,", "1280x720@10,", "1920x1080@5"]
    assert lines[3].split() == ["MJPG", "1920x1080@30/15,", "1280x720@60/30"]
    assert lines[4].split() == ["H264", "1920x1080@30"]
    assert lines[5].strip() == "default: YUYV 640x480@30"
    assert lines[6] == "  /dev/video1  HD Webcam (uvcvideo, usb-0000:00:14.0-1): metadata node, not a camera (skipped)"
    assert lines[7].startswith("  /dev/video2  error: permission denied")
    assert lines[-1].split() == ["synthetic://", "built", "in", "available"]


def test_probing_a_node_that_is_not_a_device_reports_an_error_per_device(tmp_path):
    (tmp_path / "video0").write_bytes(b"not a device")
    (tmp_path / "video10").write_bytes(b"")
    (tmp_path / "video2").write_bytes(b"")
    devices = probe.list_v4l2_devices(str(tmp_path / "video*"))
    assert [d.path.rsplit("/", 1)[1] for d in devices] == ["video0", "video2", "video10"]  # numeric order
    for d in devices:
        assert d.error and d.error.startswith("cannot query it ("), d.error
        assert not d.modes
    assert "error: cannot query it" in probe.format_camera_list(devices, [])
