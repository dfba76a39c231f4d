"""The backend interface: every engine (ONNX Runtime, torch, TensorRT) looks like this.

A backend owns one preallocated buffer per input and per output, sized from the manifest. The
loop writes inputs in place (``feed``), calls ``run``, and reads outputs in place; nothing is
allocated per tick. Output arrays are overwritten by the next ``run``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..manifest import Manifest
from .device_io import DeviceIO


class Backend(ABC):
    name: str
    manifest: Manifest

    @abstractmethod
    def feed(self, name: str) -> np.ndarray:
        """The input buffer for ``name``; write into it before ``run``."""

    @abstractmethod
    def run(self) -> dict[str, np.ndarray]:
        """Run on the current inputs; return the output buffers by name."""

    @abstractmethod
    def describe(self) -> str:
        """One line for logs: engine, version, device, threads."""

    def device_io(self) -> DeviceIO | None:
        """The engine's device buffers and stream for the GPU data path (``runtime/loop/device_path.py``);
        None for host backends, which the loop feeds through ``feed``."""
        return None

    def last_timings_ms(self) -> dict[str, float]:
        """The last run's stages in ms where the backend times them itself (GPU backends: ``h2d``,
        ``compute``, ``d2h`` from CUDA events); empty by default."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release the engine."""
