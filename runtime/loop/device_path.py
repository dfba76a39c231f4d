"""The loop's GPU data path: raw camera bytes in, the chosen trajectory out, the rest on the device.

Used when the backend runs on a GPU (torch on CUDA, TensorRT) and the kernels were built with CUDA.
A tick is split where the threads are:

- on the loop thread, :meth:`DeviceTick.stage` checks every camera's frame and copies it into its
  pinned staging buffer (:class:`FrameUploads`), the one host copy of the frames;
- on the engine thread, :meth:`DeviceTick.run` enqueues the tick's whole device work as one
  sequence on the backend's stream (``DeviceIO.stream``), with one synchronisation at the end:

  1. the raw frames go up into device frame buffers;
  2. the CUDA preprocess kernel writes every camera's slot of the engine's image input directly;
  3. the engine runs (``DeviceIO.enqueue_run``: the ego, noise and command inputs go up first;
     recurrent state stays on the device, ``commit_state``); no output comes back to the host;
  4. :class:`DeviceDecoder`: the CUDA decode kernel reads the engine's trajectory and score outputs
     where they are and writes the chosen, resampled trajectory and its 80-byte verdict, and only
     those two come back.

**CUDA graphs.** Once the same sequence has run ``WARM_RUNS`` times (first runs allocate and pick
kernels), it is captured into one CUDA graph (uploads + preprocess + engine + decode + download)
and replayed from then on: one launch per tick instead of a dozen. A graph bakes in addresses and
kernel arguments, so it is keyed by what they depend on (each camera's frame format and size, and
the backend's ``run_key``: state buffers, which inputs are uploaded); a new key runs eagerly, then
gets its own graph (at most ``MAX_GRAPHS``, least recently used dropped). When a capture fails (a
backend or an engine that cannot be captured), graphs are turned off for the run, the reason is
logged once, and plain launches go on: the same work, the same results. :func:`graph_action` is
that decision, pure.

So the host traffic per tick is the raw frames up and about 2 KB down, which is what the target
(data-path overhead <= 0.3 ms with three 1080p cameras) is about. The arithmetic is the CPU twins'
(``kernels/src/*.h``); ``tests/test_device_path.py`` runs this path on a GPU machine.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Literal

import numpy as np

from vla.kernels import preprocess_many
from vla.kernels.decode import COLUMNS, RESULT_WORDS, DecodedTrajectory, DeviceDecode, decode_trajectory

from ..backends.device_io import CapturedGraph, CaptureError, DeviceIO
from ..inputs.preprocess import RigPreprocessor
from ..inputs.sources.base import Frame

#: Eager runs of a sequence before it is captured (the first run allocates and picks kernels).
WARM_RUNS = 2
#: Graphs kept at once (a rig whose cameras change size may need a few; parity on TensorRT needs two).
MAX_GRAPHS = 4

GraphAction = Literal["replay", "capture", "eager"]


def graph_action(key: Hashable, captured: Mapping[Hashable, Any], eager_runs: int, *, enabled: bool,
                 warm: int = WARM_RUNS) -> GraphAction:
    """How to run a tick whose device work has ``key``: replay its graph, capture one, or launch eagerly.

    ``captured``: the graphs held, by key; ``eager_runs``: how often this key ran eagerly;
    ``enabled``: graphs are wanted and no capture has failed.
    """
    if not enabled:
        return "eager"
    if key in captured:
        return "replay"
    return "capture" if eager_runs >= warm else "eager"


def graphs_to_drop(order: list[Hashable], limit: int = MAX_GRAPHS) -> list[Hashable]:
    """Keys to free before adding one more graph: the least recently used beyond ``limit - 1``."""
    excess = len(order) - (limit - 1)
    return order[:excess] if excess > 0 else []


class FrameUploads:
    """Per camera, a pinned staging buffer and a device buffer for its raw frames (made for the
    first frame of each shape, then reused).

    A shape's buffers are kept after the camera moves on to another: a captured graph bakes their
    addresses in, and a camera that switches back (a mode change undone) finds its graph's buffers
    still there. A few shapes per camera at most, so the memory is bounded in practice.
    """

    def __init__(self, io: DeviceIO) -> None:
        self.io = io
        self._buffers: dict[tuple[str, tuple[int, ...]], tuple[Any, np.ndarray]] = {}

    def stage(self, frame: Frame) -> tuple[Any, np.ndarray]:
        """Copy ``frame`` into its camera's pinned buffer; (device buffer, pinned buffer) to upload."""
        data = frame.data
        key = (frame.camera, tuple(data.shape))
        found = self._buffers.get(key)
        if found is None:
            found = self.io.staging(tuple(data.shape), np.uint8)
            self._buffers[key] = found
        np.copyto(found[1], data)  # rows may be padded in the source: the staging copy is packed
        return found


