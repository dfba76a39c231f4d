"""Raw camera frame -> the engine's camera slot (NumPy/OpenCV path).

Colour conversion (OpenCV's BT.601 limited-range YUV, as V4L2/USB cameras deliver), a centred crop
to the model's aspect ratio, an area resize, and the layout change, into preallocated buffers. The
fused one-pass kernels replace this in their own issue; this path stays as their reference.
"""

from __future__ import annotations

import cv2
import numpy as np

from .errors import CameraError
from .sources.base import Frame

# (frame fmt, model colour) -> OpenCV conversion code; None means the bytes are already right.
_CODES = {
    ("yuyv", "RGB"): cv2.COLOR_YUV2RGB_YUYV, ("yuyv", "BGR"): cv2.COLOR_YUV2BGR_YUYV,
    ("uyvy", "RGB"): cv2.COLOR_YUV2RGB_UYVY, ("uyvy", "BGR"): cv2.COLOR_YUV2BGR_UYVY,
    ("nv12", "RGB"): cv2.COLOR_YUV2RGB_NV12, ("nv12", "BGR"): cv2.COLOR_YUV2BGR_NV12,
    ("i420", "RGB"): cv2.COLOR_YUV2RGB_I420, ("i420", "BGR"): cv2.COLOR_YUV2BGR_I420,
    ("bgr", "RGB"): cv2.COLOR_BGR2RGB, ("bgr", "BGR"): None,
    ("rgb", "RGB"): None, ("rgb", "BGR"): cv2.COLOR_RGB2BGR,
    ("gray", "RGB"): cv2.COLOR_GRAY2RGB, ("gray", "BGR"): cv2.COLOR_GRAY2BGR,
}


def centre_crop(width: int, height: int, out_w: int, out_h: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the largest centred window with the output's aspect ratio."""
    if width * out_h > height * out_w:  # too wide: trim the sides
        w = round(height * out_w / out_h)
        return (width - w) // 2, 0, w, height
    h = round(width * out_h / out_w)
    return 0, (height - h) // 2, width, h


class Preprocessor:
    """Converts frames of one camera into ``out`` ([3, H, W] uint8 slot of the batched input).

    Buffers are allocated on the first frame and reused while the frame size stays the same.
    """

    def __init__(self, color: str, out: np.ndarray, layout: str = "NCHW") -> None:
        if color == "GRAY":
            raise CameraError("GRAY camera inputs are not supported by the NumPy preprocessing path yet")
        self.color, self.out, self.layout = color, out, layout
        self.out_h, self.out_w = (out.shape[1], out.shape[2]) if layout == "NCHW" else out.shape[:2]
        self._key: tuple | None = None

    def _prepare(self, frame: Frame) -> None:
        code = _CODES.get((frame.fmt, self.color), -1)
        if code == -1:
            raise CameraError(f"camera '{frame.camera}': pixel format {frame.fmt!r} is not supported")
        self._code = code
        self._rgb = np.empty((frame.height, frame.width, 3), dtype=np.uint8)
        self._crop = centre_crop(frame.width, frame.height, self.out_w, self.out_h)
        self._small = np.empty((self.out_h, self.out_w, 3), dtype=np.uint8)
        self._key = (frame.fmt, frame.width, frame.height)

    def __call__(self, frame: Frame) -> None:
        if self._key != (frame.fmt, frame.width, frame.height):
            self._prepare(frame)
        if self._code is None:
            rgb = frame.data
        else:
            cv2.cvtColor(frame.data, self._code, dst=self._rgb)
            rgb = self._rgb
        x, y, w, h = self._crop
        cv2.resize(rgb[y : y + h, x : x + w], (self.out_w, self.out_h), dst=self._small,
                   interpolation=cv2.INTER_AREA)
        if self.layout == "NCHW":
            np.copyto(self.out, self._small.transpose(2, 0, 1))
        else:
            np.copyto(self.out, self._small)
