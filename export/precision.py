"""Precision decided in the graph: FP16 casts or INT8 Q/DQ, so ONNX Runtime and TensorRT 11
(strongly typed, no precision flags) run the same numbers.

Both conversions are done by ONNX Runtime's own tools: ``onnxruntime.transformers.float16`` for
FP16 (FP32 inputs and outputs kept, sensitive ops blocked), ``onnxruntime.quantization`` for INT8
(QDQ format, symmetric INT8 activations with zero point 0, per-channel symmetric INT8 weights: what
TensorRT's explicit quantisation accepts). Each converter builds a variant of the graph with a list
of nodes *excluded* (kept in FP32); the accuracy gate and ``search`` decide that list.

Why not quantise every op: element-wise ops gain nothing from INT8 on either runtime, while every
extra Q/DQ pair costs time and accuracy. The matrix products (MatMul, Gemm, Conv) hold nearly all
of a transformer's arithmetic.
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
import torch

from vla.runtime.errors import VlaError

from .entropy import install as install_entropy_search

QUANT_OPS = ("MatMul", "Gemm", "Conv")
#: Kept in FP32 under --precision fp16: normalisations and softmax (sums of many small terms, and
#: variances that overflow FP16), exponentials and powers, and integrations along the trajectory
#: (CumSum: FP16 loses centimetres at 50 m).
FP16_KEEP_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "CumSum", "Exp", "Pow",
                 "Sqrt", "Reciprocal", "Div", "Sin", "Cos", "Log", "Erf", "InstanceNormalization",
                 "GroupNormalization", "BatchNormalization", "RMSNormalization")
FP16_MAX = 65504.0
CALIB_METHODS = ("minmax", "entropy", "percentile")


@contextlib.contextmanager
def _quiet_ort_tools():
    """ORT's converters log warnings (e.g. 'please run pre-processing') and print calibrator settings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def output_heads(model: onnx.ModelProto) -> list[str]:
    """Nodes that write a graph output: the final heads, kept in FP32 under FP16."""
    outs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if outs & set(n.output)]


def candidates(model: onnx.ModelProto, precision: str, form: str = "tensorrt") -> list[str]:
    """Nodes the given precision (and INT8 form) converts, by name (the list ``search`` may exclude from)."""
    if precision == "int8":
        return [n.name for n in model.graph.node if n.op_type in int8_ops(form)]
    if precision == "fp16":
        keep = set(output_heads(model))
        return [n.name for n in model.graph.node if n.op_type in QUANT_OPS and n.name not in keep]
    raise ValueError(precision)


