"""Tick timing as pure arithmetic: when the next tick is, and how many were missed."""

from __future__ import annotations

import math


def next_tick(start: float, period: float, now: float, last_index: int) -> tuple[int, float]:
    """The first tick index after ``last_index`` whose time is not yet past, and its time.

    Ticks are at ``start + k * period``. A loop that overran keeps the grid (no drift) and skips the
    ticks whose time has already passed; the caller counts ``index - last_index - 1`` as skipped.
    """
    due = math.floor((now - start) / period) + 1 if now >= start else 0
    index = max(last_index + 1, due)
    return index, start + index * period
