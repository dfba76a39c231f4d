"""ONNX Runtime on the CPU, tuned for latency: fixed threads, sequential execution, full graph
optimisation, and IO binding onto preallocated buffers so a tick neither allocates nor copies."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..cpu import default_threads
from ..errors import VlaError
from ..manifest import Manifest
from .base import Backend

__all__ = ["OrtBackend", "default_threads", "graph_types", "open_session"]

_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
    "tensor(int8)": "int8", "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
}


def open_session(path: str, threads: int | None = None, spin: bool = False) -> ort.InferenceSession:
    """A latency-tuned CPU session; a file ONNX Runtime cannot load is a one-line ``VlaError``."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # Spinning shortens wake-up but burns the cores the cameras and the loop need between ticks.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    try:
        return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = " ".join(str(exc).split())[:200]
        raise VlaError(f"{path}: ONNX Runtime cannot load this model ({first})") from None


def graph_types(args: list) -> dict[str, tuple[str, tuple]]:
    """ORT NodeArg list -> {name: (dtype, shape)} in the manifest's dtype names."""
    return {a.name: (_ORT_TYPES.get(a.type, a.type), tuple(a.shape)) for a in args}


class OrtBackend(Backend):
    """Recurrent state is double-buffered: each state input and the output it is fed from (manifest
    role ``state``, ``from_output``) own two arrays, bound crosswise in two IO bindings, and
    ``commit_state()`` swaps them, so the next run reads what the last one wrote without a copy.
    ``feed(state input)`` returns the array the next run reads."""

    name = "onnxruntime"

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, threads: int, spin: bool) -> None:
        self.session = session
        self.manifest = manifest
        self.threads = threads
        self.spin = spin
        base_in = {t.name: np.zeros(t.shape, dtype=t.dtype) for t in manifest.inputs}
        base_out = {t.name: np.zeros(t.shape, dtype=t.dtype) for t in manifest.outputs}
        # state input -> its output; the second array of each pair is the input's other buffer
        pairs = {t.name: t.detail["from_output"] for t in manifest.inputs_with("state")
                 if t.detail.get("from_output") in base_out}
        spare = {i: np.zeros_like(base_in[i]) for i in pairs}
        self._parity = 0
        self._views: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
        self._bindings = []
        for parity in (0, 1):
            inputs, outputs = dict(base_in), dict(base_out)
            for i, o in pairs.items():
                first, second = (base_in[i], spare[i]) if parity == 0 else (spare[i], base_in[i])
                inputs[i], outputs[o] = first, second  # this run reads first and writes second
            binding = session.io_binding()
            for name, arr in inputs.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
            for name, arr in outputs.items():
                binding.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
            self._views.append((inputs, outputs))
            self._bindings.append(binding)

    def feed(self, name: str) -> np.ndarray:
        return self._views[self._parity][0][name]

    def run(self) -> dict[str, np.ndarray]:
        self.session.run_with_iobinding(self._bindings[self._parity])
        return self._views[self._parity][1]

    def commit_state(self) -> None:
        """The last run's state outputs become the next run's state inputs (a swap, no copy)."""
        self._parity ^= 1

    def describe(self) -> str:
        return (f"onnxruntime {ort.__version__} CPUExecutionProvider, {self.threads} intra-op thread(s), "
                f"spinning {'on' if self.spin else 'off'}")
