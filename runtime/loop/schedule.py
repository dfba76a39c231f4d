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


def frame_tick(anchor: float, period: float, slack: float, last_index: int, capture: float) -> int | None:
    """The tick a primary-camera frame captured at ``capture`` fires, or None if it fires none.

    Frame-driven ticks sit on a grid anchored at the first frame's capture time (``anchor + k *
    period``) on the camera's own clock, so a 30 fps camera at 10 Hz runs the model on every third
    frame the moment it arrives, with no wait. A frame fires tick ``k`` when it was captured no
    earlier than ``slack`` before it (capture-time jitter); after an overrun, the newest frame fires
    the latest tick it reaches and the ticks in between count as skipped.
    """
    k = math.floor((capture + slack - anchor) / period)
    return k if k > last_index else None
