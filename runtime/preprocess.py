"""Raw camera frame -> the engine's camera slot, with the fused ``vla.kernels.preprocess`` kernel.

One pass per camera: colour conversion (BT.601 limited range, as V4L2/USB cameras deliver), a
centred crop to the model's aspect ratio, a bilinear resize, normalisation when the graph does not
do it, and the layout, written straight into the slot of the batched input. The CPU twin runs
here; the CUDA kernel runs the same arithmetic on device buffers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.kernels import preprocess
from vla.kernels.preprocess import centre_crop

from .cpu import default_threads
from .errors import CameraError
from .sources.base import PIXEL_FORMATS, Frame


class Preprocessor:
    """Converts frames of one camera into ``out`` (its [3, H, W] or [H, W, 3] slot of the input)."""

    def __init__(self, camera: dict[str, Any], out: np.ndarray, threads: int | None = None) -> None:
        if camera["color"] == "GRAY":
            raise CameraError("GRAY camera inputs are not supported by the preprocessing kernel yet")
        self.out = out
        self.threads = threads or default_threads()  # cores - 1: the spare one is the cameras'
        self.layout = "chw" if camera["layout"] == "NCHW" else "hwc"
        self.channel_order = camera["color"].lower()
        norm = camera.get("normalization")
        apply = norm is not None and not norm["in_graph"]
        self.mean = norm["mean"] if apply else 0.0
        self.std = norm["std"] if apply else 1.0
        self.out_h, self.out_w = (out.shape[1], out.shape[2]) if self.layout == "chw" else out.shape[:2]
        self._key: tuple | None = None
        self._roi: tuple[int, int, int, int] = (0, 0, 1, 1)

    def __call__(self, frame: Frame) -> None:
        if frame.fmt not in PIXEL_FORMATS:
            raise CameraError(f"camera '{frame.camera}': pixel format {frame.fmt!r} is not supported")
        key = (frame.width, frame.height)
        if self._key != key:  # the crop follows the frame size, which a camera may change
            self._roi = centre_crop(frame.width, frame.height, self.out_w, self.out_h)
            self._key = key
        try:
            preprocess(frame.data, frame.fmt, self.out, roi=self._roi, mean=self.mean, std=self.std,
                       layout=self.layout, channel_order=self.channel_order, threads=self.threads)
        except ValueError as exc:
            raise CameraError(f"camera '{frame.camera}': bad frame ({exc})") from None
