"""What the loop shows to whoever listens: the recorder, the live view, shadow mode.

The loop calls a tap on its own thread at four points, with views of its buffers that are valid only
during the call, so a tap copies what it keeps and does the rest elsewhere (the recorder hands its
copies to a writer thread). A tap never raises into the loop: ``Runner`` turns a failing tap into a
one-line warning and drops it.

Engine runs are numbered in start order. A run is ``model`` (the whole model, one graph or every
stage), ``slow`` (a dual-rate schedule's slow stages, e.g. vision and context, on their own worker)
or ``fast`` (the tick-rate stages on the context of slow run ``context_run``). Replaying the runs in
this order, on the inputs the taps saw, reproduces the run exactly (``runtime/replay``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..inputs.ego_input import EgoReading
from ..inputs.sources.base import Frame


@dataclass(frozen=True)
class RunEvent:
    run: int  # runs are numbered in start order from 0
    kind: str  # model | slow | fast
    tick: int  # the tick that started it; -1 for the warm-up's context run
    inputs: tuple[str, ...]  # the model inputs it reads (state inputs excluded: see ``states``)
    states: tuple[str, ...]  # the recurrent state inputs it reads
    context_run: int | None = None  # fast: the slow run whose context it reads
    # Camera inputs preprocessed on the GPU (the device data path): not in host memory, so they are recorded
    # as the tick's raw frames, and replay preprocesses them with the kernels' CPU twins.
    device_cameras: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"run": self.run, "kind": self.kind, "tick": self.tick, "context_run": self.context_run,
                "device_cameras": list(self.device_cameras)}


class LoopTap(Protocol):
    def on_run(self, event: RunEvent, read: Callable[[str], np.ndarray], context: Mapping[str, np.ndarray]) -> None:
        """A run is about to start: ``read(name)`` gives an input's buffer (inputs and states of the
        event); ``context`` the slow stages' outputs a fast run reads."""

    def on_outputs(self, run: int, outputs: Mapping[str, np.ndarray], usable: bool | None,
                   error: str | None = None) -> None:
        """Run ``run`` finished: its outputs (a slow run's include its intermediates); ``usable``: its
        trajectory passed the checks and its state was committed (None for a slow run). A run whose engine
        raised comes with ``error`` (one line), no outputs and ``usable`` False: nothing of it was used."""

    def on_tick(self, record: dict[str, Any], frames: Mapping[str, Frame], ego: EgoReading | None) -> None:
        """A tick's record was published, with the frames it grouped and the vehicle state it read."""

    def on_command(self, text: str, name: str) -> None:
        """A route command went into the inputs (before the next run)."""
