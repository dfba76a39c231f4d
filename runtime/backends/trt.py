"""TensorRT running a plan built by ``vla-build``, written to the documented API of TensorRT 10.3 and 11.x.

The data path is the other backends' (``base.Backend``): one preallocated buffer per input and
output, written and read in place. Here the host buffers are **pinned** (``cudaMallocHost``) NumPy
views, and each tensor also has device memory (``cudaMalloc``) whose address TensorRT is given once
(``set_tensor_address``). A run, on one non-default stream: H2D of the inputs whose host buffer is
their source, ``execute_async_v3``, D2H of the outputs, then a stream synchronise, so the arrays
``run()`` returns are complete. CUDA events around the three stages give ``last_timings_ms()`` as
trtexec defines them (plus the host time of the enqueue).

**Recurrent state stays on the device.** Each state pair of the manifest (input ``from_output``)
has two device buffers; on parity p the input reads one and the output writes the other.
``commit_state()`` flips the parity, so the next run reads what the last one wrote, without a copy
and without touching the host; a run that is not committed (late, non-finite) leaves the parity,
and the state it read, untouched. ``feed(name)`` on a state input makes its host buffer the source
again (uploaded at the next run), exactly as in the torch backend, so the loop's host commit
(``np.copyto(feed(dst), out[src])``) stays correct.

**CUDA graphs**, two kinds. ``run()`` (the host data path, ``vla-bench``): after one plain run at a
parity, the engine's enqueue is captured (``capture_graph``: ``cudaStreamBeginCapture`` ...
``cudaGraphInstantiate``) and then launched as a graph; one graph per parity, since the state swap
changes the addresses TensorRT was given. A capture that fails turns these graphs off for this
backend and plain launches go on (TensorRT cannot capture some plans, e.g. with data-dependent
shapes). The GPU data path (``TrtDeviceIO``) instead captures the whole tick, uploads, preprocess,
``enqueue_run`` (a plain ``execute_async_v3`` inside), decode and downloads, in one graph per key
(``runtime/loop/device_path.py``); ``run_key`` names what such a graph bakes in (the parity among it).
All these graphs share one execution context; they are replayed one at a time on one stream, so
they never use the context's scratch memory at once.

**A bundle of stages** gets one ``TrtBackend`` per stage (``open_trt_stage``), each with its own
plan in the bundle's cache, keyed, reused and refused by the same rules as a one-graph bundle's
(``_open_cached`` serves both), and its own stream and buffers, so a slow stage on one worker and
the fast stage on another never share a buffer; ``backends/staged.py`` runs them as one model.

TensorRT and ``cuda.bindings`` are imported only when a backend is made; without them the
constructor raises a one-line ``VlaError``. ``plan_buffers`` (which device buffers, and which
address each tensor gets on each parity) is pure, so it is tested anywhere.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import VlaError
from ..manifest import Manifest, check_against_graph, parse_manifest
from ..stages import Stage
from ..trt import cuda_check  # no TensorRT or CUDA import: runtime.trt imports those lazily
from .base import Backend
from .device_io import CapturedGraph, CaptureError, DeviceArray, DeviceIO

if TYPE_CHECKING:
    from ..trt.build import Bundle

#: I/O tensor types: name -> ("input" | "output", dtype name, shape with None for dynamic dims).
EngineIO = dict[str, tuple[str, str, tuple[int | None, ...]]]


# ---- the buffer plan (pure) ------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorBuffer:
    """One I/O tensor: its host buffer and the device slot(s) it uses; ``slots[p]`` on parity p."""

    name: str
    io: str  # "input" | "output"
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    slots: tuple[int, int]
    in_manifest: bool = True


@dataclass(frozen=True)
class BufferPlan:
    """Device allocations and which tensor uses which, per parity.

    A state pair (input, output) shares two slots crosswise: input ``(a, b)``, output ``(b, a)``, so
    on either parity the output never overwrites what the input is reading.
    """

    tensors: tuple[TensorBuffer, ...]
    slot_bytes: tuple[int, ...]
    states: tuple[tuple[str, str], ...]  # (input, output) pairs from the manifest
    dynamic: tuple[str, ...]  # inputs whose shape must be set on the context

    def tensor(self, name: str) -> TensorBuffer:
        return next(t for t in self.tensors if t.name == name)

    def addresses(self, parity: int) -> dict[str, int]:
        """The slot each tensor uses on ``parity`` (0 or 1)."""
        return {t.name: t.slots[parity & 1] for t in self.tensors}

    @property
    def inputs(self) -> tuple[TensorBuffer, ...]:
        return tuple(t for t in self.tensors if t.io == "input")

    @property
    def outputs(self) -> tuple[TensorBuffer, ...]:
        return tuple(t for t in self.tensors if t.io == "output")


def plan_buffers(manifest: Manifest, engine_io: EngineIO, origin: str) -> BufferPlan:
    """Check the engine's I/O against the manifest (naming the tensor that disagrees) and plan the buffers.

    Manifest tensors take the manifest's shapes (dynamic engine dims are set to them); an engine output
    the manifest does not name still needs an address, so it gets a buffer if its shape is static.
    """
    ins = {n: (d, s) for n, (io, d, s) in engine_io.items() if io == "input"}
    outs = {n: (d, s) for n, (io, d, s) in engine_io.items() if io == "output"}
    check_against_graph(manifest, ins, outs, origin)
    specs = {t.name: t for t in (*manifest.inputs, *manifest.outputs)}
    states = tuple((t.name, t.detail["from_output"]) for t in manifest.inputs_with("state"))
    pair_of = {n: i for i, pair in enumerate(states) for n in pair}

    slot_bytes: list[int] = []
    pair_slots: dict[int, tuple[int, int]] = {}
    tensors = []
    for name, (io, dtype, shape) in engine_io.items():
        spec = specs.get(name)
        if spec is None and any(d is None for d in shape):
            raise VlaError(f"{origin}: engine output '{name}' is not in the manifest and has a dynamic shape "
                           f"{['?' if d is None else d for d in shape]}; re-export the bundle")
        fixed = spec.shape if spec is not None else tuple(int(d) for d in shape)  # type: ignore[arg-type]
        dt = spec.dtype if spec is not None else dtype
        nbytes = int(np.prod(fixed, dtype=np.int64)) * np.dtype(dt).itemsize
        if name in pair_of:
            pair = pair_of[name]
            if pair not in pair_slots:
                pair_slots[pair] = (len(slot_bytes), len(slot_bytes) + 1)
                slot_bytes += [nbytes, nbytes]
            a, b = pair_slots[pair]
            slots = (a, b) if io == "input" else (b, a)
        else:
            slots = (len(slot_bytes), len(slot_bytes))
            slot_bytes.append(nbytes)
        tensors.append(TensorBuffer(name, io, dt, tuple(fixed), nbytes, slots, spec is not None))
    dynamic = tuple(n for n, (_, s) in ins.items() if any(d is None for d in s))
    return BufferPlan(tuple(tensors), tuple(slot_bytes), states, dynamic)


# ---- CUDA helpers ---------------------------------------------------------------------------------

def _host_array(ptr: int, nbytes: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A NumPy view of pinned host memory (valid until the backend is closed)."""
    raw = (ctypes.c_ubyte * nbytes).from_address(ptr)
    return np.frombuffer(raw, dtype=np.uint8).view(dtype).reshape(shape)


