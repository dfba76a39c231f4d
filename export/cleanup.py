"""Graph clean-up after export, with onnxslim: constant folding, dead-node and common-subexpression
elimination, shape simplification; then ONNX Runtime's *basic* offline optimisations; then an opset
and operator check for TensorRT's parser.

ONNX Runtime's basic level only rewrites with standard ONNX ops (its extended level would bring in
``com.microsoft`` ops TensorRT cannot parse). Among its rewrites, MatMul + Add become a Gemm on a
2-D view of the activations, using the weight as it is: the form whose INT8 Q/DQ version ONNX
Runtime runs with its fused integer kernels (31 vs 49 ms for the reference model's INT8 graph on
this machine, FP32 unchanged; see benchmarks/RESULTS.md).

Identical initializers are then stored once (``dedupe_initializers``): the exporter and constant
folding copy a weight per use (a backbone shared by three branches, each copy transposed), which
would make the bundle larger than the model. The parameters counted are weight elements, comparable
with the PyTorch model's ``parameters()``.

One onnxslim fusion is skipped: ``FusionGemm`` turns MatMul+Add into Gemm with a transposed copy
of the weight *per use*, and a model that reuses weights (the reference model's action expert runs
once per Euler step) then grows by the copies (50 → 80 MB measured). ONNX Runtime and TensorRT both
fuse MatMul+Add themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from vla.runtime.errors import VlaError

#: Opsets the ONNX parsers of TensorRT 10.3 (JetPack 6) and 11.x both read: 10.3 ships ONNX 1.16,
#: whose newest opset is 20; 11.x reads up to 25. Older than 9 is not supported by either.
TRT_OPSETS = range(9, 21)
SKIPPED_FUSIONS = ["FusionGemm"]


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                onnx.TensorProto.DOUBLE}


def _weight_elements(init: onnx.TensorProto) -> int:
    """Elements of a weight: a floating-point initializer with at least one axis. Shapes and indices
    (integer tensors) and folded scalar constants (``1/sqrt(d)``, an epsilon) are not parameters, as
    they are not among a PyTorch model's ``parameters()`` either."""
    return int(np.prod(init.dims)) if init.data_type in _FLOAT_TYPES and len(init.dims) > 0 else 0


def graph_figures(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes, parameters (weight elements, as ``_weight_elements`` counts them) and serialised size in bytes,
    comparable with ``sum(p.numel() for p in model.parameters())``."""
    params = sum(_weight_elements(i) for i in model.graph.initializer)
    return {"nodes": len(model.graph.node), "parameters": params, "bytes": model.ByteSize()}


def dedupe_initializers(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Store identical initializers once: same dtype, shape and bytes; every use reads the first of them.

    The exporter and constant folding make copies: a weight shared by three branches (tied, or one
    backbone called three times) reaches the graph as one transposed copy per use, so a bundle would
    hold more parameters than the model. Merging by content is exact (bytes, so -0.0 and NaN payloads
    stay apart) and deterministic (the first in graph order is kept): the same graph gives the same
    bytes. Initializers that are graph inputs or outputs are left alone (an input's default may be
    overridden at run time, so nothing else may read it). Returns the model (changed in place) and how
    many initializers and parameters were merged away.
    """
    graph = model.graph
    protected = {v.name for v in graph.input} | {v.name for v in graph.output}
    # By digest, not bytes: holding every tensor's bytes would double a large model's memory; a digest
    # match is confirmed on the bytes of the two tensors alone.
    first: dict[tuple[int, tuple[int, ...], bytes], onnx.TensorProto] = {}
    rename: dict[str, str] = {}
    keep: list[onnx.TensorProto] = []
    saved = 0
    for init in graph.initializer:
        if init.name in protected:  # an input's default can be overridden at run time: never shared
            keep.append(init)
            continue
        data = _bytes(init)
        key = (init.data_type, tuple(init.dims), hashlib.sha256(data).digest())
        seen = first.get(key)
        if seen is not None and _bytes(seen) == data:
            rename[init.name] = seen.name
            saved += _weight_elements(init)
            continue
        first.setdefault(key, init)
        keep.append(init)
    if rename:
        _rename_inputs(graph, rename)
        del graph.initializer[:]
        graph.initializer.extend(keep)
        kept_info = [v for v in graph.value_info if v.name not in rename]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
    return model, {"initializers": len(rename), "parameters": saved}


def _bytes(init: onnx.TensorProto) -> bytes:
    """An initializer's values as raw bytes (whichever field of the proto holds them)."""
    return np.ascontiguousarray(numpy_helper.to_array(init)).tobytes()


def shared_note(merged: dict[str, int]) -> str:
    """``"; 3 identical initializers stored once (8,192 parameters)"`` for the export's progress line."""
    if not merged.get("initializers"):
        return ""
    return f"; {merged['initializers']} identical initializer(s) stored once ({merged['parameters']:,} parameters)"


def parameter_note(model: onnx.ModelProto, declared: Any) -> str | None:
    """Why the graph holds more weight elements than the PyTorch model's ``parameters()``, or None.

    After ``dedupe_initializers`` only what is not a parameter can make the difference: buffers (a
    sampler's time grid, running statistics not folded) or a weight that constant folding keeps in two
    forms (used as is and transposed)."""
    if not isinstance(declared, int) or isinstance(declared, bool):
        return None
    held = graph_figures(model)["parameters"]
    if held <= declared:
        return None
    return (f"the graph holds {held:,} weight elements, {held - declared:,} more than the model's {declared:,} "
            "parameters: buffers and constants folded from them (a sampler's time grid), or a weight that "
            "constant folding keeps in two forms")


def _rename_inputs(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Point node inputs at the kept names, in ``graph`` and its subgraphs (If/Loop bodies read outer
    names), except where a subgraph defines a name of its own."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                local = {i.name for i in sub.initializer} | {v.name for v in sub.input} | \
                    {o for n in sub.node for o in n.output}
                inner = {k: v for k, v in rename.items() if k not in local}
                if inner:
                    _rename_inputs(sub, inner)


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
    cleaned, merged = dedupe_initializers(cleaned)
    after = graph_figures(cleaned)
    return cleaned, {"tool": f"onnxslim {onnxslim.__version__} + onnxruntime {ort.__version__} basic optimisations",
                     "skipped_fusions": SKIPPED_FUSIONS, "before": before, "after": after, "deduplicated": merged}


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
