"""Which cameras' newest frames make a usable group for one tick: a pure decision, no clocks read.

Cameras keep only their newest frame, so a group is "the newest frame of every camera", and it is
usable when every camera has a frame the model has not seen yet, none is stalled, and their capture
times lie within a tolerance of the newest one. Free-running cameras at the same rate are out of
phase by up to one frame period, so the tolerance must exceed the period of the slowest camera
(the default, 50 ms, suits 30 fps rigs and hardware-synchronised rigs alike); a camera that dropped
frames or froze falls behind the group and is named.

The loop waits (bounded) for the cameras listed in ``waiting_on`` before it gives up on a tick: a
camera one frame behind usually catches up within a frame period.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class GroupVerdict:
    problem: str | None  # why the model cannot run on this group (None: it can)
    waiting_on: tuple[str, ...]  # cameras whose next frame could still make the group usable
    spread_ms: float  # newest capture time minus oldest, over cameras with a frame


def judge_group(newest: Mapping[str, tuple[int, float] | None], last_used: Mapping[str, int], now: float,
                tolerance_ms: float, stall_ms: float) -> GroupVerdict:
    """Judge the newest ``(seq, capture_time)`` of every camera (None: no frame yet).

    ``last_used`` is the seq each camera contributed to the last tick that ran the model. The first
    problem in camera order is reported; a stalled camera is not waited for (it would not come).
    """
    times = [f[1] for f in newest.values() if f is not None]
    lead = max(times, default=now)
    spread = (lead - min(times)) * 1000.0 if times else 0.0
    problems: list[str] = []
    waiting: list[str] = []
    for name, frame in newest.items():
        if frame is None:
            problems.append(f"no frame yet from camera '{name}'")
            waiting.append(name)
            continue
        seq, t = frame
        age_ms = (now - t) * 1000.0
        behind_ms = (lead - t) * 1000.0
        if age_ms > stall_ms:
            problems.append(f"camera '{name}' stalled: newest frame is {age_ms:.0f} ms old")
        elif seq == last_used.get(name):
            problems.append(f"no new frame from camera '{name}'")
            waiting.append(name)
        elif behind_ms > tolerance_ms:
            leader = next(n for n, f in newest.items() if f is not None and f[1] == lead)
            problems.append(f"camera '{name}' lags '{leader}' by {behind_ms:.0f} ms (tolerance {tolerance_ms:g} ms)")
            waiting.append(name)
    return GroupVerdict(problems[0] if problems else None, tuple(waiting), spread)
