"""Choosing and checking the published trajectory (NumPy path; the fused kernel comes later).

``decode`` picks the best of K modes by score and returns a verdict the fallback logic uses: a
trajectory with NaN/inf values, or a score that is not finite, is never published as ``ok``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decoded:
    mode: int
    score: float
    points: np.ndarray  # [T, F] view into the engine's output buffer
    problem: str | None  # None when the trajectory may be published


def decode(trajectory: np.ndarray, score: np.ndarray | None, batch: int = 0) -> Decoded:
    """Best mode of batch item ``batch``; ``trajectory`` is [B, K, T, F], ``score`` [B, K]."""
    modes = trajectory[batch]
    if score is None:
        k, s = 0, float("nan")
    else:
        scores = score[batch]
        if not np.isfinite(scores).all():
            return Decoded(0, float("nan"), modes[0], "non-finite score")
        k = int(np.argmax(scores))
        s = float(scores[k])
    points = modes[k]
    if not np.isfinite(points).all():
        return Decoded(k, s, points, "non-finite trajectory")
    return Decoded(k, s, points, None)
