"""Training samples from drives in the synthetic world: the expert's (with DART noise) and the policy's (DAgger).

One sample per 0.1 s tick: the three camera images, the ego history, the route command, and the label, the
expert's plan from that state (``Expert.future_controls(world, T, dt)``: (accel, curvature) every dt).

The inputs are built by the runtime's own code, so the policy sees in training exactly what it sees on the
vehicle: frames rendered by ``WorldRenderer`` in rgb at the manifest's camera size go through the runtime's
camera preprocessing (``RigPreprocessor``: the same native kernel, into uint8 NCHW slots in manifest camera
order); the ego input is filled by ``EgoFeed`` fed each tick with the world's (t, speed, accel, yaw_rate), at
the frame time, as ``Runner._read_ego`` / ``_run_model`` do; the command and text inputs come from
``CommandEncoder`` on ``world.command()``.

How the car moves:

- expert drives: the expert's own control each tick, plus DART noise (a correlated random
  process on accel and curvature), so states off the lane centre and off the expert's speed appear, each
  labelled with the expert's recovery plan. A third of the drives are clean, so the plain driving
  distribution stays well represented;
- policy drives (DAgger and the closed-loop check): as in the simulator's closed loop (``vla.sim.rig``), the
  model's highest-score plan is integrated into poses like the runtime's decode does
  (``integrate_controls`` from the ego speed in its input) and followed by the simulator's tracking controller
  (``vla.sim.tracking.track``) at 20 Hz, taking over from the previous plan ``latency_s`` after the frame.

Every drive is a pure function of its seed and arguments (numpy/torch generators seeded from them), so
running drives in worker processes, in any order, gives the same data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch

from vla.export.reference_v2 import ReferenceConfig2, ReferenceVLA2
from vla.kernels.decode import integrate_controls
from vla.runtime.errors import VlaError
from vla.runtime.inputs.commands import CommandEncoder, EncodedCommand
from vla.runtime.inputs.ego import EgoFeed
from vla.runtime.inputs.preprocess import CameraPreprocessing, RigPreprocessor
from vla.runtime.inputs.sources.base import Frame
from vla.runtime.inputs.sources.scene import Rig
from vla.runtime.manifest import Manifest, parse_manifest

from .flow import best_mode

__all__ = ["Dart", "DriveResult", "Observation", "Observer", "Samples", "expert_drive", "manifest_of",
           "policy_drive", "route_ahead", "run_drives"]

#: The simulator's physics / tracking-controller step (vla.sim.rig.CONTROL_DT).
CONTROL_DT = 0.05
#: The loop's tick: one sample (and one policy decision) per tick.
TICK_S = 0.1
#: The runtime's camera format the simulator renders (vla.sim.closed_loop.SimOptions.fmt).
FRAME_FORMAT = "rgb"
HFOV_DEG = 100.0
#: A policy drive ends once the car has been off the road this long: the states after it teach nothing
#: the closed loop would see from a working policy, and the expert's labels from the grass are poor.
MAX_OFFROAD_S = 1.0
#: Source codes of the samples (Samples.source).
SOURCES = ("expert", "dart", "dagger")
#: Distances (m) along the route from the ego at which its path's points are the auxiliary target.
ROUTE_AHEAD_M = (0.0, 5.0, 10.0, 20.0, 30.0)
#: Metres per unit of the auxiliary target.
ROUTE_SCALE_M = 10.0


def route_ahead(world: Any) -> np.ndarray:
    """float32 [2 * len(ROUTE_AHEAD_M)]: (x, y) of the route's path at ``ROUTE_AHEAD_M`` metres on from the ego's
    route position, in the ego frame, in units of ``ROUTE_SCALE_M``.

    Why: a privileged training target (never a model input) that says where the lane the expert follows
    lies relative to the car, its offset, heading and the turn ahead; regressed from the context (flow.py's
    ``AuxHead``) it teaches the vision stage lane geometry directly instead of only through the flow's noisy
    gradient.
    """
    path = world.scenario.route.path
    s, _ = world.route_position()
    e = world.ego
    c, sn = math.cos(e.yaw), math.sin(e.yaw)
    out = np.empty(2 * len(ROUTE_AHEAD_M), dtype=np.float32)
    for i, d in enumerate(ROUTE_AHEAD_M):
        x, y, _ = path.pose(s + d)
        dx, dy = x - e.x, y - e.y
        out[2 * i], out[2 * i + 1] = (c * dx + sn * dy) / ROUTE_SCALE_M, (-sn * dx + c * dy) / ROUTE_SCALE_M
    return out


def manifest_of(model: ReferenceVLA2) -> Manifest:
    """The model's manifest as the runtime reads it (batch 1: what the loop feeds)."""
    return parse_manifest(model.io_spec(1))


