"""What every command-line front end shares: one-line errors and exit codes, never a traceback.

A missing optional dependency is the user's to fix, not a bug: ``OPTIONAL_MODULES`` maps each
module our code imports lazily to the distribution that provides it and the extra of
``pyproject.toml`` that installs it, so every CLI names the same ``pip install`` line.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from .errors import VlaError

EXIT_USER_ERROR = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130

DISTRIBUTION = "vla-runtime"
#: Top-level module -> (the distribution pip installs, the extra of ours that brings it, or None for a
#: required dependency). Keep in step with ``[project.optional-dependencies]`` in pyproject.toml
#: (tests/test_export_robust.py checks that every extra named here lists the distribution).
OPTIONAL_MODULES: dict[str, tuple[str, str | None]] = {
    "torch": ("torch", "export"),
    "onnx": ("onnx", "export"),
    "onnxscript": ("onnxscript", "export"),
    "onnx_ir": ("onnxscript", "export"),  # onnxscript's IR, imported by the torch exporter
    "onnxslim": ("onnxslim", "export"),
    "yaml": ("pyyaml", "export"),
    "matplotlib": ("matplotlib", "bench"),
    "tokenizers": ("tokenizers", "text"),
    "cuda": ("cuda-bindings", "trt"),
    "safetensors": ("safetensors", "export"),
    "tqdm": ("tqdm", "sim"),
    "ray": ("ray", "sim"),
    "grpc": ("grpcio", "serve"),
    "carla_driver_interface": ("carla-driver-interface", "serve"),
    "mcap": ("mcap", "record"),
    "zstandard": ("zstandard", "record"),
    "foxglove": ("foxglove-sdk", "record"),
    "pyarrow": ("pyarrow", "fleet"),
    # Required dependencies: missing only from a broken or partial install.
    "numpy": ("numpy", None),
    "onnxruntime": ("onnxruntime", None),
    "cv2": ("opencv-python-headless", None),
    "jsonschema": ("jsonschema", None),
    "av": ("av", None),
    "linuxpy": ("linuxpy", None),
    "prometheus_client": ("prometheus-client", None),
}


def install_hint(module: str) -> str:
    """``onnx, from the export extra: pip install 'vla-runtime[export]'`` for a module we know; a plain
    ``pip install`` line for one we do not (a dependency of a dependency, or of the user's model)."""
    top = module.split(".")[0]
    dist, extra = OPTIONAL_MODULES.get(top, (None, None))
    if dist is None:
        return f"{module} (pip install {top})"
    named = dist if dist == top else f"{dist} (module {top})"
    if extra is None:
        return (f"{named}, which {DISTRIBUTION} requires: the install is incomplete; "
                f"pip install '{DISTRIBUTION}' (or '.' in a checkout)")
    return f"{named}, from the {extra} extra: pip install '{DISTRIBUTION}[{extra}]' (or '.[{extra}]' in a checkout)"


def require(*modules: str) -> None:
    """Refuse at once, in one line, when a module a command will need is not installed: before minutes
    of work, not when the step that imports it is reached."""
    import importlib.util

    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a parent package missing, or an import hook refusing it
            found = False
        if not found:
            raise VlaError(f"needs {install_hint(module)}")


def missing_module(exc: BaseException) -> str | None:
    """The module a failed import could not find, or None when ``exc`` is not about a missing module.

    ``ImportError`` (not only ``ModuleNotFoundError``) counts when it names a module of the table:
    ``from onnx import x`` failing means an onnx too old or half installed, which the same line fixes.
    A module of ours (``vla.*``) missing is a broken install or a bug, reported as a bug.
    """
    if not isinstance(exc, ImportError) or not exc.name:
        return None
    if exc.name.split(".")[0] == "vla":
        return None
    if isinstance(exc, ModuleNotFoundError) or exc.name.split(".")[0] in OPTIONAL_MODULES:
        return exc.name
    return None


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; user errors print ``prog: error: ...`` and exit 2, bugs one line and exit 3.

    A missing dependency is a user error: ``prog: needs MODULE, from the X extra: pip install ...``.
    ``VLA_DEBUG=1`` prints the full traceback for bug reports.
    """
    try:
        return body()
    except VlaError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("VLA_DEBUG"):
            traceback.print_exc()
        module = missing_module(exc)
        if module is not None:
            print(f"{prog}: error: needs {install_hint(module)}", file=sys.stderr)
            return EXIT_USER_ERROR
        detail = " ".join(str(exc).split())[:300]
        print(f"{prog}: internal error: {type(exc).__name__}: {detail} "
              "(a bug in vla; rerun with VLA_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return EXIT_BUG
