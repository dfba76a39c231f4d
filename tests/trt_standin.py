"""A stand-in for TensorRT and the CUDA runtime bindings, for tests on machines where neither can exist.

TensorRT cannot be installed anywhere in this workplace (the registry's wheels are download stubs),
so without this the TensorRT layer (``runtime/trt/``, ``runtime/backends/trt.py``) would never run
before it reaches a vehicle computer. The stand-in implements the subset of the documented Python
APIs that layer calls (TensorRT 10.3 / 11.x: builder, ONNX parser, runtime, IO-tensor execution;
``cuda.bindings.runtime``: memory, streams, events, stream capture, graphs), with CUDA's rules that
the runtime's correctness depends on:

- "device" memory is host memory (so nothing here checks a device/host pointer mix-up), but every
  copy, memset and tensor address is checked to lie inside an allocation of the right kind;
- work enqueued on a stream runs in order when the stream is synchronised, not when enqueued: a
  buffer read before ``cudaStreamSynchronize`` holds the old contents, as on a GPU;
- ``execute_async_v3`` uses the tensor addresses set when it is *enqueued*, and a captured graph
  replays the launches with the addresses they had at capture, so a graph launched after the state
  buffers swap reads the wrong slot here exactly as it would on a GPU;
- synchronising a stream that is being captured is an error; capture can be made to fail
  (``Gpu.fail_capture``) as TensorRT does for some plans.

A "plan" is the ONNX model behind a header, executed by ONNX Runtime on the CPU, so a stand-in
engine's outputs equal the ONNX Runtime backend's exactly. Nothing here measures speed.

In-process: ``install(monkeypatch)``. In a child process (``vla-build``, ``vla-run``): put the folder
``write_shims`` makes first on ``PYTHONPATH``.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import sys
import time
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

VERSION = "10.3.0"
GPU_NAME = "TensorRT stand-in (host memory)"
PLAN_MAGIC = b"VLA-TRT-STANDIN-PLAN\n"

SUCCESS, INVALID_VALUE, CAPTURE_UNSUPPORTED, CAPTURE_INVALIDATED = 0, 1, 900, 901
ERROR_NAMES = {SUCCESS: "cudaSuccess", INVALID_VALUE: "cudaErrorInvalidValue",
               CAPTURE_UNSUPPORTED: "cudaErrorStreamCaptureUnsupported",
               CAPTURE_INVALIDATED: "cudaErrorStreamCaptureInvalidated"}


class DataType(enum.Enum):
    FLOAT = np.dtype(np.float32)
    HALF = np.dtype(np.float16)
    INT8 = np.dtype(np.int8)
    INT32 = np.dtype(np.int32)
    INT64 = np.dtype(np.int64)
    BOOL = np.dtype(np.bool_)
    UINT8 = np.dtype(np.uint8)


class Gpu:
    """The emulated device: allocations, streams (queues of work), events and captures."""

    def __init__(self) -> None:
        self.device: dict[int, ctypes.Array] = {}
        self.pinned: dict[int, ctypes.Array] = {}
        self.queues: dict[int, list[Callable[[], None]]] = {}
        self.capturing: dict[int, list[Callable[[], None]]] = {}
        self.events: dict[int, float | None] = {}
        self.graphs: dict[int, list[Callable[[], None]]] = {}
        self.fail_capture = False  # make the next captures fail, as TensorRT does for some plans
        self.calls: Counter[str] = Counter()
        self._next = 0x1000

    def handle(self) -> int:
        self._next += 1
        return self._next

    def allocate(self, table: dict[int, ctypes.Array], nbytes: int) -> int:
        buf = ctypes.create_string_buffer(max(1, int(nbytes)))
        table[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def inside(self, table: dict[int, ctypes.Array], ptr: int, nbytes: int) -> bool:
        """Whether [ptr, ptr + nbytes) lies inside one allocation of ``table``."""
        return any(base <= ptr and ptr + nbytes <= base + len(buf) for base, buf in table.items())

    def enqueue(self, stream: int, op: Callable[[], None]) -> int:
        if stream not in self.queues:
            return INVALID_VALUE
        target = self.capturing.get(stream)
        (target if target is not None else self.queues[stream]).append(op)
        return SUCCESS

    def live(self) -> int:
        """Allocations, streams, events and graphs not yet freed."""
        return len(self.device) + len(self.pinned) + len(self.queues) + len(self.events) + len(self.graphs)


def _module(name: str) -> types.ModuleType:
    """A module object with a spec, as an imported one has (``importlib.util.find_spec`` reads it)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return module


