"""The loop's health: when fallbacks stop being a blip and become a fault, and when it is over.

A pure state machine, fed once per tick:

- fault: after ``fault_after`` consecutive fallback ticks, or when a camera's newest frame is older
  than ``fault_stall_ms``. While faulted, every published line says ``fault`` (with the reason)
  and carries the stopping fallback trajectory, whatever single ticks manage in between.
- recovery: after ``recover_after`` consecutive good ticks (hysteresis, so a flaky camera does not
  flap the state every tick) with no camera stalled. The transition ticks carry an ``event``:
  ``fault`` when it starts, ``recovered`` (with how long the fault lasted) when it ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class HealthConfig:
    fault_after: int = 5  # consecutive fallbacks (0.5 s at 10 Hz)
    fault_stall_ms: float = 1000.0
    recover_after: int = 3  # consecutive good ticks


@dataclass(frozen=True)
class Health:
    faulted: bool = False
    reason: str | None = None
    since: float | None = None  # when the current fault began (monotonic s)
    fallbacks: int = 0  # consecutive fallback ticks
    good: int = 0  # consecutive good ticks


def next_health(h: Health, cfg: HealthConfig, *, fallback: str | None, stalled: tuple[str, float] | None,
                now: float) -> tuple[Health, str | None]:
    """The state after a tick, and the event to report (``fault``, ``recovered: …`` or None).

    ``fallback`` is the tick's fallback reason (None for a good tick); ``stalled`` names the camera
    whose newest frame is oldest and that age in ms, or None.
    """
    fallbacks = h.fallbacks + 1 if fallback is not None else 0
    good = h.good + 1 if fallback is None else 0
    cause = None
    if stalled is not None and stalled[1] > cfg.fault_stall_ms:
        cause = f"camera '{stalled[0]}' stalled for {stalled[1]:.0f} ms (> {cfg.fault_stall_ms:g} ms)"
    elif fallbacks >= cfg.fault_after:
        cause = f"{fallbacks} consecutive fallbacks (last: {fallback})"
    if not h.faulted:
        if cause is None:
            return replace(h, fallbacks=fallbacks, good=good), None
        return Health(True, cause, now, fallbacks, good), "fault"
    if cause is None and good >= cfg.recover_after:
        lasted = now - (h.since if h.since is not None else now)
        return Health(False, None, None, fallbacks, good), f"recovered after {lasted:.1f} s"
    # Still faulted: keep the first cause unless a newer one explains it better.
    return replace(h, reason=cause or h.reason, fallbacks=fallbacks, good=good), None


def reason_kind(reason: str) -> str:
    """A fallback reason without its particulars, for counting: the text before the first ':' or
    '(' with numbers replaced by N, so counters keyed by it stay bounded over days of running
    ("camera 'right' lags 'left' by 80 ms (tolerance 50 ms)" -> "camera 'right' lags 'left' by N ms")."""
    head = re.split(r"[:(]", reason, maxsplit=1)[0].strip()
    return re.sub(r"\d+(?:\.\d+)?", "N", head)
