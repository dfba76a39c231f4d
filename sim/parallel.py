"""Scenarios in parallel on Ray: one actor per worker opens each bundle once and drives scenarios.

An embedded local Ray by default (``vla.runtime.ray_start``: as many CPUs as workers, no dashboard); a
cluster with ``address``. Results come back as they finish (``on_result`` drives the progress bar), then in
task order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from vla.runtime.ray_start import start_ray

from .closed_loop import SimOptions
from .sweep import Task, options_for


class ScenarioWorker:
    """Lives in a Ray worker process: bundles opened once, kept for every later task."""

    def __init__(self, backend: str, threads: int) -> None:
        self.backend, self.threads = backend, threads
        self._engines: dict[tuple[str, Any], Any] = {}

    def run(self, index: int, task: Task, options: dict[str, Any]) -> tuple[int, dict]:
        from vla.runtime.engine import open_engine

        from .closed_loop import drive
        from .world import make_scenario

        opts = options_for(SimOptions(**options), task.point)
        key = (task.engine, opts.stage_rate)
        if key not in self._engines:
            self._engines[key] = open_engine(task.engine, threads=self.threads, backend=self.backend,
                                             stage_rate=opts.stage_rate)
        result = drive(self._engines[key], make_scenario(task.seed), opts).result
        return index, result


def run_on_ray(tasks: Sequence[Task], options: SimOptions, *, address: str | None,
               workers: int, backend: str = "auto", threads: int = 1,
               on_result: Callable[[Task, dict], None] | None = None) -> list[dict[str, Any]]:
    """Drive every task on Ray; the results in task order."""
    import ray

    start_ray(address, workers, flag="--ray-address", local="no --ray-address")
    remote = ray.remote(num_cpus=1)(ScenarioWorker)
    actors = [remote.remote(backend, threads) for _ in range(max(1, workers))]
    pool = ray.util.ActorPool(actors)
    opts = asdict(options)
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    jobs = list(enumerate(tasks))
    for index, result in pool.map_unordered(lambda actor, job: actor.run.remote(job[0], job[1], opts),
                                            jobs):
        results[index] = result
        if on_result is not None:
            on_result(tasks[index], result)
    for actor in actors:
        ray.kill(actor)
    return results  # type: ignore[return-value]