# ---- cuda.bindings.runtime --------------------------------------------------------------------------------

def cudart_module(gpu: Gpu) -> types.ModuleType:
    """``cuda.bindings.runtime`` over ``gpu``: calls return ``(err, *values)`` as cuda-bindings does."""
    rt = _module("cuda.bindings.runtime")
    rt.cudaStreamNonBlocking = 1
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def count(name: str) -> None:
        gpu.calls[name] += 1

    rt.cudaGetErrorName = lambda err: (SUCCESS, ERROR_NAMES.get(int(err), "cudaErrorUnknown").encode())
    rt.cudaGetErrorString = lambda err: (SUCCESS, b"reported by the TensorRT stand-in")
    rt.cudaGetLastError = lambda: (SUCCESS,)
    rt.cudaGetDeviceCount = lambda: (SUCCESS, 1)
    rt.cudaSetDevice = lambda index: (SUCCESS if index == 0 else INVALID_VALUE,)
    rt.cudaGetDeviceProperties = lambda index: (SUCCESS, types.SimpleNamespace(
        name=GPU_NAME.encode() + b"\0\0", major=8, minor=7))
    rt.cudaDriverGetVersion = lambda: (SUCCESS, 12060)
    rt.cudaRuntimeGetVersion = lambda: (SUCCESS, 12060)
    rt.cudaMemGetInfo = lambda: (SUCCESS, 8 << 30, 16 << 30)

    def malloc(nbytes: int) -> tuple[int, int]:
        return SUCCESS, gpu.allocate(gpu.device, nbytes)

    def malloc_host(nbytes: int) -> tuple[int, int]:
        return SUCCESS, gpu.allocate(gpu.pinned, nbytes)

    def free(table: dict[int, ctypes.Array]) -> Callable[[int], tuple[int]]:
        return lambda ptr: (SUCCESS if table.pop(int(ptr), None) is not None else INVALID_VALUE,)

    rt.cudaMalloc, rt.cudaMallocHost = malloc, malloc_host
    rt.cudaFree, rt.cudaFreeHost = free(gpu.device), free(gpu.pinned)

    def stream_create(flags: int) -> tuple[int, int]:
        handle = gpu.handle()
        gpu.queues[handle] = []
        return SUCCESS, handle

    def stream_synchronize(stream: int) -> tuple[int]:
        if stream in gpu.capturing:
            return (CAPTURE_UNSUPPORTED,)  # as CUDA: no synchronising a stream under capture
        queue = gpu.queues.get(stream)
        if queue is None:
            return (INVALID_VALUE,)
        while queue:
            queue.pop(0)()
        return (SUCCESS,)

    def stream_destroy(stream: int) -> tuple[int]:
        return (SUCCESS if gpu.queues.pop(stream, None) is not None else INVALID_VALUE,)

    rt.cudaStreamCreateWithFlags, rt.cudaStreamSynchronize = stream_create, stream_synchronize
    rt.cudaStreamDestroy = stream_destroy

    def memset(ptr: int, value: int, nbytes: int, stream: int) -> tuple[int]:
        if not gpu.inside(gpu.device, ptr, nbytes):
            return (INVALID_VALUE,)
        return (gpu.enqueue(stream, lambda: ctypes.memset(ptr, value, nbytes)),)

    def memcpy(dst: int, src: int, nbytes: int, kind: int, stream: int) -> tuple[int]:
        to_device = kind == rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        dst_table, src_table = (gpu.device, gpu.pinned) if to_device else (gpu.pinned, gpu.device)
        if not (gpu.inside(dst_table, dst, nbytes) and gpu.inside(src_table, src, nbytes)):
            return (INVALID_VALUE,)  # a pointer outside its kind of memory, or a copy past an allocation's end
        return (gpu.enqueue(stream, lambda: ctypes.memmove(dst, src, nbytes)),)

    rt.cudaMemsetAsync, rt.cudaMemcpyAsync = memset, memcpy

    def event_create() -> tuple[int, int]:
        handle = gpu.handle()
        gpu.events[handle] = None
        return SUCCESS, handle

    def event_record(event: int, stream: int) -> tuple[int]:
        if event not in gpu.events:
            return (INVALID_VALUE,)
        return (gpu.enqueue(stream, lambda: gpu.events.__setitem__(event, time.perf_counter())),)

    def event_elapsed(start: int, end: int) -> tuple[int, float]:
        a, b = gpu.events.get(start), gpu.events.get(end)
        if a is None or b is None:
            return INVALID_VALUE, 0.0  # an event the stream has not passed yet
        return SUCCESS, (b - a) * 1000.0

    rt.cudaEventCreate, rt.cudaEventRecord, rt.cudaEventElapsedTime = event_create, event_record, event_elapsed
    rt.cudaEventDestroy = lambda event: (SUCCESS if gpu.events.pop(event, 0) != 0 else INVALID_VALUE,)

    def begin_capture(stream: int, mode: int) -> tuple[int]:
        if stream not in gpu.queues or stream in gpu.capturing:
            return (INVALID_VALUE,)
        gpu.capturing[stream] = []
        return (SUCCESS,)

    def end_capture(stream: int) -> tuple[int, Any]:
        ops = gpu.capturing.pop(stream, None)
        if ops is None:
            return INVALID_VALUE, None
        if gpu.fail_capture:
            return CAPTURE_INVALIDATED, None
        return SUCCESS, ("graph", ops)

    def instantiate(graph: Any, flags: int) -> tuple[int, int]:
        handle = gpu.handle()
        gpu.graphs[handle] = list(graph[1])
        count("cudaGraphInstantiate")
        return SUCCESS, handle

    def graph_launch(exe: int, stream: int) -> tuple[int]:
        ops = gpu.graphs.get(exe)
        if ops is None:
            return (INVALID_VALUE,)
        count("cudaGraphLaunch")
        for op in ops:
            gpu.enqueue(stream, op)
        return (SUCCESS,)

    rt.cudaStreamBeginCapture, rt.cudaStreamEndCapture = begin_capture, end_capture
    rt.cudaGraphInstantiate, rt.cudaGraphLaunch = instantiate, graph_launch
    rt.cudaGraphDestroy = lambda graph: (SUCCESS,)
    rt.cudaGraphExecDestroy = lambda exe: (SUCCESS if gpu.graphs.pop(exe, None) is not None else INVALID_VALUE,)
    return rt


