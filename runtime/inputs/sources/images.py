"""A folder of images as a camera: ``DIR`` or ``file:///DIR[?fps=10&loop=1]``.

Why: recorded drives are often stored as numbered stills (dataset dumps, camera logs, a failure
case exported frame by frame). Played back like a camera they exercise the same loop as a live
sensor: a capture thread decodes the next image ahead of time and publishes it when it is due at
``fps`` (default 10), keeping only the newest, so a slow loop sees dropped frames, not a queue.

Files with the extensions below are played in natural order (``frame2`` before ``frame10``),
decoded by OpenCV with their own channel layout: one channel -> ``gray``, three or four -> ``bgr``
(alpha dropped); 16-bit images are scaled to 8 bits. Images of another size mid-folder are
delivered as they are: the loop's preprocessing re-plans or reports them.

Each file owns one slot on the clock and its position is the frame's ``seq``, so an unreadable file
shows as a dropped frame (a ``seq`` gap): it is skipped, counted and reported by ``trouble()`` for
a second. At the end of the folder the source ends normally, or with an error if no image at all
could be read; ``loop=1`` starts over instead (the listing is taken once, at open).
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import cv2
import numpy as np

from ...errors import CameraError
from .base import CameraSource, End, Frame

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
DEFAULT_FPS = 10.0
TROUBLE_S = 1.0  # how long an unreadable image stays reported


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that orders digit runs by value: ``frame2.png`` < ``frame10.png``."""
    # re.split with a group alternates text and digits, so positions never compare str with int.
    parts = tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", name))
    return (parts, name)


def list_images(folder: str) -> list[str]:
    """The image files of ``folder`` (not recursive), in natural order."""
    names = [e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


def read_image(path: str) -> tuple[np.ndarray, str] | None:
    """An image as (uint8 array, "gray" | "bgr"), or None if OpenCV cannot decode it."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        return None
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        return None  # float or signed images: not a camera's pixels
    if img.ndim == 3 and img.shape[2] in (1, 2):
        img = img[:, :, 0]  # gray (+ alpha)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]  # BGRA: drop alpha
    if img.ndim == 2:
        return np.ascontiguousarray(img), "gray"
    if img.ndim == 3 and img.shape[2] == 3:
        return np.ascontiguousarray(img), "bgr"
    return None


def open_source(uri: str, name: str) -> ImageFolderSource:
    """``DIR`` or ``file:///DIR[?fps=10&loop=1]``."""
    parts = urlsplit(uri) if "://" in uri else None
    path = unquote(parts.path) if parts else uri.split("?", 1)[0]
    query = dict(parse_qsl(parts.query if parts else uri.partition("?")[2]))
    try:
        fps = float(query.get("fps", DEFAULT_FPS))
    except ValueError:
        fps = -1.0
    if not 0.01 <= fps <= 1000.0:
        raise CameraError(f"camera '{name}': {uri}: fps={query.get('fps')!r} must be a number in 0.01..1000")
    loop = query.get("loop", "0").lower() not in ("0", "false", "no", "")
    return ImageFolderSource(name, uri, path, fps=fps, loop=loop)


class ImageFolderSource(CameraSource):
    def __init__(self, name: str, uri: str, path: str, fps: float = DEFAULT_FPS, loop: bool = False) -> None:
        self.name, self.uri, self.path, self.fps, self.loop = name, uri, path, fps, loop
        if not Path(path).is_dir():
            raise CameraError(f"camera '{name}': {path}: no such folder")
        self.files = list_images(path)
        if not self.files:
            raise CameraError(f"camera '{name}': {path}: no images ({', '.join(IMAGE_EXTENSIONS)}); "
                              "point the camera at a folder of numbered frames")
        self._lock = threading.Lock()
        self._latest: tuple[np.ndarray, str, int, float] | None = None  # image, fmt, seq, capture time
        self._frame: Frame | None = None
        self._ended: End | None = None
        self.unreadable = 0  # files skipped so far
        self._bad: tuple[str, float] | None = None  # last unreadable file, when
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._capture, name=f"images-{name}", daemon=True)
        self._thread.start()

    def _capture(self) -> None:
        start, slot, delivered = time.monotonic(), 0, 0
        while not self._stop.is_set():
            pass_delivered = 0
            for path in self.files:
                got = read_image(path)  # decode ahead of the frame's slot
                due = start + slot / self.fps
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                if got is None:
                    with self._lock:
                        self.unreadable += 1
                        self._bad = (os.path.basename(path), time.monotonic())
                else:
                    with self._lock:
                        self._latest = (got[0], got[1], slot, due)
                    delivered += 1
                    pass_delivered += 1
                slot += 1
                if self._stop.is_set():
                    return
            if pass_delivered == 0:
                self._ended = End(f"image folder {self.path}: none of its {len(self.files)} images is readable")
                return
            if not self.loop:
                # Like a video's end: the last frame stays the newest for its full frame period.
                if self._stop.wait(max(0.0, start + slot / self.fps - time.monotonic())):
                    return
                skipped = f" ({self.unreadable} unreadable skipped)" if self.unreadable else ""
                self._ended = End(f"end of image folder after {delivered} frames{skipped}", error=False)
                return

    def newest(self) -> Frame | None:
        with self._lock:
            latest = self._latest
        if latest is None:
            return None
        img, fmt, seq, t = latest
        if self._frame is None or self._frame.seq != seq:
            # The thread never writes into a published image (imread allocates a new one): no copy.
            self._frame = Frame(self.name, img, fmt, img.shape[1], img.shape[0], seq, t)
        return self._frame

    def ended(self) -> End | None:
        return self._ended

    def trouble(self) -> str | None:
        with self._lock:
            bad, count = self._bad, self.unreadable
        if bad is None or time.monotonic() - bad[1] > TROUBLE_S:
            return None
        return f"image folder {self.path}: unreadable image {bad[0]} skipped ({count} so far)"

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
