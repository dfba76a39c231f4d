"""How many cores the runtime's own parallel work (the engine, the preprocessing kernel) may use."""

from __future__ import annotations

import os


def default_threads() -> int:
    """All the cores this process may use (taskset/cgroups affinity) but one.

    The spare core is for camera capture and the loop itself. A parallel operator waits for its
    slowest thread, so an engine spread over every core inherits the jitter of everything else on
    the machine: on 2 cores beside the synthetic rig, a second engine thread cut the median
    end-to-end latency from 67 to 51 ms but left the p99.9 where it was (83 vs 82 ms; see
    benchmarks/RESULTS.md), for twice the CPU. The preprocessing kernel follows the same rule: with
    both cores it took 1.33 ms per tick for three 720p cameras in the loop, with one 1.06 ms, because
    its second thread waited for the core the camera process renders on.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores - 1)
