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
from .decode import DecodedTrajectory, TrajectoryDecoder, decode_trajectory
from .preprocess import FORMATS, PreparedPreprocess, prepare, preprocess, preprocess_many, preprocess_start


@lru_cache(maxsize=1)
def cuda_report() -> dict:
    """The CUDA runtime's own report (compiled archs, versions, error code, device 0)."""
    return dict(_core.cuda_report())


def cuda_compiled() -> bool:
    """Whether this build contains CUDA code at all."""
    return bool(_core.cuda_compiled)


def cuda_available() -> bool:
    """Whether CUDA kernels can run here: compiled in, a driver, and at least one device."""
    return _core.cuda_unavailable_reason() == ""


def cuda_status() -> str:
    """One line for logs and errors: which GPU will be used, or why none can be (the same reason the
    kernels give when a device array reaches a machine that cannot run them)."""
    why = _core.cuda_unavailable_reason()
    if why:
        return f"CUDA unavailable: {why}"
    r = cuda_report()
    major, minor = r["compute_capability"]
    return f"CUDA available: {r['device_name']} (sm_{major}{minor}), {r['device_count']} device(s)"


__all__ = [
    "FORMATS",
    "DecodedTrajectory",
    "PreparedPreprocess",
    "TrajectoryDecoder",
    "cuda_available",
    "cuda_compiled",
    "cuda_report",
    "cuda_status",
    "decode_trajectory",
    "prepare",
    "preprocess",
    "preprocess_many",
    "preprocess_start",
]