def parse_device(device: str | int) -> int:
    """``"cuda"`` -> 0, ``"cuda:1"`` -> 1, ``2`` -> 2: the CUDA device index TensorRT runs on."""
    if isinstance(device, int):
        return device
    head, _, index = str(device).partition(":")
    if head != "cuda" or (index and not index.isdigit()):
        raise VlaError(f"--device {device}: TensorRT runs on a CUDA device (cuda or cuda:N)")
    return int(index or 0)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def capture_graph(rt: Any, stream: Any, work: Callable[[], None]) -> Any:
    """Record ``work``'s launches on ``stream`` and instantiate them: an executable CUDA graph.

    Thread-local capture mode, so other threads' CUDA calls go on. The capture is always ended (or
    the stream would stay capturing) and its error cleared, so plain launches can follow a failure,
    which raises ``CaptureError`` with the reason.
    """
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    (err,) = rt.cudaStreamBeginCapture(stream, mode)
    if int(err) != 0:
        rt.cudaGetLastError()
        raise CaptureError(f"cudaStreamBeginCapture: {err}")
    why = ""
    try:
        work()
    except Exception as exc:
        why = " ".join(str(exc).split())[:160] or type(exc).__name__
    except BaseException:  # Ctrl-C mid-capture: end it all the same, or the stream stays capturing
        _, graph = rt.cudaStreamEndCapture(stream)
        if graph is not None:
            rt.cudaGraphDestroy(graph)
        rt.cudaGetLastError()
        raise
    err, graph = rt.cudaStreamEndCapture(stream)
    if not why and int(err) == 0 and graph is not None:
        err, exe = rt.cudaGraphInstantiate(graph, 0)
        rt.cudaGraphDestroy(graph)  # the executable graph does not need its template
        if int(err) == 0:
            return exe
        why = f"cudaGraphInstantiate: {err}"
    elif graph is not None:
        rt.cudaGraphDestroy(graph)
    rt.cudaGetLastError()
    raise CaptureError(why or f"cudaStreamEndCapture: {err}")


