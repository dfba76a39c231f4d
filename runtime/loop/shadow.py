"""Shadow mode (``vla-run --shadow CANDIDATE``): a candidate bundle runs on the primary's exact inputs in the
primary's idle time, and every record says how far its trajectory is from the one the primary published.

Why: a new bundle can be judged on the road, on the inputs the deployed one really saw, without ever
driving: the disagreement (ADE between the two trajectories, metres) goes into each record, Prometheus
(``vla_shadow_disagreement_m``) and the recorder's ``disagreement>X`` trigger.

The primary must never wait for it. So, per tick, on the loop thread and never blocking:

- ``on_run`` (a run is about to start): copy the inputs it reads into a snapshot; recurrent state is not
  copied, the candidate keeps its own (committed whenever its trajectory is usable);
- ``on_tick`` (the record is published): if the primary published its own trajectory (``ok``), ask the pure
  ``should_run`` whether the candidate's run (the p99 of its recent runs, ``expected_ms``) plus a margin ends
  before the next tick is due (``Runner.next_due``) with the primary's engine idle; if so hand the snapshot to
  the shadow's own ``EngineWorker``, else count a skip ("no idle time");
- the shadow's thread first waits for the primary's slow stages if they are still running (dual rate: they
  often end a few ms after the tick is published) and skips if the run then no longer fits; then it copies the
  snapshot into the candidate's inputs, runs it, decodes its trajectory with the primary's decoder settings
  (limits, controls integrated from the primary's start speed), compares it with the points the primary
  published for that tick (``ade_fde``, on the published 1 mm grid, so the same bundle gives exactly 0) and
  commits its state when usable. All of that is timed as the run: it is what has to fit in the idle time;
- ``annotate`` (each record, before it is published): take in a finished run, add ``record["shadow"]``.

Snapshots are double-buffered: the running job reads one while ``on_run`` fills the other, so no buffer is
shared between threads. The candidate runs on ONNX Runtime on the CPU, one thread unless told otherwise.

Dual rate (a primary whose slow stages run on their own worker): the candidate sees what the primary's
decision saw. Its inputs are the fast run's, and those only the slow stages read as the slow run whose
context that fast run used (``RunEvent.context_run``) saw them (its frames).
- A candidate that is a bundle of stages split the same way (its slow stages read only what the primary's
  slow run read) runs like the primary: its slow stages on that slow run's inputs (an input both read, the
  ego history, as the slow run saw it), once per slow run (kept for the next ticks on the same context, its
  state committed then), and its fast stages on this tick's. The same bundle then agrees exactly.
- Any other candidate runs its *whole* model once per tick, an input both read being the fast run's (the
  newest): the comparison then includes the primary's context age, so even the same model disagrees a little.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vla.kernels.decode import DecodedTrajectory, TrajectoryDecoder, integrate_controls

from ..backends.staged import StagedBackend, StageStore
from ..errors import VlaError, describe_error
from ..manifest import Manifest
from ..stages import Stage, split, stage_reads, with_rate
from .engine_worker import EngineWorker
from .limits import check_mode, decoder_limits, judge_decoded
from .stats import Window, median, percentile, summarize
from .tap import RunEvent

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..inputs.ego_input import EgoReading
    from ..inputs.sources.base import Frame
    from .runner import Runner

MARGIN_MS = 5.0  # a run must end this long before the next tick is due (thread wake-ups, run-time jitter)
RECENT_RUNS = 50  # run times expected_ms looks at: recent enough to follow a machine that got busier
RECENT_S = 30.0  # ... and no older than this
WARMUP_RUNS = 8  # the first allocates and is not timed
BASELINE_FACTOR = 2.0  # with no recent run, plan twice the warm-up's median (one warm-up outlier is no measure)
SLOW_SNAPSHOTS = 4  # slow runs' inputs kept: the newest started, the published one, and one a job may read


# ---- pure decisions --------------------------------------------------------------------------------------------
def should_run(now: float, next_due: float | None, expected_ms: float, margin_ms: float, primary_busy: bool) -> bool:
    """Whether a candidate run started ``now`` ends ``margin_ms`` before the next tick is due (clock seconds),
    taking ``expected_ms``; never while the primary's engine is busy, nor without a known next tick."""
    if primary_busy or next_due is None or not math.isfinite(expected_ms):
        return False
    return now + (expected_ms + margin_ms) / 1000.0 <= next_due