# ---- tensorrt ---------------------------------------------------------------------------------------------

class _Severity(enum.IntEnum):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)


def _io_of(model: onnx.ModelProto) -> list[tuple[str, bool, DataType, tuple[int, ...]]]:
    """(name, is_input, dtype, dims with -1 for a dynamic dim), inputs first, as TensorRT lists them."""
    init = {i.name for i in model.graph.initializer}
    found = []
    for values, is_input in ((model.graph.input, True), (model.graph.output, False)):
        for v in values:
            if v.name in init:
                continue
            t = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            found.append((v.name, is_input, DataType(np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))), dims))
    return found


class _Tensor:
    def __init__(self, name: str, dtype: DataType, dims: tuple[int, ...]) -> None:
        self.name, self.dtype, self.shape = name, dtype, dims


class _Network:
    def __init__(self) -> None:
        self.model: onnx.ModelProto | None = None
        self._ins: list[_Tensor] = []
        self._outs: list[_Tensor] = []

    def take(self, model: onnx.ModelProto) -> None:
        self.model = model
        for name, is_input, dtype, dims in _io_of(model):
            (self._ins if is_input else self._outs).append(_Tensor(name, dtype, dims))

    num_inputs = property(lambda self: len(self._ins))
    num_outputs = property(lambda self: len(self._outs))

    def get_input(self, i: int) -> _Tensor:
        return self._ins[i]

    def get_output(self, i: int) -> _Tensor:
        return self._outs[i]


