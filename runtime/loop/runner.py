"""The real-time loop: newest frames -> preprocess -> engine -> decode -> publish, every tick.

One tick, at ``--rate`` (``schedule.frame_tick`` / ``schedule.next_tick``):

0. with ``sync="frame"`` (the default) a tick starts when the primary camera (the manifest's first)
   delivers the frame of the next tick time, on a grid anchored at its first frame, so a 30 fps
   camera at 10 Hz runs the model on every third frame as it arrives, with no wait and a frame
   that is as fresh as it can be (openpilot's modeld also runs on frame arrival); a frame that
   does not come within ``frame_wait_ms`` of its time starts the tick anyway, which then reports
   it. With ``sync="clock"`` ticks are on a fixed grid of the monotonic clock;
1. group the newest frame of every camera (``camera_group.judge_group``): each must be new, not
   stalled, and captured within ``sync_tolerance_ms`` of the newest; a camera that is behind is
   waited for within the same bound, then named in the fallback reason;
2. read the vehicle state (``ego_input``); stale ego data is a fallback, named;
3. preprocess each frame into its slot of the engine's camera input; update the ego history; draw
   the noise; write a route command set since the last run (``set_command``); start the engine
   on its worker thread (``engine_worker``) and wait for it no later than the deadline, capture
   time + ``budget_ms``; ``vla.kernels.decode_trajectory`` picks the best of K, derives speed,
   acceleration and curvature, and checks them against the limits.
   On a GPU backend (``device_path.DeviceTick``) this thread only copies the frames into pinned
   staging; the engine thread runs preprocess, engine and decode on the device, as one CUDA graph
   once captured, and the decode's verdict is read back here;
4. publish one record:

   - ``ok``: the model's trajectory, on time;
   - ``late``: the deadline passed first. The line is published at the deadline (or as soon as the
     decode finishes past it) and carries the fallback trajectory, never a stale plan;
   - ``fallback``: the model's trajectory cannot be used (no fresh or grouped frames, stale ego,
     engine error or still busy, NaN/inf, implausible curvature/acceleration/speed);
   - ``fault``: see 5.

   Every line other than ``ok`` carries the fallback (``fallback.py``): the last good trajectory
   shifted to now, slowing to a stop over ``stop_horizon_s``, with its age and the reason.
   Every line says whether the tick missed its deadline (``deadline_missed``: the engine's result
   was not in hand by capture + budget, whatever was published; ``tally.py``). The plausibility
   limits apply per ``RunConfig.limits`` (``limits.py``): ``enforce`` falls back naming the limit
   and the value, ``warn`` publishes the model's trajectory with a ``warning`` saying the same,
   ``off`` checks none (a non-finite output falls back in every mode);
5. health (``health.py``): after ``fault_after`` consecutive non-ok ticks, or a camera silent for
   ``fault_stall_ms``, every line says ``fault`` (stopping trajectory, the fault's reason) until
   ``recover_after`` good ticks in a row; the transitions carry ``event`` ("fault", "recovered …").

Recurrent state rule: state outputs are copied into their inputs after every engine run on fresh,
grouped frames that gives a usable trajectory, including a run that finished after its deadline
(its result is collected at the next tick: the model did see those frames, in order, so memory
stays a faithful history). That trajectory, stamped with its capture time, also becomes the last
good one the fallback shifts. Ticks that do not run the model leave the state untouched, and
``memory_valid`` counts committed runs.

A bundle of stages (``stages.py``, ``backends/staged.py``) is one engine run per tick when every stage
runs every tick. With slow stages (``async`` or every Nth tick) the loop schedules two paths
(``dual_rate.py``): step 3 starts the slow stages on their own worker when due (on this tick's
frames, which only they read) and runs the fast path (e.g. the action expert x K) on the engine
worker, on the newest published context; a context older than its max age makes the tick fall back
("context too old"). A slow run that finishes is published at the start of the next tick. Per-stage
times go into each record (``stage_ms``) with the context's age (``context_age_ms``).

Dropped frames are counted per camera as ticks at which that camera had no new frame in step with
the group (the model could not run on fresh input), openpilot's notion of a frame drop at the
model's rate.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla.kernels.decode import COLUMNS, DecodedTrajectory, TrajectoryDecoder, integrate_controls

from ..backends.base import Backend
from ..backends.staged import StagedBackend, StageStore
from ..errors import CameraError, VlaError, describe_error
from ..inputs.commands import CommandEncoder, EncodedCommand
from ..inputs.ego import EgoFeed
from ..inputs.ego_input import ConstantEgoInput, EgoInput, FrameEgoInput, ego_staleness
from ..inputs.preprocess import RigPreprocessor
from ..inputs.sources.base import CameraSource, Frame
from ..stages import split, stage_reads, with_rate
from .budget import BudgetFit, judge_budget
from .camera_group import GroupVerdict, judge_group
from .clock import WALL, Clock
from .device_path import DeviceDecoder, DeviceTick
from .dual_rate import SlowPath
from .engine_worker import EngineWorker
from .fallback import fallback_trajectory
from .health import Health, HealthConfig, next_health
from .limits import check_mode, decoder_limits, judge_decoded
from .realtime import IdleCollector
from .schedule import frame_tick, next_tick
from .stats import Window, summarize
from .tally import Tally, deadline_missed
from .tap import LoopTap, RunEvent
from .world_model import WorldModel

RECORD_SCHEMA = "vla.tick/2"
CLOSE_WAIT_MAX_S = 2.0  # the longest close() waits for an engine run in flight before leaving it to the exit
STAGES = ("acquire", "preprocess", "engine", "decode", "e2e")


@dataclass
class RunConfig:
    rate_hz: float = 10.0
    budget_ms: float = 100.0
    max_ticks: int | None = None
    duration_s: float | None = None
    command: str | None = None  # None: the bundle's default command (commands.py)
    seed: int = 0
    stall_ms: float = 500.0
    sync: str = "frame"  # "frame": run on the primary camera's next frame after the tick is due; "clock"
    frame_wait_ms: float = 50.0  # the longest a tick waits for the primary's next frame and for laggards
    sync_tolerance_ms: float = 50.0  # the most a camera's frame may trail the group's newest
    ego_stale_ms: float = 200.0  # vehicle state older than this makes a tick fall back
    max_curvature: float = 0.3  # 1/m: tighter than any road vehicle's turning circle allows
    max_accel: float = 8.0  # m/s^2, longitudinal: beyond hard braking
    max_speed: float = 60.0  # m/s
    limits: str = "enforce"  # the limits above: enforce (fall back), warn (publish with a warning), off (limits.py)
    stop_horizon_s: float = 4.0  # a fallback slows to a stop over this long
    fault_after: int = 5  # consecutive non-ok ticks that make a fault
    fault_stall_ms: float = 1000.0  # a camera silent this long is a fault at once
    recover_after: int = 3  # consecutive good ticks that end a fault
    first_frame_timeout_s: float = 15.0
    warmup_runs: int = 15  # engine runs before tick 0: the first, then runs timed for the budget check
    warmup_s: float = 1.0  # the timed warm-up stops after this long once 3 runs are timed
    cuda_graph: bool = True  # GPU data path: replay the tick's device work as a CUDA graph once captured
    log: Callable[[str], None] | None = None  # one-off notices (a CUDA graph capture that failed)
    stats_window: int = 36000  # ticks kept for the summary's percentiles (an hour at 10 Hz)
    # A bundle of stages: when its slow stages run (None: as the manifest declares; "tick": every stage every
    # tick, the single-rate schedule; "async"; N: every Nth tick). stages.parse_rate reads --stage-rate.
    stage_rate: str | int | None = None
    context_max_age_ms: float | None = None  # the slow stages' outputs are used this long (None: the manifest's)


class Runner:
    """Runs the loop; iterate it for the published records, ``stop()`` from any thread.

    ``ego`` is the vehicle-state input (``vla.runtime.inputs.ego_input``); by default the state the camera
    source attaches to its frames (``synthetic://`` does), else a standing vehicle.
    """

    def __init__(self, backend: Backend, cameras: dict[str, CameraSource], config: RunConfig,
                 ego: EgoInput | None = None, clock: Clock = WALL) -> None:
        self.backend, self.cameras, self.cfg = backend, cameras, config
        self._clock = clock  # the wall clock, or vla-sim's simulated one (clock.py)
        m = backend.manifest
        if any(t.shape and t.shape[0] != 1 for t in m.inputs):
            raise VlaError("the loop feeds batch 1; export the model with batch 1")
        self._stop = threading.Event()
        self.taps: list[LoopTap] = []  # listeners: recorder, live view, shadow mode (tap.py)
        self._host_state = backend.device_io() is None  # feed(state) is a plain read (tap.py's on_run)
        # Called with each record before it is published, to add fields (shadow mode's disagreement).
        self.annotators: list[Callable[[dict[str, Any]], None]] = []
        self.next_due: float | None = None  # when the next tick is due (clock time): idle work must end by then
        # A GPU backend with CUDA kernels: raw frames up, trajectory down, the rest on the device.
        # (A trajectory of controls is integrated by the host decode: the device tick decodes poses only.)
        device = None if m.controls else backend.device_io()
        self._pre = RigPreprocessor.for_backend(backend, device=device)
        self._device_tick: DeviceTick | None = None
        self._states = [(t.name, t.detail["from_output"]) for t in m.inputs_with("state")]
        # Backends that keep state themselves (ONNX Runtime and TensorRT swap buffers, torch copies on
        # the device) commit it; others get the host copy.
        device_commit = getattr(backend, "commit_state", None)
        self._commit_state = (lambda out: device_commit()) if device_commit else self._copy_state
        for t in m.inputs_with("state"):
            backend.feed(t.name)[...] = t.detail["initial"]
        ego_specs = m.inputs_with("ego")
        # Each ego input gets exactly its declared fields, in their order (``ego.py``).
        self._ego = EgoFeed.for_specs(ego_specs, lambda t: backend.feed(t.name)[0]) if ego_specs else None
        if ego is None:
            carried = any(getattr(src, "provides_ego", False) for src in cameras.values())
            ego = FrameEgoInput() if carried else ConstantEgoInput("constant://")
        self.ego_input = ego
        self._noise = [(backend.feed(t.name), float(t.detail.get("std", 1.0))) for t in m.inputs_with("noise")]
        self._rng = np.random.default_rng(config.seed)
        self._noise_drawn = False  # the next run's noise is in its inputs already
        self._commands = CommandEncoder(m)
        self._pending_command: EncodedCommand | None = None
        self._command_lock = threading.Lock()  # set_command may be called from any thread
        self.command_name = self.command_text = ""
        self.set_command(config.command)
        self._apply_command()
        traj = m.outputs_with("trajectory")[0]
        self._traj_name, self._dt = traj.name, float(traj.detail["dt"])
        self._points = traj.shape[2]
        scores = m.outputs_with("score")
        self._score_name = scores[0].name if scores else None
        self._last_good = np.zeros((self._points, 3), dtype=np.float32)
        c = config
        limits = decoder_limits(check_mode(c.limits), c.max_curvature, c.max_accel, c.max_speed)
        traj_name, score_name = self._traj_name, self._score_name
        # The engine thread's run and the model's trajectory, checked against the limits: on the host,
        # backend.run() and a decode of the outputs it returns; on the device, the whole tick's device
        # work (DeviceTick, a CUDA graph once captured) and a read of its 80-byte verdict and points.
        self._decode: Callable[[dict[str, np.ndarray]], DecodedTrajectory]
        self._engine_run: Callable[[], dict[str, np.ndarray]]
        if device is None:
            host = TrajectoryDecoder(self._dt, self._points, **limits)
            # (accel, curvature) per waypoint become poses (x, y, yaw, speed) from the ego's speed, then the
            # same decode (it reads x, y, yaw and checks every column is finite).
            poses = self._integrate if m.controls else (lambda traj: traj)
            self._decode = lambda out: host(poses(out[traj_name]), out[score_name] if score_name else None)
            self._engine_run = backend.run
        else:
            tick = DeviceTick(device, self._pre, DeviceDecoder(device, self._dt, self._points, **limits),
                              traj_name, score_name, cuda_graph=config.cuda_graph, log=config.log)
            self._device_tick = tick
            self._decode = lambda out: tick.decoded()
            self._engine_run = tick.run
        self._describe = TrajectoryDecoder(self._dt, self._points)  # a fallback's is only described, not checked
        self._controls = m.controls
        self._poses = np.empty((1, traj.shape[1], self._points, 4), dtype=np.float32)  # integrated controls
        self._v0_flight = 0.0  # the ego speed the run in flight was given: a controls trajectory starts from it
        self._setup_stages(backend, config)
        self._last_good_time: float | None = None
        self._last_seq: dict[str, int] = dict.fromkeys(cameras, -1)
        self._worker: EngineWorker | None = None
        self._in_flight: float | None = None  # capture time of a run not collected yet
        self.ticks = self.skipped_ticks = self.late_runs_committed = 0
        self.tally = Tally()  # statuses, deadline misses, reasons and warnings of the published records
        self.dropped: Counter[str] = Counter()
        self.times = {s: Window(config.stats_window) for s in STAGES}
        self.end_reason = ""
        self.failure: str | None = None  # why the run ended in error (a camera lost for good)
        self.health = Health()
        self._health_cfg = HealthConfig(config.fault_after, config.fault_stall_ms, config.recover_after)
        self.events: deque[str] = deque(maxlen=100)
        self.ticking_since: float | None = None  # clock time the ticks began (after the warm-up)
        self.warmup_engine_ms: list[float] = []  # the timed warm-up runs
        self.slow_warmup_ms: dict[str, float] | None = None  # dual rate: the slow stages' warm-up run, per stage
        self.budget_fit: BudgetFit | None = None  # those runs against the budget (judge_budget)
        self._runs = 0  # engine runs started, numbered for the taps
        self._reads: dict[str, tuple[tuple[str, ...], ...]] = {}  # what each kind of run shows the taps
        self._flight_run = self._slow_run = -1  # the run in flight on the engine worker, on the slow worker
        self._slow_published = -1  # the slow run whose context is published
        self.last_ego = None  # the vehicle state the last tick read
        # The world model's surprise (world_model.py): a declared prediction checked at the next run.
        self.world = WorldModel.for_manifest(m, self._world_values_available(backend))
        self.surprise: float | None = None  # the newest surprise, for the tick that computed it
        if self.world.unavailable and config.log is not None:
            config.log(self.world.unavailable)

    def _setup_stages(self, backend: Backend, config: RunConfig) -> None:
        """A bundle of stages: per-stage timings, and with slow stages the dual-rate schedule (``dual_rate``):
        the engine worker runs the fast stages every tick on the newest published context."""
        self._slow: SlowPath | None = None
        self._fast_reads_cameras = True
        self.stage_times: dict[str, Window] = {}
        self.context_ages = Window(config.stats_window)
        if not isinstance(backend, StagedBackend):
            return
        self.stage_times = {s.name: Window(config.stats_window) for s in backend.stages}
        slow, fast = split(with_rate(backend.stages, config.stage_rate))
        if not slow or not fast:
            return  # every stage every tick: the engine run is the whole decision
        self._slow = SlowPath(backend, slow, fast, config.context_max_age_ms, clock=self._clock)
        cameras = {t.name for t in backend.manifest.inputs_with("camera")}
        self._fast_reads_cameras = any(n in cameras for s in fast for n in s.inputs)
        store = StageStore()

        def fast_run() -> dict[str, np.ndarray]:
            backend.execute(fast, store)
            return backend.model_outputs(store)

        self._fast_store = store
        self._engine_run = fast_run
        self._commit_state = lambda out: backend.commit_state(fast)

    def _integrate(self, controls: np.ndarray) -> np.ndarray:
        """Controls [1, K, T, 2] -> poses [1, K, T, 4] from the speed the run was given (into a buffer of its own:
        nothing is allocated per tick)."""
        integrate_controls(controls, self._v0_flight, self._dt, out=self._poses[0])
        return self._poses

    def _stage_ms(self) -> dict[str, float]:
        """The finished run's time per stage (the fast stages under dual rate; empty for one graph)."""
        if self._slow is not None:
            return {s.name: self._fast_store.ms[s.name] for s in self._slow.fast if s.name in self._fast_store.ms}
        return self.backend.last_timings_ms() if isinstance(self.backend, StagedBackend) else {}

    # ---- control --------------------------------------------------------------------------------
    def set_command(self, text: str | None) -> str:
        """Change the route command (any thread; None: the bundle's default). It is encoded here, so a
        command the model cannot take raises ``VlaError`` at once, and goes into the inputs before the
        next engine run (never under a run in progress). Returns the command's name; "" for a model
        that takes none. A note (text cut, or a shorter phrase fed) goes to ``RunConfig.log``."""
        enc = self._commands.encode(text)
        if enc is None:
            return ""
        if enc.note and self.cfg.log is not None:
            self.cfg.log(f"warning: {enc.note}")
        with self._command_lock:
            self._pending_command = enc
        return enc.nav_name

    def _apply_command(self) -> None:
        """Write a command set since the last run into the inputs (the engine is idle here)."""
        with self._command_lock:
            enc, self._pending_command = self._pending_command, None
        if enc is not None:
            self._commands.write(enc, self.backend.feed)
            self.command_name, self.command_text = enc.nav_name, enc.text
            self._tap("on_command", enc.text, enc.nav_name)

    def stop(self, reason: str = "stopped") -> None:
        """End the run after the tick in progress (at most one budget away); any thread, signal-safe."""
        if not self._stop.is_set():
            self.end_reason = reason
        self._stop.set()

    # ---- the loop -------------------------------------------------------------------------------
    def _wait_first_frames(self) -> None:
        deadline = self._clock.now() + self.cfg.first_frame_timeout_s
        for name, src in self.cameras.items():
            while src.newest() is None:
                if src.ended() or self._clock.now() > deadline:
                    why = src.ended() or src.trouble() or f"no frame within {self.cfg.first_frame_timeout_s:g} s"
                    raise CameraError(f"camera '{name}' ({src.uri}): {why}")
                if self._clock.wait(self._stop, 0.01):
                    return

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._wait_first_frames()
        # Warm-up on the engine's own thread: first runs allocate, pick kernels and set up per-thread
        # state; keep that off tick 0. The runs after the first are timed, to say before tick 0
        # whether the engine fits the budget at all.
        self._worker = EngineWorker(clock=self._clock)
        if self.taps and self._device_tick is not None:  # a recording wants the outputs: bring them back
            self._device_tick.keep_outputs(tuple(t.name for t in self.backend.manifest.outputs))
        self._warm_up()
        gc.collect()
        gc.freeze()  # everything allocated so far is permanent: keep it out of future collections
        collector = IdleCollector()
        try:
            yield from self._ticks(collector)
        finally:
            collector.close()

    def _warm_up(self) -> None:
        """The first run (untimed), then timed runs of the tick's engine work: at most
        ``warmup_runs`` in all, and no more once ``warmup_s`` has passed and three are timed."""
        worker, cfg = self._worker, self.cfg
        assert worker is not None
        ends = self._clock.now() + cfg.warmup_s
        run = self._warm_up_run()
        for n in range(max(1, cfg.warmup_runs)):
            worker.submit(run)
            worker.wait(None)
            if worker.error is not None:
                exc = worker.error
                which = "first run" if n == 0 else f"warm-up run {n + 1}"
                raise VlaError(f"the engine failed its {which}: {describe_error(exc, 200)}")
            if n == 0:
                self._warm_up_context(announce=False)
                run = self._timed_warm_up_run()
                continue
            self.warmup_engine_ms.append((worker.finished - worker.started) * 1000.0)
            if len(self.warmup_engine_ms) >= 3 and self._clock.now() >= ends:
                break
        self.budget_fit = judge_budget(self.warmup_engine_ms, cfg.budget_ms, cfg.rate_hz,
                                       precision=self.backend.manifest.precision)
        if self.budget_fit is not None and cfg.log is not None:
            cfg.log(self.budget_fit.line())
        self._warm_up_context()  # tick 0 starts from a context of the newest frames

    def _warm_up_context(self, announce: bool = True) -> None:
        """Dual rate: run the slow stages on the newest frames and publish them (the fast path's timed
        warm-up runs, and tick 0, need a context)."""
        slow = self._slow
        if slow is None:
            return
        frames = {name: src.newest() for name, src in self.cameras.items()}
        capture = min((f.capture_time for f in frames.values() if f is not None), default=self._clock.now())
        if all(f is not None for f in frames.values()):
            with contextlib.suppress(CameraError):  # a malformed frame: the first tick names it
                self._pre.start(frames).wait()  # type: ignore[arg-type]
        self._slow_run = self._start_event("slow", -1)
        ms = slow.run_now(capture)
        self._slow_finished(ms)
        if ms is None:
            raise VlaError(f"the slow stages failed their warm-up run: {slow.last_error}")
        self.slow_warmup_ms = ms
        if announce and self.cfg.log is not None:
            parts = ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
            self.cfg.log(f"dual rate: slow stages ({parts}) run {slow.slow[0].rate_text()} on their own worker; "
                         f"the fast path ({', '.join(s.name for s in slow.fast)}) every tick on context at most "
                         f"{slow.max_age_ms:g} ms old")

    def _timed_warm_up_run(self) -> Callable[[], dict[str, np.ndarray]]:
        """What the warm-up times after its first run: the engine's own run on the host path; on
        the GPU path one plain run of the staged tick (no graph: a replay would be faster)."""
        tick = self._device_tick
        if tick is not None and tick.staged:
            return tick.plain_run
        if self._slow is not None:  # the fast path on the published context
            slow, fast = self._slow, self._engine_run
            return lambda: (slow.prepare_fast(), fast())[1]
        return self.backend.run

    def _warm_up_run(self) -> Callable[[], dict[str, np.ndarray]]:
        """The warm-up's run: on the GPU path the whole device tick on the first frames (kernels,
        staging buffers, the engine), else the engine's own run."""
        tick = self._device_tick
        if tick is not None:
            frames = {name: src.newest() for name, src in self.cameras.items()}
            if all(f is not None for f in frames.values()):
                try:
                    tick.stage(frames)  # type: ignore[arg-type]
                    return tick.warm_up
                except CameraError:
                    pass  # a malformed first frame: the first tick names it
        return self.backend.run

    def _ticks(self, collector: IdleCollector) -> Iterator[dict[str, Any]]:
        period = 1.0 / self.cfg.rate_hz
        # A model with no camera input has no frames to tick on: its ticks follow the clock.
        by_frame = self.cfg.sync == "frame" and bool(self.cameras)
        self.ticking_since = self._clock.now()
        schedule = self._frame_schedule(period) if by_frame else self._clock_schedule(period)
        started = self.ticking_since
        for next_due in schedule:
            self.next_due = next_due
            yield self._tick()
            self._draw_noise()  # off the next tick's critical path
            collector.idle(next_due - self._clock.now())
            if self.cfg.max_ticks is not None and self.ticks >= self.cfg.max_ticks:
                self.stop(f"{self.ticks} ticks done")
            elif self.cfg.duration_s is not None and self._clock.now() - started >= self.cfg.duration_s:
                self.stop(f"{self.cfg.duration_s:g} s done")

    def _clock_schedule(self, period: float) -> Iterator[float]:
        """``sync="clock"``: tick on a fixed grid of the monotonic clock, on whatever frames are newest.
        Yields when a tick is due; the value is when the following one is."""
        start = self._clock.now() + period
        index = -1
        while not self._stop.is_set():
            new_index, due = next_tick(start, period, self._clock.now(), index)
            if index >= 0:
                self.skipped_ticks += new_index - index - 1
            index = new_index
            if self._clock.wait(self._stop, max(0.0, due - self._clock.now())):
                return
            yield due + period

    def _frame_schedule(self, period: float) -> Iterator[float]:
        """``sync="frame"``: tick when the primary camera delivers the frame of the next tick time
        (``schedule.frame_tick``), or ``frame_wait_ms`` after that time if it does not (the tick
        then reports the missing frame). Yields when a tick is due; the value is when the next is."""
        src = next(iter(self.cameras.values()))
        first = src.newest()
        # The newest frame now may be a camera period old: anchor on it but tick first on the next.
        anchor = first.capture_time if first is not None else self._clock.now()
        slack, wait = 0.1 * period, self.cfg.frame_wait_ms / 1000.0
        index, fired_seq = 0, first.seq if first is not None else None
        while not self._stop.is_set():
            due = anchor + (index + 1) * period
            # No frame captured later than ``due - slack`` can have arrived before then: sleep till then.
            if self._clock.wait(self._stop, max(0.0, due - slack - self._clock.now())):
                return
            fired = None
            while not self._stop.is_set():
                frame = src.newest()
                if frame is not None and frame.seq != fired_seq:
                    fired = frame_tick(anchor, period, slack, index, frame.capture_time)
                    if fired is not None:
                        fired_seq = frame.seq
                        break
                if self._clock.now() >= due + wait or src.ended():
                    fired = index + 1  # the camera is late or gone: tick anyway, and say so
                    break
                self._clock.sleep(0.0005)
            if fired is None:
                return
            self.skipped_ticks += fired - index - 1
            index = fired
            yield anchor + (index + 1) * period

    def _tick(self) -> dict[str, Any]:
        self.surprise = None
        self._collect_late_run()
        slow_ms = self._collect_slow()
        frames, verdict = self._gather_frames()
        acquired = self._clock.now()
        capture = min((f.capture_time for f in frames.values()), default=acquired)
        deadline = capture + self.cfg.budget_ms / 1000.0
        # acquire: capture -> every camera's frame in hand (the cameras' own latency and the sync wait),
        # so e2e - acquire - engine is what the runtime itself costs.
        lat: dict[str, float] = {"acquire": (acquired - capture) * 1000.0}
        problem = verdict.problem
        ego_age = context_age = None
        stage_ms: dict[str, float] = dict(slow_ms or {})
        engine = "none"  # how the engine stood for this tick (tally.ENGINE_STATES)
        # A late run that finished while the frames were gathered: take it in now, or this tick's
        # submit would drop its outputs (state never committed, not counted in late_runs_committed).
        self._collect_late_run()
        if problem is None and self._worker is not None and self._worker.busy:
            busy_ms = (self._clock.now() - self._worker.started) * 1000.0
            problem = f"engine overrun: the previous run is still going after {busy_ms:.0f} ms"
            engine = "busy"
        if problem is None and self._ego is not None:
            problem, ego_age = self._read_ego(frames, capture)
        decoded, warning = None, None
        if problem is None:
            decoded, problem, warning, engine = self._run_model(frames, capture, deadline, lat, stage_ms)
            if self._slow is not None:
                context_age = self._slow.context_age_ms(capture)
        publish = self._clock.now()
        lat["e2e"] = (publish - capture) * 1000.0
        # Missed whatever is published: late, a fallback (engine busy) or a fault (health).
        missed = deadline_missed(engine, publish, deadline)
        late = engine == "pending"
        if problem is None and missed:  # finished, but not in time to be trusted as current
            late = True
            problem = f"late: published {lat['e2e']:.0f} ms after capture (budget {self.cfg.budget_ms:g} ms)"
        if decoded is not None and missed:  # decoded in this tick, so committed, but past its deadline
            self.late_runs_committed += 1
        stalest = max(((n, (publish - f.capture_time) * 1000.0) for n, f in frames.items()),
                      key=lambda item: item[1], default=None)
        self.health, event = next_health(self.health, self._health_cfg, fallback=problem, stalled=stalest,
                                         now=publish)
        if event:
            self.events.append(event)
        age = None
        reason = self.health.reason if self.health.faulted else problem
        if problem is not None or self.health.faulted:
            status = "fault" if self.health.faulted else "late" if late else "fallback"
            points, age = self._fallback_points(publish)
        else:
            status = "ok"
            points = decoded.points
        self.ticks += 1
        surprise, self.surprise = self.surprise, None
        self._account(lat, stage_ms, context_age if status == "ok" else None)
        trouble = {n: t for n, src in self.cameras.items() if (t := src.trouble())}
        record = {
            "schema": RECORD_SCHEMA,
            "tick": self.ticks - 1,
            "status": status,
            "reason": reason,
            "problem": problem,  # this tick's own reason: the same as reason except while faulted
            "deadline_missed": missed,
            "warning": warning if status == "ok" else None,  # published despite a limit (--limits warn)
            "event": event,
            "frame_id": {n: f.seq for n, f in frames.items()},
            "capture_time": round(capture, 6),
            "publish_time": round(publish, 6),
            "latency_ms": {k: round(v, 3) for k, v in lat.items()},
            # A bundle of stages: each stage's time in the run decoded here, and a slow run finished since.
            "stage_ms": {k: round(v, 3) for k, v in stage_ms.items()} if self.stage_times else None,
            "context_age_ms": None if context_age is None else round(context_age, 1),
            "sync_ms": round(verdict.spread_ms, 1),
            "ego_age_ms": None if ego_age is None else round(ego_age, 1),
            "camera_trouble": trouble or None,
            "fallback_age_ms": None if age is None else round(age * 1000.0, 1),
            "command": self.command_name,
            "mode": decoded.mode if status == "ok" else None,
            "score": round(decoded.score, 5) if status == "ok" else None,
            "dt": self._dt,
            "fields": COLUMNS,
            "trajectory": np.round(points.astype(np.float64), 3).tolist(),
            "surprise": None if surprise is None else round(surprise, 5),  # world model (world_model.py)
        }
        for annotate in self.annotators:
            annotate(record)
        self.tally.add(record)
        self._tap("on_tick", record, frames, self.last_ego)
        return record

    def _fallback_points(self, publish: float) -> tuple[np.ndarray, float | None]:
        """The fallback published at ``publish``: the last good trajectory shifted to now and slowing to a
        stop (standing still if there is none), in the columns of a model trajectory (its verdict does not
        matter: this is what is published whatever it says); and that trajectory's age in s."""
        age = None if self._last_good_time is None else publish - self._last_good_time
        shifted = fallback_trajectory(None if age is None else self._last_good, self._dt, age or 0.0, self._points,
                                      self.cfg.stop_horizon_s)
        return self._describe(shifted[None, None], None).points, age

    def _account(self, lat: dict[str, float], stage_ms: dict[str, float], context_age: float | None) -> None:
        """The tick's times into the summary's windows (a context's age only when the tick used it)."""
        for k, v in lat.items():
            self.times[k].append(v)
        for k, v in stage_ms.items():
            self.stage_times[k].append(v)
        if context_age is not None:
            self.context_ages.append(context_age)

    def _newest(self) -> tuple[dict[str, Frame | None], str | None]:
        """The newest frame of every camera, and why the run must end if a camera has ended."""
        frames, ended = {}, None
        for name, src in self.cameras.items():
            frames[name] = src.newest()
            end = src.ended()
            if end is not None and ended is None:
                ended = f"camera '{name}' {'lost' if end.error else 'ended'}: {end.reason}"
                if end.error:
                    self.failure = f"camera '{name}' ({src.uri}) lost: {end.reason}"
                self.stop(ended)
        return frames, ended

    def _gather_frames(self) -> tuple[dict[str, Frame], GroupVerdict]:
        """The newest frame of every camera, waiting (bounded) for cameras behind the group."""
        give_up = self._clock.now() + self.cfg.frame_wait_ms / 1000.0
        while True:
            newest, ended = self._newest()
            now = self._clock.now()
            verdict = judge_group({n: (f.seq, f.capture_time) if f else None for n, f in newest.items()},
                                  self._last_seq, now, self.cfg.sync_tolerance_ms, self.cfg.stall_ms)
            if ended is not None:  # the last line of the run says why it ends
                verdict = GroupVerdict(ended, (), verdict.spread_ms)
            if not verdict.waiting_on or now >= give_up or self._stop.is_set():
                break
            self._clock.sleep(0.0005)
        frames = {n: f for n, f in newest.items() if f is not None}
        if verdict.problem is not None and ended is None:
            for name in verdict.waiting_on:  # no new frame, or one too far behind the group
                self.dropped[name] += 1
            problem = verdict.problem
            for name, src in self.cameras.items():
                if f"'{name}'" in problem and (note := src.trouble()):
                    problem = f"{problem} ({note})"
                    break
            verdict = GroupVerdict(problem, verdict.waiting_on, verdict.spread_ms)
        return frames, verdict

    def _read_ego(self, frames: dict[str, Frame], capture: float) -> tuple[str | None, float | None]:
        """Feed the ego history from the vehicle-state input; (problem if stale, its age in ms)."""
        if isinstance(self.ego_input, FrameEgoInput):
            carried = next((f for f in frames.values() if f.ego is not None), None)
            if carried is not None:
                self.ego_input.push(carried.ego, carried.capture_time)
        # State a camera attaches to its frames is as old as those frames: judge it at their capture
        # time (how late the frames themselves are is the budget's business, not the ego input's).
        # Any other input is judged now: a bus gone quiet shows as its last message ageing.
        at = capture if isinstance(self.ego_input, FrameEgoInput) else self._clock.now()
        reading = self.ego_input.latest(at)
        self.last_ego = reading
        stale = ego_staleness(reading, at, self.cfg.ego_stale_ms)
        if stale is not None or reading is None:
            return stale or "no ego reading", None
        self._ego.update(min(reading.time, capture), reading.speed, reading.accel, reading.yaw_rate)
        return None, max(0.0, at - reading.time) * 1000.0

    def _run_model(self, frames: dict[str, Frame], capture: float, deadline: float, lat: dict[str, float],
                   stage_ms: dict[str, float]) -> tuple[DecodedTrajectory | None, str | None, str | None, str]:
        """Fill the inputs, run the engine until the deadline, decode: (trajectory if usable, problem,
        warning, engine state: "done", "pending" at the deadline, or "none" when it never started).
        Dual rate: start the slow stages if due, then run the fast path on the newest published context."""
        t = self._clock.now()
        for cam in self._pre.cameras:
            self._last_seq[cam.name] = frames[cam.name].seq
        slow = self._slow
        start_slow = slow is not None and slow.due(self.ticks)
        running = None
        try:  # host: the kernel's helper threads start converting; GPU: the frames go into pinned staging
            if self._device_tick is not None:
                self._device_tick.stage(frames)
            elif slow is None or start_slow or self._fast_reads_cameras:  # dual rate: only slow stages see frames
                running = self._pre.start(frames)
        except CameraError as exc:  # a malformed frame: this tick falls back, the run goes on
            lat["preprocess"] = (self._clock.now() - t) * 1000.0
            return None, str(exc), None, "none"
        # Meanwhile this thread fills the other inputs.
        if self._ego is not None:
            self._ego.fill(capture)
        self._draw_noise()
        self._apply_command()
        if running is not None:
            running.wait()
        lat["preprocess"] = (self._clock.now() - t) * 1000.0
        if slow is not None:
            if start_slow:
                self._slow_run = self._start_event("slow", self.ticks)
                slow.start(capture)
            problem = slow.problem(capture)
            if problem is not None:
                return None, problem, None, "none"
            slow.prepare_fast()
        self._flight_run = self._start_event("model" if slow is None else "fast", self.ticks)
        worker = self._worker
        worker.submit(self._engine_run)
        self._noise_drawn = False
        self._in_flight = capture
        if self._controls:
            self._v0_flight = self.backend.manifest.start_speed(self.backend.feed)
        if not worker.wait(deadline - self._clock.now()):
            busy_ms = (self._clock.now() - worker.started) * 1000.0
            return None, (f"late: engine still running {busy_ms:.0f} ms in at the deadline "
                          f"(budget {self.cfg.budget_ms:g} ms)"), None, "pending"
        decoded, problem, warning = self._collect(lat)
        stage_ms.update(self._stage_ms())
        return decoded, problem, warning, "done"

    def _draw_noise(self) -> None:
        """The next run's noise inputs (one draw per run, so a seed gives the same sequence whichever
        ticks fall back); done between ticks when the engine is idle, else just before the run."""
        if self._noise_drawn or (self._worker is not None and self._worker.busy):
            return
        for buf, std in self._noise:
            self._rng.standard_normal(out=buf, dtype=np.float32)
            if std != 1.0:
                buf *= std
        self._noise_drawn = True

    def _copy_state(self, out: dict[str, np.ndarray]) -> None:
        for dst, src in self._states:
            np.copyto(self.backend.feed(dst), out[src])

    def _collect_slow(self) -> dict[str, float] | None:
        """Dual rate: publish the slow stages' run if it finished (their times, else None)."""
        if self._slow is None:
            return None
        errors = self._slow.errors
        ms = self._slow.collect()
        if self._slow.errors > errors:  # it failed: nothing published, no state committed
            self._tap("on_outputs", self._slow_run, {}, False, self._slow.last_error)
        self._slow_finished(ms)
        return ms

    def _slow_finished(self, ms: dict[str, float] | None) -> None:
        """A slow run was collected (``ms``: its stage times; None if it failed or none finished):
        its outputs to the taps, its prediction and observation to the world model."""
        if ms is None:
            return
        values = self._slow.published.store.values
        self._slow_published = self._slow_run
        self._tap("on_outputs", self._slow_run, values, None)
        self.surprise = self.world.observe(values)

    # ---- taps ------------------------------------------------------------------------------------
    def _tap(self, method: str, *args: Any) -> None:
        """Call every tap; one that raises is dropped with a one-line warning, the loop goes on."""
        for tap in list(self.taps):
            try:
                getattr(tap, method)(*args)
            except Exception as exc:
                self.taps.remove(tap)
                if self.cfg.log is not None:
                    self.cfg.log(f"warning: {type(tap).__name__} stopped: {type(exc).__name__}: {exc}")

    def _start_event(self, kind: str, tick: int) -> int:
        """Number a run about to start and show its inputs to the taps (the engine is idle here)."""
        run = self._runs
        self._runs += 1
        if not self.taps:
            return run
        reads = self._reads.get(kind)
        if reads is None:
            reads = self._reads[kind] = self._run_reads(kind)
        inputs, states, device_cameras = reads
        context: dict[str, np.ndarray] = {}
        if kind == "fast":
            store = self._slow.published.store.values
            context = {n: store[n] for s in self._slow.fast for n in s.inputs if n in store}
        event = RunEvent(run, kind, tick, inputs, states, self._slow_published if kind == "fast" else None,
                         device_cameras)
        self._tap("on_run", event, self.backend.feed, context)
        return run

    def _run_reads(self, kind: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """What a run of ``kind`` shows its taps (fixed for the run): (model inputs, state inputs, camera inputs
        made on the GPU)."""
        m = self.backend.manifest
        if kind == "model":
            reads = m.inputs
        else:  # what the stages read, a repeat's initial sample (the noise) included
            stages = self._slow.slow if kind == "slow" else self._slow.fast
            names = stage_reads(stages)
            reads = tuple(t for t in m.inputs if t.name in names)
        on_device = self._device_tick is not None  # camera inputs preprocessed on the GPU: raw frames instead
        inputs = tuple(t.name for t in reads if t.role != "state" and not (on_device and t.role == "camera"))
        # A GPU backend keeps state on the device and feed() would make the host copy the next upload: only
        # host backends show their state (a GPU recording starts from the manifest's initial state).
        states = tuple(t.name for t in reads if t.role == "state" and self._host_state)
        return inputs, states, tuple(t.name for t in reads if on_device and t.role == "camera")

    def _world_values_available(self, backend: Backend) -> set[str]:
        """The tensors a run hands back: the model's outputs, and a bundle of stages' intermediates."""
        names = {t.name for t in backend.manifest.outputs}
        if isinstance(backend, StagedBackend):
            names |= {t.name for t in backend.manifest.intermediates}
        return names

    def _collect_late_run(self) -> None:
        """Take in a run that finished after its tick was published (state and last good only)."""
        if self._in_flight is not None and self._worker is not None and not self._worker.busy:
            lat: dict[str, float] = {}
            decoded, _problem, _ = self._collect(lat)
            self.times["engine"].append(lat["engine"])  # its line is long published; its time still counts
            if decoded is not None:
                self.late_runs_committed += 1

    def _collect(self, lat: dict[str, float]) -> tuple[DecodedTrajectory | None, str | None, str | None]:
        """Decode the finished run; commit state and the last good trajectory if it is usable (per
        ``--limits``: ``limits.judge_decoded``). Returns (trajectory if usable, problem, warning)."""
        worker, flight = self._worker, self._in_flight
        self._in_flight = None
        lat["engine"] = (worker.finished - worker.started) * 1000.0
        if worker.error is not None:
            error = describe_error(worker.error)
            self._tap("on_outputs", self._flight_run, {}, False, error)  # replay must not use it either
            return None, f"engine error: {error}", None
        t = self._clock.now()
        out = worker.outputs
        decoded = self._decode(out)
        judged = judge_decoded(decoded, self.cfg.limits)
        if self.taps or self.world.active:
            values = self._run_values(out)
            self._tap("on_outputs", self._flight_run, values, judged.usable)
            if self._slow is None:  # dual rate: the slow stages predict, _slow_finished observes
                self.surprise = self.world.observe(values)
        if judged.usable:
            self._commit_state(out)
            np.copyto(self._last_good, decoded.points[:, :3])
            self._last_good_time = flight
        lat["decode"] = (self._clock.now() - t) * 1000.0
        return (decoded if judged.usable else None), judged.problem, judged.warning

    def _run_values(self, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A finished run's outputs, with a bundle of stages' intermediates (the world model's observed
        latent may be one)."""
        if isinstance(self.backend, StagedBackend) and self._slow is None:
            return {**self.backend.decision_values(), **out}
        return out

    @property
    def schedule(self) -> dict[str, Any] | None:
        """How the stages run: None for one graph; else the stages, and for dual rate the slow ones, their
        rate and the context's max age."""
        if not self.stage_times:
            return None
        if self._slow is None:
            return {"stages": list(self.stage_times), "single_rate": True}
        s = self._slow
        return {"stages": list(self.stage_times), "single_rate": False, "slow": [x.name for x in s.slow],
                "fast": [x.name for x in s.fast], "rate": s.rate, "max_age_ms": s.max_age_ms,
                "slow_runs": s.published.runs, "slow_errors": s.errors, "slow_warmup_ms": self.slow_warmup_ms}

    @property
    def data_path(self) -> str:
        """One line for the start-up banner: where preprocessing and decoding run."""
        if self._device_tick is not None:
            return ("GPU (raw frames uploaded; preprocess, engine and decode on the device; trajectory downloaded; "
                    f"CUDA graph of the tick {self._device_tick.graph_note})")
        return "host (preprocess and decode on the CPU)"

    def summary(self) -> dict[str, Any]:
        """Counts and per-stage latency statistics (trtexec definitions, milliseconds).

        ``status`` has every status (0 included); ``deadline_misses`` counts every tick whose engine
        result was not in hand by its deadline, whatever was published (``tally.py``), and
        ``deadline_misses_by_status`` what was published instead; ``fallback_reasons`` counts each
        tick that was not ok by the kind of its own reason (a faulted tick's too), most frequent
        first; ``limit_warnings`` the ticks published despite a limit (``limits="warn"``), by kind;
        ``last_reasons`` the newest full reason text of each kind (the numbers a kind leaves out);
        ``late_runs_committed`` the runs committed to state whose result missed its deadline.
        """
        return {
            "ticks": self.ticks,
            **self.tally.as_dict(),
            "limits": self.cfg.limits,
            "late_runs_committed": self.late_runs_committed,
            "skipped_ticks": self.skipped_ticks,
            "dropped_frames": dict(self.dropped),
            "health_events": list(self.events),
            "latency_ms": {s: summarize(w.values()) for s, w in self.times.items() if len(w)},
            "stage_latency_ms": {s: summarize(w.values()) for s, w in self.stage_times.items() if len(w)},
            "schedule": self.schedule,
            "context_age_ms": summarize(self.context_ages.values()) if len(self.context_ages) else None,
            "latency_window_ticks": min(self.ticks, self.cfg.stats_window),
            "warmup_engine_ms": summarize(self.warmup_engine_ms) if self.warmup_engine_ms else None,
            "budget_ms": self.cfg.budget_ms,
            "rate_hz": self.cfg.rate_hz,
            "ended": self.end_reason,
            "failure": self.failure,
        }

    def _close_wait_s(self) -> float:
        """How long ``close`` waits for a run in flight: the budget, or twice the slowest warm-up run when that is
        longer (an engine slower than its budget is still finishing a run at the end: a process that exits under
        it can abort in the engine's own threads), never more than ``CLOSE_WAIT_MAX_S`` (a hung engine)."""
        slowest = max(self.warmup_engine_ms, default=0.0) / 1000.0
        return min(max(self.cfg.budget_ms / 1000.0, 2.0 * slowest), CLOSE_WAIT_MAX_S)

    def close(self, keep_backend: bool = False) -> None:
        """Release cameras, ego input and engine (``keep_backend``: not the engine, which the caller runs
        again, e.g. vla-sim's next scenario); never blocks on a hung engine for long."""
        for src in self.cameras.values():
            src.close()
        self.ego_input.close()
        wait = self._close_wait_s()
        if self._slow is not None and not self._slow.close(timeout=wait):
            return  # a slow stage is stuck in a run: as below
        if self._worker is not None and not self._worker.close(timeout=wait):
            return  # the engine is stuck in a run: closing it under the run could crash; exit reclaims it
        if self._device_tick is not None:
            self._device_tick.close()
        if not keep_backend:
            self.backend.close()
