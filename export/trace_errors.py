"""Turn a failure inside a model (eager dry run or torch.export trace) into one line: which module, where, why.

PyTorch's messages name an op or a symbolic expression, not the part of *your* model that caused it.
Two things still know: the traceback (non-strict torch.export runs the model's Python code, so the
frames of the failing submodule's ``forward`` are there, with ``self`` in their locals) and, for
failures after tracing, the FX node being converted (its ``nn_module_stack`` and ``stack_trace``).
"""

from __future__ import annotations

import linecache
import os
import re
import sysconfig
import traceback
from dataclasses import dataclass
from types import FrameType

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from vla.runtime.cli_support import install_hint, missing_module

from .load import _first_line

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_STDLIB_DIR = sysconfig.get_paths()["stdlib"] + os.sep
_SITE_DIRS = tuple({sysconfig.get_paths()[k] + os.sep for k in ("purelib", "platlib")})
# Libraries a model calls into: a failure inside them is reported at the model line that called them.
_LIBRARY_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (np,))
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Culprit:
    """Where in the model a failure happened, as far as the traceback tells."""

    module: str | None = None  # "module blocks.2 (GatedBlock)" or "the top-level module (Net)"
    location: str | None = None  # "model.py:7 (`if x.sum() > 0:`)"
    own_line: bool = True  # the location is in the module's own code, not the line that called it
    frame: FrameType | None = None  # innermost model-code frame, for naming the inputs its line used
    code: str | None = None  # that frame's source line

    def describe(self, what: str = "the model") -> str:
        """``module blocks.2 (Gated) at model.py:7 (`...`)``; ``what`` stands in for an unknown module."""
        if not self.location:
            return self.module or what
        return f"{self.module or what} {'at' if self.own_line else 'called at'} {self.location}"


