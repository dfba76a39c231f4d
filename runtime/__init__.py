"""The vehicle side: manifests, camera sources, backends and the real-time loop (no PyTorch).

The embedding API (see the README, "Embedding the loop"): ``open_engine``, ``open_cameras``,
``open_ego_input``, ``Runner`` and ``RunConfig``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import CameraError, ManifestError, VlaError

# Loaded on first use: the loop pulls in OpenCV and ONNX Runtime, which a manifest check does not need.
_LAZY = {
    "Runner": "loop.runner",
    "RunConfig": "loop.runner",
    "open_engine": "engine",
    "open_cameras": "inputs.sources",
    "open_ego_input": "inputs.ego_input",
}

__all__ = ["CameraError", "ManifestError", "VlaError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vla.runtime' has no attribute {name!r}")
