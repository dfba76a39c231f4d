"""Which backend runs ``--engine``: ``--backend auto|trt|ort|torch`` and ``--device cpu|cuda``.

``choose_backend`` is pure (it takes what ``probe_available`` found), so the whole decision table
is tested without TensorRT or a GPU. The rules:

- ``auto``: TensorRT when it is installed and the device is CUDA, or the engine is a TensorRT plan;
  otherwise ONNX Runtime on the CPU, or PyTorch (``program.pt2``) on CUDA, because the ONNX Runtime
  wheel this project uses has only the CPU execution provider;
- an explicit backend that cannot run here (not installed, no CUDA device, a device it does not
  support, a ``.plan`` for anything but TensorRT) is a one-line ``VlaError`` naming what is missing.

The reason string says why, with versions, for the start-up line (``auto: TensorRT not installed;
ONNX Runtime 1.32.0 on CPU``).
"""

from __future__ import annotations

import contextlib
import importlib.util
from importlib import metadata
from pathlib import Path

from ..cli_support import install_hint
from ..errors import VlaError

BACKENDS = ("auto", "trt", "ort", "torch")
DEVICES = ("cpu", "cuda")
#: What ``choose_backend`` returns: the names the backends call themselves (``Backend.name``).
TENSORRT, ONNXRUNTIME, TORCH = "tensorrt", "onnxruntime", "torch"
#: The message ``engine.resolve`` has always given for a plan it cannot run; kept word for word.
PLAN_WITHOUT_TRT = ("--engine {engine}: a TensorRT plan needs TensorRT, which is not installed here; "
                    "run it where it was built (vla-build), or run the bundle with --backend ort")


def _dist_version(dist: str) -> str | None:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version(dist)
    return None


def probe_available(check_cuda: bool = True, tensorrt: bool = True) -> dict[str, str | None]:
    """What this machine has: ``{"tensorrt", "onnxruntime", "torch", "cuda"}``, each a version/name or None.

    ``tensorrt`` is imported, not looked up: the registry's ``tensorrt`` packages install stubs that
    fail at import, and only an import tells. PyTorch is imported only with ``check_cuda`` (to ask
    whether it sees a GPU): importing it costs 1-2 s and a few hundred MB, which a vehicle running
    ONNX Runtime on the CPU should not pay for a check it does not need. ``cuda`` is
    ``"<GPU name>, CUDA <version>"`` when PyTorch sees a CUDA device, else None. ``tensorrt=False``
    skips TensorRT's import (for an explicit ``--backend ort|torch``, which does not need it).
    """
    found: dict[str, str | None] = {"tensorrt": None, "onnxruntime": None, "torch": None, "cuda": None}
    if tensorrt:
        try:
            import tensorrt as trt

            found["tensorrt"] = str(getattr(trt, "__version__", "unknown version"))
        except Exception:  # ImportError, or a stub package that raises anything at import
            pass
    found["onnxruntime"] = _dist_version("onnxruntime") if importlib.util.find_spec("onnxruntime") else None
    if importlib.util.find_spec("torch") is None:
        return found
    found["torch"] = (_dist_version("torch") or "unknown version").split("+")[0]
    if check_cuda:
        try:
            import torch

            if torch.cuda.is_available():
                found["cuda"] = f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
        except Exception:  # a broken CUDA setup is "no CUDA" here; the backend says more if asked
            pass
    return found


def _is_plan(engine_path: str | Path) -> bool:
    return Path(str(engine_path)).suffix == ".plan"


def choose_backend(requested: str, device: str, engine_path: str | Path,
                   available: dict[str, str | None]) -> tuple[str, str]:
    """(backend name, why) for ``--backend requested --device device``; a one-line ``VlaError`` when none can run.

    Pure: ``available`` is ``probe_available()``'s answer (missing keys count as absent).
    """
    if requested not in BACKENDS:
        raise VlaError(f"--backend {requested}: expected one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise VlaError(f"--device {device}: expected one of {', '.join(DEVICES)}")
    trt, ort, torch, cuda = (available.get(k) for k in ("tensorrt", "onnxruntime", "torch", "cuda"))
    plan = _is_plan(engine_path)

    if requested == "trt":
        if not trt:
            raise VlaError("--backend trt: TensorRT is not installed (import tensorrt failed); "
                           "use --backend ort (CPU) or --backend torch")
        # TensorRT runs on the GPU whatever --device says; say so rather than refuse the default.
        note = "" if device == "cuda" else " (TensorRT runs on CUDA; --device cpu does not apply)"
        return TENSORRT, f"--backend trt: TensorRT {trt}{note}"
    if plan and requested != "auto":
        raise VlaError(f"--engine {engine_path}: a TensorRT plan runs only with --backend trt "
                       f"(not --backend {requested}); give the bundle folder for {requested}")

    if requested == "ort":
        if device == "cuda":
            raise VlaError("--backend ort --device cuda: this onnxruntime has only the CPU execution provider; "
                           "use --device cpu, or --backend torch / trt for CUDA")
        if not ort:
            raise VlaError("--backend ort: ONNX Runtime is not installed (pip install onnxruntime)")
        return ONNXRUNTIME, f"--backend ort: ONNX Runtime {ort} on CPU"

    if requested == "torch":
        if not torch:
            raise VlaError(f"--backend torch: PyTorch is not installed; needs {install_hint('torch')}")
        if device == "cuda" and not cuda:
            raise VlaError(f"--backend torch --device cuda: PyTorch {torch} sees no CUDA device "
                           "(a CPU-only build, or no GPU/driver); use --device cpu")
        where = f"CUDA ({cuda})" if device == "cuda" else "CPU"
        return TORCH, f"--backend torch: PyTorch {torch} on {where}"

    # auto
    if trt and (device == "cuda" or plan):
        why = "a TensorRT plan" if plan else "--device cuda"
        return TENSORRT, f"auto: {why}; TensorRT {trt}"
    if plan:
        raise VlaError(PLAN_WITHOUT_TRT.format(engine=engine_path))
    if device == "cuda":
        if torch and cuda:
            return TORCH, (f"auto: TensorRT not installed; PyTorch {torch} on CUDA ({cuda}) "
                           "(ONNX Runtime here is CPU-only)")
        missing = f"PyTorch {torch} sees no CUDA device" if torch else "PyTorch is not installed"
        raise VlaError(f"--device cuda: no backend here can use CUDA (TensorRT not installed, {missing}, "
                       "ONNX Runtime is CPU-only); use --device cpu")
    trt_note = f"TensorRT {trt} needs --device cuda" if trt else "TensorRT not installed"
    if ort:
        return ONNXRUNTIME, f"auto: {trt_note}; ONNX Runtime {ort} on CPU"
    if torch:
        return TORCH, f"auto: {trt_note}, ONNX Runtime not installed; PyTorch {torch} on CPU"
    raise VlaError("no backend installed: install onnxruntime (pip install onnxruntime), or PyTorch")
