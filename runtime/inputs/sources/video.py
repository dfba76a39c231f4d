"""Video files as a camera (OpenCV's FFmpeg backend), paced at the file's frame rate.

A capture thread decodes in real time and keeps only the newest frame, like a live camera, so a
slow loop sees frames dropped rather than a growing queue. ``?loop=1`` rewinds at the end.

A file that stops decoding well before the frame count its container declares (a copy cut short,
a recorder that died) ends with an error rather than as a normal end of file: the run must not
pass for a complete replay. OpenCV estimates the count from duration x fps where the container has
none, so a shortfall of a couple of frames (1 % on long files) is tolerated. FFmpeg's own decoder
complaints about such a file ("huffman table decode error") are silenced: they would be stray
stderr lines beside the run's one-line error, which names the problem itself.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import cv2
import numpy as np

from ...errors import CameraError
from .base import CameraSource, End, Frame

# Read once, when OpenCV first uses its FFmpeg backend; -8 is AV_LOG_QUIET. OPENCV_FFMPEG_DEBUG=1 or
# an explicit OPENCV_FFMPEG_LOGLEVEL brings the messages back.
if "OPENCV_FFMPEG_DEBUG" not in os.environ:
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def open_source(uri: str, name: str) -> VideoFileSource:
    """``clip.mp4`` or ``file:///path/clip.mp4[?loop=1]``."""
    parts = urlsplit(uri) if "://" in uri else None
    path = unquote(parts.path) if parts else uri.split("?", 1)[0]
    query = dict(parse_qsl(parts.query if parts else uri.partition("?")[2]))
    return VideoFileSource(name, uri, path, loop=query.get("loop", "0") not in ("0", "false", "no"))


class VideoFileSource(CameraSource):
    def __init__(self, name: str, uri: str, path: str, loop: bool = False) -> None:
        self.name, self.uri, self.path, self.loop = name, uri, path, loop
        if not Path(path).is_file():
            raise CameraError(f"camera '{name}': {path}: no such video file")
        self._cap = cv2.VideoCapture(path)
        ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok or first is None or first.ndim != 3:
            self._cap.release()
            raise CameraError(f"camera '{name}': {path}: not a video OpenCV/FFmpeg can decode")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 1.0 <= fps <= 1000.0 else 30.0
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if count > 0 and count == count else 0  # 0: unknown (or NaN)
        self._lock = threading.Lock()
        self._latest = first.copy()
        self._latest_seq, self._latest_time = 0, time.monotonic()
        self._out = np.empty_like(first)
        self._frame: Frame | None = None
        self._ended: End | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture, name=f"video-{name}", daemon=True)
        self._thread.start()

    def truncated(self, decoded: int) -> bool:
        """Decoding stopped after ``decoded`` frames, clearly short of the declared count."""
        return self.frame_count > 0 and self.frame_count - decoded > max(2, self.frame_count // 100)

    def _capture(self) -> None:
        seq, start = 0, self._latest_time
        in_pass = 1  # frames decoded since the start of the file (the first was read at open)
        while not self._stop.is_set():
            due = start + (seq + 1) / self.fps
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            ok, img = self._cap.read()
            if not ok and self.truncated(in_pass):
                self._ended = End(f"video file ended after {in_pass} of {self.frame_count} frames: "
                                  "truncated or corrupt", error=True)
                break
            if not ok and self.loop:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, img = self._cap.read()
                in_pass = 0
            if not ok:
                self._ended = End(f"end of video file after {seq + 1} frames", error=False)
                break
            seq += 1
            in_pass += 1
            with self._lock:
                if img.shape == self._latest.shape:
                    np.copyto(self._latest, img)
                else:  # a stream that changes size mid-file: keep it, the consumer re-plans
                    self._latest = img
                self._latest_seq, self._latest_time = seq, time.monotonic()

    def newest(self) -> Frame | None:
        with self._lock:
            if self._frame is not None and self._frame.seq == self._latest_seq:
                return self._frame  # nothing new: no copy, so polling is cheap
            if self._out.shape != self._latest.shape:
                self._out = np.empty_like(self._latest)
            np.copyto(self._out, self._latest)
            seq, t = self._latest_seq, self._latest_time
        h, w = self._out.shape[:2]
        self._frame = Frame(self.name, self._out, "bgr", w, h, seq, t)
        return self._frame

    def ended(self) -> End | None:
        return self._ended

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._cap.release()
