"""One engine run back to back, timed per stage the way trtexec times it.

Targets:

- a **bundle** (or an ``.onnx`` carrying a vla manifest): the runtime's own path per iteration,
  preprocess (raw 1280×720 YUYV camera frames through the fused kernel into the engine's input
  buffers), compute (the backend's run), decode (``decode_trajectory``), and end to end;
- **any other ``.onnx``**: inputs generated from the graph's shapes and dtypes (as trtexec does;
  ``--shapes name:1x3x224x224`` for symbolic dims), compute only;
- a TensorRT **``.plan``**: needs TensorRT, which this machine cannot have; refused with the reason.

Iterations follow trtexec's rule: warm up for ``warmup_s``, then run until at least
``iterations`` runs *and* ``duration_s`` seconds are done. Throughput is runs over the wall time
from the first timed run's start to the last one's end. Ctrl-C ends the timing early; the figures
then cover what was measured, and the result says so.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VlaError
from ..loop.stats import summarize
from .result import SCHEMA, Result

_NP_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


@dataclass
class BenchConfig:
    iterations: int = 10  # at least this many timed runs (trtexec: --iterations)
    duration_s: float = 3.0  # and at least this long (trtexec: --duration)
    warmup_s: float = 0.2  # untimed runs first (trtexec: --warmUp 200 ms)
    budget_ms: float | None = None  # e2e above this counts as a deadline miss
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    threads: int | None = None
    spin_wait: bool = False
    cuda_graph: bool = False
    seed: int = 0
    device: str = "cpu"
    command: str | None = None  # route command of a bundle's command/text inputs (None: the bundle's default)
    stage: str | None = None  # a bundle of stages: time this stage alone (--stage NAME)


def parse_shapes(text: str | None) -> dict[str, tuple[int, ...]]:
    """trtexec's ``--shapes`` syntax: ``name:1x3x224x224,other:1x16`` (a name may contain ':')."""
    out: dict[str, tuple[int, ...]] = {}
    if not text:
        return out
    for item in text.split(","):
        name, sep, dims = item.strip().rpartition(":")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims):
            raise VlaError(f"--shapes {item!r}: expected NAME:DxDxD, e.g. images:1x3x224x224")
        out[name] = tuple(int(d) for d in dims.split("x"))
    return out


def concrete_shapes(inputs: list[tuple[str, str, list[Any]]], shapes: dict[str, tuple[int, ...]]
                    ) -> dict[str, tuple[int, ...]]:
    """Every graph input's shape with its symbolic dims resolved from ``--shapes`` (pure)."""
    unknown = sorted(set(shapes) - {name for name, _, _ in inputs})
    if unknown:
        raise VlaError(f"--shapes names {unknown}, which the graph does not have "
                       f"(its inputs: {[name for name, _, _ in inputs]})")
    out, missing = {}, []
    for name, _, dims in inputs:
        if name in shapes:
            given = shapes[name]
            fixed_ok = len(given) == len(dims) and all(
                not (isinstance(d, int) and d > 0) or d == g for d, g in zip(dims, given, strict=True))
            if not fixed_ok:
                raise VlaError(f"--shapes {name}:{'x'.join(map(str, given))} does not fit the graph's "
                               f"{_dims_text(dims)}")
            out[name] = given
        elif all(isinstance(d, int) and d > 0 for d in dims):
            out[name] = tuple(dims)
        else:
            missing.append(f"{name} {_dims_text(dims)}")
    if missing:
        raise VlaError(f"symbolic input dims need --shapes: {'; '.join(missing)} "
                       f"(e.g. --shapes {inputs[0][0]}:1x...)")
    return out


def _dims_text(dims: list[Any]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else f"{d or '?'}" for d in dims) + "]"