def _module_label(path: str, type_name: str) -> str:
    return f"module {path} ({type_name})" if path else f"the top-level module ({type_name})"


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes/contexts, outermost first (wrappers such as TorchExportError come first)."""
    out: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in out:
        out.append(link)
        link = link.__cause__ or link.__context__
    return out


def short_message(exc: BaseException, limit: int = 240) -> str:
    """``Type: first line`` without terminal colours, cut to ``limit`` characters."""
    text = " ".join(_ANSI.sub("", _first_line(exc)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_user_file(filename: str) -> bool:
    """Model code: not torch, not the standard library, not generated code (``<string>``, FX's ``<eval_with_key>``)."""
    if filename.startswith(("<", _TORCH_DIR, *_LIBRARY_DIRS)):
        return False
    return not filename.startswith(_STDLIB_DIR) or filename.startswith(_SITE_DIRS)


def _location(filename: str, lineno: int, code: str) -> str:
    code = code if len(code) <= 70 else code[:67] + "..."
    return f"{filename}:{lineno}" + (f" (`{code}`)" if code else "")


def find_culprit(exc: BaseException, root: nn.Module | None) -> Culprit:
    """The innermost submodule of ``root`` on the failing stack, and the innermost model-code line under it.

    Looks through the whole exception chain, since exporters wrap the original error. Frames before
    the model is entered (the caller's) are skipped. Without module frames (failures after tracing,
    in the ONNX converter), the FX node being converted names its module through ``nn_module_stack``.
    """
    names = {id(m): name for name, m in root.named_modules()} if isinstance(root, nn.Module) else {}
    for link in exception_chain(exc):
        culprit, owner, from_node = Culprit(), None, Culprit()
        for frame, lineno in traceback.walk_tb(link.__traceback__):
            this = frame.f_locals.get("self")
            if isinstance(this, nn.Module) and id(this) in names:
                owner = this
                culprit.module = _module_label(names[id(this)], type(this).__name__)
            node = frame.f_locals.get("node")
            if isinstance(node, torch.fx.Node):
                _from_node(node, from_node)
            filename = frame.f_code.co_filename
            if owner is not None and _is_user_file(filename):
                culprit.code = linecache.getline(filename, lineno).strip()
                culprit.location, culprit.frame = _location(filename, lineno, culprit.code), frame
        if owner is not None:
            culprit.own_line = culprit.frame is not None and culprit.frame.f_locals.get("self") is owner
            return culprit
        if from_node.module or from_node.location:
            return from_node
    return Culprit()


def _from_node(node: torch.fx.Node, culprit: Culprit) -> None:
    """An FX node knows the module that produced it and the user line (recorded while tracing)."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, type_name = list(stack.values())[-1]
        type_name = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
        culprit.module = _module_label(path, type_name.rsplit(".", 1)[-1])
    found = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s*(.*)', node.meta.get("stack_trace") or "")
    if found:
        filename, lineno, code = found[-1]
        culprit.location = _location(filename, int(lineno), code.strip())


# ---- why torch.export / the ONNX converter failed --------------------------------------------------------
#: What works instead of a sampler loop torch.export cannot trace (README, "Iterative samplers").
SAMPLER_PATTERN = ("fix the step count K when the model is built (a Python int from its config), compute the "
                   "timesteps/alphas once in __init__ as registered buffers, and unroll the steps with "
                   "`for k in range(K)` (README: Iterative samplers)")
_LOOP_LINE = re.compile(r"^\s*(for\b.*\brange\s*\(|while\b)")
_SCHEDULER_LINE = re.compile(r"\bset_timesteps\b|\bscheduler\b", re.I)


def _scheduler_in(chain: list[BaseException], culprit: Culprit) -> str | None:
    """The class of a diffusers-style scheduler on the failing stack (an object with a ``set_timesteps``
    method, or code under ``diffusers/schedulers``), or ``"scheduler"`` when only the failing line says so."""
    for link in chain:
        for frame, _ in traceback.walk_tb(link.__traceback__):
            this = frame.f_locals.get("self")
            if this is not None and callable(getattr(type(this), "set_timesteps", None)):
                return type(this).__name__
            if f"{os.sep}diffusers{os.sep}schedulers{os.sep}" in frame.f_code.co_filename:
                return frame.f_code.co_name
    if culprit.code and _SCHEDULER_LINE.search(culprit.code):
        return "scheduler"
    return None


def _reason(chain: list[BaseException], culprit: Culprit | None = None) -> str:
    """A plain-words cause plus what to do, from the exception types and messages in the chain, and the
    failing line: sampler loops (schedulers with per-call state, loops over tensor values) get the
    pattern that exports, since torch.export traces one fixed computation."""
    culprit = culprit or Culprit()
    text = " ".join(str(e) for e in chain)
    missing = next((m for m in map(missing_module, chain) if m), None)
    if missing:
        return f"needs {install_hint(missing)}"
    scheduler = _scheduler_in(chain, culprit)
    if scheduler:
        return (f"a diffusers-style scheduler ({scheduler}) runs inside forward: set_timesteps() and step() keep "
                f"per-call state (timesteps, step index) that torch.export cannot trace; {SAMPLER_PATTERN}")
    data_dependent = any(isinstance(e, GuardOnDataDependentSymNode) for e in chain) or \
        re.search(r"data.dependent", text, re.I)
    if data_dependent and culprit.code and _LOOP_LINE.search(culprit.code):
        return ("a Python loop whose number of steps depends on tensor values; torch.export traces one fixed "
                f"computation, so {SAMPLER_PATTERN}, or mask finished steps with torch.where")
    if data_dependent:
        return ("data-dependent control flow (a Python branch, loop or size that depends on tensor values); "
                "use torch.where or torch.cond, or make it static")
    if ".numpy() is not supported" in text or "Cannot access data pointer" in text or ".tolist()" in text:
        return ("it converts a tensor to NumPy/Python data (torch.export traces with fake tensors that hold "
                "no values); compute it with torch ops, and constants (time grids, alphas) once in __init__ as "
                "registered buffers")
    op = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if op:
        return f"op {op.group(1)} has no ONNX translation; rewrite it with standard torch ops"
    if any(type(e).__name__ == "Unsupported" for e in chain):
        return "a Python construct or op torch.export does not support"
    return ""


def _original(chain: list[BaseException]) -> BaseException:
    """The error under the exporter's 'step N failed' wrappers (not the chain's last: that may be an
    unrelated error PyTorch handled on the way)."""
    wrappers = ("TorchExportError", "ConversionError", "GraphConstructionError")
    inner = [e for e in chain if type(e).__name__ not in wrappers]
    return inner[0] if inner else chain[-1]


def explain_export_failure(exc: BaseException, root: nn.Module | None) -> str:
    """One line for a torch.export / ONNX conversion failure: which module, which line, why, the original error."""
    chain = exception_chain(exc)
    traced = any(type(e).__name__ == "TorchExportError" for e in chain)
    stage = "torch.export cannot trace" if traced else "ONNX conversion fails in"
    culprit = find_culprit(exc, root)
    reason = _reason(chain, culprit)
    original = short_message(_original(chain))
    head = f"{stage} {culprit.describe()}"
    return f"{head}: {reason} [{original}]" if reason else f"{head}: {original}"
