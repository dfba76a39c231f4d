"""The loop's clock: the wall clock on a vehicle, a simulated one in closed-loop simulation.

Why a clock object: ``vla-sim`` drives the very same ``Runner`` (its deadlines, fallbacks, health and
decode) through a simulated world, faster than real time and reproducibly. Everything the loop does
with time goes through one of these, so the simulator swaps the clock, not the loop.

- ``WallClock``: ``time.monotonic()``; waits wait.
- ``SimClock``: simulated seconds. Idle waits (the schedule sleeping until a tick is due, a camera
  poll) pass at once. Work takes either its measured time (``run_s=None``: the simulated clock runs
  with the wall clock while the loop computes, so an engine's real latency lands in the world) or
  exactly ``run_s`` per engine run (``--latency-ms``: the clock stands still while the loop computes
  and every engine run ends ``run_s`` after it started, whatever the machine is doing, so a run is
  reproducible on any machine).

Measured time and concurrent work: the loop is idle while an engine run it does not wait on (the
dual-rate slow stages) is still computing on its worker. Skipping that idle time would let
simulated time run ahead of the run: a 1 ms context run that the OS scheduled a few real
milliseconds late would finish several 100 ms ticks later on this clock, and the fast path would
fall back with "context too old" that no vehicle would see. So engine workers tell the clock when a
run starts and ends (``work_started``/``work_ended``), and a measured clock's idle wait passes at
once only when no run is in flight; otherwise it waits in real time (the clock following the wall)
until the runs are over, then skips the rest.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Protocol


class Clock(Protocol):
    """What the loop needs of time."""

    #: Engine runs take exactly this long on this clock (None: as long as they really take).
    run_s: float | None

    def now(self) -> float:
        """Seconds on this clock (monotonic)."""

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait at most ``timeout`` s (None: for good) for ``event``; True if it is set."""

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass (a poll's back-off)."""

    def advance_to(self, t: float) -> None:
        """Simulated clocks: jump to ``t`` if it is later (a wall clock cannot)."""

    def paused(self) -> contextlib.AbstractContextManager[None]:
        """Work done inside does not move this clock (the simulator rendering its world)."""

    def work_started(self) -> None:
        """An engine run started on a worker thread (a measured clock's idle waits then take real time)."""

    def work_ended(self) -> None:
        """That run ended."""


class WallClock:
    run_s = None

    def now(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(None if timeout is None else max(0.0, timeout))

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def advance_to(self, t: float) -> None:
        pass

    def paused(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def work_started(self) -> None:
        pass

    def work_ended(self) -> None:
        pass


#: The clock every Runner gets unless it is given one.
WALL = WallClock()


#: How often a measured clock's real wait (an engine run in flight) looks at the event it waits for.
_EVENT_POLL_S = 0.002


class SimClock:
    """Simulated time (see the module docstring); thread-safe (the engine workers read it)."""

    def __init__(self, start: float = 0.0, run_s: float | None = None) -> None:
        if run_s is not None and run_s < 0:
            raise ValueError(f"run_s must be >= 0, got {run_s}")
        self.run_s = run_s
        self._lock = threading.Lock()
        self._runs_ended = threading.Condition(self._lock)
        self._in_flight = 0  # engine runs computing on worker threads (see the module docstring)
        self._never = threading.Event()
        self._offset = start - (0.0 if run_s is not None else time.perf_counter())

    def now(self) -> float:
        if self.run_s is not None:
            return self._offset  # stands still while the loop computes
        return self._offset + time.perf_counter()

    def advance_to(self, t: float) -> None:
        with self._lock:
            ahead = t - self.now()
            if ahead > 0:
                self._offset += ahead

    def work_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def work_ended(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            self._runs_ended.notify_all()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Idle time passes at once: the event is judged after the timeout has passed. A wait for
        good (None) waits in real time for the event (something else must set it). On measured time,
        while an engine run is in flight the wait is real, up to the run's end (module docstring)."""
        if event.is_set():
            return True
        if timeout is None:
            return event.wait()
        end = self.now() + max(0.0, timeout)
        if self.run_s is None:
            with self._lock:
                while self._in_flight and (left := end - self.now()) > 0:
                    # Woken when a run ends; the slice bounds how late a set ``event`` is seen.
                    self._runs_ended.wait(min(left, _EVENT_POLL_S))
                    if event.is_set():
                        return True
        self.advance_to(end)
        return event.is_set()

    def sleep(self, seconds: float) -> None:
        self.wait(self._never, seconds)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        if self.run_s is not None:
            yield  # this clock does not follow the wall clock anyway
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self._offset -= time.perf_counter() - t0