@dataclass
class Samples:
    """Training samples as numpy arrays (images stay uint8: 3 x 64 x 128 x 3 bytes a sample)."""

    images: np.ndarray  # uint8 [N, C, 3, H, W]
    ego: np.ndarray  # float32 [N, S, 6]
    nav_cmd: np.ndarray  # int64 [N]
    text_ids: np.ndarray  # int64 [N, L]
    text_mask: np.ndarray  # bool [N, L]
    labels: np.ndarray  # float32 [N, T, 2]
    route: np.ndarray  # float32 [N, 2 * len(ROUTE_AHEAD_M)]: the route ahead in the ego frame (aux target)
    seed: np.ndarray  # int32 [N]: the scenario
    source: np.ndarray  # int8 [N]: index into SOURCES

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in self.__dataclass_fields__)

    def take(self, index: np.ndarray) -> Samples:
        return Samples(*(getattr(self, f)[index] for f in self.__dataclass_fields__))

    def counts(self) -> dict[str, int]:
        return {name: int((self.source == i).sum()) for i, name in enumerate(SOURCES) if (self.source == i).any()}

    @staticmethod
    def concat(parts: Sequence[Samples]) -> Samples:
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            raise VlaError("no training samples: every drive ended before its first tick")
        return Samples(*(np.concatenate([getattr(p, f) for p in parts]) for f in Samples.__dataclass_fields__))


@dataclass
class Observation:
    """The model's inputs at one tick (batch 1 dropped), views into the Observer's buffers."""

    images: np.ndarray  # uint8 [C, 3, H, W]
    ego: np.ndarray  # float32 [S, 6]
    command: EncodedCommand


class Observer:
    """Builds one world's model inputs each tick exactly as the runtime loop does (see the module doc)."""

    def __init__(self, manifest: Manifest, ground: Any, hfov_deg: float = HFOV_DEG) -> None:
        from vla.sim.render import WorldRenderer

        cam = manifest.inputs_with("camera")[0]
        self.names = list(cam.detail["names"])
        self.height, self.width = int(cam.detail["height"]), int(cam.detail["width"])
        self.renderer = WorldRenderer(Rig(self.names, self.width, self.height, hfov_deg), ground, FRAME_FORMAT)
        self.frames = self.renderer.new_outputs()
        self.images = np.zeros(cam.shape[1:], dtype=np.uint8)  # one batch item of the camera input
        self.pre = RigPreprocessor([CameraPreprocessing(n, cam.detail, self.images[i]) for i, n in
                                    enumerate(self.names)], threads=1)
        ego_specs = manifest.inputs_with("ego")
        if len(ego_specs) != 1:
            raise VlaError(f"training feeds one ego input; model '{manifest.name}' has {len(ego_specs)}")
        self.ego = np.zeros(ego_specs[0].shape[1:], dtype=np.float32)
        self.feed = EgoFeed.for_specs(ego_specs, lambda _t: self.ego)
        self.encoder = CommandEncoder(manifest)
        self._encoded: dict[str, EncodedCommand] = {}
        self._seq = 0

    def observe(self, world: Any) -> Observation:
        """Render the cameras at the ego's pose, preprocess them, feed and fill the ego history, encode the
        navigator's command: the runtime's tick inputs at ``world.t``."""
        e = world.ego
        boxes, colors = world.boxes()
        self.renderer.render((e.x, e.y, e.yaw), boxes, colors, self.frames)
        t = float(world.t)
        frames = {n: Frame(n, self.frames[n], FRAME_FORMAT, self.width, self.height, self._seq, t)
                  for n in self.names}
        self._seq += 1
        self.pre(frames)
        self.feed.update(t, float(e.speed), float(e.accel), float(e.yaw_rate))
        self.feed.fill(t)
        text = world.command()
        enc = self._encoded.get(text)
        if enc is None:
            enc = self._encoded[text] = self.encoder.encode(text)
        return Observation(self.images, self.ego, enc)


