"""Keeping the Python process's own jitter off the hot path: CPU affinity, SCHED_FIFO, and garbage
collection moved into the idle time between ticks.

Each setting is best effort: one that the system does not permit (SCHED_FIFO without
CAP_SYS_NICE or an rtprio limit, a CPU outside the cgroup) gives a one-line warning and the loop
runs without it. Nothing here is needed for correctness, only for a tighter tail.
"""

from __future__ import annotations

import gc
import os
import sys

from ..errors import VlaError


def parse_cpus(spec: str) -> set[int]:
    """``"2"``, ``"0,1"`` or ``"0-3,6"`` -> a set of CPU ids."""
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise VlaError(f"--cpu {spec!r}: expected CPU ids like 2, 0,1 or 0-3") from None
    if not cpus:
        raise VlaError(f"--cpu {spec!r}: no CPU given")
    return cpus


def apply_realtime(cpus: str | None, rt_priority: int | None, warn=lambda m: print(m, file=sys.stderr),
                   prog: str = "vla-run") -> list[str]:
    """Apply ``--cpu`` and ``--rt-priority``; return what was applied, warn about what was not."""
    applied = []
    if cpus:
        wanted = parse_cpus(cpus)
        try:
            os.sched_setaffinity(0, wanted)
            applied.append(f"CPUs {sorted(wanted)}")
        except (OSError, ValueError) as exc:
            warn(f"{prog}: warning: --cpu {cpus}: not applied ({getattr(exc, 'strerror', None) or exc}); "
                 f"this process may use CPUs {sorted(os.sched_getaffinity(0))}")
    if rt_priority is not None:
        lo, hi = os.sched_get_priority_min(os.SCHED_FIFO), os.sched_get_priority_max(os.SCHED_FIFO)
        if not lo <= rt_priority <= hi:
            raise VlaError(f"--rt-priority {rt_priority}: SCHED_FIFO priorities are {lo}..{hi}")
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(rt_priority))
            applied.append(f"SCHED_FIFO {rt_priority}")
        except PermissionError:
            warn(f"{prog}: warning: --rt-priority {rt_priority}: not permitted (needs CAP_SYS_NICE or an "
                 "rtprio limit in /etc/security/limits.conf); running with normal scheduling")
    return applied


class IdleCollector:
    """Automatic GC off; young objects collected only when a tick leaves enough idle time.

    A full collection mid-inference can cost milliseconds; collecting generation 0 between ticks
    costs tens of microseconds, and the older generations get their turn every ``full_every`` idle
    collections, still between ticks.
    """

    def __init__(self, min_idle_s: float = 0.005, full_every: int = 100) -> None:
        self.min_idle_s, self.full_every = min_idle_s, full_every
        self.collections = 0
        self._was_enabled = gc.isenabled()
        gc.disable()

    def idle(self, seconds_left: float) -> None:
        """Called after a tick is published, with the time left before the next one is due."""
        if seconds_left < self.min_idle_s:
            return
        self.collections += 1
        gc.collect(2 if self.collections % self.full_every == 0 else 0)

    def close(self) -> None:
        if self._was_enabled:
            gc.enable()
