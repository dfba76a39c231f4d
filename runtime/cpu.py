"""How many cores the runtime's parallel work may use: the engine, and the loop's preprocessing."""

from __future__ import annotations

import os


def default_threads() -> int:
    """All the cores this process may use (taskset/cgroups affinity) but one.

    The spare core is for camera capture and the loop itself. A parallel operator waits for its
    slowest thread, so an engine spread over every core inherits the jitter of everything else on
    the machine: on 2 cores beside the synthetic rig, a second engine thread cut the median
    end-to-end latency from 67 to 51 ms but left the p99.9 where it was (83 vs 82 ms; see
    benchmarks/RESULTS.md), for twice the CPU. The loop's preprocessing is the exception: it runs
    only while the engine is idle, as one call for all cameras, and takes every core
    (``runtime/preprocess.py``).
    """
    return max(1, usable_cores() - 1)


def usable_cores() -> int:
    """The cores this process may run on (taskset/cgroups affinity), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