def activations(model: onnx.ModelProto, feed_sets: list[dict[str, np.ndarray]], names: list[str]
                ) -> list[dict[str, np.ndarray]]:
    """FP32 values of the named tensors on every feed set (the graph with them exposed as outputs)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.add(name=name)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [dict(zip(names, sess.run(names, feeds), strict=True)) for feeds in feed_sets]


def overflowing_nodes(model: onnx.ModelProto, feed_sets: list[dict[str, np.ndarray]], margin: float = 0.5,
                      ) -> dict[str, float]:
    """Float nodes whose output magnitude on these inputs exceeds ``margin`` × the FP16 maximum."""
    float_outs = _float_outputs(model)
    names = [o for n in model.graph.node for o in n.output if o in float_outs]
    peak: dict[str, float] = {}
    for values in activations(model, feed_sets, names):
        for k, v in values.items():
            peak[k] = max(peak.get(k, 0.0), float(np.abs(v).max()) if v.size else 0.0)
    producer = {o: n.name for n in model.graph.node for o in n.output}
    return {producer[k]: v for k, v in peak.items() if v > margin * FP16_MAX}


def _float_outputs(model: onnx.ModelProto) -> set[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    vis = list(inferred.graph.value_info) + list(inferred.graph.output)
    return {v.name for v in vis if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


# ==================================================================================================
# Converters: one variant of the graph per list of excluded nodes
# ==================================================================================================


class Fp16Converter:
    """FP16 weights and compute with FP32 I/O; sensitive ops, output heads and overflowing nodes FP32."""

    precision = "fp16"

    def __init__(self, model: onnx.ModelProto, feed_sets: list[dict[str, np.ndarray]]) -> None:
        self.model = model
        self.overflow = overflowing_nodes(model, feed_sets)
        self.always_kept = sorted(set(output_heads(model)) | set(self.overflow))

    def build(self, exclude: list[str]) -> onnx.ModelProto:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        with _quiet_ort_tools():
            return convert_float_to_float16(self.model, keep_io_types=True, op_block_list=list(FP16_KEEP_OPS),
                                            node_block_list=sorted(set(self.always_kept) | set(exclude)))

    def close(self) -> None:
        """Nothing to release (the INT8 converter's interface)."""

    def record(self) -> dict[str, Any]:
        return {"kept_ops": list(FP16_KEEP_OPS), "output_heads": output_heads(self.model),
                "overflow": {k: round(v, 1) for k, v in sorted(self.overflow.items())}}


class _Reader:
    """ORT's calibration-reader protocol over a list of feed sets."""

    def __init__(self, sets: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(sets)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


#: The INT8 graph forms ``--int8-form`` chooses between, each named after the runtime it is for.
#: ``tensorrt``: explicit QDQ with symmetric INT8 activations (zero point 0) and per-channel symmetric
#: INT8 weights, the only QDQ form TensorRT's parser accepts. ``ort``: QDQ with asymmetric UINT8
#: activations and per-channel INT8 weights (U8S8), the form ONNX Runtime's x86 integer kernels (VNNI,
#: AVX2) take directly. ``dynamic``: weights INT8 per channel, activations quantised at run time by
#: the graph itself (DynamicQuantizeLinear + MatMulInteger): no calibration, MatMul/Gemm only (ONNX
#: Runtime's ConvInteger is slower than its FP32 convolution); for transformer blocks on a CPU.
INT8_FORMS = ("tensorrt", "ort", "dynamic")
DYNAMIC_OPS = ("MatMul", "Gemm")


def int8_ops(form: str) -> tuple[str, ...]:
    """The op types a given INT8 form converts."""
    return DYNAMIC_OPS if form == "dynamic" else QUANT_OPS


class Int8Converter:
    """INT8 in one of ``INT8_FORMS``; by default explicit QDQ for TensorRT (symmetric activations,
    per-channel symmetric weights).

    Calibration runs once, with ONNX Runtime's calibrators, into a range cache in a work folder;
    each ``build`` then only re-inserts Q/DQ nodes around the nodes not excluded, so the search can
    try many variants. The calibrators are driven directly rather than through ``quantize_static``
    because it cannot set the histogram size: its Entropy default (128 bins for 128 quantised bins)
    leaves the KL search a single candidate, the full range, i.e. MinMax again. Here Entropy uses
    2048 bins (as TensorRT's entropy calibrator does) and Percentile 2048 bins at 99.999%.
    The ``dynamic`` form calibrates nothing: its activation ranges are taken per run.
    """

    precision = "int8"
    HISTOGRAM_BINS = 2048

    def __init__(self, model: onnx.ModelProto, calib_sets: list[dict[str, np.ndarray]], method: str = "minmax",
                 percentile: float = 99.999, form: str = "tensorrt") -> None:
        from onnxruntime.quantization import CalibrationMethod

        if method not in CALIB_METHODS:
            raise VlaError(f"--calib-method {method}: choose one of {', '.join(CALIB_METHODS)}")
        if form not in INT8_FORMS:
            raise VlaError(f"--int8-form {form}: choose one of {', '.join(INT8_FORMS)}")
        self.model, self.method, self.form = model, method, form
        self._method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile}[method]
        self._options: dict[str, Any] = {"symmetric": form == "tensorrt"}
        if method != "minmax":
            self._options["num_bins"] = self.HISTOGRAM_BINS
        if method == "entropy":
            self._options["num_quantized_bins"] = 128
        if method == "percentile":
            self._options["percentile"] = percentile
        self._tmp = tempfile.TemporaryDirectory(prefix="vla-int8-")
        self._src = Path(self._tmp.name) / "fp32.onnx"
        onnx.save_model(model, str(self._src))
        self.cache = Path(self._tmp.name) / "calibration.json"
        if form != "dynamic":
            self._calibrate(calib_sets)

    def _calibrate(self, calib_sets: list[dict[str, np.ndarray]]) -> None:
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

        with _quiet_ort_tools():
            calibrator = create_calibrator(self._src, list(QUANT_OPS),
                                           augmented_model_path=str(Path(self._tmp.name) / "augmented.onnx"),
                                           calibrate_method=self._method, extra_options=dict(self._options))
            calibrator.collect_data(_Reader(calib_sets))
            if self.method == "entropy":  # ONNX Runtime's threshold search, without its Python loops
                install_entropy_search(calibrator.collector)
            save_tensors_data(calibrator.compute_data(), self.cache)

    def build(self, exclude: list[str]) -> onnx.ModelProto:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

        out = Path(self._tmp.name) / "int8.onnx"
        ops = list(int8_ops(self.form))
        with _quiet_ort_tools():
            if self.form == "dynamic":
                # Its dynamic mode first rewrites every Gemm as MatMul (+ Add) named "<gemm>_MatMul", and
                # then matches exclusions by name: an excluded Gemm is excluded under both names.
                names = [*exclude, *(f"{n}_MatMul" for n in exclude)]
                quantize_dynamic(str(self._src), str(out), op_types_to_quantize=ops, per_channel=True,
                                 weight_type=QuantType.QInt8, nodes_to_exclude=names or None,
                                 extra_options={"WeightSymmetric": True})
            else:
                symmetric = self.form == "tensorrt"
                quantize_static(str(self._src), str(out), None,
                                quant_format=QuantFormat.QDQ, op_types_to_quantize=ops, per_channel=True,
                                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                                weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude) or None,
                                calibrate_method=self._method,
                                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
                                calibration_cache_path=str(self.cache))
        return onnx.load(str(out))

    def ranges(self) -> dict[str, tuple[float, float]] | None:
        """Calibrated (min, max) of every calibrated tensor (None for the dynamic form)."""
        from onnxruntime.quantization.calibrate import load_tensors_data

        if self.form == "dynamic":
            return None
        data = load_tensors_data(self.cache).data
        return {name: (float(np.min(d.range_value[0])), float(np.max(d.range_value[1]))) for name, d in data.items()}

    def record(self) -> dict[str, Any]:
        ops = list(int8_ops(self.form))
        if self.form == "dynamic":
            return {"form": "dynamic", "format": "dynamic (DynamicQuantizeLinear + MatMulInteger)",
                    "activations": "uint8, range taken per run", "weights": "int8 symmetric, per channel",
                    "ops": ops, "tensorrt": False}
        acts = ("int8 symmetric (zero point 0), per tensor" if self.form == "tensorrt"
                else "uint8 asymmetric, per tensor")
        return {"form": self.form, "format": "QDQ", "activations": acts, "weights": "int8 symmetric, per channel",
                "ops": ops, "tensorrt": self.form == "tensorrt",
                "calibrator": {k: v for k, v in self._options.items() if k != "symmetric"}}

    def close(self) -> None:
        self._tmp.cleanup()