class DeviceDecoder:
    """``decode_trajectory`` on the device, reading the engine's outputs in place, into device
    buffers whose pinned host copies ``read`` turns into the host decoder's ``DecodedTrajectory``.

    ``steps`` is the engine's waypoint count T (the decode's horizon is T * dt); the points come
    back on the native grid, one per waypoint.
    """

    def __init__(self, io: DeviceIO, dt: float, steps: int, *, max_curvature: float = 0.3,
                 max_accel: float = 8.0, max_speed: float = 60.0) -> None:
        self.io, self.dt = io, float(dt)
        self.limits = {"max_curvature": max_curvature, "max_accel": max_accel, "max_speed": max_speed}
        self._points, self.points = io.staging((int(steps), len(COLUMNS)), np.float32)
        self._result, self.result = io.staging((RESULT_WORDS,), np.int32)
        # How the verdict words read back (a replayed graph's kernel writes these same buffers).
        self._reader = DeviceDecode(self._points, self._result, int(steps) * self.dt, max_curvature, max_accel,
                                    max_speed)

    def enqueue(self, trajectory: Any, score: Any | None) -> None:
        """The decode kernel and the downloads of its verdict and points, on the stream (no wait)."""
        decode_trajectory(trajectory, score, self.dt, out=self._points, result=self._result, stream=self.io.stream,
                          **self.limits)
        self.io.download(self.result, self._result)
        self.io.download(self.points, self._points)

    def read(self) -> DecodedTrajectory:
        """The decoded trajectory, once the stream has passed the downloads."""
        return self._reader.read(self.result, self.points)


