"""Peers timed side by side: A, B, C, A, B, C, … so a noisy, shared machine slows them alike.

What benchmarks compare is the ratio of these medians (the kernel against OpenCV, ONNX Runtime
against PyTorch, an INT8 graph against its FP32 one), never one absolute figure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from ..loop.stats import median


def interleaved_medians_ms(runners: Mapping[str, Callable[[], object]], runs: int,
                           warmup: int = 3) -> dict[str, float]:
    """Each runner's median wall time in ms over ``runs`` rounds, after ``warmup`` untimed rounds;
    every round runs each runner once, in the mapping's order."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + runs):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(1000.0 * (time.perf_counter() - start))
    return {name: median(sorted(t)) for name, t in times.items()}
