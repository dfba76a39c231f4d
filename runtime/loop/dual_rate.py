"""The slow path of a dual-rate schedule: slow stages (vision, VLM context) on their own worker.

A bundle of stages whose slow stages run ``async`` or every Nth tick splits each decision in two.
The fast path (the tick-rate stages, e.g. the action expert x K, then decode) runs every tick, on
the newest *published* context. The slow stages run on this worker whenever their rate says so and
the worker is free (a run still going is never queued behind), on the frames of the tick that
started them; when they finish, the loop thread publishes their outputs together with the capture
time of those frames. A tick whose newest context is older than the slow stages' max age (capture
to capture) falls back and says so (``stages.context_problem``).

Threads: ``start`` and ``collect`` run on the loop thread, the stages on the worker. ``prepare``
copies the model inputs into the slow stages' own buffers while the worker is idle, and the
published context is copied into the fast stages' inputs by the loop thread before each fast run,
so no buffer is ever shared between the two workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backends.staged import StagedBackend, StageStore
from ..errors import describe_error
from ..stages import Stage, context_problem, slow_due
from .clock import WALL, Clock
from .engine_worker import EngineWorker


@dataclass
class Published:
    """The slow stages' newest finished run: its outputs, the capture time of its frames, and when."""

    store: StageStore = field(default_factory=StageStore)
    capture: float | None = None
    runs: int = 0


class SlowPath:
    def __init__(self, backend: StagedBackend, slow: tuple[Stage, ...], fast: tuple[Stage, ...],
                 max_age_ms: float | None = None, clock: Clock = WALL) -> None:
        self.backend, self.slow, self.fast = backend, slow, fast
        self.rate = slow[0].rate
        self.max_age_ms = max_age_ms if max_age_ms is not None else min(s.max_age for s in slow)
        self.worker = EngineWorker(name="vla-slow-stages", clock=clock)
        self.published = Published()
        self._running = StageStore()
        self._flight: float | None = None  # capture time of the run in progress
        self.errors = 0
        self.last_error: str | None = None

    def due(self, tick: int) -> bool:
        return slow_due(self.rate, tick, self.worker.busy or self._flight is not None)

    def start(self, capture: float) -> None:
        """Start the slow stages on the model inputs as they are now (the loop just wrote this tick's)."""
        self.backend.prepare(self.slow, None)
        self._flight = capture
        self.worker.submit(lambda: self.backend.execute(self.slow, self._running).values)

    def collect(self) -> dict[str, float] | None:
        """Publish a finished run (loop thread): its stage times, or None when nothing finished. A run
        that failed publishes nothing; its error is kept for the next tick's reason."""
        if self._flight is None or self.worker.busy:
            return None
        capture, self._flight = self._flight, None
        if self.worker.error is not None:
            exc = self.worker.error
            self.errors += 1
            self.last_error = describe_error(exc)
            return None
        self.last_error = None
        for name, value in self._running.values.items():
            self.published.store.put(name, value)
        self.published.capture = capture
        self.published.runs += 1
        self.backend.commit_state(self.slow)
        return {s.name: self._running.ms[s.name] for s in self.slow}

    def run_now(self, capture: float) -> dict[str, float] | None:
        """Start, wait for and publish one run (warm-up: the first tick then has a fresh context)."""
        self.start(capture)
        self.worker.wait(None)
        return self.collect()

    def context_age_ms(self, capture: float) -> float | None:
        c = self.published.capture
        return None if c is None else max(0.0, capture - c) * 1000.0

    def problem(self, capture: float) -> str | None:
        """Why the fast path cannot run at this tick on the published context, or None."""
        why = context_problem(self.context_age_ms(capture), self.max_age_ms, self.slow[-1].name)
        if why is not None and self.last_error is not None:
            why = f"{why}; the last slow run failed: {self.last_error}"
        return why

    def prepare_fast(self) -> None:
        """Copy the model inputs and the published context into the fast stages (their worker is idle)."""
        self.backend.prepare(self.fast, self.published.store)

    def close(self, timeout: float) -> bool:
        return self.worker.close(timeout)