class DeviceTick:
    """One tick's device work (module doc): staged on the loop thread, run on the engine thread."""

    def __init__(self, io: DeviceIO, rig: RigPreprocessor, decoder: DeviceDecoder, trajectory: str,
                 score: str | None, *, cuda_graph: bool = True, log: Callable[[str], None] | None = None) -> None:
        self.io, self.rig, self.decoder = io, rig, decoder
        io.host_outputs(())  # the decode reads the engine's outputs on the device: none come back
        self._trajectory, self._score = trajectory, score
        self.uploads = FrameUploads(io)
        self._log = log or (lambda line: None)
        self._graphs_on = cuda_graph
        self.graph_note = "on (captured after the first runs)" if cuda_graph else "off (--no-cuda-graph)"
        self._graphs: OrderedDict[Hashable, CapturedGraph] = OrderedDict()
        self._eager: Counter[Hashable] = Counter()
        self._replay_failed: set[Hashable] = set()  # keys whose graph failed to launch: plain from then on
        self._jobs: list[tuple[Any, tuple[Any, np.ndarray]]] = []
        self._frames_key: tuple[Any, ...] = ()
        self._kept: tuple[str, ...] = ()  # outputs brought back to the host (a recording wants them)
        self.last_action: GraphAction | None = None

    def stage(self, frames: Mapping[str, Frame]) -> None:
        """Check every camera's frame and copy it into pinned staging; a bad frame is a CameraError
        naming its camera, raised before anything is staged."""
        checked = self.rig.check(frames)
        self._jobs = [(prepared, self.uploads.stage(frame)) for prepared, frame in checked]
        self._frames_key = tuple((f.camera, f.fmt, tuple(f.data.shape)) for _, f in checked)

    def launch(self, mark: Callable[[str], None] | None = None) -> GraphAction:
        """Enqueue the staged tick (a graph replay, or the plain launches) without waiting; returns
        which. ``mark(stage)`` is called after each stage of a plain launch (benchmarks record events)."""
        key = (self._frames_key, self.io.run_key())
        action = graph_action(key, self._graphs, self._eager[key],
                              enabled=self._graphs_on and key not in self._replay_failed)
        if action == "capture" and self._capture(key):
            action = "replay"
        elif action == "capture":
            action = "eager"
        if action == "replay":
            self._graphs.move_to_end(key)
            try:
                self._graphs[key].launch()
            except Exception:
                self._graphs.pop(key).close()  # not replayed or captured again: this key runs plainly
                self._replay_failed.add(key)
                raise
        else:
            self._enqueue(mark)
            self._eager[key] += 1
        self.last_action = action
        return action

    def keep_outputs(self, names: tuple[str, ...]) -> None:
        """Bring these engine outputs back to the host after each run (for a recording: a few hundred KB
        more per tick down the bus); before the first run, so graphs are captured with the copies."""
        self._kept = tuple(names)
        self.io.host_outputs(self._kept)

    def finish(self) -> dict[str, np.ndarray]:
        """Wait for the launched tick; the engine's host outputs (those ``keep_outputs`` asked for)."""
        self.io.synchronize()
        self.io.finish_run()
        return {n: self.io.host_output(n) for n in self._kept}

    def run(self) -> dict[str, np.ndarray]:
        """The engine thread's whole job for a tick: launch, then wait."""
        self.launch()
        return self.finish()

    @property
    def staged(self) -> bool:
        """Frames are staged, so the tick's device work can run."""
        return bool(self._jobs)

    def plain_run(self) -> dict[str, np.ndarray]:
        """One plain run of the staged tick that counts for no graph decision (the loop times these
        during its warm-up to judge the budget)."""
        self._enqueue()
        return self.finish()

    def warm_up(self) -> dict[str, np.ndarray]:
        """Plain runs of the staged tick that count for no graph decision (the loop's warm-up): the
        first launches of the kernels and the engine happen before tick 0. The captures still happen
        on live ticks, once a key has recurred: a key's first run is the one with the initial state."""
        for _ in range(WARM_RUNS):
            self.plain_run()
        return {}

    def decoded(self) -> DecodedTrajectory:
        """The tick's decoded trajectory (after ``run``)."""
        return self.decoder.read()

    def close(self) -> None:
        for graph in self._graphs.values():
            graph.close()
        self._graphs.clear()

    # ---- the device work --------------------------------------------------------------------------
    def _enqueue(self, mark: Callable[[str], None] | None = None) -> None:
        mark = mark or (lambda stage: None)
        for device, pinned in (staged for _, staged in self._jobs):
            self.io.upload(device, pinned)
        mark("frames_up")
        preprocess_many([(prepared, staged[0]) for prepared, staged in self._jobs], stream=self.io.stream)
        mark("preprocess")
        self.io.enqueue_run()
        mark("engine")
        self.decoder.enqueue(self.io.output(self._trajectory),
                             self.io.output(self._score) if self._score is not None else None)
        mark("decode")

    def _capture(self, key: Hashable) -> bool:
        """Capture the staged tick's work as ``key``'s graph; on failure turn graphs off (logged once)."""
        for old in graphs_to_drop(list(self._graphs)):
            self._graphs.pop(old).close()
        try:
            self._graphs[key] = self.io.capture(self._enqueue)
        except CaptureError as exc:
            self._graphs_on = False
            self.close()
            self.graph_note = f"off (capture failed: {str(exc)[:160]}; plain launches)"  # CaptureError: one line
            self._log(f"CUDA graph of the tick {self.graph_note}")
            return False
        self.graph_note = f"on ({len(self._graphs)} captured)"
        return True
