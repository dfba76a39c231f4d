"""Native kernels (`vla.kernels`): C++ always, CUDA when the extension was built with nvcc.

Each kernel's arithmetic is written once (``kernels/src/<kernel>.h``) and compiled twice: into a
multi-threaded CPU twin, run for NumPy arrays, and a CUDA kernel, run for device arrays
(``__cuda_array_interface__``) on a given stream.

The extension links the CUDA runtime statically, so it imports on a machine with no GPU and no
driver; ``cuda_available()`` is then False and ``cuda_status()`` says why.
"""

from __future__ import annotations

from functools import lru_cache

from . import _core
from .decode import DecodedTrajectory, decode_trajectory
from .preprocess import FORMATS, preprocess

# cudaErrorInsufficientDriver / cudaErrorNoDevice: the two ways "no GPU here" shows up.
_NO_DRIVER = 35
_NO_DEVICE = 100


@lru_cache(maxsize=1)
def cuda_report() -> dict:
    """The CUDA runtime's own report (compiled archs, versions, error code, device 0)."""
    return dict(_core.cuda_report())


def cuda_compiled() -> bool:
    """Whether this build contains CUDA code at all."""
    return bool(_core.cuda_compiled)


def cuda_available() -> bool:
    """Whether CUDA kernels can run here: compiled in, a driver, and at least one device."""
    report = cuda_report()
    return bool(report.get("compiled")) and report.get("error_code") == 0 and report["device_count"] > 0


def cuda_status() -> str:
    """One line for logs and errors: which GPU will be used, or why none can be."""
    r = cuda_report()
    if not r.get("compiled"):
        return "CUDA unavailable: this build has no CUDA code (nvcc was not found when it was built)"
    code = r.get("error_code")
    if code == _NO_DRIVER:
        return "CUDA unavailable: no NVIDIA driver on this machine (cudaErrorInsufficientDriver, 35)"
    if code == _NO_DEVICE:
        return "CUDA unavailable: the driver reports no CUDA device (cudaErrorNoDevice, 100)"
    if code != 0:
        return f"CUDA unavailable: {r.get('error_name')} ({code}): {r.get('error_text')}"
    if r["device_count"] == 0:
        return "CUDA unavailable: no CUDA device"
    major, minor = r["compute_capability"]
    return f"CUDA available: {r['device_name']} (sm_{major}{minor}), {r['device_count']} device(s)"


__all__ = [
    "FORMATS",
    "DecodedTrajectory",
    "cuda_available",
    "cuda_compiled",
    "cuda_report",
    "cuda_status",
    "decode_trajectory",
    "preprocess",
]
