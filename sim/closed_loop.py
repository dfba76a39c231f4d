"""One scenario driven in closed loop through the real runtime loop.

The bundle runs in the same ``Runner`` as on the vehicle (preprocessing, deadlines, fallbacks, health,
decode, limits); only its cameras (``rig.SimCamera``) and its clock (``SimClock``) are the
simulator's. Each tick the world has moved one tick period; the runtime's answer is followed from its
publish time, so the engine's latency (measured, or injected with ``latency_ms``) lands in the world.
The navigator's route command goes to the loop as the L input whenever it changes.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla.runtime.backends.base import Backend
from vla.runtime.inputs.commands import CommandEncoder
from vla.runtime.loop.clock import WALL, SimClock
from vla.runtime.loop.runner import RunConfig, Runner

from .metrics import MetricsTracker
from .rig import SimCamera, SimRig
from .world import Scenario, World

#: Extra time (ms) past an injected latency before a tick counts as late (the budget is then
#: ``max(budget_ms, latency_ms + this)``): a latency sweep measures driving on late answers, not
#: only the fallback policy.
LATENCY_SLACK_MS = 50.0


@dataclass(frozen=True)
class SimOptions:
    """How a scenario is driven (``vla-sim``'s options)."""

    latency_ms: float | None = None  # every engine run takes exactly this (None: its measured time)
    drop_frames: float = 0.0  # probability that a camera loses a frame
    realtime: bool = False  # the wall clock instead of the simulated one
    rate_hz: float = 10.0
    budget_ms: float | None = None  # None: 100 ms, or the injected latency + LATENCY_SLACK_MS if more
    fmt: str = "rgb"  # the cameras' pixel format
    hfov_deg: float = 100.0
    duration_s: float | None = None  # None: the scenario's own
    stage_rate: str | int | None = None
    limits: str = "enforce"

    def budget(self) -> float:
        if self.budget_ms is not None:
            return self.budget_ms
        return max(100.0, (self.latency_ms or 0.0) + LATENCY_SLACK_MS)


@dataclass
class Drive:
    """A finished scenario: its metrics, the loop's status counts, and what the picture needs."""

    result: dict[str, Any]
    trace: np.ndarray  # [N, 5] t, x, y, yaw, speed
    world: World


def drive(backend: Backend, scenario: Scenario, options: SimOptions = SimOptions(),
          on_tick: Callable[[dict[str, Any]], None] | None = None) -> Drive:
    """Drive ``scenario`` with ``backend`` (kept open for the next scenario) through the real loop."""
    m = backend.manifest
    world = World(scenario)
    clock = WALL if options.realtime else SimClock(run_s=None if options.latency_ms is None
                                                  else options.latency_ms / 1000.0)
    names = m.camera_names
    width, height = m.camera_sizes[names[0]]
    rig = SimRig(world, names, width, height, clock, fmt=options.fmt, fps=options.rate_hz,
                 hfov_deg=options.hfov_deg, drop_frames=options.drop_frames, seed=scenario.seed)
    cameras = {name: SimCamera(rig, name) for name in names}
    duration = options.duration_s if options.duration_s is not None else scenario.duration_s
    # A model without a command input cannot be told the route (it still drives: lanes, traffic).
    takes_command = CommandEncoder(m).takes_command
    config = RunConfig(rate_hz=options.rate_hz, budget_ms=options.budget(), sync="clock",
                       max_ticks=max(1, math.ceil(duration * options.rate_hz)),
                       command=world.command() if takes_command else None,
                       seed=scenario.seed, warmup_runs=3, warmup_s=0.0, stage_rate=options.stage_rate,
                       limits=options.limits, first_frame_timeout_s=5.0)
    runner = Runner(backend, cameras, config, clock=clock)
    rig.runner = runner
    metrics = MetricsTracker(world)
    command = world.command()
    try:
        for record in runner:
            rig.publish(record)
            metrics.update(world)
            if on_tick is not None:
                on_tick(record)
            now = world.command()
            if now != command and takes_command:
                command = now
                runner.set_command(now)
            if (why := world.done()) is not None:
                runner.stop(why)
            elif world.offroad():  # the score is 0 from here on (DAC): no point driving on
                runner.stop("off-road")
    finally:
        runner.close(keep_backend=True)
        gc.unfreeze()  # the loop froze everything it had at its start: a long sweep must not keep it all
    result = metrics.result()
    summary = runner.summary()
    end = world.done() or ("off-road" if world.offroad() else runner.end_reason)
    result.update(seed=scenario.seed, ticks=runner.ticks, end=end,
                  status=summary["status"], fallback_reasons=summary.get("fallback_reasons", {}),
                  dropped_frames=rig.dropped, e2e_ms=summary["latency_ms"].get("e2e"))
    return Drive(result, rig.trace.array(), world)
