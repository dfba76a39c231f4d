"""The GPU data path's own cost per tick (issue 7 target: <= 0.3 ms with 3 cameras at 1080p).

Runs the loop's GPU path (``runtime/device_path.py``) on the torch backend on CUDA, with three
1920x1080 YUYV frames per tick, and times on the backend's stream with CUDA events:

- ``frames_up``: the raw frames' H2D copies from pinned staging;
- ``preprocess``: the CUDA preprocess kernels writing the engine's image input;
- ``h2d`` / ``compute`` / ``d2h``: the backend's own stages (ego, noise and command inputs up; the
  engine; nothing down on this path);
- ``decode``: the CUDA decode kernel and the download of the chosen trajectory and its verdict.

overhead = everything but ``compute``, on the device. ``host`` is the tick's wall time on the host
minus ``compute`` (the enqueue calls, the staging copies and the waits), what the loop thread spends.

    python benchmarks/gpu_data_path.py [--engine bundles/reference] [--ticks 300]

Needs a CUDA device, PyTorch with CUDA and the kernels built with CUDA; otherwise it says which is
missing and exits 2.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time

import numpy as np

from vla.runtime.cli_support import run_main
from vla.runtime.errors import VlaError


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="bundles/reference", help="an FP32 bundle (default bundles/reference)")
    p.add_argument("--ticks", type=int, default=300)
    p.add_argument("--size", default="1920x1080", help="camera frame size, WIDTHxHEIGHT")
    args = p.parse_args()
    size = re.fullmatch(r"(\d+)x(\d+)", args.size)
    if args.ticks < 1 or size is None:
        raise VlaError(f"--ticks must be 1 or more and --size WIDTHxHEIGHT (got {args.ticks}, {args.size!r})")

    import torch

    import vla.kernels as K
    from vla.runtime.device_path import DeviceDecoder
    from vla.runtime.engine import open_engine
    from vla.runtime.preprocess import RigPreprocessor
    from vla.runtime.sources.base import Frame
    from vla.runtime.sources.scene import frame_shape

    if not torch.cuda.is_available() or not K.cuda_available():
        why = "PyTorch sees no CUDA device" if not torch.cuda.is_available() else K.cuda_status()
        print(f"gpu_data_path: error: needs a CUDA device ({why})", file=sys.stderr)
        return 2
    w, h = int(size[1]), int(size[2])
    backend = open_engine(args.engine, backend="torch", device="cuda")
    io = backend.device_io()
    m = backend.manifest
    pre = RigPreprocessor.for_backend(backend, device=io)
    traj = m.outputs_with("trajectory")[0]
    score = m.outputs_with("score")[0].name if m.outputs_with("score") else None
    decoder = DeviceDecoder(io, float(traj.detail["dt"]), traj.shape[-2])
    io.host_outputs(())
    rng = np.random.default_rng(0)
    frames = {n: Frame(camera=n, data=rng.integers(16, 236, frame_shape("yuyv", w, h), dtype=np.uint8), fmt="yuyv",
                       width=w, height=h, seq=1, capture_time=0.0) for n in pre.names}
    stream = backend.stream
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(6)]
    rows: dict[str, list[float]] = {k: [] for k in ("frames_up", "preprocess", "h2d", "compute", "d2h", "decode",
                                                    "overhead", "host")}
    for tick in range(args.ticks + 10):
        t0 = time.perf_counter()
        ev[0].record(stream)
        uploaded = {n: pre.uploads(f) for n, f in frames.items()}  # what RigPreprocessor does, timed apart
        ev[1].record(stream)
        jobs = [(cam.prepared(frames[cam.name]), uploaded[cam.name]) for cam in pre.cameras]
        K.preprocess_many(jobs, stream=stream)
        ev[2].record(stream)
        backend.run()  # synchronises its stream
        run = backend.last_timings_ms()
        ev[3].record(stream)
        decoder(io.output(traj.name), io.output(score) if score else None)
        ev[4].record(stream)
        backend.commit_state()
        ev[4].synchronize()
        host = (time.perf_counter() - t0) * 1000.0
        if tick < 10:
            continue
        up, prep, dec = ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2]), ev[3].elapsed_time(ev[4])
        for k, v in (("frames_up", up), ("preprocess", prep), ("h2d", run["h2d"]), ("compute", run["compute"]),
                     ("d2h", run["d2h"]), ("decode", dec), ("host", host - run["compute"])):
            rows[k].append(v)
        rows["overhead"].append(up + prep + run["h2d"] + run["d2h"] + dec)
    backend.close()
    print(f"GPU data path: {torch.cuda.get_device_name()}, {len(frames)} cameras {w}x{h} YUYV, {args.ticks} ticks, "
          f"{args.engine} on {backend.describe()}")
    print("| stage | median ms | p99 ms |\n|---|---|---|")
    for k, v in rows.items():
        v.sort()
        print(f"| {k} | {statistics.median(v):.3f} | {v[min(len(v) - 1, int(0.99 * len(v)))]:.3f} |")
    med = statistics.median(rows["overhead"])
    print(f"target overhead <= 0.3 ms (CUDA events, all but compute): {'met' if med <= 0.3 else 'not met'} "
          f"({med:.3f} ms median)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main("gpu_data_path", main))
