"""Build a TensorRT plan from a bundle, written to the documented API of TensorRT 10.3 and 11.x.

The steps are TensorRT's own (``Builder`` -> strongly typed network -> ``OnnxParser.parse_from_file``
-> builder config -> ``build_serialized_network``); what this module adds is what makes a build on a
vehicle computer tolerable and its result trustworthy:

- **precision comes from the graph**: the network is created strongly typed, so the FP16 casts and
  INT8 Q/DQ nodes vla-export decided are what runs (TensorRT 11 has no other way, and 10.3 agrees);
- every parser error is reported, one line each with its node, and the manifest is checked against
  the network TensorRT parsed, naming the tensor that disagrees;
- the workspace is sized from the GPU's free memory (half of it, at least 256 MB), with a clear
  error saying what to close when there is not enough;
- a persistent timing cache (beside the plan by default) makes the second build of a model, or of
  a similar one, take a fraction of the first;
- progress (TensorRT's phases) and a heartbeat line every few seconds show a build that takes
  minutes on an Orin is alive;
- plugin libraries are loaded and their sha256 recorded, and the plan is written with a sidecar
  (``cache.sidecar``) saying exactly what it was built from and for.

``import tensorrt`` happens only inside functions, so this module imports anywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from ..bundle import MANIFEST_FILE, MODEL_FILE, read_manifest, resolve, staged_manifest
from ..errors import VlaError
from ..manifest import Manifest, check_against_graph
from ..stages import Stage
from . import CudaDevice, dtype_name, import_tensorrt, platform_tag
from .cache import (
    EngineKey,
    make_key,
    sha256_file,
    short_hash,
    sidecar,
    sidecar_path,
    timing_cache_path,
    write_bytes_atomic,
    write_json_atomic,
)

Log = Callable[[str], None]
MB = 1 << 20
WORKSPACE_FRACTION = 0.5
WORKSPACE_FLOOR_MB = 256


def _one_line(text: Any, limit: int = 240) -> str:
    return " ".join(str(text).split())[:limit]


# ---- the bundle (no TensorRT needed: checked before importing it, so users get these errors first) ----

@dataclass(frozen=True)
class Bundle:
    """What one plan is built from: a graph and the manifest it is checked against (its contract), the
    folder its plan is cached in, and the hash the plan is keyed on.

    For a one-graph bundle that is ``model.onnx`` and the bundle's manifest; for one stage of a bundle
    of stages (``open_stage``) the stage's graph and its own contract (``Manifest.stage_manifest``),
    with ``stage`` naming it and ``whole`` the bundle's manifest (written into the plan's sidecar).
    Everything that keys, caches and builds a plan takes this pair, so a stage's plan follows exactly
    the cache rules of a one-graph bundle's.
    """

    dir: Path
    model: Path
    manifest: Manifest
    model_hash: str
    stage: str | None = None
    whole: Manifest | None = None

    @property
    def what(self) -> str:
        """How messages name it: ``stage 'vision' (vision.onnx)`` or the graph's path."""
        return f"stage '{self.stage}' ({self.model.name})" if self.stage else str(self.model)


def open_bundle(path: str | Path) -> Bundle:
    """The bundle at ``path``: a folder from vla-export, its ``model.onnx``, or a bare ``.onnx`` that
    carries its manifest (as ``vla-run --engine`` takes them); a one-line ``VlaError`` otherwise."""
    p = Path(path)
    if not p.exists():
        raise VlaError(f"{path}: no such bundle folder or .onnx")
    if p.is_file() and p.suffix != ".onnx":
        raise VlaError(f"{path}: expected a bundle folder from vla-export, or an .onnx carrying its manifest")
    if p.is_dir() and not (p / MODEL_FILE).is_file():
        if staged_manifest(p) is not None:
            raise VlaError(f"{path}: a bundle of stages has no single {MODEL_FILE}; each stage gets its own plan "
                           "(vla-build BUNDLE builds them all, vla-run --backend trt opens them)")
        raise VlaError(f"{path}: folder has no {MODEL_FILE}; is it a bundle from vla-export?")
    model, manifest_file = resolve(str(p))
    if manifest_file is None and (model.parent / MANIFEST_FILE).is_file():  # a bundle's model.onnx: its manifest.json
        manifest_file = model.parent / MANIFEST_FILE
    manifest = read_manifest(model, manifest_file)
    # The manifest's hash covers the graph without its metadata; a manifest without one falls back to
    # the file's own bytes (stricter: any re-export then counts as a change).
    return Bundle(model.parent, model, manifest, manifest.model_hash or sha256_file(model))