def random_inputs(inputs: list[tuple[str, str, list[Any]]], shapes: dict[str, tuple[int, ...]], seed: int = 0
                  ) -> dict[str, np.ndarray]:
    """Random values of each input's dtype, like trtexec's generated inputs."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, onnx_type, _ in inputs:
        dtype = _NP_TYPES.get(onnx_type)
        if dtype is None:
            raise VlaError(f"input {name} has type {onnx_type}, which vla-bench cannot generate")
        shape = shapes[name]
        if dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, size=shape).astype(bool)
        elif np.issubdtype(dtype, np.integer):
            feeds[name] = rng.integers(0, 8, size=shape).astype(dtype)  # small: valid as indices/ids too
        else:
            feeds[name] = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    return feeds


# ==================================================================================================
# Targets: what one iteration does, as named, timed stages
# ==================================================================================================


class Target:
    """One iteration = ``stages()`` in order; ``describe`` for the report."""

    engine: str
    backend: str

    def stages(self) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def device_timings(self) -> dict[str, float]:
        """The last iteration's stages timed on the device (CUDA events, ms), which replace or join the
        host-timed ones: a GPU backend's ``h2d``, ``compute`` and ``d2h`` as trtexec reports them
        (H2D Latency, GPU Compute Time, D2H Latency), and ``enqueue``. Empty on the CPU."""
        return {}

    def close(self) -> None:
        pass


class OnnxTarget(Target):
    """Any ONNX graph on ONNX Runtime CPU with generated inputs: compute only."""

    def __init__(self, path: str, cfg: BenchConfig) -> None:
        from ..backends.ort import default_threads, open_session

        self.engine = path
        threads = cfg.threads or default_threads()
        session = open_session(path, threads, cfg.spin_wait)
        inputs = [(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
        shapes = concrete_shapes(inputs, cfg.shapes)
        import onnxruntime as ort

        self.feeds = random_inputs(inputs, shapes, cfg.seed)
        self._binding = session.io_binding()
        for name, arr in self.feeds.items():
            self._binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
        for out in session.get_outputs():
            self._binding.bind_output(out.name, "cpu")
        self._session = session
        self.backend = (f"onnxruntime {ort.__version__} CPUExecutionProvider, {threads} intra-op thread(s), "
                        f"spinning {'on' if cfg.spin_wait else 'off'}")

    def stages(self) -> list[tuple[str, Any]]:
        return [("compute", lambda: self._session.run_with_iobinding(self._binding))]


class BundleTarget(Target):
    """The runtime's per-tick path on a bundle: preprocess → compute → decode."""

    def __init__(self, path: str, cfg: BenchConfig, camera_size: tuple[int, int] = (1280, 720),
                 backend: str = "auto") -> None:
        from vla.kernels import TrajectoryDecoder

        from ..engine import open_engine
        from ..inputs.commands import write_command
        from ..inputs.feeds import example_feed
        from ..inputs.preprocess import RigPreprocessor
        from ..inputs.sources.base import Frame
        from ..inputs.sources.scene import frame_shape

        self.engine = path
        self.backend_obj = open_engine(path, cfg.threads, cfg.spin_wait, backend=backend, device=cfg.device,
                                       cuda_graph=cfg.cuda_graph)
        self.backend = self.backend_obj.describe()
        m = self.backend_obj.manifest
        rng = np.random.default_rng(cfg.seed)
        w, h = camera_size
        self._pre = RigPreprocessor.for_backend(self.backend_obj)
        self._frames = {
            name: Frame(camera=name, seq=1, capture_time=time.monotonic(), fmt="yuyv", width=w, height=h,
                        data=rng.integers(16, 236, size=frame_shape("yuyv", w, h), dtype=np.uint8))
            for name in self._pre.names
        }
        for spec in m.inputs:
            if spec.role != "camera":
                self.backend_obj.feed(spec.name)[...] = example_feed(spec, m, rng)
        try:  # the command as vla-run encodes it (a model without command inputs refuses --command)
            write_command(m, cfg.command, self.backend_obj.feed,
                          warn=lambda note: print(f"vla-bench: warning: {note}", file=sys.stderr, flush=True))
        except BaseException:
            self.backend_obj.close()
            raise
        traj = m.outputs_with("trajectory")[0]
        scores = m.outputs_with("score")
        self._traj, self._score = traj.name, scores[0].name if scores else None
        self._dt = float(traj.detail["dt"])
        self._decoder = TrajectoryDecoder(self._dt, traj.shape[-2])  # the loop's decoder
        # A trajectory of controls is integrated from the ego's newest speed first, as the loop does.
        self._controls = m.controls
        self._v0 = m.start_speed(self.backend_obj.feed) if m.controls else 0.0
        self._outputs: dict[str, np.ndarray] = {}
        self.cameras = len(self._frames)
        self.model_stages = m.staged

    def only_stage(self, name: str) -> StageTarget:
        """This bundle, timing one of its stages alone (``--stage NAME``)."""
        return StageTarget(self, name)

    def _preprocess(self) -> None:
        self._pre(self._frames)

    def _compute(self) -> None:
        self._outputs = self.backend_obj.run()

    def _decode_out(self) -> None:
        from vla.kernels.decode import integrate_controls

        out = self._outputs
        traj = out[self._traj]
        if self._controls:
            traj = integrate_controls(traj, self._v0, self._dt)[None]
        self._decoder(traj, out[self._score] if self._score else None)

    def stages(self) -> list[tuple[str, Any]]:
        return [("preprocess", self._preprocess), ("compute", self._compute), ("decode", self._decode_out)]

    def device_timings(self) -> dict[str, float]:
        timings = self.backend_obj.last_timings_ms()
        if self.model_stages:  # a bundle of stages: each graph's share of compute, trtexec-style statistics each
            return {f"stage:{k}": float(v) for k, v in timings.items()}
        if "h2d" not in timings:  # a CPU run: its compute is host wall time, already timed as such
            return {}
        return {k: float(timings[k]) for k in ("h2d", "compute", "d2h", "enqueue") if k in timings}

    def close(self) -> None:
        self.backend_obj.close()


