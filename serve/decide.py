"""One decision on the shared engine: a session's camera slots, ego history, command and state in, a checked
trajectory out. The runtime's tick without its clock.

``vla-run``'s ``Runner`` interleaves the same steps with camera sources, deadlines and worker threads;
a simulator instead sends a step's observations, then asks for a decision and waits for it, on its own
clock. So this module runs the runtime's own pieces synchronously, each when its input arrives:

- an image, when it is submitted: the fused preprocess kernel (``RigPreprocessor``, one per camera)
  writes it into the session's own slot of the model's camera input, so a drive only copies the slots;
- at a drive: ``EgoFeed`` writes the ego input, ``CommandEncoder`` the command and text inputs, the
  session's seeded generator the noise; the engine runs every stage in order (the whole decision, every
  drive: a simulation must not depend on how fast the machine is); a trajectory of controls is
  integrated from the ego's speed (``vla.kernels.decode.integrate_controls``), then ``TrajectoryDecoder``
  picks the best mode and checks the plausibility limits (``limits.judge_decoded``, ``--limits`` as in
  ``vla-run``). A trajectory that cannot be used is replaced by the runtime's fallback
  (``fallback.fallback_trajectory``: the session's last good one, shifted to now, slowing to a stop).

One engine serves every session, one decision at a time (a lock); what belongs to a rollout (camera
slots, ego history, recurrent state, noise generator, last good trajectory) lives in the session's
``Inputs`` and is copied into the engine's buffers for its decision, so sessions never see each
other's state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vla.kernels.decode import TrajectoryDecoder, integrate_controls
from vla.runtime.backends.base import Backend
from vla.runtime.errors import VlaError, describe_error
from vla.runtime.inputs.commands import CommandEncoder, EncodedCommand
from vla.runtime.inputs.ego import EgoFeed
from vla.runtime.inputs.preprocess import CameraPreprocessing, RigPreprocessor
from vla.runtime.inputs.sources.base import Frame
from vla.runtime.loop.fallback import fallback_trajectory
from vla.runtime.loop.limits import check_mode, decoder_limits, judge_decoded
from vla.runtime.loop.stats import median, percentile

from .cameras import neutral_frame
from .route import FOLLOW, LEFT, RIGHT


@dataclass(frozen=True)
class DecideConfig:
    """How decisions are judged (the same meaning as ``vla-run``'s flags of these names)."""

    limits: str = "enforce"
    max_curvature: float = 0.3
    max_accel: float = 8.0
    max_speed: float = 60.0
    stop_horizon_s: float = 4.0
    command: str | None = None  # a fixed route command for every session; None: each session's route


@dataclass
class Inputs:
    """What one session feeds the engine and keeps between its decisions."""

    images: dict[str, np.ndarray]  # camera input name -> the session's [cameras, ...] slots of it
    cameras: dict[str, RigPreprocessor]  # bundle camera -> the kernel writing its slot in ``images``
    ego: EgoFeed | None
    ego_arrays: dict[str, np.ndarray]  # ego input name -> [steps, fields], written by ``ego.fill``
    state: dict[str, np.ndarray]  # state input name -> its value for the session's next decision
    rng: np.random.Generator
    last_good: np.ndarray | None = None  # [T, 3] x, y, yaw of the last usable trajectory
    last_good_us: int = 0


@dataclass(frozen=True)
class Decision:
    """A decision: ``points`` [T, 3] (x, y, yaw in the ego frame at k * dt, k = 1..T) and what they are."""

    points: np.ndarray
    status: str  # "ok": the model's trajectory; "fallback": the fallback, ``reason`` says why
    reason: str | None
    warning: str | None  # published despite a limit (--limits warn)
    engine_ms: float
    decision_ms: float  # inputs (camera slots copied, ego, command, noise, state), engine and decode
    mode: int | None
    score: float | None
    speed: float  # the ego speed the model was given (m/s)
    command: str  # the command's name ("" for a model without one)
    scalars: dict[str, float] = field(default_factory=dict)


class Decider:
    """Decisions for every session on one engine (``backend``, opened by ``vla.runtime.engine.open_engine``)."""

    def __init__(self, backend: Backend, config: DecideConfig) -> None:
        m = backend.manifest
        if any(t.shape and t.shape[0] != 1 for t in m.inputs):
            raise VlaError("vla-serve feeds batch 1; export the model with batch 1")
        self.backend, self.cfg, self.manifest = backend, config, m
        check_mode(config.limits)
        self._lock = threading.Lock()
        self._camera_specs = m.inputs_with("camera")
        self.cameras = {name: spec.detail for spec in self._camera_specs for name in spec.detail["names"]}
        self._neutral = {name: Frame(name, neutral_frame(c), "rgb", c["width"], c["height"], 0, 0.0)
                         for name, c in self.cameras.items()}
        traj = m.outputs_with("trajectory")[0]
        self._traj_name, self.dt = traj.name, float(traj.detail["dt"])
        self.steps = traj.shape[2]
        scores = m.outputs_with("score")
        self._score_name = scores[0].name if scores else None
        limits = decoder_limits(config.limits, config.max_curvature, config.max_accel, config.max_speed)
        self._decoder = TrajectoryDecoder(self.dt, self.steps, **limits)
        self._controls = m.controls
        self._poses = np.empty((1, traj.shape[1], self.steps, 4), dtype=np.float32)
        self._ego_specs = m.inputs_with("ego")
        self._states = [(t.name, t.detail["from_output"], t.detail["initial"]) for t in m.inputs_with("state")]
        self._noise = [(t.name, float(t.detail.get("std", 1.0))) for t in m.inputs_with("noise")]
        self._commands = CommandEncoder(m)
        self._encoded: dict[str | None, EncodedCommand | None] = {}
        self.notes: list[str] = []  # one-off notices for the start-up lines (a command cut to fit)
        self._check_commands()

    # ---- set-up ------------------------------------------------------------------------------------
    def _check_commands(self) -> None:
        """Refuse at start-up, in one line, a command the model cannot take: ``--command`` if given, else
        the three the route gives (``route.py``)."""
        if self.cfg.command is not None:
            self._commands.refuse_if_unused(self.cfg.command)
            self.encode(self.cfg.command)
            return
        if not self._commands.takes_command:
            return
        for text in (FOLLOW, LEFT, RIGHT):
            try:
                self.encode(text)
            except VlaError as exc:
                raise VlaError(f"model '{self.manifest.name}' cannot take the route's commands ({exc}); give "
                               "--command TEXT with a command it takes") from None

    @property
    def takes_command(self) -> bool:
        """Whether the model has a command or text input the route's command goes into."""
        return self._commands.takes_command

    def encode(self, text: str | None) -> EncodedCommand | None:
        """The command ``text`` (None: the bundle's default) encoded once, then reused."""
        if text not in self._encoded:
            enc = self._commands.encode(text)
            if enc is not None and enc.note:
                self.notes.append(enc.note)
            self._encoded[text] = enc
        return self._encoded[text]

    def new_inputs(self, seed: int) -> Inputs:
        """A session's own camera slots (a neutral frame each until its camera sends one), ego history,
        recurrent state (the manifest's initial values) and noise generator."""
        images, cameras = {}, {}
        for spec in self._camera_specs:
            slots = np.zeros(spec.shape[1:], dtype=spec.dtype)
            images[spec.name] = slots
            for i, name in enumerate(spec.detail["names"]):
                cameras[name] = RigPreprocessor([CameraPreprocessing(name, spec.detail, slots[i])])
                cameras[name]({name: self._neutral[name]})
        arrays = {t.name: np.zeros(t.shape[1:], dtype=t.dtype) for t in self._ego_specs}
        ego = EgoFeed.for_specs(self._ego_specs, lambda t: arrays[t.name]) if self._ego_specs else None
        state = {}
        for name, _, initial in self._states:
            value = np.zeros_like(self.backend.feed(name))
            value[...] = initial
            state[name] = value
        return Inputs(images, cameras, ego, arrays, state, np.random.default_rng(seed))

    @staticmethod
    def take_frame(inputs: Inputs, camera: str, frame: Frame) -> None:
        """Preprocess ``frame`` into the session's slot of bundle camera ``camera`` (the session's lock held);
        a frame the kernel cannot take is a ``CameraError`` naming the camera."""
        inputs.cameras[camera]({camera: frame})

    # ---- a decision --------------------------------------------------------------------------------
    def decide(self, inputs: Inputs, now_s: float, now_us: int, command: str | None) -> Decision:
        """Decide on the session's camera slots and its ego history at ``now_s`` (session seconds) with
        ``command`` (``--command`` wins when given). Never raises for an engine failure: that is a fallback,
        named."""
        text = self.cfg.command if self.cfg.command is not None else command
        enc = self.encode(text) if self.takes_command else None
        feed = self.backend.feed
        with self._lock:
            start = time.perf_counter()
            for name, slots in inputs.images.items():
                np.copyto(feed(name)[0], slots)
            if inputs.ego is not None:
                inputs.ego.fill(now_s)
                for name, arr in inputs.ego_arrays.items():
                    np.copyto(feed(name)[0], arr)
            self._commands.write(enc, feed)
            for name, std in self._noise:
                buf = feed(name)
                if buf.dtype == np.float32:  # drawn in place, as vla-run draws
                    inputs.rng.standard_normal(out=buf, dtype=np.float32)
                else:
                    buf[...] = inputs.rng.standard_normal(buf.shape)
                if std != 1.0:
                    buf *= std
            for name, _, _ in self._states:
                np.copyto(feed(name), inputs.state[name])
            speed = self.manifest.start_speed(feed) if self._controls else self._given_speed(feed)
            engine_start = time.perf_counter()
            try:
                out = self.backend.run()
            except Exception as exc:  # the engine's own failure: this drive falls back, the server goes on
                engine_ms = (time.perf_counter() - engine_start) * 1000.0
                reason = f"engine error: {describe_error(exc)}"
                return self._fallback(inputs, now_us, reason, engine_ms, start, speed, enc)
            engine_ms = (time.perf_counter() - engine_start) * 1000.0
            traj = out[self._traj_name]
            if self._controls:
                integrate_controls(traj, speed, self.dt, out=self._poses[0])
                traj = self._poses
            decoded = self._decoder(traj, out[self._score_name] if self._score_name else None)
            judged = judge_decoded(decoded, self.cfg.limits)
            if not judged.usable:
                return self._fallback(inputs, now_us, judged.problem or "unusable trajectory", engine_ms, start,
                                      speed, enc)
            for name, src, _ in self._states:
                np.copyto(inputs.state[name], out[src])
            points = decoded.points[:, :3].copy()
            inputs.last_good, inputs.last_good_us = points, now_us
            return Decision(points, "ok", None, judged.warning, engine_ms, (time.perf_counter() - start) * 1000.0,
                            decoded.mode, decoded.score, speed, enc.nav_name if enc else "")

    def _given_speed(self, feed: Callable[[str], np.ndarray]) -> float:
        """The newest ego speed the model was given, when it reads one (for the debug scalars)."""
        source = self.manifest.speed_source
        return float(feed(source[0])[0, -1, source[1]]) if source else 0.0

    def _fallback(self, inputs: Inputs, now_us: int, reason: str, engine_ms: float, start: float, speed: float,
                  enc: EncodedCommand | None) -> Decision:
        """The runtime's fallback for this session: its last good trajectory shifted to now, slowing to a stop
        (standing still before any)."""
        age = max(0, now_us - inputs.last_good_us) / 1e6
        points = fallback_trajectory(inputs.last_good, self.dt, age, self.steps, self.cfg.stop_horizon_s)
        return Decision(points, "fallback", reason, None, engine_ms, (time.perf_counter() - start) * 1000.0,
                        None, None, speed, enc.nav_name if enc else "")

    def warm_up(self, runs: int) -> str:
        """Run ``runs`` timed decisions on neutral frames, after an untimed first (it allocates and picks
        kernels), before the port opens; returns one line with their figures."""
        inputs = self.new_inputs(0)
        times = []
        for n in range(max(1, runs) + 1):  # the first allocates: not timed
            d = self.decide(inputs, 0.0, 0, None)
            if d.reason is not None and d.reason.startswith("engine error"):
                raise VlaError(f"the engine failed its {'first run' if n == 0 else f'warm-up run {n + 1}'}: "
                               f"{d.reason.removeprefix('engine error: ')}")
            if n:
                times.append(d.decision_ms)
        s = sorted(times)
        return (f"warm-up: decision (inputs, engine, decode) p50 {median(s):.1f} ms, "
                f"p99 {percentile(s, 99):.1f} ms over {len(s)} runs; AlpaSim steps at 10 Hz (100 ms)")
