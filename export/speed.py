"""How fast a graph runs on ONNX Runtime CPU, with the runtime's own session settings.

Used to record what high-precision exclusions cost. Timings interleave the graphs run for run, so
a noisy machine slows them alike and their ratio stays meaningful; the figures are the medians.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from vla.runtime.backends.ort import open_session
from vla.runtime.bench.interleaved import interleaved_medians_ms


def median_latencies_ms(models: dict[str, onnx.ModelProto], feeds: dict[str, np.ndarray], runs: int = 10,
                        warmup: int = 2, threads: int | None = None) -> dict[str, float]:
    """Median latency (ms) of each named model on ``feeds``, measured interleaved."""
    sessions = {}
    with tempfile.TemporaryDirectory(prefix="vla-speed-") as tmp:
        for name, model in models.items():
            path = Path(tmp) / f"{name}.onnx"
            onnx.save_model(model, str(path))
            sessions[name] = open_session(str(path), threads=threads)
    runners = {name: (lambda s=sess: s.run(None, feeds)) for name, sess in sessions.items()}
    return interleaved_medians_ms(runners, runs, warmup)
