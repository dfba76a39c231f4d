"""PyTorch -> ONNX with the torch.export-based exporter, then the ONNX checker and shape inference.

TorchScript archives are first converted to a torch.export program; when PyTorch's converter
cannot do that (it handles fewer ops than TorchScript does), the TorchScript exporter is the only
one that can read the archive, and the bundle records that it was used and why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from vla.runtime.errors import VlaError
from vla.runtime.manifest import Manifest

from .load import LoadedModel, _first_line
from .trace_errors import explain_export_failure

DEFAULT_OPSET = 20
_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.BOOL: "bool",
}


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and warnings about optional packages and, when tracing fails, partial
    graphs (to stderr) and log lines; a failure is reported as one line of ours, so keep the CLI output ours."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_onnx(loaded: LoadedModel, manifest: Manifest, feeds: dict[str, np.ndarray], path: Path,
                opset: int = DEFAULT_OPSET) -> tuple[dict[str, Any], torch.export.ExportedProgram | None]:
    """Write ``path`` (one self-contained .onnx file); return how it was made, and the torch.export
    program it was made from (None from the TorchScript exporter, or when only the ONNX exporter's
    own fallbacks could trace the module), which the bundle's ``program.pt2`` reuses: one trace."""
    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in manifest.inputs)
    names_in = [t.name for t in manifest.inputs]
    names_out = [t.name for t in manifest.outputs]
    exportable, exporter, note = loaded.exportable, "torch.export", None
    program = exportable if isinstance(exportable, torch.export.ExportedProgram) else None
    start = time.perf_counter()
    with _quiet():
        if loaded.form == "torchscript":
            try:
                from torch._export.converter import TS2EPConverter

                exportable = TS2EPConverter(loaded.exportable, args).convert()
            except Exception as exc:
                exporter = "torchscript"
                note = f"torch.export could not convert the TorchScript archive ({_first_line(exc)})"
        elif program is None:
            try:  # traced once here; on failure the ONNX exporter tries its own strategies on the module
                program = exportable = torch.export.export(exportable, args)
            except Exception:
                program = None
        try:
            torch.onnx.export(exportable, args, str(path), dynamo=exporter == "torch.export",
                              input_names=names_in, output_names=names_out, opset_version=opset,
                              external_data=False)
        except Exception as exc:
            # Name the module and line that stopped the exporter; PyTorch's own text names only an op.
            root = loaded.exportable if isinstance(loaded.exportable, torch.nn.Module) else None
            raise VlaError(f"ONNX export of {loaded.source} failed: {explain_export_failure(exc, root)}") from None
    info = {"exporter": exporter, "opset": opset, "seconds": round(time.perf_counter() - start, 2)}
    if note:
        info["note"] = note
    return info, program


def tensor_types(values: list[onnx.ValueInfoProto]) -> dict[str, tuple[str, tuple[int | str | None, ...]]]:
    """Name -> (dtype, shape) for graph inputs/outputs; symbolic dims come back as strings."""
    out = {}
    for v in values:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        out[v.name] = (_ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}"), dims)
    return out


def check_onnx(path: Path) -> onnx.ModelProto:
    """ONNX checker (full) and strict shape inference; return the model with inferred shapes."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:
        raise VlaError(f"exported ONNX fails the ONNX checker/shape inference: {_first_line(exc)}") from None
