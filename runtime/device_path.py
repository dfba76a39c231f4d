"""The loop's GPU data path: raw camera bytes in, the chosen trajectory out, the rest on the device.

Used when the backend runs on a GPU (torch on CUDA, TensorRT) and the kernels were built with CUDA.
Per tick, on the backend's stream (``DeviceIO.stream``), with one synchronisation at the end:

1. each camera's raw frame is copied into its pinned staging buffer (the one host copy) and
   uploaded into a device frame buffer (:class:`FrameUploads`);
2. the CUDA preprocess kernel writes every camera's slot of the engine's image input directly
   (``RigPreprocessor`` with device outputs); the backend no longer uploads that input;
3. the engine runs (the backend's ``run``; recurrent state stays on the device, ``commit_state``);
   it copies back only the outputs the loop reads on the host, none by default;
4. :class:`DeviceDecoder`: the CUDA decode kernel reads the engine's trajectory and score outputs
   where they are and writes the chosen, resampled trajectory and its 80-byte verdict, and only
   those two come back.

So the host traffic per tick is the raw frames up and about 2 KB down, which is what the target
(data-path overhead <= 0.3 ms with three 1080p cameras) is about. The arithmetic is the CPU twins'
(``kernels/src/*.h``); ``tests/test_device_path.py`` runs this path on a GPU machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vla.kernels.decode import COLUMNS, RESULT_WORDS, DecodedTrajectory, decode_trajectory

from .backends.device_io import DeviceIO
from .sources.base import Frame


class FrameUploads:
    """Per camera, a pinned staging buffer and a device buffer for its raw frames (made for the
    first frame of each shape, then reused): ``__call__`` enqueues the upload and returns the
    device frame for the preprocess kernel."""

    def __init__(self, io: DeviceIO) -> None:
        self.io = io
        self._buffers: dict[tuple[str, tuple[int, ...]], tuple[Any, np.ndarray]] = {}

    def __call__(self, frame: Frame) -> Any:
        data = frame.data
        key = (frame.camera, tuple(data.shape))
        found = self._buffers.get(key)
        if found is None:
            found = self.io.staging(tuple(data.shape), np.uint8)
            self._buffers[key] = found
        device, pinned = found
        np.copyto(pinned, data)  # rows may be padded in the source: the staging copy is packed
        self.io.upload(device, pinned)
        return device


class DeviceDecoder:
    """``decode_trajectory`` on the device, reading the engine's outputs in place; returns the
    same ``DecodedTrajectory`` as the host decoder, after one synchronisation."""

    def __init__(self, io: DeviceIO, dt: float, steps: int, *, max_curvature: float = 0.3,
                 max_accel: float = 8.0, max_speed: float = 60.0) -> None:
        self.io, self.dt = io, float(dt)
        self.limits = {"max_curvature": max_curvature, "max_accel": max_accel, "max_speed": max_speed}
        self._points, self.points = io.staging((int(steps), len(COLUMNS)), np.float32)
        self._result, self.result = io.staging((RESULT_WORDS,), np.int32)

    def __call__(self, trajectory: Any, score: Any | None) -> DecodedTrajectory:
        pending = decode_trajectory(trajectory, score, self.dt, out=self._points, result=self._result,
                                    stream=self.io.stream, **self.limits)
        self.io.download(self.result, self._result)
        self.io.download(self.points, self._points)
        self.io.synchronize()
        return pending.read(self.result, self.points)