def expected_ms(recent: Sequence[float], baseline: float) -> float:
    """What a run is planned to take: the p99 of the recent run times (their max under 100 runs), so one slow
    run in a hundred may overrun, no more; ``baseline`` when none is recent (``Shadow`` forgets runs after
    ``RECENT_S``, so one slow run, when no run follows it, bars the candidate for a while, not for good)."""
    if not recent:
        return baseline
    return float(percentile(sorted(recent), 99))


def ade_fde(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Average and final displacement (metres) between two trajectories of the same waypoints: rows of
    (x, y, ...), compared on x, y only."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0] or min(a.shape[1], b.shape[1]) < 2 or not len(a):
        raise ValueError(f"ade_fde: need two [T, >=2] trajectories of the same T, got {a.shape} and {b.shape}")
    d = np.hypot(a[:, 0] - b[:, 0], a[:, 1] - b[:, 1])
    return float(d.mean()), float(d[-1])


def _spec_text(dtype: str, shape: Sequence[int]) -> str:
    return f"{dtype} {list(shape)}"


def contract_problem(primary: Manifest, candidate: Manifest) -> str | None:
    """Why ``candidate`` cannot shadow ``primary`` (one line), or None: every input it reads (state aside,
    which is its own) must be one of the primary's with the same dtype, shape, role and role details (it
    gets the primary's buffers: same preprocessing, ego fields, noise scale, vocabulary), and its trajectory
    must be of the same kind (poses or controls), step and length, so the two compare point by point."""
    for t in candidate.inputs:
        if t.role == "state":
            continue
        p = next((x for x in primary.inputs if x.name == t.name), None)
        if p is None:
            return (f"the candidate reads input '{t.name}', which the primary does not have "
                    f"(its inputs: {', '.join(x.name for x in primary.inputs)})")
        if p.role != t.role:
            return f"input '{t.name}' is a {t.role} input in the candidate but a {p.role} input in the primary"
        if (p.dtype, p.shape) != (t.dtype, t.shape):
            return (f"input '{t.name}' is {_spec_text(t.dtype, t.shape)} in the candidate but "
                    f"{_spec_text(p.dtype, p.shape)} in the primary")
        if p.detail != t.detail:
            keys = sorted(k for k in {*p.detail, *t.detail} if p.detail.get(k) != t.detail.get(k))
            k = keys[0]
            return (f"input '{t.name}': its {t.role} '{k}' is {t.detail.get(k)!r} in the candidate but "
                    f"{p.detail.get(k)!r} in the primary")
    if candidate.inputs_with("command") or candidate.inputs_with("text"):
        if candidate.vocabulary != primary.vocabulary:
            return ("the candidate's command vocabulary differs from the primary's (the same tokens would mean "
                    "other commands)")
        if candidate.tokenizer != primary.tokenizer:
            return "the candidate's text tokenizer differs from the primary's"
    tc, tp = candidate.outputs_with("trajectory")[0], primary.outputs_with("trajectory")[0]
    if candidate.controls != primary.controls:
        kind = {True: "controls (accel, curvature)", False: "poses"}
        return f"the candidate's trajectory holds {kind[candidate.controls]}, the primary's {kind[primary.controls]}"
    if float(tc.detail["dt"]) != float(tp.detail["dt"]) or tc.shape[2] != tp.shape[2]:
        return (f"the candidate's trajectory is {tc.shape[2]} points every {tc.detail['dt']:g} s, the primary's "
                f"{tp.shape[2]} every {tp.detail['dt']:g} s")
    return None


def staged_split(candidate: Backend, primary_slow_reads: set[str] | None,
                 stage_rate: str | int | None) -> tuple[tuple[Stage, ...], tuple[Stage, ...]] | None:
    """The candidate's (slow, fast) stages when it can run like a dual-rate primary: it is a bundle of stages
    whose rate (``stage_rate``, the primary's setting) splits it, and its slow stages read no model input the
    primary's slow run did not read (``primary_slow_reads``; None: the primary is not dual rate). Else None."""
    if primary_slow_reads is None or not isinstance(candidate, StagedBackend):
        return None
    slow, fast = split(with_rate(candidate.stages, stage_rate))
    if not slow or not fast:
        return None
    model_inputs = {t.name for t in candidate.manifest.inputs if t.role != "state"}
    return (slow, fast) if stage_reads(slow) & model_inputs <= primary_slow_reads else None


# ---- the tap ------------------------------------------------------------------------------------------------------
@dataclass
class _Snapshot:
    """One tick's inputs for the candidate (a fast/model run's; a dual-rate one adds a slow run's)."""

    arrays: dict[str, np.ndarray]
    tick: int = -2  # the tick whose run filled it (-2: none)
    v0: float = 0.0  # the primary's start speed for that run (controls trajectories)
    context_run: int | None = None  # dual rate: the slow run whose snapshot supplies the rest
    names: tuple[str, ...] = ()  # the names this snapshot holds for the job (the rest come from the slow run's)


@dataclass(frozen=True)
class Result:
    """A finished candidate job: for which tick, its disagreement, how long its work took (inputs, run, decode,
    comparison: what has to fit the idle time), and what went wrong (engine error or a non-finite trajectory;
    then no ADE)."""

    tick: int
    ade_m: float | None
    fde_m: float | None
    run_ms: float
    error: str | None = None
    skipped: bool = False  # it waited for the primary's slow stages, and then the run no longer fitted


class Shadow:
    """A ``LoopTap`` and a record annotator; ``open`` makes one and registers it with the runner."""

    def __init__(self, backend: Backend, runner: Runner, label: str, margin_ms: float = MARGIN_MS) -> None:
        self.backend, self.runner, self.label, self.margin_ms = backend, runner, label, margin_ms
        self._clock = getattr(runner, "_clock", None)
        cm, pm = backend.manifest, runner.backend.manifest
        self._needed = tuple(t.name for t in cm.inputs if t.role != "state")
        for t in cm.inputs_with("state"):
            backend.feed(t.name)[...] = t.detail["initial"]
        self._commit: Callable[[], None] | None = getattr(backend, "commit_state", None)
        self._states = [(t.name, t.detail["from_output"]) for t in cm.inputs_with("state")]
        traj = cm.outputs_with("trajectory")[0]
        scores = cm.outputs_with("score")
        self._traj_name, self._score_name = traj.name, (scores[0].name if scores else None)
        cfg = runner.cfg
        self._mode = check_mode(cfg.limits)
        dt, points = float(traj.detail["dt"]), traj.shape[2]
        self._decoder = TrajectoryDecoder(dt, points, **decoder_limits(self._mode, cfg.max_curvature, cfg.max_accel,
                                                                        cfg.max_speed))
        self._dt = dt
        self._poses = np.empty((1, traj.shape[1], points, 4), dtype=np.float32) if cm.controls else None
        self._primary_controls = pm.controls
        # Snapshots: two for the tick's run (double-buffered against a running job), a few for slow runs.
        self._sets = [_Snapshot({n: np.zeros(cm.input(n).shape, cm.input(n).dtype) for n in self._needed})
                      for _ in range(2)]
        self._w = 0  # the snapshot on_run fills; a job takes it and the other becomes this
        self._slow: dict[int, dict[str, np.ndarray]] = {}
        self._pinned: int | None = None  # the slow snapshot a running job reads
        primary_slow = getattr(runner, "_slow", None)
        slow_reads = None if primary_slow is None else set(runner._run_reads("slow")[0])
        self._staged = staged_split(backend, slow_reads, cfg.stage_rate)  # (slow, fast) or None: whole model
        self._context = StageStore()  # staged: the candidate's context, made from slow run ``_context_run``
        self._context_run: int | None = None
        self.worker = EngineWorker(name="vla-shadow")  # wall clock: its runs are real, whatever the loop's clock
        self._job_started = False
        self._result: Result | None = None  # written by the job, read once it is done
        self._recent: deque[tuple[float, float]] = deque(maxlen=RECENT_RUNS)  # (monotonic time, ms)
        self.baseline_ms = math.inf  # set by the warm-up
        self.warmup_ms: list[float] = []
        self._new: list[Result] = []  # finished since the last record
        self._counts = {"runs": 0, "skipped": 0, "errors": 0}  # since the last record
        self.totals = {"runs": 0, "skipped": 0, "errors": 0}
        self.skips: Counter[str] = Counter()  # why, for the summary
        self.overlaps = 0  # runs that ended after the next tick was due (the plan was wrong: they shared its time)
        self._ends_by = 0.0  # when the running job must end: the next tick's due time, on the wall clock
        self.ades = Window(cfg.stats_window)
        self.run_ms = Window(cfg.stats_window)  # every finished run's job time, for the summary
        self.last_error: str | None = None
        self._closed = False

    # ---- opening ----------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, bundle: str, runner: Runner, threads: int | None = None, margin_ms: float = MARGIN_MS) -> Shadow:
        """Open ``bundle`` on ONNX Runtime (CPU, ``threads`` or 1, so it never takes the primary's cores),
        check it can read the primary's inputs, warm it up and time it, and register it with ``runner``."""
        from ..engine import open_engine

        if getattr(runner, "_device_tick", None) is not None:
            raise VlaError(f"--shadow {bundle}: the primary runs its data path on the GPU, so its inputs never "
                           "reach the host for the candidate; run the primary with --device cpu to shadow it")
        backend = open_engine(str(bundle), threads=threads or 1, backend="ort", device="cpu")
        shadow = None
        try:
            problem = contract_problem(runner.backend.manifest, backend.manifest)
            if problem is not None:
                raise VlaError(f"--shadow {bundle}: {problem}; it cannot shadow {runner.backend.manifest.name}")
            shadow = cls(backend, runner, str(bundle), margin_ms)
            shadow._warm_up()
        except BaseException:
            if shadow is not None:
                shadow.worker.close(timeout=1.0)
            backend.close()
            raise
        runner.taps.append(shadow)
        runner.annotators.append(shadow.annotate)
        return shadow

    def _warm_up(self) -> None:
        """A few runs on the zeroed inputs, on its own thread (allocation, kernel choice, per-thread set-up), the
        decode included and no state committed. All but the first are timed: twice their median is what a run is
        planned to take until real runs are measured."""
        for n in range(WARMUP_RUNS):
            self.worker.submit(self._warm_up_job)
            self.worker.wait(None)
            if self.worker.error is not None:
                exc = self.worker.error
                raise VlaError(f"--shadow {self.label}: the candidate failed its warm-up run: "
                               f"{describe_error(exc, 200)}")
            if n:  # the first run allocates: not what a tick's run takes
                self.warmup_ms.append((self.worker.finished - self.worker.started) * 1000.0)
        self.baseline_ms = BASELINE_FACTOR * median(sorted(self.warmup_ms))

    def planned_ms(self) -> float:
        """``expected_ms`` of the runs of the last ``RECENT_S`` seconds."""
        horizon = time.monotonic() - RECENT_S
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        return expected_ms([ms for _, ms in self._recent], self.baseline_ms)

    def _warm_up_job(self) -> dict[str, np.ndarray]:
        out = self.backend.run()
        self._decode(out, 0.0)
        return {}

    # ---- LoopTap --------------------------------------------------------------------------------------------------
    def on_run(self, event: RunEvent, read: Callable[[str], np.ndarray], context: Mapping[str, np.ndarray]) -> None:
        """Copy what the candidate needs of the inputs this run reads (the views are valid only now)."""
        if self._closed:
            return
        self._take_finished()
        if event.kind == "slow":
            names = [n for n in self._needed if n in event.inputs]
            if names:
                self._slow_snapshot(event.run, names, read)
            return
        snap = self._sets[self._w]
        slow = self._slow.get(event.context_run) if event.kind == "fast" and event.context_run is not None else None
        if event.kind == "fast" and slow is None and any(n not in event.inputs for n in self._needed):
            snap.tick = -2  # the context's inputs were never seen (cannot happen once open): not this tick
            return
        # The fast run's own inputs, and anything the slow run did not read (the noise a repeat stage starts
        # from is the loop's, drawn for this run); the rest is the slow run's.
        names = tuple(n for n in self._needed if slow is None or n in event.inputs or n not in slow)
        for n in names:
            np.copyto(snap.arrays[n], read(n))
        snap.names, snap.tick, snap.context_run = names, event.tick, event.context_run if slow is not None else None
        snap.v0 = self.runner.backend.manifest.start_speed(read) if self._primary_controls else 0.0

    def _slow_snapshot(self, run: int, names: list[str], read: Callable[[str], np.ndarray]) -> None:
        """Keep slow run ``run``'s inputs, reusing the oldest kept snapshot's arrays no job reads."""
        arrays = None
        if len(self._slow) >= SLOW_SNAPSHOTS:
            oldest = min(k for k in self._slow if k != self._pinned)
            arrays = self._slow.pop(oldest)
        if arrays is None or set(arrays) != set(names):
            cm = self.backend.manifest
            arrays = {n: np.empty(cm.input(n).shape, cm.input(n).dtype) for n in names}
        for n in names:
            np.copyto(arrays[n], read(n))
        self._slow[run] = arrays

    def on_outputs(self, run: int, outputs: Mapping[str, np.ndarray], usable: bool | None,
                   error: str | None = None) -> None:
        """Not needed: the candidate compares with what the primary published, in ``on_tick``."""

    def on_command(self, text: str, name: str) -> None:
        """Not needed: a command is in the inputs the next ``on_run`` copies."""

    def on_tick(self, record: dict[str, Any], frames: Mapping[str, Frame], ego: EgoReading | None) -> None:
        """The primary published: start the candidate on this tick's inputs if its run fits the idle time."""
        if self._closed or record.get("status") != "ok":
            return  # no trajectory of the primary's own to compare with
        self._take_finished()
        snap = self._sets[self._w]
        if snap.tick != record["tick"]:
            return  # this tick's run was not seen (the shadow joined late): nothing to compare
        now = self._clock.now() if self._clock is not None else time.monotonic()
        mine, engine, slow = self.worker.busy, self._engine_busy(), self._slow_worker_busy()
        planned = self.planned_ms()
        # Dual rate: slow stages started this tick often end a few ms after it is published; the job waits for
        # them on its own thread (when their worker runs on the wall clock) instead of giving up the tick.
        waitable = slow is not None and slow.clock.run_s is None
        if not should_run(now, self.runner.next_due, planned, self.margin_ms,
                          mine or engine or (slow is not None and not waitable)):
            self._skip("candidate still running" if mine else "primary busy" if engine or slow else "too little time")
            return
        snap.tick = -2  # taken: the next on_run fills the other one
        slow_inputs = self._slow.get(snap.context_run) if snap.context_run is not None else None
        self._pinned = snap.context_run
        points = record["trajectory"]  # the published list: never changed after publishing
        self._result = None
        self._ends_by = time.monotonic() + (self.runner.next_due - now)  # (the loop's clock may be simulated)
        ends_by, tick = self._ends_by, record["tick"]
        self.worker.submit(lambda: self._job(snap, slow_inputs, points, tick, slow, ends_by, planned))
        self._job_started = True
        self._w ^= 1

    def _engine_busy(self) -> bool:
        """The primary's engine is running (a late run still going)."""
        worker = getattr(self.runner, "_worker", None)
        return worker is not None and worker.busy

    def _slow_worker_busy(self) -> EngineWorker | None:
        """Dual rate: the primary's slow stages' worker while it is running (it needs the cores), else None."""
        slow = getattr(self.runner, "_slow", None)
        return slow.worker if slow is not None and slow.worker.busy else None

    # ---- the job (the shadow's thread) --------------------------------------------------------------------------
    def _job(self, snap: _Snapshot, slow: dict[str, np.ndarray] | None, points: list, tick: int,
             wait_for: EngineWorker | None, ends_by: float, planned: float) -> dict:
        """Wait for the primary's slow stages if they are still running (and give up if the run then no longer
        fits), then: candidate inputs <- snapshot, run, decode, compare, commit its state when usable."""
        if wait_for is not None:
            left = ends_by - (planned + self.margin_ms) / 1000.0 - time.monotonic()
            if left <= 0 or not wait_for.wait(left) or not should_run(time.monotonic(), ends_by, planned,
                                                                       self.margin_ms, False):
                self._result = Result(tick, None, None, 0.0, skipped=True)
                return {}
        t0 = time.perf_counter()
        self._result = Result(tick, None, None, 0.0, "no result")  # until the run below gets further
        staged = self._staged is not None and slow is not None
        if staged:
            out = self._run_staged(snap, slow)  # type: ignore[arg-type]
        else:
            self._feed(snap, slow, slow_first=False)
            out = self.backend.run()
        decoded = self._decode(out, snap.v0)
        judged = judge_decoded(decoded, self._mode)
        error = None
        ade = fde = None
        if judged.usable or decoded.only_limits:  # finite: the disagreement means something
            mine = np.round(decoded.points.astype(np.float64), 3)  # on the grid the primary's points are published
            ade, fde = ade_fde(mine, np.asarray(points, dtype=np.float64))
        else:
            error = f"unusable trajectory: {judged.problem}"
        if judged.usable:
            self._commit_state(out, staged)
        self._result = Result(tick, ade, fde, (time.perf_counter() - t0) * 1000.0, error)
        return {}

    def _feed(self, snap: _Snapshot, slow: dict[str, np.ndarray] | None, slow_first: bool) -> None:
        """The candidate's inputs: the tick's snapshot, and the slow run's for the rest; with ``slow_first`` every
        input the slow run read is its value (its stages are about to run), else the tick's where both read it."""
        feed = self.backend.feed
        for n in snap.names:
            if not (slow_first and slow is not None and n in slow):
                np.copyto(feed(n), snap.arrays[n])
        if slow is not None:
            for n in self._needed:
                if (slow_first and n in slow) or n not in snap.names:
                    np.copyto(feed(n), slow[n])

    def _run_staged(self, snap: _Snapshot, slow: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a staged candidate as the primary ran: its slow stages on the slow run's inputs (once per slow
        run, their state committed as the loop does when it publishes a context), its fast stages on the tick's."""
        backend: StagedBackend = self.backend  # type: ignore[assignment]
        cslow, cfast = self._staged  # type: ignore[misc]
        if self._context_run != snap.context_run:
            self._context_run = None  # until made: a failed run leaves no context behind
            self._feed(snap, slow, slow_first=True)
            backend.prepare(cslow, None)
            backend.execute(cslow, self._context)
            backend.commit_state(cslow)
            self._context_run = snap.context_run
        self._feed(snap, slow, slow_first=False)
        backend.prepare(cfast, self._context)
        store = StageStore()
        backend.execute(cfast, store)
        return backend.model_outputs(store)

    def _decode(self, out: Mapping[str, np.ndarray], v0: float) -> DecodedTrajectory:
        traj = out[self._traj_name]
        if self._poses is not None:
            integrate_controls(traj, v0, self._dt, out=self._poses[0])
            traj = self._poses
        return self._decoder(traj, out[self._score_name] if self._score_name else None)

    def _commit_state(self, out: Mapping[str, np.ndarray], staged: bool = False) -> None:
        if staged:  # the fast stages' (the slow stages' was committed when they ran)
            self.backend.commit_state(self._staged[1])  # type: ignore[attr-defined,index]
        elif self._commit is not None:
            self._commit()
        else:
            for dst, src in self._states:
                np.copyto(self.backend.feed(dst), out[src])

    # ---- results ------------------------------------------------------------------------------------------------
    def _take_finished(self) -> None:
        """Take in a finished job (loop thread; never waits)."""
        if not self._job_started or self.worker.busy:
            return
        self._job_started = False
        self._pinned = None
        exc, result = self.worker.error, self._result
        if result is not None and result.skipped:
            self._skip("primary busy")  # its slow stages did not end in time
            return
        self.overlaps += self.worker.finished > self._ends_by
        if exc is not None or result is None:
            run_ms = (self.worker.finished - self.worker.started) * 1000.0
            text = describe_error(exc) if exc is not None else "no result"
            result = Result(-1 if result is None else result.tick, None, None, run_ms, text)
        self.run_ms.append(result.run_ms)
        self._recent.append((time.monotonic(), result.run_ms))
        if result.error is not None:
            self._count("errors")
            if self.last_error is None and self.runner.cfg.log is not None:
                self.runner.cfg.log(f"warning: shadow candidate: {result.error}")
            self.last_error = result.error
        else:
            self._count("runs")
            self.ades.append(result.ade_m)  # type: ignore[arg-type]
        self._new.append(result)

    def _skip(self, why: str) -> None:
        self._count("skipped")
        self.skips[why] += 1

    def _count(self, what: str) -> None:
        self._counts[what] += 1
        self.totals[what] += 1

    def annotate(self, record: dict[str, Any]) -> None:
        """``record["shadow"]``: the newest comparison finished since the last record (None fields when there is
        none: the candidate skips ticks without idle time, and reports a tick's run at a later record), and the
        runs, skips and errors since the last record. Never raises into the loop."""
        try:
            if not self._closed:
                self._take_finished()
            done = next((r for r in reversed(self._new) if r.ade_m is not None), None)
            record["shadow"] = {
                "tick": None if done is None else done.tick,
                "ade_m": None if done is None else round(done.ade_m, 4),  # type: ignore[arg-type]
                "fde_m": None if done is None or done.fde_m is None else round(done.fde_m, 4),
                "run_ms": None if done is None else round(done.run_ms, 3),
                "counts": dict(self._counts),
            }
            self._new.clear()
            self._counts = dict.fromkeys(self._counts, 0)
        except Exception as exc:  # a bug here must not stop the loop: say it once, carry on without
            record["shadow"] = None
            if self.last_error is None and self.runner.cfg.log is not None:
                self.runner.cfg.log(f"warning: shadow annotation failed: {type(exc).__name__}: {exc}")
            self.last_error = f"{type(exc).__name__}: {exc}"

    # ---- lines for people -------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """The start-up banner's line."""
        w = sorted(self.warmup_ms)
        dual = getattr(self.runner, "_slow", None) is not None
        return (f"shadow: candidate {self.backend.manifest.name} ({self.label}) on {self.backend.describe()}; "
                f"run p50 {percentile(w, 50):.1f} ms, p99 {percentile(w, 99):.1f} ms (warm-up); runs only when the "
                f"engine is idle and its p99 run + {self.margin_ms:g} ms ends before the next tick"
                + ("" if not dual else "; dual-rate primary: the candidate's stages as the primary's" if self._staged
                   else "; dual-rate primary: the candidate's whole model once per tick"))

    def summary(self) -> str:
        """The exit summary's line."""
        t = self.totals
        ades = summarize(self.ades.values())
        runs = sorted(self.run_ms.values())
        why = ", ".join(f"{k} {n}" for k, n in self.skips.most_common())
        line = (f"shadow: {t['runs']} runs, {t['skipped']} skipped (no idle time{': ' + why if why else ''}), "
                f"{t['errors']} errors; ADE "
                + (f"p50 {ades['median']:.3f} m, p99 {ades['p99']:.3f} m, max {ades['max']:.3f} m"
                   if ades["count"] else "-")
                + (f"; run p50 {percentile(runs, 50):.1f} ms, p99 {percentile(runs, 99):.1f} ms" if runs else ""))
        line += f"; {self.overlaps} runs ended after the next tick was due"
        return line + (f"; last error: {self.last_error}" if t["errors"] and self.last_error else "")

    def close(self, timeout: float = 0.5) -> None:
        """Stop its thread and close the candidate; a run still going after ``timeout`` s is left to the process
        exit (closing an engine under a run could crash)."""
        if self._closed:
            return
        self._closed = True
        finished = self.worker.close(timeout=timeout)
        self._take_finished()  # the last tick's run, for the summary
        if finished:
            self.backend.close()
