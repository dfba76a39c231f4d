"""PyTorch running the bundle's torch.export program (``program.pt2``), on the CPU or a CUDA device.

Why a PyTorch backend: ONNX Runtime here has only the CPU execution provider and TensorRT is not
always installed, so on a GPU machine this is the engine that uses the GPU; on the CPU it is a
second, independent implementation of the same FP32 model to check ONNX Runtime against.

The data path is the other backends' (``base.Backend``): one preallocated buffer per input and per
output, written and read in place, nothing allocated by the loop per tick.

- **CPU**: ``feed(name)`` is a NumPy view of the input tensor's own memory (``torch.from_numpy``), so
  what the loop writes is what the model reads, with no copy. Outputs are copied once into
  preallocated tensors whose memory the returned NumPy arrays share.
- **CUDA**: ``feed(name)`` is a NumPy view of a *pinned* host staging tensor. ``run()`` copies the
  staged inputs to the device tensors (``non_blocking``, on the backend's own stream), runs the
  model on that stream, copies the outputs into pinned host buffers and synchronises the stream,
  so the arrays ``run()`` returns are complete when it returns. H2D, compute and D2H are timed
  with CUDA events (``last_timings_ms()``), as trtexec times them.

**Device tensors** (``device_input``, ``device_output``, ``stream``) are for CUDA kernels that fill
inputs or read outputs on the GPU: they are ordinary torch tensors, so ``torch.utils.dlpack`` /
``__dlpack__`` and ``__cuda_array_interface__`` (CUDA tensors) hand them over without a copy.
``device_input(name, writable=True)`` makes the device tensor the source of that input: ``run()``
then stops uploading its staging buffer until ``feed(name)`` is called again. Work on these
tensors must be ordered before ``run()``: enqueue it on ``backend.stream`` or synchronise.

**CUDA graphs**: the GPU data path (``TorchDeviceIO``, ``runtime/loop/device_path.py``) captures a
whole tick, ``enqueue_run`` included, with ``torch.cuda.graph`` on ``stream`` and replays it;
``run_key`` says which copies such a graph baked in. ``run()`` itself launches eagerly.

**Recurrent state** stays on the device with ``commit_state()``: each state output (manifest role
``state``, ``from_output``) is copied into its input device to device, and the input is no longer
uploaded from the host. ``feed(name)`` on a state input makes the host buffer the source again
(the loop writes the initial values that way, and its own commit, ``np.copyto(feed(dst),
out[src])``, stays correct: on the CPU those arrays are the tensors; on CUDA the staging buffer is
uploaded at the next run). So on CUDA, calling ``feed()`` on a state input after ``commit_state()``
means "I am writing this", and the host values, not the device's, are used next.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cpu import default_threads
from ..errors import VlaError
from ..inputs.feeds import example_feeds
from ..manifest import Manifest, check_against_graph
from .base import Backend
from .device_io import CapturedGraph, CaptureError, DeviceIO

PROGRAM_FILE = "program.pt2"

TORCH_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8, "int8": torch.int8,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def torch_version() -> str:
    """``2.13.0``, without the local build tag (``+cpu``, ``+cu128``)."""
    return torch.__version__.split("+")[0]


def find_program(engine: str, manifest: Manifest) -> Path:
    """The bundle's program file, or a one-line ``VlaError`` saying how to get one.

    ``engine`` is the bundle folder (or a ``model.onnx`` inside one): the program sits beside the graph.
    """
    path = Path(engine)
    folder = path if path.is_dir() else path.parent
    export = manifest.raw.get("export") or {}
    program = folder / str(export.get("program") or PROGRAM_FILE)
    if program.is_file():
        return program
    mode = manifest.precision
    if mode != "fp32":
        raise VlaError(f"--engine {engine}: no {PROGRAM_FILE}: {mode} bundles hold their model only as ONNX "
                       "(the torch backend runs the FP32 program); use --backend ort, or an FP32 bundle")
    if export.get("form") == "torchscript":
        raise VlaError(f"--engine {engine}: no {PROGRAM_FILE}: a TorchScript model is bundled without a "
                       "torch.export program; use --backend ort")
    raise VlaError(f"--engine {engine}: no {PROGRAM_FILE} (the torch.export program --backend torch runs); "
                   "re-export the model with this vla-export (vla-export MODEL -o BUNDLE)")


def _types(values: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (_DTYPE_NAMES.get(dtype, str(dtype)), shape) for name, dtype, shape in values}


class TorchBackend(Backend):
    """``program.pt2`` under ``torch.inference_mode`` on ``device`` (``"cpu"`` or ``"cuda"``)."""

    name = "torch"

    def __init__(self, program: str | Path, manifest: Manifest, device: str = "cpu",
                 threads: int | None = None) -> None:
        if device not in ("cpu", "cuda"):
            raise VlaError(f"--device {device}: the torch backend runs on cpu or cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise VlaError(f"--device cuda: PyTorch {torch_version()} sees no CUDA device; use --device cpu")
        self.manifest = manifest
        self.program_path = Path(program)
        self.device = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
        self.threads = threads or default_threads()
        if device == "cpu":
            torch.set_num_threads(self.threads)
        origin = str(self.program_path)
        try:
            with warnings.catch_warnings():
                # Some PyTorch releases (2.11) warn that the archive's read-only buffer is not writable as
                # they load it: nothing a user can act on, and it would precede vla-run's own first lines.
                warnings.filterwarnings("ignore", message="The given buffer is not writable")
                ep = torch.export.load(origin)
        except Exception as exc:
            raise VlaError(f"{origin}: PyTorch {torch_version()} cannot load this torch.export program "
                           f"({_first_line(exc)}); re-export it with this vla-export") from None
        self._check_inputs(ep, origin)
        if self.device.type == "cuda":
            from torch.export.passes import move_to_device_pass

            # Moves parameters, buffers, constants and device arguments inside the graph, which
            # GraphModule.to() would miss.
            ep = move_to_device_pass(ep, self.device)
        self._module = ep.module()
        self._states = [(t.name, t.detail["from_output"]) for t in manifest.inputs_with("state")]
        self._timings: dict[str, float] = {}
        cuda = self.device.type == "cuda"
        self.stream: torch.cuda.Stream | None = torch.cuda.Stream(self.device) if cuda else None
        self._host_in: dict[str, np.ndarray] = {}
        self._host_out: dict[str, np.ndarray] = {}
        self._staging_in: dict[str, torch.Tensor] = {}  # CUDA: pinned host tensors behind _host_in
        self._staging_out: dict[str, torch.Tensor] = {}
        self._dev_in: dict[str, torch.Tensor] = {}
        self._dev_out: dict[str, torch.Tensor] = {}
        for specs, host, staging, dev in ((manifest.inputs, self._host_in, self._staging_in, self._dev_in),
                                          (manifest.outputs, self._host_out, self._staging_out, self._dev_out)):
            for t in specs:
                if cuda:
                    pinned = torch.zeros(t.shape, dtype=TORCH_DTYPES[t.dtype], pin_memory=True)
                    staging[t.name], host[t.name] = pinned, pinned.numpy()
                    dev[t.name] = torch.zeros(t.shape, dtype=TORCH_DTYPES[t.dtype], device=self.device)
                else:
                    host[t.name] = np.zeros(t.shape, dtype=t.dtype)
                    dev[t.name] = torch.from_numpy(host[t.name])  # the same memory: zero-copy feeds
        self._args = tuple(self._dev_in[t.name] for t in manifest.inputs)
        self._outs = tuple(self._dev_out[t.name] for t in manifest.outputs)
        # CUDA: inputs whose host staging buffer is the source (uploaded every run), in manifest order.
        self._upload = {t.name for t in manifest.inputs}
        self._download = [t.name for t in manifest.outputs]  # CUDA: outputs copied back by run()
        self._events = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if cuda else []
        self._warm_up_and_check(origin)

    # ---- checks -----------------------------------------------------------------------------------
    def _check_inputs(self, ep: torch.export.ExportedProgram, origin: str) -> None:
        """The program's inputs against the manifest, by position (the order ``forward`` takes them)."""
        user = set(ep.graph_signature.user_inputs)
        found = [(n.meta.get("val"), n.name) for n in ep.graph.nodes if n.op == "placeholder" and n.name in user]
        specs = self.manifest.inputs
        if len(found) != len(specs):
            raise VlaError(f"{origin}: the program takes {len(found)} inputs ({[n for _, n in found]}) but the "
                           f"manifest names {len(specs)} ({[t.name for t in specs]})")
        types: dict[str, tuple[str, tuple[int | None, ...]]] = {}
        for t, (val, _) in zip(specs, found, strict=True):
            if val is None:  # no recorded example: nothing to check it against
                types[t.name] = (t.dtype, t.shape)
            else:  # a symbolic dim becomes None, which matches any size the manifest fixes
                types[t.name] = (_DTYPE_NAMES.get(val.dtype, str(val.dtype)),
                                 tuple(d if isinstance(d, int) else None for d in val.shape))
        check_against_graph(self.manifest, types, {t.name: (t.dtype, t.shape) for t in self.manifest.outputs},
                            origin)

    def _warm_up_and_check(self, origin: str) -> None:
        """One run on example inputs (first runs pick kernels and allocate), then the program's real
        outputs against the manifest: ``copy_`` into the output buffers would cast a wrong dtype and
        broadcast a wrong shape silently, so this is checked on the raw outputs, once."""
        for name, value in example_feeds(self.manifest, seed=0).items():
            np.copyto(self._host_in[name], value)
        if self.stream is not None:
            with torch.cuda.stream(self.stream), torch.inference_mode():
                for name in self._upload:
                    self._dev_in[name].copy_(self._staging_in[name], non_blocking=True)
                raw = self._forward()
            self.stream.synchronize()
        else:
            with torch.inference_mode():
                raw = self._forward()
        specs = self.manifest.outputs
        if len(raw) != len(specs):
            raise VlaError(f"{origin}: the program returns {len(raw)} outputs but the manifest names {len(specs)} "
                           f"({[t.name for t in specs]})")
        outputs = _types([(t.name, o.dtype, tuple(o.shape)) for t, o in zip(specs, raw, strict=True)])
        check_against_graph(self.manifest, {t.name: (t.dtype, t.shape) for t in self.manifest.inputs}, outputs,
                            origin)
        for arr in self._host_in.values():  # start from zeros, as every backend does
            arr[...] = 0
        for name in self._upload:
            self._dev_in[name].zero_()
        if self.stream is not None:
            torch.cuda.synchronize(self.device)

    def _forward(self) -> tuple[torch.Tensor, ...]:
        out: Any = self._module(*self._args)
        if isinstance(out, dict):
            return tuple(out[t.name] for t in self.manifest.outputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    # ---- the Backend interface ---------------------------------------------------------------------
    def feed(self, name: str) -> np.ndarray:
        """The host buffer of input ``name``; on CUDA it becomes (again) the source uploaded at each run."""
        buf = self._host_in[name]
        self._upload.add(name)
        return buf

    def run(self) -> dict[str, np.ndarray]:
        if self.stream is None:
            if torch.get_num_threads() != self.threads:  # the pool size can be per thread (OpenMP): set it here
                torch.set_num_threads(self.threads)
            start = time.perf_counter()
            with torch.inference_mode():
                for dst, out in zip(self._outs, self._forward(), strict=True):
                    dst.copy_(out)
            self._timings = {"compute": (time.perf_counter() - start) * 1000.0}
            return self._host_out
        ev = self._events
        self.enqueue_run(ev)
        self.stream.synchronize()  # the returned arrays are complete; the staging buffers are free to write
        self._timings = {"h2d": ev[0].elapsed_time(ev[1]), "compute": ev[1].elapsed_time(ev[2]),
                         "d2h": ev[2].elapsed_time(ev[3])}
        return self._host_out

    def enqueue_run(self, events: list[torch.cuda.Event] | None = None) -> None:
        """CUDA: enqueue a run on ``stream`` without waiting: the staged inputs up, the model, the
        outputs ``host_outputs`` names down; with ``events`` (four), recorded around the three stages.
        Everything it does can be captured in a CUDA graph (the model's own allocations then come
        from the graph's pool; the results are copied into the fixed output tensors)."""
        assert self.stream is not None, "enqueue_run is the CUDA path"
        with torch.cuda.stream(self.stream), torch.inference_mode():
            if events:
                events[0].record(self.stream)
            for t in self.manifest.inputs:
                if t.name in self._upload:
                    self._dev_in[t.name].copy_(self._staging_in[t.name], non_blocking=True)
            if events:
                events[1].record(self.stream)
            for dst, out in zip(self._outs, self._forward(), strict=True):
                dst.copy_(out)
            if events:
                events[2].record(self.stream)
            for name in self._download:
                self._staging_out[name].copy_(self._dev_out[name], non_blocking=True)
            if events:
                events[3].record(self.stream)

    def run_key(self) -> tuple[frozenset[str], tuple[str, ...]]:
        """What ``enqueue_run`` bakes into a captured graph: which inputs go up, which outputs come down."""
        return frozenset(self._upload), tuple(self._download)

    def describe(self) -> str:
        if self.device.type == "cuda":
            return (f"torch {torch_version()} (cuda: {torch.cuda.get_device_name(self.device)}, "
                    f"CUDA {torch.version.cuda})")
        return f"torch {torch_version()} (cpu, {self.threads} threads)"

    def close(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
        self._module = None

    # ---- beyond the interface ------------------------------------------------------------------------
    def commit_state(self) -> None:
        """Copy every state output into its input, on the device (no host round trip).

        Use it instead of ``np.copyto(feed(dst), out[src])`` after a run whose result is committed.
        On CUDA the copy is enqueued on ``stream``, ahead of the next run, and the state inputs stop
        being uploaded from their host buffers (until ``feed()`` is called on them).
        """
        if self.stream is None:
            for dst, src in self._states:
                self._dev_in[dst].copy_(self._dev_out[src])
            return
        with torch.cuda.stream(self.stream):
            for dst, src in self._states:
                self._dev_in[dst].copy_(self._dev_out[src], non_blocking=True)
                self._upload.discard(dst)

    def device_input(self, name: str, writable: bool = False) -> torch.Tensor:
        """The tensor the model reads for ``name`` (CUDA: on the GPU; CPU: ``feed(name)``'s memory).

        ``writable=True`` says the caller fills it on the device: ``run()`` then stops uploading the
        host staging buffer over it (until ``feed(name)``). Order the writes before ``run()``.
        """
        if writable:
            self._upload.discard(name)
        return self._dev_in[name]

    def host_outputs(self, names: Iterable[str]) -> None:
        """CUDA: copy only these outputs back at the end of each run; the others stay on the device
        (their host arrays keep old values). Default: all of them."""
        wanted = set(names)
        self._download = [t.name for t in self.manifest.outputs if t.name in wanted]

    def device_io(self) -> DeviceIO | None:
        """The GPU data path's access to this backend; None on the CPU or when the kernels have no CUDA."""
        from vla.kernels import cuda_available

        return TorchDeviceIO(self) if self.stream is not None and cuda_available() else None

    def device_output(self, name: str) -> torch.Tensor:
        """The tensor the last run wrote ``name`` into (CUDA: on the GPU, valid until the next run)."""
        return self._dev_out[name]

    def last_timings_ms(self) -> dict[str, float]:
        """The last run's stages in ms: ``h2d``, ``compute``, ``d2h`` (CUDA events) on CUDA;
        ``compute`` (host wall time of the forward and the output copy) on the CPU."""
        return dict(self._timings)


class TorchDeviceIO(DeviceIO):
    """The GPU data path's view of a CUDA torch backend (``runtime/loop/device_path.py``)."""

    def __init__(self, backend: TorchBackend) -> None:
        self._backend = backend
        self._pinned: dict[int, torch.Tensor] = {}  # host array address -> its pinned tensor

    @property
    def stream(self) -> Any:
        return self._backend.stream

    def input(self, name: str) -> torch.Tensor:
        return self._backend.device_input(name, writable=True)

    def output(self, name: str) -> torch.Tensor:
        return self._backend.device_output(name)

    def host_outputs(self, names: Iterable[str]) -> None:
        self._backend.host_outputs(names)

    def host_output(self, name: str) -> np.ndarray:
        return self._backend._host_out[name]

    def staging(self, shape: tuple[int, ...], dtype: Any) -> tuple[torch.Tensor, np.ndarray]:
        tdtype = TORCH_DTYPES[np.dtype(dtype).name]
        device = torch.empty(shape, dtype=tdtype, device=self._backend.device)
        pinned = torch.empty(shape, dtype=tdtype, pin_memory=True)
        host = pinned.numpy()
        self._pinned[host.ctypes.data] = pinned
        return device, host

    def upload(self, device: torch.Tensor, host: np.ndarray) -> None:
        with torch.cuda.stream(self._backend.stream):
            device.copy_(self._pinned[host.ctypes.data], non_blocking=True)

    def download(self, host: np.ndarray, device: torch.Tensor) -> None:
        with torch.cuda.stream(self._backend.stream):
            self._pinned[host.ctypes.data].copy_(device, non_blocking=True)

    def synchronize(self) -> None:
        self._backend.stream.synchronize()

    def enqueue_run(self) -> None:
        self._backend.enqueue_run()

    def finish_run(self) -> None:
        pass  # commit_state copies on the device whenever it is called: nothing to record

    def run_key(self) -> Hashable:
        return self._backend.run_key()

    def capture(self, work: Callable[[], None]) -> CapturedGraph:
        """``torch.cuda.graph`` on the backend's stream (thread-local capture mode: the loop thread
        goes on); the graph's allocations come from its own memory pool, kept with it."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.inference_mode(), torch.cuda.graph(graph, stream=self._backend.stream,
                                                          capture_error_mode="thread_local"):
                work()
        except Exception as exc:
            why = _first_line(exc)
            try:  # a failed capture must not leave work behind
                torch.cuda.synchronize(self._backend.device)
            except Exception as again:
                why = f"{why}; then {_first_line(again)}"
            raise CaptureError(why) from None
        return TorchGraph(graph, self._backend.stream)


class TorchGraph(CapturedGraph):
    """A captured ``torch.cuda.CUDAGraph``, replayed on the stream it was captured on."""

    def __init__(self, graph: torch.cuda.CUDAGraph, stream: torch.cuda.Stream) -> None:
        self._graph: torch.cuda.CUDAGraph | None = graph
        self._stream = stream

    def launch(self) -> None:
        assert self._graph is not None, "launch after close"
        with torch.cuda.stream(self._stream):
            self._graph.replay()

    def close(self) -> None:
        if self._graph is not None:
            self._graph.reset()
            self._graph = None