class TrtBackend(Backend):
    """A deserialised plan with its buffers, stream, events and (when they capture) CUDA graphs."""

    name = "tensorrt"

    def __init__(self, plan: str | Path, manifest: Manifest, *, plugins: list[Any] | tuple[Any, ...] = (),
                 cuda_graph: bool = True, device: int = 0, log: Any = None) -> None:
        from ..trt import import_cudart, import_tensorrt, probe_cuda
        from ..trt.build import TrtLog, make_logger

        trt = import_tensorrt("the TensorRT backend runs")
        self._rt = rt = import_cudart()
        self._check = lambda call, result: cuda_check(rt, call, result)
        self.manifest = manifest
        self.plan_path = Path(plan)
        self.cuda_graph = cuda_graph
        self.graph_note = "on" if cuda_graph else "off"
        self._log = log or _stderr
        self.device = probe_cuda(device, rt)
        self.tensorrt_version = trt.__version__
        self._sink = TrtLog(self._log)
        self._logger = make_logger(trt, self._sink)
        # Everything close() releases, empty until made, so a failure half-way frees what exists.
        self._closed = False
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._slots: list[int] = []
        self._host_ptrs: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        self._extra: list[tuple[int, int]] = []  # (device, pinned host) pairs made for the data path
        self._events: list[Any] = []
        self._graphs: dict[int, TrtGraph] = {}  # the engine alone, per parity (run()'s graphs)
        try:
            self._load(trt, list(plugins))
            self._allocate()
            self._parity = 0
            self._bound_parity: int | None = None
            self._plain_runs = [0, 0]
            self._timings: dict[str, float] = {}
            self._thread: int | None = None
            self.run()  # first run: lazy allocations, and errors surface at start-up rather than on tick 1
            self._ran_since_commit = False
        except BaseException:
            self.close()
            raise

    def _load(self, trt: Any, plugins: list[Any]) -> None:
        """Plugins, the engine, its I/O checked against the manifest, and a context with shapes set."""
        from ..trt import dtype_name
        from ..trt.build import load_plugins

        plan = self.plan_path
        self._plugin_handles = load_plugins(trt, plugins, self._log, self._sink)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise VlaError(f"{plan}: TensorRT {trt.__version__} cannot deserialize this plan "
                           f"({self._sink.last_error()}); rebuild it on this machine with vla-build")
        io: EngineIO = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            if self._engine.get_tensor_location(name) != trt.TensorLocation.DEVICE:
                raise VlaError(f"{plan}: tensor '{name}' is a host (shape) tensor; this runtime feeds device tensors")
            mode = "input" if self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
            dims = tuple(int(d) for d in self._engine.get_tensor_shape(name))
            io[name] = (mode, dtype_name(self._engine.get_tensor_dtype(name)),
                        tuple(d if d >= 0 else None for d in dims))
        self.buffers = plan_buffers(self.manifest, io, str(plan))
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise VlaError(f"{plan}: TensorRT could not create an execution context ({self._sink.last_error()})")
        for name in self.buffers.dynamic:
            shape = self.buffers.tensor(name).shape
            if not self._context.set_input_shape(name, shape):
                raise VlaError(f"{plan}: input '{name}' cannot take the manifest's shape {list(shape)} "
                               f"({self._sink.last_error()})")
        for t in self.buffers.outputs:
            got = tuple(int(d) for d in self._context.get_tensor_shape(t.name))
            if t.in_manifest and got != t.shape:
                raise VlaError(f"{plan}: output '{t.name}' has shape {list(got)} in the engine but "
                               f"{list(t.shape)} in the manifest")

    def _allocate(self) -> None:
        """The stream, device slots (zeroed), pinned host buffers (zeroed) and the four timing events."""
        rt, check = self._rt, self._check
        self._stream = check("cudaStreamCreateWithFlags", rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
        for nbytes in self.buffers.slot_bytes:
            self._slots.append(check("cudaMalloc", rt.cudaMalloc(nbytes)))
            check("cudaMemsetAsync", rt.cudaMemsetAsync(self._slots[-1], 0, nbytes, self._stream))
        for t in self.buffers.tensors:
            if t.in_manifest:
                ptr = check("cudaMallocHost", rt.cudaMallocHost(t.nbytes))
                self._host_ptrs[t.name] = ptr
                self._host[t.name] = _host_array(ptr, t.nbytes, t.dtype, t.shape)
                self._host[t.name][...] = 0
        for _ in range(4):
            self._events.append(check("cudaEventCreate", rt.cudaEventCreate()))
        self._inputs = [t for t in self.buffers.inputs if t.in_manifest]
        self._outputs = [t for t in self.buffers.outputs if t.in_manifest]
        self._host_out = {t.name: self._host[t.name] for t in self._outputs}
        self._upload = {t.name for t in self._inputs}  # inputs whose host buffer is the source
        self._download = {t.name for t in self._outputs}  # outputs copied back by run()
        check("cudaStreamSynchronize", rt.cudaStreamSynchronize(self._stream))

    # ---- addresses and launches ----------------------------------------------------------------------
    def _bind(self, parity: int) -> None:
        slots = self.buffers.addresses(parity)
        for name, slot in slots.items():
            if not self._context.set_tensor_address(name, int(self._slots[slot])):
                raise VlaError(f"TensorRT set_tensor_address('{name}') failed ({self._sink.last_error()})")
        self._bound_parity = parity

    def _enqueue_engine(self) -> None:
        """The engine alone: its CUDA graph at this parity (captured after one plain run), else a plain enqueue."""
        p = self._parity
        graph = self._graphs.get(p)
        if graph is None and self.cuda_graph and self._plain_runs[p] >= 1:
            graph = self._capture(p)
        if graph is not None:
            graph.launch()
            return
        self._execute()
        self._plain_runs[p] += 1

    def _capture(self, parity: int) -> TrtGraph | None:
        """Capture one enqueue on our stream into an executable graph; None (graphs off) if it fails."""
        try:
            graph = self.capture(self._execute)
        except CaptureError as exc:
            self._drop_graphs()  # one rule for every parity: graphs on, or plain launches
            self.cuda_graph = False
            self.graph_note = f"off (capture failed: {str(exc)[:120]}; plain launches)"
            self._log(f"TensorRT backend: CUDA graph {self.graph_note}")
            return None
        self._graphs[parity] = graph
        self.graph_note = f"on ({len(self._graphs)} captured)"
        return graph

    def _execute(self) -> None:
        if not self._context.execute_async_v3(int(self._stream)):
            raise VlaError(f"TensorRT execute_async_v3 failed: {self._sink.last_error()}")

    def _drop_graphs(self) -> None:
        for graph in self._graphs.values():
            graph.close()
        self._graphs.clear()

    # ---- the Backend interface ----------------------------------------------------------------------
    def feed(self, name: str) -> np.ndarray:
        """The pinned host buffer of input ``name``; it becomes (again) the source uploaded at each run."""
        buf = self._host[name]
        self._upload.add(name)
        return buf

    def run(self) -> dict[str, np.ndarray]:
        ev = self._events
        enqueue_ms = self.enqueue_run(engine_graph=self.cuda_graph, events=ev)
        self.synchronize()
        elapsed = [self._check("cudaEventElapsedTime", self._rt.cudaEventElapsedTime(ev[i], ev[i + 1]))
                   for i in range(3)]
        self._timings = {"h2d": elapsed[0], "compute": elapsed[1], "d2h": elapsed[2], "enqueue": enqueue_ms}
        self.mark_run_finished()
        return self._host_out

    def enqueue_run(self, *, engine_graph: bool = False, events: list[Any] | None = None) -> float:
        """Enqueue a run on the stream without waiting: H2D of the inputs the host feeds, the engine
        (its own CUDA graph with ``engine_graph``, else ``execute_async_v3``), D2H of the outputs
        ``host_outputs`` names; with ``events`` (four), recorded around the three stages. Returns the
        host time of the engine's enqueue in ms. Everything it does can be stream-captured."""
        rt, stream, check = self._rt, self._stream, self._check
        if self._thread != threading.get_ident():  # the current device is per thread (the loop's worker)
            check("cudaSetDevice", rt.cudaSetDevice(self.device.index))
            self._thread = threading.get_ident()
        if self._bound_parity != self._parity:
            self._bind(self._parity)
        slots = self.buffers.addresses(self._parity)
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        record = (lambda i: check("cudaEventRecord", rt.cudaEventRecord(events[i], stream))) if events else None
        if record:
            record(0)
        for t in self._inputs:
            if t.name in self._upload:
                check("cudaMemcpyAsync", rt.cudaMemcpyAsync(self._slots[slots[t.name]], self._host_ptrs[t.name],
                                                            t.nbytes, h2d, stream))
        if record:
            record(1)
        start = time.perf_counter()
        if engine_graph:
            self._enqueue_engine()
        else:
            self._execute()
        enqueue_ms = (time.perf_counter() - start) * 1000.0
        if record:
            record(2)
        for t in self._outputs:
            if t.name in self._download:
                check("cudaMemcpyAsync", rt.cudaMemcpyAsync(self._host_ptrs[t.name], self._slots[slots[t.name]],
                                                            t.nbytes, d2h, stream))
        if record:
            record(3)
        return enqueue_ms

    def run_key(self) -> Hashable:
        """What ``enqueue_run`` bakes into a captured graph: the state parity (addresses) and the copies."""
        return self._parity, frozenset(self._upload), frozenset(self._download)

    def describe(self) -> str:
        d = self.device
        return (f"TensorRT {self.tensorrt_version} on {d.name} (compute {d.compute_capability}, CUDA driver "
                f"{d.driver}), plan {self.plan_path.name}, CUDA graph {self.graph_note}")

    def close(self) -> None:
        """Free everything; the arrays ``feed``/``run`` returned must not be used after this."""
        if self._closed:
            return
        self._closed = True
        rt = self._rt
        if self._stream is not None:
            rt.cudaStreamSynchronize(self._stream)
        self._drop_graphs()
        for event in self._events:
            rt.cudaEventDestroy(event)
        self._context = None  # before the memory it addresses is freed
        self._engine = None
        for ptr in self._slots:
            rt.cudaFree(ptr)
        for ptr in self._host_ptrs.values():
            rt.cudaFreeHost(ptr)
        for device, host in self._extra:
            rt.cudaFree(device)
            rt.cudaFreeHost(host)
        self._slots, self._host_ptrs, self._events, self._extra = [], {}, [], []
        self._host.clear()
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
            self._stream = None

    # ---- beyond the interface ---------------------------------------------------------------------------
    def commit_state(self) -> None:
        """Make the last run's state outputs the next run's state inputs, on the device: no copy, no host.

        Use it instead of ``np.copyto(feed(dst), out[src])`` after a run whose result is committed.
        Only the first call after a run counts (a second would swap the state back).
        """
        if not self.buffers.states or not self._ran_since_commit:
            return
        self._parity ^= 1
        self._ran_since_commit = False
        for dst, _ in self.buffers.states:
            self._upload.discard(dst)

    def capture(self, work: Callable[[], None]) -> TrtGraph:
        """``work``'s launches on the backend's stream as a graph (``capture_graph``; raises CaptureError)."""
        return TrtGraph(self._rt, capture_graph(self._rt, self._stream, work), self._stream)

    def mark_run_finished(self) -> None:
        """A run enqueued with ``enqueue_run`` (or replayed in a graph) has finished: ``commit_state``
        may now commit it."""
        self._ran_since_commit = True

    def last_timings_ms(self) -> dict[str, float]:
        """The last run's stages in ms: ``h2d``, ``compute``, ``d2h`` (CUDA events on the stream, as trtexec
        times them) and ``enqueue`` (host wall time of the enqueue call)."""
        return dict(self._timings)

    def device_pointer(self, name: str) -> int:
        """The device address ``name`` has on the next run (it changes with ``commit_state`` for state tensors)."""
        return int(self._slots[self.buffers.addresses(self._parity)[name]])

    @property
    def stream_handle(self) -> int:
        """The stream every run is enqueued on: device-side producers must order their work before ``run()``."""
        return int(self._stream)

    def produce_on_device(self, name: str) -> None:
        """Input ``name`` is written on the device (by a kernel on ``stream_handle``): stop uploading
        its host buffer, until ``feed(name)``."""
        self._upload.discard(name)

    def host_outputs(self, names: Iterable[str]) -> None:
        """Copy only these outputs back at the end of each run; the others stay on the device."""
        wanted = set(names)
        self._download = {t.name for t in self._outputs if t.name in wanted}

    def extra_buffers(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, np.ndarray]:
        """A device buffer and a pinned host buffer (a NumPy view whose ``ctypes.data`` is the pinned
        pointer), freed with the backend."""
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        device = self._check("cudaMalloc", self._rt.cudaMalloc(nbytes))
        try:
            host = self._check("cudaMallocHost", self._rt.cudaMallocHost(nbytes))
        except BaseException:
            self._rt.cudaFree(device)
            raise
        self._extra.append((device, host))
        return int(device), _host_array(host, nbytes, np.dtype(dtype).name, tuple(shape))

    def copy_async(self, dst: int, src: int, nbytes: int, *, to_device: bool) -> None:
        """Enqueue a copy between pinned host and device memory on the backend's stream."""
        kind = self._rt.cudaMemcpyKind
        self._check("cudaMemcpyAsync", self._rt.cudaMemcpyAsync(
            dst, src, nbytes, kind.cudaMemcpyHostToDevice if to_device else kind.cudaMemcpyDeviceToHost,
            self._stream))

    def synchronize(self) -> None:
        self._check("cudaStreamSynchronize", self._rt.cudaStreamSynchronize(self._stream))

    def device_io(self) -> DeviceIO | None:
        """The GPU data path's access to this backend; None when the kernels were built without CUDA."""
        from vla.kernels import cuda_available

        return TrtDeviceIO(self) if cuda_available() else None


class TrtDeviceIO(DeviceIO):
    """The GPU data path's view of a TensorRT backend (``runtime/loop/device_path.py``): ``cudaMalloc``
    buffers as :class:`DeviceArray`, copies with ``cudaMemcpyAsync`` on the backend's stream."""

    def __init__(self, backend: TrtBackend) -> None:
        self._backend = backend

    @property
    def stream(self) -> int:
        return self._backend.stream_handle

    def _array(self, name: str) -> DeviceArray:
        t = self._backend.buffers.tensor(name)
        return DeviceArray(self._backend.device_pointer(name), t.shape, t.dtype, owner=self._backend)

    def input(self, name: str) -> DeviceArray:
        self._backend.produce_on_device(name)
        return self._array(name)

    def output(self, name: str) -> DeviceArray:
        return self._array(name)

    def host_outputs(self, names: Iterable[str]) -> None:
        self._backend.host_outputs(names)

    def host_output(self, name: str) -> np.ndarray:
        return self._backend._host_out[name]

    def staging(self, shape: tuple[int, ...], dtype: Any) -> tuple[DeviceArray, np.ndarray]:
        device_ptr, host = self._backend.extra_buffers(shape, np.dtype(dtype))
        return DeviceArray(device_ptr, shape, dtype, owner=self._backend), host

    def upload(self, device: DeviceArray, host: np.ndarray) -> None:
        self._backend.copy_async(device.ptr, host.ctypes.data, device.nbytes, to_device=True)

    def download(self, host: np.ndarray, device: DeviceArray) -> None:
        self._backend.copy_async(host.ctypes.data, device.ptr, device.nbytes, to_device=False)

    def synchronize(self) -> None:
        self._backend.synchronize()

    def enqueue_run(self) -> None:
        self._backend.enqueue_run()

    def finish_run(self) -> None:
        self._backend.mark_run_finished()

    def run_key(self) -> Hashable:
        return self._backend.run_key()

    def capture(self, work: Callable[[], None]) -> CapturedGraph:
        return self._backend.capture(work)


class TrtGraph(CapturedGraph):
    """An executable graph launched with ``cudaGraphLaunch`` on the stream it was captured on."""

    def __init__(self, rt: Any, exe: Any, stream: Any) -> None:
        self._rt, self._exe, self._stream = rt, exe, stream

    def launch(self) -> None:
        cuda_check(self._rt, "cudaGraphLaunch", self._rt.cudaGraphLaunch(self._exe, self._stream))

    def close(self) -> None:
        if self._exe is not None:
            self._rt.cudaGraphExecDestroy(self._exe)
            self._exe = None


# ---- opening ``--engine`` -----------------------------------------------------------------------------

def _plan_from_sidecar(plan: Path, device: int, cuda_graph: bool, log: Any) -> TrtBackend:
    """A ``.plan`` given alone: its sidecar supplies the manifest and plugins; the environment must match."""
    from ..trt import import_cudart, import_tensorrt, platform_tag, probe_cuda
    from ..trt.build import PluginLib
    from ..trt.cache import EngineKey, environment_reasons, parse_sidecar, read_sidecar, sha256_file

    doc = read_sidecar(plan)  # refuses a plan without one: its TensorRT, GPU and bundle would be unknown
    found = parse_sidecar(doc, str(plan))
    stage = doc.get("stage")
    if isinstance(stage, dict):  # one graph of several: its inputs come from other stages' plans
        where = (doc.get("bundle") or {}).get("path", "its bundle")
        raise VlaError(f"{plan}: the plan of stage '{stage.get('name')}' of a bundle of stages runs only with its "
                       f"other stages; give --engine the bundle folder ({where}), whose engines/ holds every plan")
    try:
        manifest = parse_manifest(doc["manifest"])
    except KeyError:
        raise VlaError(f"{plan}: its sidecar holds no manifest; rebuild the plan with this vla-build") from None
    trt = import_tensorrt("the TensorRT backend runs")
    dev = probe_cuda(device, import_cudart())
    here = EngineKey(tensorrt=trt.__version__, gpu=dev.name, compute_capability=dev.compute_capability,
                     cuda_driver=dev.driver, cuda_runtime=dev.runtime, model_hash=found.model_hash,
                     platform=platform_tag())
    reasons = environment_reasons(here, found)
    plugins = []
    for entry in doc.get("plugins", []):
        path = Path(entry["path"])
        if not path.is_file():
            reasons.append(f"plugin {entry['name']} missing (was {path})")
        elif sha256_file(path) != entry["sha256"]:
            reasons.append(f"plugin {entry['name']} changed since the build ({path})")
        else:
            plugins.append(PluginLib(entry["name"], path, entry["sha256"]))
    if reasons:
        raise VlaError(f"{plan}: cannot run here: {'; '.join(reasons)}; rebuild it on this machine with vla-build")
    return TrtBackend(plan, manifest, plugins=plugins, cuda_graph=cuda_graph, device=dev.index, log=log)


def open_trt_backend(engine: str | Path, device: str | int = "cuda", *, rebuild: bool = False,
                     workspace_mb: int | None = None, plugins: list[str] | tuple[str, ...] = (),
                     cuda_graph: bool = True, log: Any = None) -> TrtBackend:
    """``--engine`` on TensorRT: a ``.plan`` (with its sidecar), or a bundle whose cached plan is reused,
    built when there is none, rebuilt when stale with ``rebuild``, and refused when stale without it.

    Progress and decisions go to ``log`` (stderr by default: stdout carries the loop's records).
    """
    from ..trt.build import open_bundle

    log = log or _stderr
    index = parse_device(device)
    path = Path(engine)
    if not path.exists():
        raise VlaError(f"--engine {engine}: no such file or bundle folder")
    if path.suffix == ".plan":
        return _plan_from_sidecar(path, index, cuda_graph, log)
    return _open_cached(open_bundle(path), index, rebuild=rebuild, workspace_mb=workspace_mb, plugins=plugins,
                        cuda_graph=cuda_graph, log=log)


def open_trt_stage(folder: str | Path, stage: Stage, part_manifest: Manifest, *, rebuild: bool = False,
                   cuda_graph: bool = True, workspace_mb: int | None = None, plugins: list[str] | tuple[str, ...] = (),
                   log: Any = None, device: str | int = "cuda") -> TrtBackend:
    """One stage of the bundle of stages in ``folder`` on TensorRT: its own plan in the bundle's cache
    (``engines/<stage>-<gpu>-trt<version>.plan``), built from ``folder/stage.file`` when missing, reused
    when its key matches, refused when stale (the message names the stage) unless ``rebuild``: the same
    rules as a one-graph bundle's plan. ``part_manifest`` is the stage's contract
    (``Manifest.stage_manifest``); ``engine._open_staged`` wraps the stages' backends in a StagedBackend.
    """
    from ..trt.build import open_stage

    return _open_cached(open_stage(folder, stage, part_manifest), parse_device(device), rebuild=rebuild,
                        workspace_mb=workspace_mb, plugins=plugins, cuda_graph=cuda_graph, log=log or _stderr)


def _open_cached(bundle: Bundle, index: int, *, rebuild: bool, workspace_mb: int | None,
                 plugins: list[str] | tuple[str, ...], cuda_graph: bool, log: Any) -> TrtBackend:
    """The cached plan of ``bundle`` (a one-graph bundle or one stage): decide, build if needed, open."""
    from ..trt import import_cudart, import_tensorrt, probe_cuda
    from ..trt.build import BuildOptions, build_plan, hash_plugins, plan_key
    from ..trt.cache import cache_path, decide

    libs = hash_plugins(list(plugins))
    trt = import_tensorrt("the TensorRT backend runs")
    dev = probe_cuda(index, import_cudart())
    key = plan_key(trt.__version__, dev, bundle, libs, workspace_mb)
    plan = cache_path(bundle.dir, key, bundle.model.name, stage=bundle.stage)
    decision = decide(plan, key, rebuild)
    which = f"stage '{bundle.stage}': " if bundle.stage else ""
    if decision.action == "refuse":
        raise VlaError(which + decision.message)
    log(f"TensorRT backend: {which}{decision.message}")
    if decision.action in ("build", "rebuild"):
        build_plan(bundle, plan, key, dev, libs, BuildOptions(workspace_mb=workspace_mb), log)
    return TrtBackend(plan, bundle.manifest, plugins=libs, cuda_graph=cuda_graph, device=dev.index, log=log)