class StageTarget(Target):
    """One stage of a bundle of stages on its own (a repeat stage with all its K steps), on inputs from a
    whole run of the bundle first (so the stages before it have produced what it reads)."""

    def __init__(self, bundle: BundleTarget, name: str) -> None:
        from ..backends.staged import StagedBackend, StageStore

        staged = bundle.backend_obj
        names = [s.name for s in getattr(staged, "stages", ())]
        if not isinstance(staged, StagedBackend) or name not in names:
            have = f"its stages are {', '.join(names)}" if names else "it is one graph (no stages)"
            bundle.close()
            raise VlaError(f"--stage {name}: {bundle.engine} has no stage '{name}'; {have}")
        self._bundle, self.engine = bundle, bundle.engine
        self.backend = staged.describe_stage[name]
        self.cameras = bundle.cameras
        bundle._preprocess()
        staged.run()  # every stage once: the intermediates this one reads exist now
        self._store = StageStore()
        self._store.values.update(staged.last_values())
        self._stage = next(s for s in staged.stages if s.name == name)
        staged.prepare([self._stage], self._store)
        self._staged = staged

    def stages(self) -> list[tuple[str, Any]]:
        return [(f"stage:{self._stage.name}", lambda: self._staged.execute([self._stage], self._store))]

    def close(self) -> None:
        self._bundle.close()


def open_target(engine: str, backend: str, cfg: BenchConfig) -> Target:
    """The target for ``--engine`` and ``--backend`` (``cfg.stage``: one stage of a bundle of stages)."""
    target = _open_target(engine, backend, cfg)
    if cfg.stage is None:
        return target
    if not isinstance(target, BundleTarget):
        target.close()
        raise VlaError(f"--stage {cfg.stage}: {engine} is not a bundle of stages")
    return target.only_stage(cfg.stage)