class _Recorder:
    """Accumulates observations and labels of one drive into growing lists, then arrays."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.ego: list[np.ndarray] = []
        self.nav: list[int] = []
        self.ids: list[np.ndarray] = []
        self.mask: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.route: list[np.ndarray] = []

    def add(self, obs: Observation, label: np.ndarray, route: np.ndarray) -> None:
        self.images.append(obs.images.copy())
        self.ego.append(obs.ego.copy())
        self.nav.append(obs.command.nav_id)
        self.ids.append(obs.command.token_ids)
        self.mask.append(obs.command.mask)
        self.labels.append(np.asarray(label, dtype=np.float32))
        self.route.append(route)

    def samples(self, seed: int, source: str) -> Samples | None:
        if not self.labels:
            return None
        n = len(self.labels)
        return Samples(np.stack(self.images), np.stack(self.ego), np.asarray(self.nav, dtype=np.int64),
                       np.stack(self.ids).astype(np.int64), np.stack(self.mask).astype(bool),
                       np.stack(self.labels), np.stack(self.route), np.full(n, seed, dtype=np.int32),
                       np.full(n, SOURCES.index(source), dtype=np.int8))


@dataclass(frozen=True)
class Dart:
    """DART-style noise on the expert's executed controls: an Ornstein-Uhlenbeck process per control.

    The stds are the process's stationary spread; ``tau_s`` its correlation time (noise that persists for
    about a second displaces the car by tens of cm to a metre before the expert's correction wins, the
    kind of error a policy makes). Every ``clean_every``-th drive has no noise at all.
    """

    accel_std: float = 0.8  # m/s²
    curvature_std: float = 0.012  # 1/m
    tau_s: float = 1.0
    clean_every: int = 3

    def describe(self) -> str:
        return (f"Ornstein-Uhlenbeck on the executed controls, std {self.accel_std:g} m/s² and "
                f"{self.curvature_std:g} 1/m, correlation {self.tau_s:g} s; one drive in {self.clean_every} clean")

    def noisy(self, index: int) -> bool:
        return self.clean_every <= 0 or index % self.clean_every != 0


@dataclass
class DriveResult:
    """How a drive went (the closed-loop check's per-scenario line)."""

    seed: int
    ticks: int
    completion: float
    end: str
    collision: str | None
    offroad_ticks: int
    metrics: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "ticks": self.ticks, "completion": self.completion, "end": self.end,
                "collision": self.collision, "offroad_ticks": self.offroad_ticks, **self.metrics}


def _world(seed: int, scenario: dict[str, Any]) -> Any:
    from vla.sim.world import World, make_scenario

    return World(make_scenario(seed, **scenario))


def _metrics_tracker(world: Any) -> Any:
    """The simulator's metrics (vla.sim.metrics) when it has them, else None."""
    try:
        from vla.sim.metrics import MetricsTracker
    except ImportError:
        return None
    return MetricsTracker(world)


def _result(seed: int, world: Any, ticks: int, offroad_ticks: int, tracker: Any, end: str | None) -> DriveResult:
    metrics = {}
    if tracker is not None:
        metrics = {k: v for k, v in tracker.result().items() if isinstance(v, int | float | bool | str)}
    return DriveResult(seed, ticks, float(world.progress()), end or world.done() or "timeout", world.collision(),
                       offroad_ticks, metrics)


