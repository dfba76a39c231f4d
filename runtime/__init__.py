"""The vehicle side: manifests, camera sources, backends and the real-time loop (no PyTorch)."""

from .errors import CameraError, ManifestError, VlaError

__all__ = ["CameraError", "ManifestError", "VlaError"]