def open_stage(folder: str | Path, stage: Stage, part: Manifest, whole: Manifest | None = None) -> Bundle:
    """One stage of the bundle of stages in ``folder`` as what a plan is built from: ``stage.file``,
    checked against ``part`` (the stage's contract). ``whole`` is the bundle's manifest (read from the
    folder when not given); the hash it records for the stage keys the plan, as the model hash does for
    a one-graph bundle, else the graph file's own bytes (stricter: any re-export counts as a change)."""
    folder = Path(folder)
    graph = folder / stage.file
    if not graph.is_file():
        raise VlaError(f"{folder}: stage '{stage.name}' has no {stage.file}; re-export the bundle with vla-export")
    whole = whole or staged_manifest(folder)
    entry = next((s for s in (whole.raw.get("stages") or []) if s.get("name") == stage.name), {}) if whole else {}
    return Bundle(folder, graph, part, entry.get("hash") or sha256_file(graph), stage.name, whole)


@dataclass(frozen=True)
class PluginLib:
    """A plugin library the plan needs: file name (the key compares by name), path, sha256."""

    name: str
    path: Path
    sha256: str


def hash_plugins(paths: list[str | Path] | tuple[str | Path, ...]) -> list[PluginLib]:
    """Check and hash plugin libraries (before TensorRT is imported: a typo is named first)."""
    libs = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise VlaError(f"--plugin {raw}: no such file")
        libs.append(PluginLib(path.name, path.resolve(), sha256_file(path)))
    names = [lib.name for lib in libs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise VlaError(f"--plugin: two libraries named {dup[0]}; plugin libraries are told apart by file name")
    return libs


def plan_key(tensorrt_version: str, device: CudaDevice, bundle: Bundle, plugins: list[PluginLib],
             workspace_mb: int | None) -> EngineKey:
    """The key for building ``bundle`` here with these plugins and options."""
    return make_key(tensorrt=tensorrt_version, gpu=device.name, compute_capability=device.compute_capability,
                    cuda_driver=device.driver, cuda_runtime=device.runtime, model_hash=bundle.model_hash,
                    platform=platform_tag(), manifest=bundle.manifest,
                    plugins=[(lib.name, lib.sha256) for lib in plugins], workspace_mb=workspace_mb)


# ---- pure helpers ---------------------------------------------------------------------------------

def workspace_bytes(free: int, total: int, requested_mb: int | None = None, fraction: float = WORKSPACE_FRACTION,
                    floor_mb: int = WORKSPACE_FLOOR_MB) -> tuple[int, str]:
    """(workspace bytes, how it was chosen) for the builder's WORKSPACE pool.

    Without ``requested_mb``: ``fraction`` of the free device memory, refused below ``floor_mb``
    (tactics that need scratch space would be skipped, giving a slow plan, or the build fails late).
    On a Jetson the GPU shares the system memory, so "free" is what the rest of the car left.
    """
    if requested_mb is not None:
        if requested_mb <= 0:
            raise VlaError(f"--workspace-mb {requested_mb}: must be a positive number of MB")
        note = f" (more than the {free // MB} MB free)" if requested_mb * MB > free else ""
        return requested_mb * MB, f"{requested_mb} MB (--workspace-mb){note}"
    size = int(free * fraction)
    if size < floor_mb * MB:
        raise VlaError(f"only {free // MB} MB of GPU memory is free (of {total // MB} MB); the build needs a "
                       f"workspace of at least {floor_mb} MB ({fraction:.0%} of free memory): close other GPU "
                       "processes (vla-run, PyTorch, another vla-build) or give --workspace-mb")
    return size, f"{size // MB} MB ({fraction:.0%} of {free // MB} MB free)"


def describe_parser_error(err: Any) -> str:
    """One ONNX parser error as one line: its node (index, name, operator), code and description.

    ``node_name``/``node_operator`` exist from TensorRT 10 on; anything missing is left out.
    """
    def get(attr: str) -> Any:
        fn = getattr(err, attr, None)
        try:
            return fn() if callable(fn) else None
        except Exception:
            return None

    node, name, op = get("node"), get("node_name"), get("node_operator")
    code = str(get("code") or "").rsplit(".", 1)[-1] or "ERROR"
    desc = _one_line(get("desc") or "(no description)")
    where = "graph"
    if isinstance(node, int) and node >= 0:
        where = f"node {node}"
        if name:
            where += f" '{name}'"
        if op:
            where += f" ({op})"
    elif name:
        where = f"node '{name}'" + (f" ({op})" if op else "")
    return f"{where}: {code}: {desc}"


def parse_failure(model: Path | str, version: str, lines: list[str]) -> str:
    """The one-line summary of a failed parse (each error was printed on its own line before)."""
    if not lines:
        return f"{model}: TensorRT {version} cannot parse this ONNX model (the parser gave no error)"
    more = f" (and {len(lines) - 1} more error(s) above)" if len(lines) > 1 else ""
    return f"{model}: TensorRT {version} cannot parse this ONNX model: {lines[0]}{more}"


def graph_shape(dims: Any) -> tuple[int | None, ...]:
    """TensorRT dims as the manifest check takes them: a dynamic dim (-1) becomes None (matches any)."""
    return tuple(int(d) if int(d) >= 0 else None for d in dims)


def dynamic_names(types: dict[str, tuple[str, tuple[int | None, ...]]]) -> list[str]:
    """The tensors with at least one dynamic dim: they need an optimisation profile / an input shape."""
    return [name for name, (_, shape) in types.items() if any(d is None for d in shape)]


# ---- TensorRT's logger and progress -----------------------------------------------------------------

class TrtLog:
    """TensorRT's messages: errors kept (the last names why a build or load failed), warnings shown once.

    Called from TensorRT's threads; list appends and set adds are atomic under the GIL.
    """

    LABELS = ("internal error", "error", "warning", "info", "verbose")

    def __init__(self, log: Log, verbose: bool = False) -> None:
        self.log, self.verbose = log, verbose
        self.errors: list[str] = []
        self._seen: set[str] = set()

    def record(self, rank: int, msg: str) -> None:
        text = _one_line(msg, 400)
        if rank <= 1:
            self.errors.append(text)
        if rank <= 2 or self.verbose:
            if rank == 2 and text in self._seen:
                return
            self._seen.add(text)
            self.log(f"  TensorRT {self.LABELS[min(rank, 4)]}: {text}")

    def last_error(self) -> str:
        return self.errors[-1] if self.errors else "TensorRT logged no error"


def make_logger(trt: ModuleType, sink: TrtLog) -> Any:
    """A ``trt.ILogger`` forwarding to ``sink``; exceptions never reach TensorRT (its callbacks are noexcept)."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            with contextlib.suppress(Exception):  # a failing log line must not abort TensorRT
                sink.record(int(severity), msg)

    return _Logger()


class BuildProgress:
    """TensorRT's build phases as lines (the outer two levels) and a status for the heartbeat."""

    def __init__(self, log: Log, start: float, show_depth: int = 1) -> None:
        self.log, self.start, self.show_depth = log, start, show_depth
        self._lock = threading.Lock()
        self._phases: dict[str, dict[str, Any]] = {}  # name -> depth, steps, done, started

    def _elapsed(self) -> str:
        return f"[{time.monotonic() - self.start:6.1f} s]"

    def phase_start(self, name: str, parent: str | None, steps: int) -> None:
        with self._lock:
            depth = self._phases[parent]["depth"] + 1 if parent in self._phases else 0
            self._phases[name] = {"depth": depth, "steps": steps, "done": 0, "started": time.monotonic()}
        if depth <= self.show_depth:
            self.log(f"  {self._elapsed()} {'  ' * depth}{name} ({steps} step{'s' if steps != 1 else ''})")

    def step_complete(self, name: str, step: int) -> bool:
        with self._lock:
            if name in self._phases:
                self._phases[name]["done"] = step + 1
        return True  # never cancel: Ctrl-C ends vla-build itself (see cli)

    def phase_finish(self, name: str) -> None:
        with self._lock:
            phase = self._phases.pop(name, None)
        if phase is not None and phase["depth"] <= self.show_depth:
            took = time.monotonic() - phase["started"]
            self.log(f"  {self._elapsed()} {'  ' * phase['depth']}{name} done in {took:.1f} s")

    def status(self) -> str:
        """The innermost active phase and its step, e.g. ``Building engine > Tactic selection 12/40``."""
        with self._lock:
            chain = sorted(self._phases.items(), key=lambda kv: kv[1]["depth"])
        if not chain:
            return "working"
        name, p = chain[-1]
        outer = " > ".join(n for n, _ in chain[:-1][:2])
        return f"{outer + ' > ' if outer else ''}{name} {p['done']}/{p['steps']}"


def make_progress_monitor(trt: ModuleType, progress: BuildProgress) -> Any | None:
    """A ``trt.IProgressMonitor`` (TensorRT 10+) forwarding to ``progress``, or None if this TensorRT has none."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with contextlib.suppress(Exception):  # never let an exception unwind into TensorRT
                progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                return progress.step_complete(phase_name, step)
            except Exception:
                return True

        def phase_finish(self, phase_name: str) -> None:
            with contextlib.suppress(Exception):
                progress.phase_finish(phase_name)

    return _Monitor()


class Heartbeat:
    """A line every ``every_s`` seconds while the builder runs (it releases the GIL, so this thread runs)."""

    def __init__(self, progress: BuildProgress, log: Log, every_s: float) -> None:
        self.progress, self.log, self.every_s = progress, log, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="vla-build-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.every_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            elapsed = time.monotonic() - self.progress.start
            self.log(f"  [{elapsed:6.1f} s] still building: {self.progress.status()}")


# ---- plugins and the timing cache -----------------------------------------------------------------

def load_plugins(trt: ModuleType, plugins: list[PluginLib], log: Log, sink: TrtLog | None = None) -> list[Any]:
    """Load plugin libraries into TensorRT's registry (``load_library``), else with ``ctypes`` (libraries
    that register their creators when loaded, without the entry points ``load_library`` looks for).

    Returns what keeps them loaded; a library neither way can load is a one-line ``VlaError``.
    """
    handles: list[Any] = []
    registry = trt.get_plugin_registry() if plugins else None
    for lib in plugins:
        errors_before = len(sink.errors) if sink else 0
        handle, how = None, "TensorRT plugin registry"
        try:
            handle = registry.load_library(str(lib.path))
        except Exception:
            handle = None
        if handle is None:
            try:
                handle, how = ctypes.CDLL(str(lib.path), mode=ctypes.RTLD_GLOBAL), "ctypes (self-registering)"
            except OSError as exc:
                raise VlaError(f"plugin {lib.path}: cannot be loaded ({_one_line(exc, 160)})") from None
            if sink is not None:  # load_library's complaint is not the build's error
                del sink.errors[errors_before:]
        handles.append(handle)
        log(f"plugin {lib.name} ({short_hash(lib.sha256)}) loaded via {how}")
    return handles


def open_timing_cache(config: Any, path: Path, log: Log) -> Any:
    """Give the builder the timing cache at ``path`` (a new one when absent or from another GPU/TensorRT)."""
    data = b""
    if path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if cache is None and data:
        log(f"timing cache {path}: unreadable; starting a new one")
        data, cache = b"", config.create_timing_cache(b"")
    # ignore_mismatch=False: timings measured on another device would mislead the tactic choice.
    if not config.set_timing_cache(cache, False):
        log(f"timing cache {path}: recorded on another GPU or TensorRT; starting a new one")
        data, cache = b"", config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    log(f"timing cache: {path} ({len(data) // 1024} KB read)" if data else f"timing cache: {path} (new)")
    return cache


def save_timing_cache(config: Any, path: Path) -> int:
    """Write the builder's (now richer) timing cache back; returns its size in bytes."""
    serialized = config.get_timing_cache().serialize()
    data = bytes(memoryview(serialized))
    write_bytes_atomic(path, data)
    return len(data)