def expert_drive(seed: int, manifest: Manifest, *, index: int = 0, dart: Dart | None = None,
                 scenario: dict[str, Any] | None = None, max_ticks: int | None = None) -> tuple[Samples | None,
                                                                                              DriveResult]:
    """The expert drives scenario ``seed`` (with DART noise unless ``dart`` is None or this ``index`` is a
    clean one); every tick is a sample labelled with the expert's plan from that state."""
    from vla.sim.world import Expert

    world = _world(seed, scenario or {})
    expert = Expert(seed)  # noise-free: DART noise is added here, on the executed control only
    observer = Observer(manifest, world.ground())
    steps, dt = int(manifest.outputs_with("trajectory")[0].shape[2]), float(
        manifest.outputs_with("trajectory")[0].detail["dt"])
    noisy = dart is not None and dart.noisy(index)
    rng = np.random.default_rng([seed, 11])
    ou = np.zeros(2)
    std = np.array([dart.accel_std, dart.curvature_std]) if noisy else np.zeros(2)
    decay = math.exp(-TICK_S / dart.tau_s) if noisy else 0.0
    rec = _Recorder()
    ticks = offroad = 0
    tracker = _metrics_tracker(world)
    while world.done() is None and (max_ticks is None or ticks < max_ticks):
        obs = observer.observe(world)
        label = expert.future_controls(world, steps, dt)
        rec.add(obs, label, route_ahead(world))
        ticks += 1
        # The expert's control now is its plan's first step (the look-ahead starts from this state); it is
        # held for the tick, the period its jerk limit assumes. The world subdivides the step itself.
        accel, curvature = float(label[0, 0]), float(label[0, 1])
        if noisy:
            ou = decay * ou + math.sqrt(1.0 - decay * decay) * std * rng.standard_normal(2)
            accel, curvature = accel + ou[0], curvature + ou[1]
        world.step(TICK_S, float(accel), float(curvature))
        offroad += bool(world.offroad())
        if tracker is not None:
            tracker.update(world)
    return rec.samples(seed, "dart" if noisy else "expert"), _result(seed, world, ticks, offroad, tracker, None)


def _as_batch(obs: Observation) -> tuple[torch.Tensor, ...]:
    return (torch.from_numpy(obs.images)[None], torch.from_numpy(obs.ego)[None],
            torch.tensor([obs.command.nav_id], dtype=torch.int64), torch.from_numpy(obs.command.token_ids)[None],
            torch.from_numpy(obs.command.mask)[None])


