"""The GPU data path's own cost per tick (issue 7 target: <= 0.3 ms with 3 cameras at 1080p).

Runs the loop's GPU path (``runtime/loop/device_path.py``, ``DeviceTick``) on the torch backend on CUDA,
with three 1920x1080 YUYV frames per tick, in three interleaved ways per iteration, so they share
the machine's state:

- ``eager``: the tick's device work launched plainly, with CUDA events between its stages:
  ``frames_up`` (raw frames H2D from pinned staging), ``preprocess`` (the CUDA kernel writing the
  engine's image input), ``engine`` (ego, noise and command up, then the model), ``decode`` (the
  CUDA decode kernel and the download of the trajectory and its verdict);
- ``graph``: the same work replayed as one CUDA graph (captured after the first runs);
- ``compute``: the engine alone (``enqueue_run`` with the backend's own events), the peer that is
  subtracted: overhead = median device time of a tick - median compute.

Host figures: ``stage_host`` is the loop thread's copy of the frames into pinned staging;
``launch_host`` the host time of enqueuing the tick (what CUDA graphs shrink).

    python benchmarks/gpu_data_path.py [--engine bundles/reference] [--ticks 300]

Needs a CUDA device, PyTorch with CUDA and the kernels built with CUDA; otherwise it says which is
missing and exits 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import numpy as np

from vla.runtime.cli_support import run_main
from vla.runtime.errors import VlaError
from vla.runtime.loop.stats import summarize

STAGES = ("frames_up", "preprocess", "engine", "decode")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="bundles/reference", help="an FP32 bundle (default bundles/reference)")
    p.add_argument("--ticks", type=int, default=300)
    p.add_argument("--size", default="1920x1080", help="camera frame size, WIDTHxHEIGHT")
    args = p.parse_args()
    size = re.fullmatch(r"(\d+)x(\d+)", args.size)
    if args.ticks < 1 or size is None:
        raise VlaError(f"--ticks must be 1 or more and --size WIDTHxHEIGHT (got {args.ticks}, {args.size!r})")

    try:
        import torch
    except ImportError:
        raise VlaError("needs PyTorch with CUDA (pip install torch)") from None

    import vla.kernels as K
    from vla.runtime.engine import open_engine
    from vla.runtime.inputs.preprocess import RigPreprocessor
    from vla.runtime.inputs.sources.base import Frame
    from vla.runtime.inputs.sources.scene import frame_shape
    from vla.runtime.loop.device_path import DeviceDecoder, DeviceTick

    if not torch.cuda.is_available() or not K.cuda_available():
        why = "PyTorch sees no CUDA device" if not torch.cuda.is_available() else K.cuda_status()
        raise VlaError(f"needs a CUDA device ({why})")
    w, h = int(size[1]), int(size[2])
    backend = open_engine(args.engine, backend="torch", device="cuda")
    io = backend.device_io()
    m = backend.manifest
    traj = m.outputs_with("trajectory")[0]
    score = m.outputs_with("score")[0].name if m.outputs_with("score") else None
    rig = RigPreprocessor.for_backend(backend, device=io)
    notes: list[str] = []

    def make_tick(graph: bool) -> DeviceTick:
        decoder = DeviceDecoder(io, float(traj.detail["dt"]), traj.shape[-2])
        return DeviceTick(io, rig, decoder, traj.name, score, cuda_graph=graph, log=notes.append)

    ticks = {"eager": make_tick(False), "graph": make_tick(True)}
    rng = np.random.default_rng(0)
    frames = {n: Frame(camera=n, data=rng.integers(16, 236, frame_shape("yuyv", w, h), dtype=np.uint8), fmt="yuyv",
                       width=w, height=h, seq=1, capture_time=0.0) for n in rig.names}
    stream = backend.stream
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(len(STAGES) + 1)]
    engine_ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    rows: dict[str, list[float]] = {k: [] for k in (*STAGES, "eager_device", "eager_launch_host", "graph_device",
                                                    "graph_launch_host", "compute", "stage_host")}
    for i in range(args.ticks + 10):
        timed = i >= 10
        for mode, tick in ticks.items():
            t0 = time.perf_counter()
            tick.stage(frames)
            t1 = time.perf_counter()
            ev[0].record(stream)
            marks = iter(ev[1:])
            tick.launch(mark=lambda stage, marks=marks: next(marks).record(stream))
            t2 = time.perf_counter()
            if mode == "graph":
                ev[-1].record(stream)
            tick.finish()
            backend.commit_state()
            if not timed:
                continue
            rows["stage_host"].append((t1 - t0) * 1000.0)
            rows[f"{mode}_launch_host"].append((t2 - t1) * 1000.0)
            rows[f"{mode}_device"].append(ev[0].elapsed_time(ev[-1]))
            if mode == "eager":
                for k, stage in enumerate(STAGES):
                    rows[stage].append(ev[k].elapsed_time(ev[k + 1]))
        backend.enqueue_run(engine_ev)  # the engine alone, the peer subtracted below
        backend.stream.synchronize()
        if timed:
            rows["compute"].append(engine_ev[1].elapsed_time(engine_ev[2]))
    graph_note = ticks["graph"].graph_note
    for tick in ticks.values():
        tick.close()
    backend.close()
    print(f"GPU data path: {torch.cuda.get_device_name()}, {len(frames)} cameras {w}x{h} YUYV, {args.ticks} ticks, "
          f"{args.engine} on {backend.describe()}; CUDA graph {graph_note}")
    for line in notes:
        print(f"note: {line}")
    print("| figure | median ms | p99 ms |\n|---|---|---|")
    stats = {k: summarize(v) for k, v in rows.items()}  # trtexec's median and percentiles, as vla-bench
    for k, st in stats.items():
        print(f"| {k} | {st['median']:.3f} | {st['p99']:.3f} |")
    compute = stats["compute"]["median"]
    for mode in ticks:
        overhead = stats[f"{mode}_device"]["median"] - compute
        print(f"overhead {mode} (median device time of a tick - median compute): {overhead:.3f} ms")
    overhead = stats["graph_device"]["median"] - compute
    print(f"target overhead <= 0.3 ms (CUDA events, all but compute, CUDA graph): "
          f"{'met' if overhead <= 0.3 else 'not met'} ({overhead:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main("gpu_data_path", main))
