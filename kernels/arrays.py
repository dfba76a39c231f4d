"""What the kernels accept as arrays: NumPy (host), ``__cuda_array_interface__`` (device), or any
DLPack producer (PyTorch, JAX, ...), taken without a copy.

The native side reads the buffer protocol and ``__cuda_array_interface__``; a DLPack-only object
is turned into one of those here: ``numpy.from_dlpack`` for host memory, ``cupy.from_dlpack`` for
CUDA memory (CuPy is the one dependency that needs, and only on GPU machines).
"""

from __future__ import annotations

from typing import Any

_DLPACK_CPU, _DLPACK_CUDA, _DLPACK_CUDA_HOST = 1, 2, 3


def as_kernel_array(obj: Any, name: str) -> Any:
    """``obj`` itself when the native side can read it, else a zero-copy view through DLPack."""
    if obj is None or hasattr(obj, "__cuda_array_interface__") or hasattr(obj, "__array_interface__"):
        return obj
    if not hasattr(obj, "__dlpack__"):
        return obj  # lists and the like: the native side names the argument and what it expected
    device_type = int(obj.__dlpack_device__()[0])
    if device_type in (_DLPACK_CPU, _DLPACK_CUDA_HOST):
        import numpy as np

        return np.from_dlpack(obj)
    if device_type == _DLPACK_CUDA:
        try:
            import cupy
        except ImportError:
            raise ValueError(f"{name}: a DLPack CUDA array needs CuPy to be read here "
                             "(or pass an object with __cuda_array_interface__)") from None
        return cupy.from_dlpack(obj)
    raise ValueError(f"{name}: DLPack device type {device_type} is neither host nor CUDA memory")
