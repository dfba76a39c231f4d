"""Replay a recording through an engine, deterministically, and compare every output with the recording.

The recorded engine runs are replayed in the order they started, synchronously, on their recorded
inputs (camera images as the engine got them, ego, command tokens, noise): no clock, no threads, so
two replays of a file are identical. What was timing in the live run is data here:

- a dual-rate schedule's slow runs (vision, context) run when the recording says they started, and
  each fast run reads the context of the slow run the recording says it read (replayed in this
  file; the recorded context when that run began before a snippet did);
- recurrent state starts from the recorded state (else the manifest's initial value) and is
  committed after each run whose trajectory is usable by the recorded limits, as the loop does;
- a run whose engine raised live (a GPU fault, say) is not replayed: the loop used nothing of it
  (no trajectory, state or context), and re-running it would commit what the loop never did;
- with raw frames recorded (``--record-raw``), the preprocessing is replayed too: the frames go
  through the runtime's own preprocessing and must give the recorded camera inputs.

Each output of each run, and the decoded trajectory the loop would publish, is compared with the
recording by openpilot's rule (``compare.py``). A bundle whose contract differs from the recording's
(inputs, outputs) is refused with one line: the log was recorded with another model.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla.kernels.decode import TrajectoryDecoder, integrate_controls

from ..backends.base import Backend
from ..backends.staged import StagedBackend, StageStore
from ..errors import VlaError
from ..loop.limits import check_mode, decoder_limits, judge_decoded
from ..manifest import Manifest
from ..record.recorder import manifest_sha256
from ..stages import split, with_rate
from .compare import OutputDiff, Tolerances
from .reader import Recording, RunRecord

# The pseudo-output: the best mode's poses (x, y, yaw) as the loop publishes them. The decode's derived columns
# (speed, acceleration, curvature) are differences of these, which magnify rounding by 1/dt^2: not compared.
DECODED = "trajectory (decoded)"


def contract_problem(recorded: Mapping[str, Any], bundle: Manifest) -> str | None:
    """Why ``bundle`` cannot replay a log recorded with the manifest ``recorded`` (None: it can). The
    precision, the weights' rounding and the stage split may differ; names, roles, dtypes and shapes
    of the inputs and outputs may not."""

    def sig(entries: Any) -> dict[str, tuple]:
        return {t["name"]: (t["role"], t["dtype"], tuple(t["shape"])) for t in entries}

    rec_name = (recorded.get("model") or {}).get("name", "?")
    for kind in ("inputs", "outputs"):
        a, b = sig(recorded.get(kind, [])), sig(bundle.raw.get(kind, []))
        if a != b:
            diff = sorted(set(a.items()) ^ set(b.items()))
            first = diff[0][0] if diff else "?"
            return (f"manifest mismatch: the log was recorded with model '{rec_name}', the bundle is "
                    f"'{bundle.name}'; their {kind} differ (first: '{first}')")
    return None


@dataclass
class ReplayReport:
    log: str
    engine: str
    bundle_identity: dict[str, str]
    recorded_identity: dict[str, str]
    diffs: dict[str, OutputDiff]
    runs: int = 0
    replayed: int = 0
    skipped: int = 0  # runs whose inputs are not all in the file (a snippet's first)
    failed_live: int = 0  # runs whose engine raised live: not replayed, nothing committed (as live)
    compared: int = 0
    preprocess: OutputDiff | None = None
    seconds: float = 0.0
    truncated: str | None = None
    outputs: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # run -> replayed (keep_outputs)

    @property
    def regressions(self) -> list[OutputDiff]:
        bad = [d for d in self.diffs.values() if d.bad_values]
        if self.preprocess is not None and self.preprocess.bad_values:
            bad.append(self.preprocess)
        return bad

    @property
    def ok(self) -> bool:
        return not self.regressions

    def first_regression(self) -> OutputDiff | None:
        """The output whose first difference comes earliest (run order)."""
        bad = [d for d in self.regressions if d.first_bad]
        return min(bad, key=lambda d: d.first_bad) if bad else None

    def as_dict(self) -> dict[str, Any]:
        first = self.first_regression()
        return {"log": self.log, "engine": self.engine, "ok": self.ok, "runs": self.runs, "replayed": self.replayed,
                "skipped": self.skipped, "failed_live": self.failed_live, "compared": self.compared,
                "seconds": round(self.seconds, 3),
                "truncated": self.truncated, "same_bundle": self.same_bundle,
                "first_regression": None if first is None else {"output": first.name, "run": first.first_bad[0],
                                                                 "tick": first.first_bad[1]},
                "outputs": [d.as_dict() for d in self.diffs.values()],
                "preprocess": None if self.preprocess is None else self.preprocess.as_dict()}

    @property
    def same_bundle(self) -> bool:
        return self.bundle_identity.get("manifest_sha256") == self.recorded_identity.get("manifest_sha256")


def open_for_replay(engine: str, threads: int | None = None) -> Backend:
    """A bundle opened the way replay runs it: ONNX Runtime on the CPU, whatever the log was recorded on
    (a GPU recording is checked against the reference arithmetic)."""
    from ..engine import open_engine

    return open_engine(engine, threads=threads, backend="ort", device="cpu")


class Replayer:
    """One engine, opened once, that replays any number of recordings of its model (fleet replay's actor)."""

    def __init__(self, backend: Backend, engine: str = "", tolerances: Tolerances | None = None,
                 keep_outputs: bool = False) -> None:
        self.backend, self.engine = backend, engine
        self.keep_outputs = keep_outputs  # the report holds every run's outputs (for --update)
        self.tolerances = tolerances or Tolerances()
        m = backend.manifest
        self._m = m
        self._traj = m.outputs_with("trajectory")[0]
        scores = m.outputs_with("score")
        self._score = scores[0].name if scores else None
        self._states = [(t.name, t.detail["from_output"]) for t in m.inputs_with("state")]
        self.identity = {"model": m.name, "model_hash": m.model_hash or "", "manifest_sha256": manifest_sha256(m.raw),
                         "precision": m.precision, "backend": backend.name}

    def replay(self, rec: Recording) -> ReplayReport:
        problem = contract_problem(rec.manifest_raw, self._m)
        if problem is not None:
            raise VlaError(f"{rec.path}: {problem}")
        t0 = time.perf_counter()
        settings = rec.run_settings
        m, backend = self._m, self.backend
        dt, points = float(self._traj.detail["dt"]), self._traj.shape[2]
        mode = check_mode(settings.get("limits", "enforce"))
        limits = decoder_limits(mode, *(float(settings.get(k, d)) for k, d in
                                        (("max_curvature", 0.3), ("max_accel", 8.0), ("max_speed", 60.0))))
        # Two decoders: a decode's points live in its decoder until the next call.
        decoder, rec_decoder = TrajectoryDecoder(dt, points, **limits), TrajectoryDecoder(dt, points, **limits)
        outputs_by_name = {t["name"]: t for t in m.raw.get("outputs", [])}
        diffs: dict[str, OutputDiff] = {}

        def diff(name: str) -> OutputDiff:
            if name not in diffs:
                base = name if name in outputs_by_name else self._traj.name
                diffs[name] = OutputDiff(name, self.tolerances.resolve(base, outputs_by_name, m.precision))
            return diffs[name]

        report = ReplayReport(str(rec.path), self.engine, self.identity, rec.bundle, diffs, runs=len(rec.runs),
                              truncated=rec.truncated)
        for t in m.inputs_with("state"):  # a fresh start: the manifest's initial state
            backend.feed(t.name)[...] = t.detail["initial"]
        slow, fast = (), ()
        if isinstance(backend, StagedBackend):
            slow, fast = split(with_rate(backend.stages, _rate(settings.get("stage_rate"))))
        contexts: dict[int, dict[str, np.ndarray]] = {}
        pre = self._preprocessor(rec)
        for run in rec.runs:
            if run.error is not None:  # live, the engine raised: no outputs, no state, no context were used
                report.failed_live += 1
                continue
            raw_missing = run.device_cameras and run.tick not in rec.raw_frames
            if not run.complete or raw_missing or (run.kind == "fast" and run.context_run not in contexts
                                                   and not run.context):
                report.skipped += 1
                continue
            for name, value in run.states.items():
                np.copyto(backend.feed(name), value)
            for name, value in run.inputs.items():
                np.copyto(backend.feed(name), value)
            if pre is not None:
                report.preprocess = self._replay_preprocess(pre, rec, run, report.preprocess)
            out = self._execute(run, slow, fast, contexts)
            report.replayed += 1
            if run.kind == "slow":
                contexts[run.run] = {n: np.array(v, copy=True) for n, v in out.items()}
                backend.commit_state(slow)  # type: ignore[attr-defined]
            else:
                v0 = m.start_speed(backend.feed) if m.controls else 0.0
                decoded = decoder(self._poses(out[self._traj.name], v0, dt),
                                  out[self._score] if self._score else None)
                usable = judge_decoded(decoded, mode).usable
                if run.outputs and self._traj.name in run.outputs:
                    rec_decoded = rec_decoder(self._poses(run.outputs[self._traj.name], v0, dt),
                                              run.outputs.get(self._score) if self._score else None)
                    diff(DECODED).add(run.run, run.tick, rec_decoded.points[:, :3], decoded.points[:, :3])
                if usable:
                    self._commit(run, fast, out)
            if run.outputs:
                report.compared += 1
                for name, value in run.outputs.items():
                    if name in out:
                        diff(name).add(run.run, run.tick, value, out[name])
            if self.keep_outputs:
                report.outputs[run.run] = {n: np.array(v, copy=True) for n, v in out.items()}
        report.seconds = time.perf_counter() - t0
        return report

    # ---- pieces ------------------------------------------------------------------------------------
    def _execute(self, run: RunRecord, slow: tuple, fast: tuple,
                 contexts: dict[int, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        backend = self.backend
        if run.kind == "model":
            out = backend.run()
            if isinstance(backend, StagedBackend):
                return {**backend.decision_values(), **out}
            return out
        if not isinstance(backend, StagedBackend):
            raise VlaError(f"run {run.run} is a dual-rate '{run.kind}' run, but the bundle is one graph: replay with "
                           "the bundle of stages it was recorded with (or the same model exported in stages)")
        store = StageStore()
        if run.kind == "slow":
            backend.prepare(slow, None)
            backend.execute(slow, store)
            return store.values
        ctx = StageStore()
        for name, value in (contexts.get(run.context_run) or run.context).items():  # type: ignore[arg-type]
            ctx.put(name, value)
        backend.prepare(fast, ctx)
        backend.execute(fast, store)
        return backend.model_outputs(store)

    def _poses(self, traj: np.ndarray, v0: float, dt: float) -> np.ndarray:
        if not self._m.controls:
            return traj
        poses = np.empty((*traj.shape[:-1], 4), dtype=np.float32)
        integrate_controls(traj, v0, dt, out=poses[0])
        return poses

    def _commit(self, run: RunRecord, fast: tuple, out: Mapping[str, np.ndarray]) -> None:
        backend = self.backend
        if run.kind == "fast":
            backend.commit_state(fast)  # type: ignore[attr-defined]
        elif hasattr(backend, "commit_state"):
            backend.commit_state()  # type: ignore[attr-defined]
        else:
            for dst, src in self._states:
                np.copyto(backend.feed(dst), out[src])

    def _preprocessor(self, rec: Recording) -> Any:
        """The runtime's own preprocessing, when the recording holds raw frames."""
        if not rec.raw_frames:
            return None
        from ..inputs.preprocess import RigPreprocessor

        return RigPreprocessor.for_backend(self.backend)

    def _replay_preprocess(self, pre: Any, rec: Recording, run: RunRecord,
                           acc: OutputDiff | None) -> OutputDiff | None:
        """Preprocess the tick's raw frames into the camera inputs: compared with what the engine got where
        that was recorded (``--record-raw``), and the only source where the GPU made them."""
        from ..inputs.sources.base import Frame

        frames = rec.raw_frames.get(run.tick)
        cams = [t.name for t in self._m.inputs_with("camera") if t.name in run.input_names]
        made = [t.name for t in self._m.inputs_with("camera") if t.name in run.device_cameras]
        if not frames or not (cams or made):
            return acc
        recorded = {n: np.array(self.backend.feed(n), copy=True) for n in cams}
        planar = ("nv12", "i420")  # (H*3/2, W) arrays; the others are (H, W[, C])
        fr = {c: Frame(c, data, pix, data.shape[1], data.shape[0] * 2 // 3 if pix in planar else data.shape[0], 0, 0.0)
              for c, (data, pix) in frames.items()}
        pre.start(fr).wait()
        if cams:
            acc = acc or OutputDiff("preprocess", 0.0)
            for n in cams:
                acc.add(run.run, run.tick, recorded[n], self.backend.feed(n))
        return acc


def _rate(value: Any) -> str | int | None:
    if value in (None, "", "null"):
        return None
    return value if isinstance(value, (str, int)) else None