class _ParserError:
    def __init__(self, desc: str) -> None:
        self._desc = desc

    def code(self) -> str:
        return "ErrorCode.INVALID_GRAPH"

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return -1


class _TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data or b"standin-timing-cache"

    def serialize(self) -> bytes:
        return self.data


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Any, Any, Any]] = {}

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class _Config:
    def __init__(self) -> None:
        self.pools: dict[Any, int] = {}
        self.profiles: list[_Profile] = []
        self.progress_monitor: Any = None
        self._cache: _TimingCache | None = None

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.pools[pool] = int(size)

    def add_optimization_profile(self, profile: _Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> _TimingCache | None:
        return None if data and not data.startswith(b"standin-timing-cache") else _TimingCache(data)

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        self._cache = cache
        return True

    def get_timing_cache(self) -> _TimingCache | None:
        return self._cache


class _Engine:
    def __init__(self, model_bytes: bytes) -> None:
        model = onnx.load_from_string(model_bytes)
        self.io = _io_of(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
        self.num_io_tensors = len(self.io)
        self._by_name = {name: (is_input, dtype, dims) for name, is_input, dtype, dims in self.io}

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def get_tensor_location(self, name: str) -> Any:
        return TensorLocation.DEVICE

    def get_tensor_mode(self, name: str) -> Any:
        return TensorIOMode.INPUT if self._by_name[name][0] else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._by_name[name][2]

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._by_name[name][1]


class _Context:
    """IO-tensor execution: addresses and input shapes set by name, then ``execute_async_v3(stream)``."""

    def __init__(self, engine: _Engine, gpu: Gpu) -> None:
        self.engine, self.gpu = engine, gpu
        self.addresses: dict[str, int] = {}
        self.shapes = {name: dims for name, _, _, dims in engine.io}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        self.shapes[name] = tuple(int(d) for d in shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.shapes:
            return False
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream: int) -> bool:
        """Enqueue one inference with the addresses set now (as TensorRT records them at enqueue)."""
        bound = dict(self.addresses)
        views = []
        for name, is_input, dtype, _ in self.engine.io:
            shape = self.shapes[name]
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.value.itemsize
            if name not in bound or min(shape, default=0) < 0 or not self.gpu.inside(self.gpu.device, bound[name],
                                                                                      nbytes):
                return False  # TensorRT refuses an enqueue with an unset address or shape
            views.append((name, is_input, dtype.value, shape, nbytes, bound[name]))

        def run() -> None:
            feeds = {n: np.frombuffer(ctypes.string_at(ptr, nb), dt).reshape(s)
                     for n, is_in, dt, s, nb, ptr in views if is_in}
            outs = dict(zip([o.name for o in self.engine.session.get_outputs()],
                            self.engine.session.run(None, feeds), strict=True))
            for n, is_in, dt, _shape, nb, ptr in views:
                if not is_in:
                    ctypes.memmove(ptr, np.ascontiguousarray(outs[n], dt).ctypes.data, nb)

        return self.gpu.enqueue(int(stream), run) == SUCCESS


class TensorLocation(enum.Enum):
    DEVICE, HOST = range(2)


class TensorIOMode(enum.Enum):
    NONE, INPUT, OUTPUT = range(3)


def tensorrt_module(gpu: Gpu) -> types.ModuleType:
    """``tensorrt`` over ``gpu``: what ``runtime/trt`` and ``runtime/backends/trt.py`` call, no more
    (TensorRT 11's removed APIs, FP16/INT8 builder flags, calibrators, EXPLICIT_BATCH, are absent)."""
    trt = _module("tensorrt")
    trt.__version__ = VERSION
    trt.DataType, trt.TensorLocation, trt.TensorIOMode = DataType, TensorLocation, TensorIOMode
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 1})
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", {"WORKSPACE": 0})
    trt.ILogger = type("ILogger", (), {"Severity": _Severity, "__init__": lambda self: None})
    trt.IProgressMonitor = type("IProgressMonitor", (), {"__init__": lambda self: None})
    trt.get_plugin_registry = lambda: types.SimpleNamespace(load_library=lambda path: None)

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> _Network:
            if flags != 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED):
                raise TypeError(f"the stand-in builds strongly typed networks only (flags {flags})")
            return _Network()

        def create_builder_config(self) -> _Config:
            return _Config()

        def create_optimization_profile(self) -> _Profile:
            return _Profile()

        def build_serialized_network(self, network: _Network, config: _Config) -> bytes | None:
            if trt.MemoryPoolType.WORKSPACE not in config.pools or network.model is None:
                self.logger.log(_Severity.ERROR, "stand-in: no workspace limit or no parsed network")
                return None
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                for step in range(2):
                    monitor.step_complete("Building engine", step)
                monitor.phase_finish("Building engine")
            return PLAN_MAGIC + network.model.SerializeToString()

    class OnnxParser:
        def __init__(self, network: _Network, logger: Any) -> None:
            self.network, self.errors = network, []

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i: int) -> _ParserError:
            return self.errors[i]

        def parse_from_file(self, path: str) -> bool:
            try:
                model = onnx.load(path)
                onnx.checker.check_model(model)
            except Exception as exc:
                self.errors.append(_ParserError(" ".join(str(exc).split())[:200]))
                return False
            self.network.take(model)
            return True

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            if bytes(data[: len(PLAN_MAGIC)]) != PLAN_MAGIC:
                self.logger.log(_Severity.ERROR, "stand-in: the serialized engine is not a stand-in plan")
                return None
            engine = _Engine(bytes(data[len(PLAN_MAGIC):]))
            engine.create_execution_context = lambda: _Context(engine, gpu)
            return engine

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


