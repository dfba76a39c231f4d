"""One description of the machine for every benchmark report (figures without it can't be compared).

The same line ``vla-bench`` prints (``vla.runtime.bench.environment``): CPU model, cores, OS,
Python, and the GPU or the Jetson model and power mode where there is one.
"""

from __future__ import annotations

from vla.runtime.bench import environment

#: The loop benchmarks' cameras: real-size frames, so preprocessing resizes as it would on a car
#: (``synthetic://`` alone renders the model's own size, as vla-run's default does), and their
#: figures stay comparable with those recorded before that default changed.
CAMERA_720P = "synthetic://?size=1280x720"


def abba(rounds: int) -> list[bool]:
    """A feature off/on per run for an A/B comparison on a shared machine: off,on then on,off, ... (ABBA),
    so neither arm always goes first and a machine that gets busier weighs on both alike."""
    order: list[bool] = []
    for i in range(rounds):
        order += [False, True] if i % 2 == 0 else [True, False]
    return order


def describe() -> str:
    """e.g. 'AMD EPYC, 2 cores, Linux 6.18.44, Python 3.11.7'."""
    return environment.describe(environment.collect())
