"""Planar pose arithmetic shared by the ego history, the fallback and the synthetic scene."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def to_frame(poses: np.ndarray, origin: Sequence[float], out: np.ndarray | None = None) -> np.ndarray:
    """Poses ``[N, 3]`` (x, y, yaw) re-expressed in the frame of ``origin`` = (x0, y0, yaw0).

    The frame is the vehicle's: x forward, y left, yaw counter-clockwise. Yaw is not wrapped, so a
    trajectory that turns through more than pi stays continuous.
    """
    x0, y0, yaw0 = (float(v) for v in origin)
    c, s = math.cos(yaw0), math.sin(yaw0)
    dx, dy = poses[:, 0] - x0, poses[:, 1] - y0
    if out is None:
        out = np.empty((len(poses), 3), dtype=np.result_type(poses.dtype, np.float32))
    out[:, 0] = c * dx + s * dy
    out[:, 1] = -s * dx + c * dy
    out[:, 2] = poses[:, 2] - yaw0
    return out
