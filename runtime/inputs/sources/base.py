"""The camera-source interface every kind of camera implements.

A source behaves like a real camera driver: it captures on its own (a thread, a process, the
kernel), keeps only the newest frame, and never queues. The loop asks for the newest frame when a
tick starts; comparing ``seq`` with the previous tick tells it whether the frame is new and how
many frames the camera itself dropped in between.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

#: Raw pixel formats and the array shape a frame of that format has (H, W = image size).
PIXEL_FORMATS = {
    "yuyv": "(H, W, 2) uint8: Y0 U Y1 V per pixel pair (V4L2 YUYV / YUY2)",
    "uyvy": "(H, W, 2) uint8: U Y0 V Y1 per pixel pair",
    "nv12": "(H*3/2, W) uint8: Y plane, then interleaved UV at half resolution",
    "i420": "(H*3/2, W) uint8: Y plane, then U and V planes at half resolution",
    "rgb": "(H, W, 3) uint8",
    "bgr": "(H, W, 3) uint8",
    "gray": "(H, W) uint8",
}


@dataclass(frozen=True)
class EgoState:
    """Vehicle state at a frame's capture time, when the source knows it (e.g. the synthetic rig)."""

    speed: float  # m/s
    accel: float  # m/s^2, longitudinal
    yaw_rate: float  # rad/s, positive to the left


@dataclass
class Frame:
    """One raw camera frame. ``data`` is valid until the source's next ``newest()`` call."""

    camera: str
    data: np.ndarray
    fmt: str  # a key of PIXEL_FORMATS
    width: int
    height: int
    seq: int  # the camera's own frame counter; a gap means the camera dropped frames
    capture_time: float  # time.monotonic() seconds (CLOCK_MONOTONIC, shared by all processes)
    ego: EgoState | None = None
    truth: np.ndarray | None = None  # ground-truth future path (T, 3) x, y, yaw in the ego frame


@dataclass(frozen=True)
class End:
    """Why a source will deliver no more frames.

    ``error`` tells a failure (device gone, process died, truncated file: the run exits non-zero)
    from a finite source that simply ran out (the end of a complete video file or image folder).
    """

    reason: str
    error: bool = True

    def __str__(self) -> str:
        return self.reason


class CameraSource(ABC):
    """One camera. Construction opens it; ``close()`` releases it; both are cheap to call twice."""

    name: str  # the manifest's camera name this source feeds
    uri: str
    provides_ego: bool = False  # frames carry the vehicle state (Frame.ego), e.g. the synthetic rig

    @abstractmethod
    def newest(self) -> Frame | None:
        """The newest captured frame, or None if none has arrived yet. Never blocks.

        Returns the same Frame object, without copying, while no newer frame has arrived, so the
        loop may poll it cheaply while it waits for the next frame.
        """

    def ended(self) -> End | None:
        """Why the source will deliver no more frames (end of file, process died), else None.

        Live sources that reconnect (V4L2, RTSP) never end: they report ``trouble()`` instead.
        """
        return None

    def trouble(self) -> str | None:
        """Why frames are not arriving right now (device gone and being reopened, stream
        reconnecting), for the loop's fallback and fault reasons; None when all is well."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Stop capturing and release the device."""
