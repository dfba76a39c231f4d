"""Small bundles of stages built with ``onnx.helper`` (no PyTorch): a slow "vision" stage and a fast, repeated
"action" stage, so the runtime's stage machinery is tested on real ONNX Runtime sessions in milliseconds.

vision (slow): images u8 [1,1,3,H,W] -> feat [1,1], the mean pixel / 255.
action (repeat K): sample [1,M,T,3], t [1], feat, ego -> next_sample = sample + (base - sample) / K,
    trajectory = next_sample (+ 0 * feat, ego and t, so they are real graph inputs), score = fixed softmax.
base is a straight path at ``SPEED`` m/s, so K steps from noise give base + noise * (1 - 1/K)^K.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

H, W, M, T, DT, SPEED = 16, 32, 2, 8, 0.1, 5.0
EGO_FIELDS = ["x", "y", "yaw", "v", "a", "yaw_rate"]


def base_path() -> np.ndarray:
    out = np.zeros((1, M, T, 3), np.float32)
    out[..., 0] = SPEED * DT * np.arange(1, T + 1)
    return out


def _vision() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["f", "flat_shape"], ["flat"]),
        helper.make_node("ReduceMean", ["flat", "axes1"], ["mean"], keepdims=1),
        helper.make_node("Div", ["mean", "c255"], ["feat"]),
    ]
    inits = [numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape"),
             numpy_helper.from_array(np.array([1], np.int64), "axes1"),
             numpy_helper.from_array(np.array(255.0, np.float32), "c255")]
    graph = helper.make_graph(nodes, "vision",
                              [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 1, 3, H, W])],
                              [helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _action(steps: int) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Sub", ["base", "sample"], ["diff"]),
        helper.make_node("Div", ["diff", "k"], ["vel"]),
        helper.make_node("Add", ["sample", "vel"], ["next_sample"]),
        helper.make_node("ReduceSum", ["ego"], ["ego_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["feat"], ["feat_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["t"], ["t_sum"], keepdims=0),
        helper.make_node("Add", ["ego_sum", "feat_sum"], ["s1"]),
        helper.make_node("Add", ["s1", "t_sum"], ["s2"]),
        helper.make_node("Mul", ["s2", "zero"], ["nothing"]),
        helper.make_node("Add", ["next_sample", "nothing"], ["trajectory"]),
        helper.make_node("Softmax", ["logits"], ["score"], axis=-1),
    ]
    inits = [numpy_helper.from_array(base_path(), "base"),
             numpy_helper.from_array(np.array(float(steps), np.float32), "k"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array([[0.4, 0.0]], np.float32), "logits")]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "action", [
        helper.make_tensor_value_info("feat", f, [1, 1]),
        helper.make_tensor_value_info("ego", f, [1, 4, 6]),
        helper.make_tensor_value_info("sample", f, [1, M, T, 3]),
        helper.make_tensor_value_info("t", f, [1]),
    ], [helper.make_tensor_value_info("next_sample", f, [1, M, T, 3]),
        helper.make_tensor_value_info("trajectory", f, [1, M, T, 3]),
        helper.make_tensor_value_info("score", f, [1, M])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def manifest(steps: int = 3, rate: str | dict = "async", max_age_ms: float = 300.0) -> dict:
    return {
        "schema_version": 1,
        "model": {"name": "two-stage-test"},
        "inputs": [
            {"name": "images", "dtype": "uint8", "role": "camera", "shape": [1, 1, 3, H, W],
             "camera": {"names": ["front"], "layout": "NCHW", "color": "RGB", "height": H, "width": W}},
            {"name": "ego", "dtype": "float32", "role": "ego", "shape": [1, 4, 6],
             "ego": {"fields": EGO_FIELDS, "rate_hz": 10.0, "frame": "ego"}},
            {"name": "noise", "dtype": "float32", "role": "noise", "shape": [1, M, T, 3],
             "noise": {"distribution": "normal", "std": 0.01}},
        ],
        "outputs": [
            {"name": "trajectory", "dtype": "float32", "role": "trajectory", "shape": [1, M, T, 3],
             "trajectory": {"dt": DT, "horizon_s": round(DT * T, 9), "frame": "ego", "fields": ["x", "y", "yaw"]}},
            {"name": "score", "dtype": "float32", "role": "score", "shape": [1, M], "score": {"kind": "probability"}},
        ],
        "stages": [
            {"name": "vision", "file": "vision.onnx", "inputs": ["images"], "outputs": ["feat"], "rate": rate,
             "max_age_ms": max_age_ms},
            {"name": "action", "file": "action.onnx", "inputs": ["feat", "ego", "sample", "t"],
             "outputs": ["next_sample", "trajectory", "score"],
             "repeat": {"steps": steps, "sample": {"input": "sample", "output": "next_sample", "init": "noise"},
                        "time": "t"}},
        ],
        "intermediates": [{"name": "feat", "dtype": "float32", "shape": [1, 1]}],
    }


def write_bundle(folder: Path, steps: int = 3, rate: str | dict = "async", max_age_ms: float = 300.0) -> Path:
    """A bundle folder of the two stages (manifest.json, vision.onnx, action.onnx)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(_vision(), str(folder / "vision.onnx"))
    onnx.save(_action(steps), str(folder / "action.onnx"))
    (folder / "manifest.json").write_text(json.dumps(manifest(steps, rate, max_age_ms), indent=1))
    return folder


def expected_trajectory(noise: np.ndarray, steps: int) -> np.ndarray:
    """The K Euler steps in NumPy, as the runtime must loop them."""
    sample = noise.astype(np.float32).copy()
    base = base_path()
    for _ in range(steps):
        sample = sample + (base - sample) / np.float32(steps)
    return sample