def _open_target(engine: str, backend: str, cfg: BenchConfig) -> Target:
    """The target for ``--engine`` and ``--backend``; one-line errors for what cannot run here."""
    path = Path(engine)
    if not path.exists():
        raise VlaError(f"--engine {engine}: no such file or bundle folder")
    if path.suffix == ".plan" or backend == "trt":
        from ..trt import import_tensorrt

        import_tensorrt(f"--engine {engine}: a .plan runs")  # one line where it is missing (or a stub)
        # The backend choice stays open_engine's (select.choose_backend refuses a .plan with --backend ort).
        return BundleTarget(engine, cfg, backend=backend)
    if cfg.cuda_graph:  # refused before anything is opened, whatever the engine file is
        from ..backends.select import TENSORRT, choose_backend, probe_available

        chosen, _ = choose_backend(backend, cfg.device, engine, probe_available(check_cuda=cfg.device == "cuda"))
        if chosen != TENSORRT:
            raise VlaError("--cuda-graph in engine mode replays TensorRT's engine; without TensorRT, time the GPU "
                           "data path's graphs with --loop --device cuda --cuda-graph")
        return BundleTarget(engine, cfg, backend=backend)
    if backend == "torch" and not path.is_dir():
        raise VlaError("--backend torch runs a bundle's program.pt2; give a bundle folder from vla-export")
    if path.is_dir():
        return BundleTarget(engine, cfg, backend=backend)
    if path.suffix != ".onnx":
        raise VlaError(f"--engine {engine}: expected a bundle folder, an .onnx or a .plan")
    if _has_manifest(path):
        return BundleTarget(engine, cfg, backend=backend)
    if cfg.command is not None:
        raise VlaError(f"--command: {engine} has no vla manifest to say how the model reads a command; "
                       "give a bundle from vla-export")
    if cfg.device == "cuda":
        raise VlaError(f"--engine {engine}: a bare .onnx without a manifest runs on ONNX Runtime on the CPU here; "
                       "drop --device cuda, or give a bundle from vla-export")
    try:
        return OnnxTarget(engine, cfg)
    except VlaError:
        raise
    except Exception as exc:
        raise VlaError(f"--engine {engine}: cannot run ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
                       ) from None


def _has_manifest(path: Path) -> bool:
    from ..bundle import embedded_manifest_text

    try:
        return embedded_manifest_text(path) is not None
    except VlaError:
        return False  # ONNX Runtime gives the real error when it loads it


# ==================================================================================================
# The timing loop
# ==================================================================================================


def run_bench(target: Target, cfg: BenchConfig) -> Result:
    """Warm up, then time every stage of every iteration until both minimums are met (or Ctrl-C)."""
    stages = target.stages()
    clock = time.perf_counter
    end_warmup = clock() + cfg.warmup_s
    while True:  # at least one warm-up run, even with --warmup 0: first runs allocate
        for _, fn in stages:
            fn()
        if clock() >= end_warmup:
            break
    samples: dict[str, list[float]] = {name: [] for name, _ in stages}
    stage_names = set(samples)
    samples["e2e"] = []
    interrupted = False
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    first = clock()
    last = first
    try:
        while len(samples["e2e"]) < cfg.iterations or last - first < cfg.duration_s:
            t0 = t = clock()
            for name, fn in stages:
                fn()
                now = clock()
                samples[name].append(1000.0 * (now - t))
                t = now
            for name, value in target.device_timings().items():  # events replace a host-timed stage
                if name in stage_names:
                    samples[name][-1] = value
                else:
                    samples.setdefault(name, []).append(value)
            samples["e2e"].append(1000.0 * (t - t0))
            last = t
    except KeyboardInterrupt:
        interrupted = True
        n = len(samples["e2e"])
        for name in samples:  # drop the half-timed iteration
            del samples[name][n:]
    n = len(samples["e2e"])
    wall = last - first
    result: Result = {
        "schema": SCHEMA,
        "mode": "engine",
        "engine": target.engine,
        "backend": target.backend,
        "settings": {"iterations": cfg.iterations, "duration_s": cfg.duration_s, "warmup_s": cfg.warmup_s,
                     "budget_ms": cfg.budget_ms, "shapes": {k: list(v) for k, v in cfg.shapes.items()} or None,
                     "cuda_graph": cfg.cuda_graph, "spin_wait": cfg.spin_wait, "threads": cfg.threads,
                     "rate_hz": None, "cameras": getattr(target, "cameras", None)},
        "stages": {name: summarize(vals) for name, vals in samples.items() if vals},
        "samples": samples,
        "throughput_qps": n / wall if wall > 0 else float("nan"),
        "deadline": deadline(samples["e2e"], cfg.budget_ms),
        "wall_s": wall,
        "interrupted": interrupted,
        "started_at": started_at,
    }
    return result


def deadline(e2e: list[float], budget_ms: float | None) -> dict[str, Any] | None:
    """Deadline misses: runs whose end-to-end time exceeded the budget (pure)."""
    if budget_ms is None:
        return None
    misses = sum(v > budget_ms for v in e2e)
    return {"budget_ms": budget_ms, "misses": misses, "rate": misses / len(e2e) if e2e else float("nan")}
