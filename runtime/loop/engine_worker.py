"""The engine on its own thread, so the loop can keep its deadline while the engine is still running.

Python cannot interrupt an engine call. Running it on a worker lets the loop thread wait only until
the tick's deadline (capture time + budget) and publish a fallback on time if the engine is late;
the engine's result is collected when it arrives. ONNX Runtime (and TensorRT, CUDA) release the
GIL while they compute, so the waiting loop costs nothing; the hand-over costs tens of microseconds.

One request at a time: the inputs are the backend's preallocated buffers, so nothing may write
them while a run is in flight (``busy``), and a hung engine shows up as ``busy`` on later ticks.
What a run is, is the caller's: ``backend.run`` on the host path, ``DeviceTick.run`` (the tick's
whole device work) on the GPU path.

Times are on the loop's clock (``clock.py``). On a simulated clock with a fixed run time (``vla-sim
--latency-ms``) a run ends ``run_s`` after it started whatever it really took: ``wait`` waits for the
real run, then moves the clock to the run's end or the caller's timeout, whichever is first; the
worker is ``busy`` until the clock reaches the run's end, and once it has, ``busy`` waits for the real
run if it is still going (a run nobody waits on, the dual-rate slow stages, is then in hand too).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from .clock import WALL, Clock

#: A simulated run that has not really finished after this long is taken as hung.
_REAL_CAP_S = 300.0


class EngineWorker:
    def __init__(self, name: str = "vla-engine", clock: Clock = WALL) -> None:
        self.clock = clock
        self._run: Callable[[], dict[str, np.ndarray]] | None = None
        self._request = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._closing = False
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.started = self.finished = 0.0  # clock times of the current/last run
        self._finish_at = 0.0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A run is in flight (submitted and not finished)."""
        if self.clock.run_s is None:
            return not self._done.is_set()
        if self.clock.now() < self._finish_at:
            return True
        # Over on this clock: its outputs must be in hand, however long the run really takes.
        return not self._done.wait(_REAL_CAP_S)

    def submit(self, run: Callable[[], dict[str, np.ndarray]]) -> None:
        """Start ``run`` (on the current inputs); the caller must not write inputs until it is done."""
        if self.busy:
            raise RuntimeError("engine run submitted while the previous one is still running")
        self._run = run
        self.outputs, self.error = None, None
        self._done.clear()
        self.started = self.clock.now()
        run_s = self.clock.run_s
        self._finish_at = self.started + (run_s or 0.0)  # a fixed run time: known when it starts
        self.clock.work_started()
        self._request.set()

    def wait(self, timeout: float | None) -> bool:
        """Wait at most ``timeout`` seconds (None: for good) for the run; True when it has finished."""
        if self.clock.run_s is None:  # real work: a real wait (a simulated clock follows the wall clock)
            return self._done.wait(None if timeout is None else max(0.0, timeout))
        if not self._done.wait(_REAL_CAP_S):
            return False
        now = self.clock.now()
        if timeout is None or self._finish_at <= now + max(0.0, timeout):
            self.clock.advance_to(self._finish_at)
            return True
        self.clock.advance_to(now + timeout)
        return False

    def _serve(self) -> None:
        while True:
            self._request.wait()
            self._request.clear()
            if self._closing:
                return
            try:
                self.outputs = self._run()  # type: ignore[misc]
            except BaseException as exc:  # reported to the loop as this run's error, never lost
                self.error = exc
            run_s = self.clock.run_s
            self.finished = self.clock.now() if run_s is None else self.started + run_s
            self._done.set()
            self.clock.work_ended()  # after ``_done``: whoever it wakes sees the run finished

    def close(self, timeout: float) -> bool:
        """Stop the thread; False if a run is still in flight after ``timeout`` s (a hung engine:
        the backend must then not be closed under it, the process exit reclaims it)."""
        finished = self.wait(timeout)
        self._closing = True
        self._request.set()
        if finished:
            self._thread.join(timeout=1.0)
        return finished