# ---- the build ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildOptions:
    """What the user chose: ``workspace_mb`` None sizes it from free memory."""

    workspace_mb: int | None = None
    timing_cache: Path | None = None  # default: beside the plan, per GPU and TensorRT (cache.timing_cache_path)
    heartbeat_s: float = 10.0
    verbose: bool = False


def _network_types(network: Any) -> tuple[dict[str, tuple[str, tuple[int | None, ...]]], ...]:
    def io(count: int, get: Callable[[int], Any]) -> dict[str, tuple[str, tuple[int | None, ...]]]:
        return {t.name: (dtype_name(t.dtype), graph_shape(t.shape)) for t in (get(i) for i in range(count))}

    return io(network.num_inputs, network.get_input), io(network.num_outputs, network.get_output)


def build_plan(bundle: Bundle, plan: Path, key: EngineKey, device: CudaDevice, plugins: list[PluginLib],
               options: BuildOptions, log: Log) -> dict[str, Any]:
    """Build ``bundle`` into ``plan`` and write its sidecar; returns the sidecar document.

    Old sidecar first removed, then plan, then sidecar, each written atomically: an interrupted build
    leaves at worst a plan without a sidecar, which is refused, never a sidecar describing another plan.
    """
    trt = import_tensorrt()
    start = time.monotonic()
    sink = TrtLog(log, options.verbose)
    logger = make_logger(trt, sink)
    _plugin_handles = load_plugins(trt, plugins, log, sink)  # held for the whole build

    try:
        builder = trt.Builder(logger)
    except Exception as exc:
        raise VlaError(f"TensorRT {trt.__version__} cannot create a builder ({_one_line(exc, 120)}; "
                       f"{sink.last_error()})") from None
    if builder is None:
        raise VlaError(f"TensorRT {trt.__version__} cannot create a builder: {sink.last_error()}")
    # Strongly typed: the graph's own types decide precision. The flag's value differs between
    # TensorRT 10 and 11, so it is always taken from the enum, never written as a number.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    log(f"parsing {bundle.model} ({bundle.model.stat().st_size / MB:.1f} MB)")
    if not parser.parse_from_file(str(bundle.model)):
        lines = [describe_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        for line in lines:
            log(f"  ONNX parser: {line}")
        raise VlaError(parse_failure(bundle.what, trt.__version__, lines))
    inputs, outputs = _network_types(network)
    check_against_graph(bundle.manifest, inputs, outputs,
                        f"{bundle.what} (as TensorRT {trt.__version__} parsed it)")

    config = builder.create_builder_config()
    workspace, how = workspace_bytes(device.free_bytes, device.total_bytes, options.workspace_mb)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    log(f"workspace: {how}")
    dynamic = dynamic_names(inputs)
    if dynamic:  # static graphs need no profile; dynamic dims are pinned to the manifest's shapes
        profile = builder.create_optimization_profile()
        for name, lo, opt, hi in key.profile:
            if name in dynamic:
                profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        log(f"optimisation profile: {', '.join(dynamic)} fixed to the manifest's shapes")
    timing_path = options.timing_cache or timing_cache_path(plan.parent, key)
    timing_path.parent.mkdir(parents=True, exist_ok=True)
    _timing = open_timing_cache(config, timing_path, log)  # the config refers to it during the build
    progress = BuildProgress(log, start)
    monitor = make_progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor

    log("building (minutes on a Jetson; progress below)")
    with Heartbeat(progress, log, options.heartbeat_s):
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VlaError(f"TensorRT {trt.__version__} could not build {bundle.what}: {sink.last_error()}")
    elapsed = time.monotonic() - start

    side = sidecar_path(plan)
    if side.exists():
        side.unlink()
    write_bytes_atomic(plan, memoryview(serialized))
    timing_bytes = save_timing_cache(config, timing_path)
    doc = sidecar(key, {
        "built": {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "elapsed_s": round(elapsed, 1),
                  "host": platform.node(), "workspace_bytes": workspace, "free_bytes_at_start": device.free_bytes,
                  "plan_bytes": plan.stat().st_size},
        "tensorrt": trt.__version__,
        "cuda": {"driver": device.driver, "runtime": device.runtime},
        "gpu": {"name": device.name, "compute_capability": device.compute_capability, "index": device.index},
        "bundle": {"path": str(bundle.dir.resolve()), "model": bundle.model.name, "model_hash": bundle.model_hash},
        "plugins": [{"name": lib.name, "path": str(lib.path), "sha256": lib.sha256} for lib in plugins],
        "timing_cache": {"path": str(timing_path.resolve()), "bytes": timing_bytes},
        # A stage's plan records the whole bundle's manifest and which stage it is: its own contract is
        # derived from those, and a stage plan given alone is refused with that name (backends/trt.py).
        "manifest": (bundle.whole or bundle.manifest).raw,
        **({"stage": {"name": bundle.stage, "file": bundle.model.name}} if bundle.stage else {}),
    })
    write_json_atomic(side, doc)
    return doc
