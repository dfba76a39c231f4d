"""How fast a graph runs on ONNX Runtime CPU, with the runtime's own session settings.

Used to record what high-precision exclusions cost. Timings interleave the graphs run for run, so
a noisy machine slows them alike and their ratio stays meaningful; the figures are the medians.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from vla.runtime.backends.ort import open_session


def median_latencies_ms(models: dict[str, onnx.ModelProto], feeds: dict[str, np.ndarray], runs: int = 10,
                        warmup: int = 2, threads: int | None = None) -> dict[str, float]:
    """Median latency (ms) of each named model on ``feeds``, measured interleaved."""
    sessions = {}
    with tempfile.TemporaryDirectory(prefix="vla-speed-") as tmp:
        for name, model in models.items():
            path = Path(tmp) / f"{name}.onnx"
            onnx.save_model(model, str(path))
            sessions[name] = open_session(str(path), threads=threads)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for i in range(warmup + runs):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            if i >= warmup:
                times[name].append(1000.0 * (time.perf_counter() - start))
    return {name: float(np.median(t)) for name, t in times.items()}
