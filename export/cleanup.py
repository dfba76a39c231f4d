"""Graph clean-up after export, with onnxslim: constant folding, dead-node and common-subexpression
elimination, shape simplification; then ONNX Runtime's *basic* offline optimisations; then an opset
and operator check for TensorRT's parser.

ONNX Runtime's basic level only rewrites with standard ONNX ops (its extended level would bring in
``com.microsoft`` ops TensorRT cannot parse). Among its rewrites, MatMul + Add become a Gemm on a
2-D view of the activations, using the weight as it is: the form whose INT8 Q/DQ version ONNX
Runtime runs with its fused integer kernels (31 vs 49 ms for the reference model's INT8 graph on
this machine, FP32 unchanged; see benchmarks/RESULTS.md).

One onnxslim fusion is skipped: ``FusionGemm`` turns MatMul+Add into Gemm with a transposed copy
of the weight *per use*, and a model that reuses weights (the reference model's action expert runs
once per Euler step) then grows by the copies (50 → 80 MB measured). ONNX Runtime and TensorRT both
fuse MatMul+Add themselves.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from vla.runtime.errors import VlaError

#: Opsets the ONNX parsers of TensorRT 10.3 (JetPack 6) and 11.x both read: 10.3 ships ONNX 1.16,
#: whose newest opset is 20; 11.x reads up to 25. Older than 9 is not supported by either.
TRT_OPSETS = range(9, 21)
SKIPPED_FUSIONS = ["FusionGemm"]


def graph_figures(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes, parameters (initializer elements) and serialised size in bytes."""
    params = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    return {"nodes": len(model.graph.node), "parameters": params, "bytes": model.ByteSize()}


def slim(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The cleaned model and a report of nodes, parameters and size before and after."""
    import onnxslim

    before = graph_figures(model)
    logging.getLogger("onnxslim").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cleaned = onnxslim.slim(model, skip_fusion_patterns=SKIPPED_FUSIONS)
    except Exception as exc:
        first = " ".join(str(exc).split())[:200]
        raise VlaError(f"graph clean-up (onnxslim) failed: {type(exc).__name__}: {first}; "
                       "--no-slim exports without it") from None
    if cleaned is None:
        raise VlaError("graph clean-up (onnxslim) returned no model; --no-slim exports without it")
    del cleaned.metadata_props[:]  # onnxslim may stamp its own; the bundle writes ours
    cleaned = ort_basic_optimise(cleaned)
    after = graph_figures(cleaned)
    return cleaned, {"tool": f"onnxslim {onnxslim.__version__} + onnxruntime {ort.__version__} basic optimisations",
                     "skipped_fusions": SKIPPED_FUSIONS, "before": before, "after": after}


def ort_basic_optimise(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's basic (standard-op) graph optimisations, saved offline."""
    with tempfile.TemporaryDirectory(prefix="vla-ortopt-") as tmp:
        out = Path(tmp) / "optimised.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(out)
        so.log_severity_level = 3
        try:
            ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = " ".join(str(exc).split())[:200]
            raise VlaError(f"graph clean-up (ONNX Runtime basic optimisation) failed: {first}; "
                           "--no-slim exports without clean-up") from None
        optimised = onnx.load(str(out))
    del optimised.metadata_props[:]
    return prune_opset_imports(optimised)


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """Why TensorRT 10.3 or 11.x could not parse this graph as is (empty: nothing known)."""
    problems = []
    opset = opset_of(model)
    if opset not in TRT_OPSETS:
        problems.append(f"opset {opset} is outside {TRT_OPSETS.start}..{TRT_OPSETS.stop - 1}, "
                        "which TensorRT 10.3 and 11.x both parse")
    foreign = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        problems.append(f"ops from domain(s) {', '.join(foreign)} need TensorRT plugins")
    return problems


def prune_opset_imports(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop opset imports of domains no node uses (converters stamp every domain they know)."""
    used = {n.domain or "" for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model