def policy_drive(seed: int, model: ReferenceVLA2, manifest: Manifest, *, label: bool = True,
                 scenario: dict[str, Any] | None = None, latency_s: float = 0.05, max_ticks: int | None = None,
                 stop_offroad_s: float | None = MAX_OFFROAD_S) -> tuple[Samples | None, DriveResult]:
    """The policy drives scenario ``seed`` through the simulator's tracking controller (see the module doc);
    with ``label`` every visited state is a sample labelled by the expert (DAgger)."""
    from vla.sim.tracking import plan_in_world, track
    from vla.sim.world import Expert

    world = _world(seed, scenario or {})
    expert = Expert(seed) if label else None
    observer = Observer(manifest, world.ground())
    c = model.config
    gen = torch.Generator().manual_seed(seed * 7919 + 17)  # the noise input, one draw per decision
    rec = _Recorder()
    speed_col = manifest.speed_source[1]  # type: ignore[index]
    plan = None
    ticks = offroad = 0
    tracker = _metrics_tracker(world)
    end = None
    model.eval()
    while world.done() is None and (max_ticks is None or ticks < max_ticks):
        obs = observer.observe(world)
        if expert is not None:
            rec.add(obs, expert.future_controls(world, c.waypoints, c.dt), route_ahead(world))
        noise = torch.randn((1, c.modes, c.waypoints, 2), generator=gen)
        with torch.no_grad():
            controls, score, _ = model(*_as_batch(obs), noise)
        best = best_mode(controls, score)[0].numpy()  # the mode the runtime's decode picks
        v0 = max(0.0, float(obs.ego[-1, speed_col]))  # Manifest.start_speed: the speed the model was given
        poses = integrate_controls(np.ascontiguousarray(best[None], dtype=np.float32), v0, c.dt)[0]
        e = world.ego
        new_plan = plan_in_world(poses[:, :2], (e.x, e.y, e.yaw), world.t, c.dt)
        start = world.t
        ticks += 1
        while world.t < start + TICK_S - 1e-6 and world.done() is None:
            if world.t >= start + latency_s - 1e-6:
                plan = new_plan
            step = min(CONTROL_DT, start + TICK_S - world.t)
            if plan is not new_plan and world.t < start + latency_s < world.t + step:
                step = start + latency_s - world.t  # the plan takes over mid-step: step to it exactly
            e = world.ego
            accel, curvature = track(plan, world.t, e.x, e.y, e.yaw, e.speed)
            world.step(step, accel, curvature)
        plan = new_plan
        out = bool(world.offroad())
        offroad += out
        if tracker is not None:
            tracker.update(world)
        if stop_offroad_s is not None and out and offroad * TICK_S >= stop_offroad_s:
            end = "offroad"
            break
    samples = rec.samples(seed, "dagger") if label else None
    return samples, _result(seed, world, ticks, offroad, tracker, end)


# ---- drives in worker processes ------------------------------------------------------------------------
_WORKER_MODEL: dict[str, Any] = {}


def _worker_init() -> None:
    torch.set_num_threads(1)  # one drive per core


def _model_from(payload: Any) -> ReferenceVLA2:
    """The policy of a task: the model itself in-process, else rebuilt once per tag in a worker."""
    if isinstance(payload, ReferenceVLA2):
        return payload
    config, state, tag = payload
    model = _WORKER_MODEL.get("model")
    if _WORKER_MODEL.get("tag") != tag or model is None:
        cfg = ReferenceConfig2(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
        model = ReferenceVLA2(cfg)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        model.eval()
        _WORKER_MODEL.update(tag=tag, model=model)
    return model


def _drive_task(task: tuple[str, int, dict[str, Any], dict[str, Any]]) -> tuple[Samples | None, DriveResult]:
    kind, seed, raw_manifest, kw = task
    manifest = parse_manifest(raw_manifest)
    if kind == "expert":
        return expert_drive(seed, manifest, **kw)
    model = _model_from(kw.pop("model"))
    return policy_drive(seed, model, manifest, **kw)


def model_payload(model: ReferenceVLA2, tag: str) -> tuple[dict, dict[str, np.ndarray], str]:
    """What a worker process needs to rebuild ``model`` (config and weights as numpy arrays); ``tag`` names
    this version of the weights, so a worker rebuilds the model once per version, not per drive."""
    from dataclasses import asdict

    return (asdict(model.config), {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()},
            tag)


def run_drives(tasks: Iterable[tuple[str, int, dict[str, Any]]], manifest: Manifest, *, workers: int = 1,
               on_done: Callable[[DriveResult], None] | None = None) -> list[tuple[Samples | None, DriveResult]]:
    """Run drives (``("expert" | "policy", seed, keyword arguments)``), in worker processes when
    ``workers > 1``; results in task order whatever order they finish in (so the data order is fixed)."""
    jobs = [(kind, seed, manifest.raw, kw) for kind, seed, kw in tasks]
    if workers <= 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(_drive_task((job[0], job[1], job[2], dict(job[3]))))
            if on_done is not None:
                on_done(results[-1][1])
        return results
    workers = min(workers, len(jobs), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        futures = [pool.submit(_drive_task, job) for job in jobs]
        results = []
        for fut in futures:
            results.append(fut.result())
            if on_done is not None:
                on_done(results[-1][1])
    return results
