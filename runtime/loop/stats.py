"""Latency statistics defined exactly as trtexec defines them, so figures compare one to one.

- median: the middle value, or the mean of the two middle values for an even count;
- percentile p: ``sorted[max(N - 1 - int((1 - p/100) * N), 0)]`` in float32 (trtexec's ``findPercentile``);
- coefficient of variation: population standard deviation / mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """trtexec's percentile of already-sorted values (NaN when empty)."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    # trtexec computes this in float32 (`float percentile`); in float64 p90 of 100 values would pick
    # the 91st value instead of the 90th, and p99 of 100 values the 99th instead of the 100th.
    exclude = int(np.float32(np.float32(1.0) - np.float32(p) / np.float32(100.0)) * np.float32(n))
    return sorted_values[max(n - 1 - exclude, 0)]


def median(sorted_values: Sequence[float]) -> float:
    n = len(sorted_values)
    if n == 0:
        return math.nan
    mid = n // 2
    return sorted_values[mid] if n % 2 else 0.5 * (sorted_values[mid - 1] + sorted_values[mid])


def summarize(values: Sequence[float], percentiles: Sequence[float] = (50, 90, 95, 99, 99.9)) -> dict[str, float]:
    """min, max, mean, median, std, cv and the requested percentiles (keys ``p50``, ``p99.9``)."""
    s = sorted(values)
    n = len(s)
    if n == 0:
        return {"count": 0}
    mean = sum(s) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in s) / n)
    out = {"count": n, "min": s[0], "max": s[-1], "mean": mean, "median": median(s), "std": std,
           "cv": std / mean if mean else math.nan}
    for p in percentiles:
        out[f"p{p:g}"] = percentile(s, p)
    return out


class Window:
    """The last ``capacity`` values in a preallocated ring: statistics for a loop that runs for days
    without its memory growing one tick at a time."""

    def __init__(self, capacity: int) -> None:
        self._buf = np.empty(capacity, dtype=np.float64)
        self._buf.fill(0.0)  # touch every page now: an untouched calloc'd ring would grow RSS as it fills
        self.count = 0  # values ever added

    def append(self, value: float) -> None:
        self._buf[self.count % len(self._buf)] = value
        self.count += 1

    def values(self) -> list[float]:
        """The retained values, oldest first."""
        n = len(self._buf)
        if self.count <= n:
            return self._buf[: self.count].tolist()
        i = self.count % n
        return np.concatenate([self._buf[i:], self._buf[:i]]).tolist()

    def __len__(self) -> int:
        return min(self.count, len(self._buf))
