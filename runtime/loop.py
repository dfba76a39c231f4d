"""The real-time loop: newest frames -> preprocess -> engine -> decode -> publish, every tick.

One tick, at ``--rate`` on a fixed grid (``schedule.next_tick``):

0. with ``sync="frame"`` (the default), wait (at most ``frame_wait_ms``) for the next frame of the
   primary camera (the manifest's first), so the model runs on a frame just delivered rather than
   one up to a camera period old: openpilot's modeld also runs on frame arrival;
1. take the newest frame of every camera; a camera with no new frame since the last tick, a
   stalled one (newest frame older than ``stall_ms``) or an ended one makes the tick a fallback;
2. preprocess each frame into its slot of the engine's camera input; update the ego history; draw
   the noise; run the engine; ``vla.kernels.decode_trajectory`` picks the best of K, derives speed,
   acceleration and curvature, and checks them against the limits;
3. publish: ``ok``; ``late`` when publish time > capture time + budget (published, marked);
   ``fallback`` when the model's trajectory cannot be used (no fresh frames, engine error, NaN/inf,
   implausible curvature/acceleration/speed), slowing to a stop over ``stop_horizon_s``:
   the last good trajectory shifted to now (``fallback.py``), with the reason.

4. health (``health.py``): after ``fault_after`` consecutive fallbacks, or a camera silent for
   ``fault_stall_ms``, every line says ``fault`` (stopping trajectory, the fault's reason) until
   ``recover_after`` good ticks in a row; the transitions carry ``event`` ("fault", "recovered …").

Recurrent state rule: state outputs are copied into their inputs only after a tick that ran the
model on fresh frames and produced a finite trajectory (``ok`` or ``late``). Fallback ticks leave the
state untouched, so memory only ever holds scene tokens of frames the model really saw, in order,
and ``memory_valid`` counts committed ticks.

Dropped frames are counted per camera as ticks at which that camera had no new frame (the
model could not run on fresh input), openpilot's notion of a frame drop at the model's rate.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla.kernels.decode import COLUMNS, NONFINITE, DecodedTrajectory, decode_trajectory, new_result_buffer

from .backends.base import Backend
from .commands import encode_command
from .ego import EgoHistory
from .errors import CameraError, VlaError
from .fallback import fallback_trajectory
from .health import Health, HealthConfig, next_health
from .preprocess import Preprocessor
from .realtime import IdleCollector
from .schedule import next_tick
from .sources.base import CameraSource, Frame
from .stats import Window, summarize

RECORD_SCHEMA = "vla.tick/1"
STAGES = ("preprocess", "engine", "decode", "e2e")


@dataclass
class RunConfig:
    rate_hz: float = 10.0
    budget_ms: float = 100.0
    max_ticks: int | None = None
    duration_s: float | None = None
    command: str | None = None  # None: the vocabulary's first command
    seed: int = 0
    stall_ms: float = 500.0
    sync: str = "frame"  # "frame": run on the primary camera's next frame after the tick is due; "clock"
    frame_wait_ms: float = 50.0
    max_curvature: float = 0.3  # 1/m: tighter than any road vehicle's turning circle allows
    max_accel: float = 8.0  # m/s², longitudinal: beyond hard braking
    max_speed: float = 60.0  # m/s
    stop_horizon_s: float = 4.0  # a fallback slows to a stop over this long
    fault_after: int = 5  # consecutive fallbacks that make a fault
    fault_stall_ms: float = 1000.0  # a camera silent this long is a fault at once
    recover_after: int = 3  # consecutive good ticks that end a fault
    first_frame_timeout_s: float = 15.0
    stats_window: int = 36000  # ticks kept for the summary's percentiles (an hour at 10 Hz)


class Runner:
    """Runs the loop; iterate it for the published records, ``stop()`` from any thread."""

    def __init__(self, backend: Backend, cameras: dict[str, CameraSource], config: RunConfig) -> None:
        self.backend, self.cameras, self.cfg = backend, cameras, config
        m = backend.manifest
        if any(t.shape and t.shape[0] != 1 for t in m.inputs):
            raise VlaError("the loop feeds batch 1; export the model with batch 1")
        self._stop = threading.Event()
        self._pre: list[tuple[str, Preprocessor]] = []
        for spec in m.inputs_with("camera"):
            buf = backend.feed(spec.name)[0]
            for i, name in enumerate(spec.detail["names"]):
                self._pre.append((name, Preprocessor(spec.detail, buf[i])))
        self._states = [(t.name, t.detail["from_output"]) for t in m.inputs_with("state")]
        for t in m.inputs_with("state"):
            backend.feed(t.name)[...] = t.detail["initial"]
        ego = m.inputs_with("ego")
        self._ego_buf = backend.feed(ego[0].name)[0] if ego else None
        self._ego = EgoHistory(ego[0].shape[1], ego[0].detail["rate_hz"]) if ego else None
        self._noise = [(backend.feed(t.name), float(t.detail.get("std", 1.0))) for t in m.inputs_with("noise")]
        self._rng = np.random.default_rng(config.seed)
        self.command_name = self.set_command(config.command)
        traj = m.outputs_with("trajectory")[0]
        self._traj_name, self._dt = traj.name, float(traj.detail["dt"])
        self._points = traj.shape[2]
        scores = m.outputs_with("score")
        self._score_name = scores[0].name if scores else None
        self._last_good = np.zeros((self._points, 3), dtype=np.float32)
        self._decoded = np.zeros((self._points, len(COLUMNS)), dtype=np.float32)  # reused every tick
        self._result = new_result_buffer()
        self._last_good_time: float | None = None
        self._last_seq: dict[str, int] = dict.fromkeys(cameras, -1)
        self.ticks = self.skipped_ticks = 0
        self.status_counts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.times = {s: Window(config.stats_window) for s in STAGES}
        self.end_reason = ""
        self.health = Health()
        self._health_cfg = HealthConfig(config.fault_after, config.fault_stall_ms, config.recover_after)
        self.events: deque[str] = deque(maxlen=100)

    # ---- control --------------------------------------------------------------------------------
    def set_command(self, text: str | None) -> str:
        """Encode a route command into the command/text inputs; returns the nav command's name."""
        m = self.backend.manifest
        cmd_inputs, text_inputs = m.inputs_with("command"), m.inputs_with("text")
        if not cmd_inputs and not text_inputs:
            return ""
        vocab = m.vocabulary
        ids = [t for t in text_inputs if t.detail["kind"] == "ids"]
        length = ids[0].shape[-1] if ids else 1
        enc = encode_command(text or vocab["commands"][0]["phrases"][0], vocab, length)
        for t in cmd_inputs:
            self.backend.feed(t.name)[...] = enc.nav_id
        for t in text_inputs:
            self.backend.feed(t.name)[0] = enc.token_ids if t.detail["kind"] == "ids" else enc.mask
        return enc.nav_name

    def stop(self, reason: str = "stopped") -> None:
        if not self._stop.is_set():
            self.end_reason = reason
        self._stop.set()

    # ---- the loop -------------------------------------------------------------------------------
    def _wait_first_frames(self) -> None:
        deadline = time.monotonic() + self.cfg.first_frame_timeout_s
        for name, src in self.cameras.items():
            while src.newest() is None:
                if src.ended() or time.monotonic() > deadline:
                    why = src.ended() or f"no frame within {self.cfg.first_frame_timeout_s:g} s"
                    raise CameraError(f"camera '{name}' ({src.uri}): {why}")
                if self._stop.wait(0.01):
                    return

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._wait_first_frames()
        self.backend.run()  # warm-up: first runs allocate and pick kernels; keep that off tick 0
        gc.collect()
        gc.freeze()  # everything allocated so far is permanent: keep it out of future collections
        collector = IdleCollector()
        try:
            yield from self._ticks(collector)
        finally:
            collector.close()

    def _ticks(self, collector: IdleCollector) -> Iterator[dict[str, Any]]:
        period = 1.0 / self.cfg.rate_hz
        start = time.monotonic() + period
        index = -1
        while not self._stop.is_set():
            new_index, due = next_tick(start, period, time.monotonic(), index)
            if index >= 0:
                self.skipped_ticks += new_index - index - 1
            index = new_index
            if self._stop.wait(max(0.0, due - time.monotonic())):
                break
            if self.cfg.sync == "frame":
                self._await_next_frame(self.cfg.frame_wait_ms / 1000.0)
            yield self._tick()
            collector.idle(start + (index + 1) * period - time.monotonic())
            if self.cfg.max_ticks is not None and self.ticks >= self.cfg.max_ticks:
                self.stop(f"{self.ticks} ticks done")
            elif self.cfg.duration_s is not None and time.monotonic() - start >= self.cfg.duration_s:
                self.stop(f"{self.cfg.duration_s:g} s done")

    def _await_next_frame(self, timeout: float) -> None:
        """Poll the primary camera until a frame newer than the one it has now arrives (bounded)."""
        src = next(iter(self.cameras.values()))
        first = src.newest()
        seq = first.seq if first is not None else -1
        end = time.monotonic() + timeout
        while not self._stop.is_set() and time.monotonic() < end and not src.ended():
            frame = src.newest()
            if frame is not None and frame.seq != seq:
                return
            time.sleep(0.0005)

    def _tick(self) -> dict[str, Any]:
        frames, problem, stalest = self._gather_frames()
        capture = min((f.capture_time for f in frames.values()), default=time.monotonic())
        lat: dict[str, float] = {}
        decoded = None
        if problem is None:
            decoded, problem = self._run_model(frames, capture, lat)
        publish = time.monotonic()
        lat["e2e"] = (publish - capture) * 1000.0
        self.health, event = next_health(self.health, self._health_cfg, fallback=problem, stalled=stalest,
                                         now=publish)
        if event:
            self.events.append(event)
        age = None
        reason = self.health.reason if self.health.faulted else problem
        if problem is not None or self.health.faulted:
            status = "fault" if self.health.faulted else "fallback"
            age = None if self._last_good_time is None else publish - self._last_good_time
            shifted = fallback_trajectory(None if age is None else self._last_good, self._dt, age or 0.0, self._points,
                                          self.cfg.stop_horizon_s)
            # The same representation as a model trajectory (speed, acceleration, curvature); its
            # verdict does not matter: this is what is published whatever it says.
            points = decode_trajectory(shifted[None, None], None, self._dt, out=self._decoded,
                                       result=self._result).points
            if problem is not None:
                self.reasons[problem.split(":")[0]] += 1
            decoded = None
        else:
            status = "late" if lat["e2e"] > self.cfg.budget_ms else "ok"
            points = decoded.points
        self.ticks += 1
        self.status_counts[status] += 1
        for k, v in lat.items():
            self.times[k].append(v)
        return {
            "schema": RECORD_SCHEMA,
            "tick": self.ticks - 1,
            "status": status,
            "reason": reason,
            "event": event,
            "frame_id": {n: f.seq for n, f in frames.items()},
            "capture_time": round(capture, 6),
            "publish_time": round(publish, 6),
            "latency_ms": {k: round(v, 3) for k, v in lat.items()},
            "fallback_age_ms": None if age is None else round(age * 1000.0, 1),
            "command": self.command_name,
            "mode": None if decoded is None else decoded.mode,
            "score": None if decoded is None else round(decoded.score, 5),
            "dt": self._dt,
            "fields": COLUMNS,
            "trajectory": np.round(points.astype(np.float64), 3).tolist(),
        }

    def _gather_frames(self) -> tuple[dict[str, Frame], str | None, tuple[str, float] | None]:
        """The newest frame of every camera, why the model cannot run on them (None if it can), and
        the camera whose newest frame is oldest with that age in ms (None before any frame)."""
        now = time.monotonic()
        problem, frames = None, {}
        stalest: tuple[str, float] | None = None
        for name, src in self.cameras.items():
            frame, ended = src.newest(), src.ended()
            if ended:
                self.stop(f"camera '{name}' ended: {ended}")
            if frame is None or frame.seq == self._last_seq[name]:
                self.dropped[name] += 1
                why = f"camera '{name}' ended: {ended}" if ended else f"no new frame from camera '{name}'"
                problem = problem or why
            elif (age_ms := (now - frame.capture_time) * 1000.0) > self.cfg.stall_ms:
                problem = problem or f"camera '{name}' stalled: newest frame is {age_ms:.0f} ms old"
            if frame is not None:
                frames[name] = frame
                age = (now - frame.capture_time) * 1000.0
                if stalest is None or age > stalest[1]:
                    stalest = (name, age)
        return frames, problem, stalest

    def _run_model(self, frames: dict[str, Frame], capture: float,
                   lat: dict[str, float]) -> tuple[DecodedTrajectory | None, str | None]:
        """Fill the inputs, run the engine, decode; commit state only for a usable trajectory."""
        t = time.monotonic()
        for name, pre in self._pre:
            self._last_seq[name] = frames[name].seq
            try:
                pre(frames[name])
            except CameraError as exc:  # a malformed frame: this tick falls back, the run goes on
                lat["preprocess"] = (time.monotonic() - t) * 1000.0
                return None, str(exc)
        if self._ego is not None:
            ego = next((f.ego for f in frames.values() if f.ego is not None), None)
            if ego is None:  # no vehicle-state source: the model sees a standing vehicle
                self._ego.update(capture, 0.0, 0.0, 0.0)
            else:
                self._ego.update(capture, ego.speed, ego.accel, ego.yaw_rate)
            self._ego.fill(self._ego_buf, capture)
        for buf, std in self._noise:
            self._rng.standard_normal(out=buf, dtype=np.float32)
            if std != 1.0:
                buf *= std
        lat["preprocess"] = (time.monotonic() - t) * 1000.0
        t = time.monotonic()
        try:
            out = self.backend.run()
        except Exception as exc:  # an engine failure is a fallback tick, never a crash
            lat["engine"] = (time.monotonic() - t) * 1000.0
            return None, f"engine error: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
        lat["engine"] = (time.monotonic() - t) * 1000.0
        t = time.monotonic()
        c = self.cfg
        decoded = decode_trajectory(out[self._traj_name], out[self._score_name] if self._score_name else None,
                                    self._dt, max_curvature=c.max_curvature, max_accel=c.max_accel,
                                    max_speed=c.max_speed, out=self._decoded, result=self._result)
        problem = None
        if decoded.problem is not None:
            kind = "non-finite output" if decoded.verdict & NONFINITE else "implausible trajectory"
            problem = f"{kind}: {decoded.problem}"
        else:
            for dst, src in self._states:
                np.copyto(self.backend.feed(dst), out[src])
            np.copyto(self._last_good, decoded.points[:, :3])
            self._last_good_time = capture
        lat["decode"] = (time.monotonic() - t) * 1000.0
        return decoded, problem

    def summary(self) -> dict[str, Any]:
        """Counts and per-stage latency statistics (trtexec definitions, milliseconds)."""
        return {
            "ticks": self.ticks,
            "status": dict(self.status_counts),
            "deadline_misses": self.status_counts.get("late", 0),
            "skipped_ticks": self.skipped_ticks,
            "dropped_frames": dict(self.dropped),
            "fallback_reasons": dict(self.reasons),
            "health_events": list(self.events),
            "latency_ms": {s: summarize(w.values()) for s, w in self.times.items() if len(w)},
            "latency_window_ticks": min(self.ticks, self.cfg.stats_window),
            "budget_ms": self.cfg.budget_ms,
            "rate_hz": self.cfg.rate_hz,
            "ended": self.end_reason,
        }

    def close(self) -> None:
        for src in self.cameras.values():
            src.close()
        self.backend.close()
