"""The vehicle side: manifests, camera sources, backends and the real-time loop (no PyTorch)."""

from __future__ import annotations

from typing import Any

from .errors import CameraError, ManifestError, VlaError

__all__ = ["CameraError", "ManifestError", "RunConfig", "Runner", "VlaError"]


def __getattr__(name: str) -> Any:
    # The loop pulls in OpenCV and ONNX Runtime; load it only when someone asks for it.
    if name in ("Runner", "RunConfig"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'vla.runtime' has no attribute {name!r}")