# ==================================================================================================
# Local sensitivity: which converted nodes lose the most on their own
# ==================================================================================================


def _fake_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear, symmetric INT8 (ONNX semantics: round half to even)."""
    return torch.clamp(torch.round(x / scale), -127, 127) * scale


def _weight_scale(w: torch.Tensor, axis: int) -> torch.Tensor:
    dims = [d for d in range(w.dim()) if d != axis % w.dim()]
    amax = w.abs().amax(dim=dims, keepdim=True) if dims else w.abs()
    return torch.clamp(amax, min=1e-12) / 127.0


def local_errors(model: onnx.ModelProto, feed_sets: list[dict[str, np.ndarray]], nodes: list[str],
                 precision: str, ranges: dict[str, tuple[float, float]] | None = None) -> dict[str, float]:
    """Relative RMS error each node's output takes when *only that node* is converted.

    The node's FP32 inputs (from the real graph on ``feed_sets``) are rounded as the conversion
    would (INT8: calibrated per-tensor activation scales and per-channel weight scales; FP16: a cast),
    the op is recomputed, and compared with its FP32 output. This ranks candidates for ``search``;
    the decision itself is always measured on the real converted graph.
    """
    by_name = {n.name: n for n in model.graph.node}
    inits = {i.name: torch.from_numpy(onnx.numpy_helper.to_array(i).astype(np.float32))
             for i in model.graph.initializer}
    wanted = [n for n in nodes if by_name[n].op_type in QUANT_OPS]
    tensors = sorted({t for n in wanted for t in by_name[n].input[:2] if t and t not in inits})
    acts = activations(model, feed_sets, tensors)
    errors: dict[str, float] = {}
    for name in wanted:
        node = by_name[name]
        num = den = 0.0
        for values in acts:
            x, w = (inits[t] if t in inits else torch.from_numpy(values[t].astype(np.float32))
                    for t in node.input[:2])
            xq, wq = _round_inputs(node, x, w, precision, ranges or {}, node.input[1] in inits)
            y, ref = _apply(node, xq, wq), _apply(node, x, w)
            num += float(((y - ref) ** 2).sum())
            den += float((ref**2).sum())
        errors[name] = (num / den) ** 0.5 if den > 0 else 0.0
    return errors


def _round_inputs(node: onnx.NodeProto, x: torch.Tensor, w: torch.Tensor, precision: str,
                  ranges: dict[str, tuple[float, float]], w_const: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if precision == "fp16":
        return x.half().float(), w.half().float()

    def act_scale(t: str, v: torch.Tensor) -> torch.Tensor:
        lo, hi = ranges.get(t, (float(v.min()), float(v.max())))
        return torch.tensor(max(abs(lo), abs(hi), 1e-12) / 127.0)

    xq = _fake_int8(x, act_scale(node.input[0], x))
    if not w_const:
        return xq, _fake_int8(w, act_scale(node.input[1], w))
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    axis = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b) else -1
    return xq, _fake_int8(w, _weight_scale(w, axis))


def _apply(node: onnx.NodeProto, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The node's own arithmetic (bias excluded: it is not quantised and cancels in the error)."""
    if node.op_type == "MatMul":
        return x @ w
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        a = x.T if attrs.get("transA") else x
        b = w.T if attrs.get("transB") else w
        return attrs.get("alpha", 1.0) * (a @ b)
    k = w.dim() - 2  # Conv1d, 2d or 3d
    stride = list(attrs.get("strides", [1] * k))
    dil = list(attrs.get("dilations", [1] * k))
    begin, end = _conv_pads(attrs, list(x.shape[2:]), list(w.shape[2:]), stride, dil)
    # torch's pad runs from the last dim backwards, (begin, end) per dim
    x = torch.nn.functional.pad(x, [p for d in reversed(range(k)) for p in (begin[d], end[d])])
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[k - 1]
    return conv(x, w, stride=stride, dilation=dil, groups=attrs.get("group", 1))


def _conv_pads(attrs: dict[str, Any], size: list[int], kernel: list[int], stride: list[int],
               dil: list[int]) -> tuple[list[int], list[int]]:
    """ONNX Conv padding per spatial dim, (begins, ends): explicit ``pads``, or ``auto_pad``."""
    k = len(size)
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0] * (2 * k)))
        return pads[:k], pads[k:]
    if auto == "VALID":
        return [0] * k, [0] * k
    begins, ends = [], []
    for n, kk, s, d in zip(size, kernel, stride, dil, strict=True):
        total = max((-(-n // s) - 1) * s + (kk - 1) * d + 1 - n, 0)  # output ceil(n / s), as SAME asks
        small = total // 2
        begins.append(small if auto == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins, ends
