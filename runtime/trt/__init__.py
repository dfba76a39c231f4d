"""TensorRT on the target: build a plan from a bundle (``vla-build``), cache it, and check it is still valid.

TensorRT cannot be installed where this project is developed (the registry's wheels are download
stubs), and engines are specific to a GPU and a TensorRT version, so everything here is written to
the documented API of TensorRT 10.3 (JetPack 6) and 11.x, imports TensorRT and the CUDA bindings
lazily, inside functions, and turns their absence into one line saying what is missing.

- ``cache``: pure logic: the key a plan was built for, its sidecar manifest, why a plan is stale,
  and what to do about it (build, reuse, rebuild, refuse);
- ``build``: the ONNX parser and builder, with progress, a timing cache and plugin libraries;
- ``cli``: the ``vla-build`` command.

This module holds what build, cache and the runner (``backends/trt.py``) share: the lazy imports,
CUDA error checking and the probe of the machine (GPU, compute capability, driver, free memory).
"""

from __future__ import annotations

import platform
import re
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..cli_support import install_hint
from ..errors import VlaError

#: The oldest TensorRT whose Python API this code is written to (JetPack 6). 10.0-10.2 have the
#: same calls, so they are accepted; 8.x/9.x lack them (progress monitor, IO-tensor API) and are refused.
MIN_TENSORRT = (10, 0)
INSTALL_HINT = "pip install tensorrt or use JetPack's python3-libnvinfer"


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; a suffix (``"11.0.1rc1"``) ends it: ``(11, 0, 1)``."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(p) for p in match.group(0).split(".")) if match else ()


def tensorrt_missing(detail: str, who: str = "vla-build runs") -> str:
    """The one line for a machine without TensorRT: what failed, where TensorRT runs, how to get it."""
    return (f"TensorRT is not installed (import tensorrt failed: {detail}); {who} on the target "
            f"(Jetson/DRIVE/x86 GPU) with TensorRT 10.3+ — {INSTALL_HINT}")


def import_tensorrt(who: str = "vla-build runs") -> ModuleType:
    """``tensorrt``, or a one-line ``VlaError``.

    Any exception counts as "not installed": the registry's ``tensorrt`` packages are stubs that
    raise various errors at import, not only ImportError.
    """
    try:
        import tensorrt as trt
    except Exception as exc:
        raise VlaError(tensorrt_missing(_first_line(exc), who)) from None
    version = str(getattr(trt, "__version__", "0"))
    if version_tuple(version) < MIN_TENSORRT:
        raise VlaError(f"TensorRT {version} is too old: this runtime is written to the API of TensorRT 10.3+ "
                       f"(IO-tensor execution, strongly typed networks) — {INSTALL_HINT}")
    return trt


def import_cudart() -> ModuleType:
    """The CUDA runtime bindings (``cuda.bindings.runtime``; ``cuda.cudart`` in cuda-python < 12.6), or one line.

    cuda-python is what NVIDIA's own TensorRT samples use since 10.14 (pycuda needs compiling).
    """
    try:
        from cuda.bindings import runtime as cudart
    except Exception as first:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # cuda-python before the cuda.bindings layout
        except Exception:
            raise VlaError(f"the CUDA Python bindings are not installed (import cuda.bindings failed: "
                           f"{_first_line(first)}); needs {install_hint('cuda')}") from None
    return cudart


def cuda_error_message(call: str, code: int, name: str, text: str) -> str:
    """One line for a failed CUDA call; no driver / no device say so, since that is what users can fix."""
    line = f"{call} failed: {name} ({code}): {text}"
    if code in (35, 100, 999):  # InsufficientDriver, NoDevice, Unknown (a driver that cannot start)
        line += "; no usable CUDA device here (no GPU, no driver, or a driver older than this CUDA)"
    elif code == 2:  # MemoryAllocation
        line += "; the GPU is out of memory: close other GPU processes (vla-run, torch, another build)"
    return line


def cuda_check(cudart: ModuleType, call: str, result: Any) -> Any:
    """Unpack a cuda-bindings result ``(err, *values)``: the value(s), or a ``VlaError`` naming ``call``."""
    err, *values = result if isinstance(result, tuple) else (result,)
    code = int(getattr(err, "value", err))
    if code != 0:
        _, name = cudart.cudaGetErrorName(err)
        _, text = cudart.cudaGetErrorString(err)
        raise VlaError(cuda_error_message(call, code, _text(name), _text(text)))
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode(errors="replace").strip()
    return str(value).strip()


def cuda_version_text(version: int) -> str:
    """CUDA's integer versions (``12040``) as ``"12.4"``."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def platform_tag() -> str:
    """``linux-aarch64``, ``linux-x86_64``: plans are not portable across these."""
    return f"{sys.platform}-{platform.machine().lower()}"


#: TensorRT ``DataType`` member names -> the manifest's dtype names (the I/O types a manifest can declare).
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
              "BOOL": "bool", "UINT8": "uint8"}


def dtype_name(trt_dtype: Any) -> str:
    """A TensorRT ``DataType`` as the manifest names it; others (BF16, FP8) keep their own name, lower case,
    so a comparison with the manifest fails naming them."""
    name = str(getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1])
    return TRT_DTYPES.get(name, name.lower())


@dataclass(frozen=True)
class CudaDevice:
    """What a plan depends on, and what sizing the build's workspace needs, for one GPU."""

    index: int
    name: str
    compute_capability: str  # "8.7"
    driver: str  # "12.6"
    runtime: str  # the CUDA runtime the bindings use
    free_bytes: int
    total_bytes: int


def probe_cuda(device: int = 0, cudart: ModuleType | None = None) -> CudaDevice:
    """Select ``device`` and describe it; a one-line ``VlaError`` without a driver or a GPU."""
    cudart = cudart or import_cudart()
    count = cuda_check(cudart, "cudaGetDeviceCount", cudart.cudaGetDeviceCount())
    if count < 1:
        raise VlaError("no CUDA device: cudaGetDeviceCount found 0 GPUs; TensorRT needs one")
    if device >= count:
        raise VlaError(f"CUDA device {device} does not exist (this machine has {count})")
    cuda_check(cudart, "cudaSetDevice", cudart.cudaSetDevice(device))
    props = cuda_check(cudart, "cudaGetDeviceProperties", cudart.cudaGetDeviceProperties(device))
    driver = cuda_check(cudart, "cudaDriverGetVersion", cudart.cudaDriverGetVersion())
    runtime = cuda_check(cudart, "cudaRuntimeGetVersion", cudart.cudaRuntimeGetVersion())
    free, total = cuda_check(cudart, "cudaMemGetInfo", cudart.cudaMemGetInfo())
    return CudaDevice(device, _text(props.name), f"{props.major}.{props.minor}", cuda_version_text(driver),
                      cuda_version_text(runtime), int(free), int(total))


__all__ = [
    "CudaDevice",
    "cuda_check",
    "cuda_error_message",
    "dtype_name",
    "import_cudart",
    "import_tensorrt",
    "platform_tag",
    "probe_cuda",
    "tensorrt_missing",
    "version_tuple",
]
