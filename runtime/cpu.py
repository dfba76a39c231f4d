"""How many cores the runtime's parallel work may use: the engine, and the loop's preprocessing."""

from __future__ import annotations

import os


def default_threads() -> int:
    """The engine's threads: every core this process may use (taskset/cgroups affinity) on a
    machine of one or two, else all but one.

    The spare core on a larger machine is for camera capture and the loop itself: a parallel
    operator waits for its slowest thread, so an engine spread over every core inherits the jitter
    of everything else on the machine. On two cores that trade goes the other way. The loop thread
    only waits while the engine runs, the loop's preprocessing runs only while the engine is idle
    (it takes every core: ``runtime/inputs/preprocess.py``), and a camera rendering the model's size
    costs a fifth of a core; an engine held to one core is then simply slower. On the 2-core dev
    box (reference model, ``synthetic://`` at the model's size, 10 Hz, 100 ms budget) two threads
    gave 691 of 700 ticks ok against one thread's 660 of 700 in the same session, and no worse
    with another process keeping a core busy (benchmarks/RESULTS.md, "Engine threads on 2 cores").
    """
    cores = usable_cores()
    return cores if cores <= 2 else cores - 1


def split_threads(total: int) -> tuple[int, int]:
    """(slow, fast): the engine threads of a dual-rate schedule's two workers, which run at the same time.

    Each gets its own share rather than both taking every core: two ONNX Runtime sessions of two
    threads each on a 2-core machine slow the fast path (the one on the deadline) to twice its time
    alone, while one thread each keeps it near its alone time and the slow stages still finish within
    a tick (reference model 2 on the 2-core dev box: action x10 10 ms p50 against 20 ms;
    benchmarks/RESULTS.md, "Bundles of stages"). The fast path gets the odd core.
    """
    slow = max(1, total // 2)
    return slow, max(1, total - slow)


def usable_cores() -> int:
    """The cores this process may run on (taskset/cgroups affinity), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