# ---- installing it ----------------------------------------------------------------------------------------

def install(monkeypatch: Any, gpu: Gpu | None = None) -> Gpu:
    """Make ``import tensorrt`` and ``cuda.bindings.runtime`` the stand-in for one test."""
    gpu = gpu or Gpu()
    rt = cudart_module(gpu)
    cuda, bindings = _module("cuda"), _module("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, rt
    for name, module in (("tensorrt", tensorrt_module(gpu)), ("cuda", cuda), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, module)
    return gpu


_SHIM = """import sys
sys.path.insert(0, {here!r})
import trt_standin
sys.modules[__name__] = trt_standin.{factory}(trt_standin.PROCESS_GPU)
{extra}"""

#: In the child's ``tensorrt``: the stand-in's "device" memory is host memory, which the data path's
#: CUDA kernels cannot read, so the loop keeps preprocessing and decoding on the host even where the
#: kernels were built with CUDA (as ``on_target`` does in-process).
_HOST_DATA_PATH = """import vla.kernels
vla.kernels.cuda_available = lambda: False
"""

#: A child process's one emulated device, shared by its ``tensorrt`` and ``cuda.bindings.runtime``.
PROCESS_GPU = Gpu()


def write_shims(folder: Path) -> Path:
    """A folder to put first on ``PYTHONPATH``: in a child process, ``import tensorrt`` and
    ``cuda.bindings.runtime`` become the stand-in (they replace themselves in ``sys.modules``)."""
    here = str(Path(__file__).resolve().parent)
    (folder / "cuda" / "bindings").mkdir(parents=True, exist_ok=True)
    (folder / "cuda" / "__init__.py").write_text("")
    (folder / "cuda" / "bindings" / "__init__.py").write_text("")
    (folder / "tensorrt.py").write_text(_SHIM.format(here=here, factory="tensorrt_module", extra=_HOST_DATA_PATH))
    (folder / "cuda" / "bindings" / "runtime.py").write_text(_SHIM.format(here=here, factory="cudart_module",
                                                                         extra=""))
    return folder
