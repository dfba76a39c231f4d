"""The recorder: the loop's tap (``loop/tap.py``) that turns what the loop sees and decides into messages.

On the loop thread it only copies (the engine's inputs before each run, its outputs after, the tick's
record and, with ``raw``, the camera frames) and queues a job; the dispatcher's thread builds the
messages (``format.py``). What goes in is what replay needs to reproduce the run exactly:

- every engine run, numbered in start order (``/engine/run``), with the model inputs it read
  (lossless ``.npy``: camera images as the engine got them, ego history, command tokens, noise) and,
  for a dual-rate fast run, the slow stages' context it read;
- the recurrent state before the first run (before every run in ring-buffer mode, where any run may
  start a snippet);
- every output of every run when it is collected, and whether it was usable (its state committed);
- the tick records (the schedule: which tick started which run, and what was published);

and, for people: JPEGs of what each camera showed the model, the trajectory as poses and a line strip,
the ego state, command changes, health events, the rig's transforms and calibrations.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..inputs.ego_input import EgoReading
from ..inputs.sources.base import Frame
from ..loop.tap import RunEvent
from . import format as fmt
from .writer import Dispatcher

TF_EVERY = 10  # ticks between repeats of /tf and the calibrations (late joiners of the live view need them)


def manifest_sha256(raw: Mapping[str, Any]) -> str:
    """The manifest's identity: sha256 of its canonical JSON (keys sorted, no spaces)."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine()}
    for dist in ("vla-runtime", "numpy", "onnxruntime", "mcap", "foxglove-sdk", "torch"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def recording_metadata(backend: Any, config: Any, engine: str, cameras: Mapping[str, str], raw: bool,
                       extra: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
    """The metadata records of a recording: the bundle's identity, the run's settings, the manifest."""
    m = backend.manifest
    bundle = {"model": m.name, "model_hash": m.model_hash or "", "manifest_sha256": manifest_sha256(m.raw),
              "precision": m.precision, "backend": backend.name, "describe": backend.describe(), "engine": str(engine),
              **_versions()}
    run = {"format": fmt.FORMAT_VERSION, "seed": config.seed, "rate_hz": config.rate_hz, "budget_ms": config.budget_ms,
           "limits": config.limits, "max_curvature": config.max_curvature, "max_accel": config.max_accel,
           "max_speed": config.max_speed, "stop_horizon_s": config.stop_horizon_s, "sync": config.sync,
           "stage_rate": config.stage_rate, "command": config.command, "cameras": dict(cameras), "raw": raw,
           "started": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    return {fmt.META_BUNDLE: bundle,
            fmt.META_RUN: {k: v if isinstance(v, str) else json.dumps(v) for k, v in {**run, **(extra or {})}.items()},
            fmt.META_MANIFEST: {"json": json.dumps(m.raw)}}


class Recorder:
    """A ``LoopTap`` that records into a ``Dispatcher``'s destinations."""

    def __init__(self, manifest: Any, dispatcher: Dispatcher, raw: bool = False, state_every_run: bool = False,
                 now_ns: Callable[[], int] = time.time_ns) -> None:
        self.dispatcher = dispatcher
        self.raw, self.state_every_run = raw, state_every_run
        self._now = now_ns
        # Monotonic seconds (capture and publish times) -> epoch ns, fixed once, for the messages' log times.
        self._epoch_offset_ns = now_ns() - time.monotonic_ns()
        self._cameras = {t.name: t.detail for t in manifest.inputs_with("camera")}
        self._rig = fmt.rig_cameras(manifest.camera_names, manifest.camera_sizes)
        self._state_done = False
        self._raw_tick = False  # this tick's run preprocessed its cameras on the GPU: keep its raw frames
        self.ticks = 0

    def _ns(self, monotonic_s: float) -> int:
        return int(monotonic_s * 1e9) + self._epoch_offset_ns

    # ---- LoopTap ---------------------------------------------------------------------------------------
    def on_run(self, event: RunEvent, read: Callable[[str], np.ndarray], context: Mapping[str, np.ndarray]) -> None:
        inputs = {n: np.array(read(n), copy=True) for n in event.inputs}
        self._raw_tick = self._raw_tick or bool(event.device_cameras)
        states = {}
        if event.states and (self.state_every_run or not self._state_done):
            states = {n: np.array(read(n), copy=True) for n in event.states}
            self._state_done = True
        ctx = {n: np.array(v, copy=True) for n, v in context.items()}
        t = self._now()
        size = sum(a.nbytes for d in (inputs, states, ctx) for a in d.values())

        def job() -> list[fmt.Message]:
            run = event.run
            msgs = [fmt.json_message(fmt.RUN, t, {**event.as_dict(), "phase": "start", "inputs": list(event.inputs),
                                                  "states": list(states), "context": list(ctx)}, "vla.run/1", run)]
            msgs += [fmt.tensor_message(fmt.INPUT.format(n), t, a, run) for n, a in inputs.items()]
            msgs += [fmt.tensor_message(fmt.STATE.format(n), t, a, run) for n, a in states.items()]
            msgs += [fmt.tensor_message(fmt.CONTEXT.format(n), t, a, run) for n, a in ctx.items()]
            for name, tensor in inputs.items():  # what each camera showed the model, for people
                cam = self._cameras.get(name)
                if cam is not None:
                    for i, cname in enumerate(cam["names"]):
                        img = fmt.image_from_input(tensor, i, cam["layout"], cam["color"])
                        msgs.append(fmt.jpeg_message(cname, t, img))
            return msgs

        self.dispatcher.submit(job, size)

    def on_outputs(self, run: int, outputs: Mapping[str, np.ndarray], usable: bool | None,
                   error: str | None = None) -> None:
        copies = {n: np.array(v, copy=True) for n, v in outputs.items()}
        t = self._now()

        def job() -> list[fmt.Message]:
            done = {"run": run, "phase": "done", "usable": usable, "outputs": list(copies)}
            if error is not None:
                done["error"] = error
            msgs = [fmt.json_message(fmt.RUN, t, done, "vla.run/1", run)]
            msgs += [fmt.tensor_message(fmt.OUTPUT.format(n), t, a, run) for n, a in copies.items()]
            return msgs

        self.dispatcher.submit(job, sum(a.nbytes for a in copies.values()))

    def on_tick(self, record: dict[str, Any], frames: Mapping[str, Frame], ego: EgoReading | None) -> None:
        tick = record["tick"]
        raw = {}
        if self.raw or self._raw_tick:
            self._raw_tick = False
            raw = {n: (np.array(f.data, copy=True), f.fmt, f.width, f.height, f.seq, f.capture_time)
                   for n, f in frames.items()}
        ego_sample = None if ego is None else {"tick": tick, "time": ego.time, "speed": ego.speed,
                                               "accel": ego.accel, "yaw_rate": ego.yaw_rate}
        t = self._ns(record["publish_time"])
        first = self.ticks == 0
        self.ticks += 1

        def job() -> list[fmt.Message]:
            msgs = [fmt.json_message(fmt.TICK, t, record, "vla.tick/2", tick)]
            points = np.asarray(record["trajectory"], dtype=np.float64)
            if points.ndim == 2 and points.shape[1] >= 3:
                msgs.append(fmt.poses_message(t, points))
                msgs.append(fmt.scene_message(t, points, record["status"]))
            if record.get("event"):
                msgs.append(fmt.health_message(t, record["event"]))
            if ego_sample is not None:
                msgs.append(fmt.json_message(fmt.EGO, t, ego_sample, "vla.ego-sample/1", tick))
            if first or tick % TF_EVERY == 0:
                msgs.append(fmt.tf_message(t, self._rig))
                msgs += [fmt.calibration_message(t, cam) for cam in self._rig]
            for name, (data, pixfmt, w, h, _seq, cap) in raw.items():
                meta = {"format": pixfmt, "width": str(w), "height": str(h)}
                msgs.append(fmt.tensor_message(fmt.CAMERA_RAW.format(name), self._ns(cap), data, tick, meta))
            return msgs

        self.dispatcher.submit(job, sum(v[0].nbytes for v in raw.values()))

    def on_command(self, text: str, name: str) -> None:
        t = self._now()
        self.dispatcher.submit(lambda: [fmt.json_message(fmt.COMMAND, t, {"text": text, "name": name},
                                                         "vla.command/1")])
