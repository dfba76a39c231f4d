"""Shadow mode (``vla-run --shadow``): the pure decisions, then real loops (tiny bundle, synthetic cameras) with a
real candidate: the same bundle agrees to the millimetre, one with other weights does not, a contract that differs is
refused in one line, a dual-rate primary is shadowed by the candidate's stages run as the primary's (the same
bundle agrees exactly) or by its whole model, a candidate with no idle
time to run in never runs, a failing candidate never stops the loop, and the command line end to end."""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from stage_models import manifest as stage_manifest
from stage_models import write_bundle

import vla.runtime.engine as engine_module
import vla.runtime.loop.shadow as shadow_module
from conftest import VLA_RUN, assert_one_line_error, paced, run_cli
from vla.runtime.engine import open_engine
from vla.runtime.errors import VlaError
from vla.runtime.inputs.sources import open_cameras
from vla.runtime.loop.runner import RunConfig, Runner
from vla.runtime.loop.shadow import Shadow, ade_fde, contract_problem, expected_ms, should_run
from vla.runtime.manifest import parse_manifest


# ---- pure decisions ---------------------------------------------------------------------------------------------
def test_should_run_only_when_the_run_and_margin_end_before_the_next_tick():
    assert should_run(10.0, 10.1, 80.0, 5.0, False)  # 85 ms of 100
    assert should_run(10.0, 10.1, 95.0, 5.0, False)  # exactly on the due time
    assert not should_run(10.0, 10.1, 96.0, 5.0, False)
    assert not should_run(10.0, 10.1, 1.0, 5.0, True)  # the primary's engine is busy
    assert not should_run(10.0, None, 1.0, 5.0, False)  # no next tick known
    assert not should_run(10.0, 11.0, math.inf, 5.0, False)  # never measured
    assert not should_run(10.2, 10.1, 0.0, 0.0, False)  # already late


def test_expected_ms_is_the_p99_of_recent_runs_or_the_baseline():
    assert expected_ms([], 7.0) == 7.0
    assert expected_ms([3.0, 9.0, 4.0], 1.0) == 9.0  # under 100 runs: the slowest
    runs = [float(i) for i in range(1, 201)]  # trtexec's p99 of 200 values leaves out the slowest one
    assert expected_ms(runs, 0.0) == 199.0


def test_ade_fde_on_x_y_only():
    a = np.zeros((4, 6))
    b = a.copy()
    b[:, 0], b[:, 1] = 3.0, 4.0  # 5 m apart everywhere
    b[:, 2:] = 99.0  # yaw, speed, ... are not compared
    assert ade_fde(a, b) == (5.0, 5.0)
    b[:3, :2] = 0.0  # only the last point apart
    assert ade_fde(a, b) == pytest.approx((1.25, 5.0))
    with pytest.raises(ValueError, match="same T"):
        ade_fde(a, b[:3])


def _m(edit=None):
    raw = stage_manifest()
    if edit:
        edit(raw)
    return parse_manifest(raw)


def _inp(raw, name):
    return next(t for t in raw["inputs"] if t["name"] == name)


def test_contract_problem_names_what_differs():
    primary = _m()
    assert contract_problem(primary, _m()) is None

    def bigger_camera(raw):
        _inp(raw, "images")["shape"] = [1, 1, 3, 16, 64]
        _inp(raw, "images")["camera"]["width"] = 64

    assert "input 'images' is uint8 [1, 1, 3, 16, 64] in the candidate but uint8 [1, 1, 3, 16, 32]" in \
        contract_problem(primary, _m(bigger_camera))

    def noisier(raw):
        _inp(raw, "noise")["noise"]["std"] = 0.5

    assert contract_problem(primary, _m(noisier)) == ("input 'noise': its noise 'std' is 0.5 in the candidate but "
                                                      "0.01 in the primary")

    def other_ego(raw):
        _inp(raw, "ego")["ego"]["fields"] = ["x", "y", "yaw", "v", "yaw_rate", "a"]

    assert "input 'ego': its ego 'fields'" in contract_problem(primary, _m(other_ego))

    def extra_input(raw):
        raw["inputs"].append({"name": "radar", "dtype": "float32", "role": "aux", "shape": [1, 4]})
        raw["stages"][1]["inputs"].append("radar")

    assert "reads input 'radar', which the primary does not have" in contract_problem(primary, _m(extra_input))

    def finer(raw):
        raw["outputs"][0]["trajectory"]["dt"] = 0.05
        raw["outputs"][0]["trajectory"]["horizon_s"] = 0.4

    assert "8 points every 0.05 s, the primary's 8 every 0.1 s" in contract_problem(primary, _m(finer))


def test_contract_allows_fewer_inputs_and_its_own_state():
    """A candidate reads a subset of the primary's inputs and keeps recurrent state the primary does not have."""
    def own_state(raw):
        raw["inputs"] = [t for t in raw["inputs"] if t["name"] != "ego"]
        raw["inputs"].append({"name": "mem", "dtype": "float32", "role": "state", "shape": [1, 2],
                              "state": {"from_output": "new_mem", "initial": 0.0}})
        raw["outputs"].append({"name": "new_mem", "dtype": "float32", "role": "state", "shape": [1, 2],
                               "state": {"to_input": "mem"}})
        for s in raw["stages"]:
            s["inputs"] = [n for n in s["inputs"] if n != "ego"]
        raw["stages"][1]["inputs"].append("mem")
        raw["stages"][1]["outputs"].append("new_mem")

    candidate = _m(own_state)
    assert candidate.inputs_with("state") and not candidate.inputs_with("ego")
    assert contract_problem(_m(), candidate) is None


def _controls(raw):
    traj = raw["outputs"][0]
    traj["shape"][-1] = 2
    traj["trajectory"]["fields"] = ["accel", "curvature"]
    _inp(raw, "noise")["shape"][-1] = 2


def test_contract_refuses_controls_against_poses():
    poses = _m(lambda raw: _inp(raw, "noise")["shape"].__setitem__(-1, 2))  # the same inputs as the candidate's
    controls = _m(_controls)
    assert contract_problem(poses, controls) == ("the candidate's trajectory holds controls (accel, curvature), "
                                                 "the primary's poses")
    assert contract_problem(controls, poses) == ("the candidate's trajectory holds poses, the primary's controls "
                                                 "(accel, curvature)")
    assert contract_problem(controls, _m(_controls)) is None


# ---- real loops ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with every weight matrix changed by 10 % noise: a "fine-tuned" candidate that really
    disagrees (cheaper than exporting another seed, and the contract stays the same)."""
    out = tmp_path_factory.mktemp("shadow") / "tuned"
    shutil.copytree(tiny_bundle, out)
    model = onnx.load(str(out / "model.onnx"))
    rng = np.random.default_rng(1)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim >= 2:
            tuned = (w * (1.0 + 0.1 * rng.standard_normal(w.shape))).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(tuned, init.name))
    onnx.save(model, str(out / "model.onnx"))
    return out


@pytest.fixture(scope="module")
def stages_bundle(tmp_path_factory):
    return write_bundle(tmp_path_factory.mktemp("shadow") / "two", steps=3)


def _loop(bundle, candidate, ticks: int, **cfg) -> tuple[list[dict], Shadow, Runner]:
    backend = open_engine(str(bundle), backend="ort")
    cams = open_cameras(["synthetic://"], backend.manifest.camera_names, backend.manifest.camera_sizes)
    runner = Runner(backend, cams, RunConfig(max_ticks=ticks, **{"budget_ms": 1000.0, "warmup_runs": 3, **cfg}))
    shadow = None
    try:
        shadow = candidate(runner) if callable(candidate) else Shadow.open(str(candidate), runner)
        records = list(runner)
    finally:
        runner.close()
        if shadow is not None:
            shadow.close()
    return records, shadow, runner


def _compared(records: list[dict]) -> list[dict]:
    """The comparisons published, up to the first tick the candidate skipped: after a skip its recurrent state
    has not seen that tick, so even the same model may disagree."""
    out = []
    for r in records:
        s = r["shadow"]
        if s["counts"]["skipped"] or s["counts"]["errors"]:
            break
        if s["ade_m"] is not None:
            out.append(s)
    return out


def test_the_same_bundle_agrees_to_the_millimetre(tiny_bundle):
    records, shadow, runner = _loop(tiny_bundle, tiny_bundle, 10)
    assert runner.taps == [shadow] and runner.annotators == [shadow.annotate]
    assert all(r["status"] == "ok" for r in records)
    compared = _compared(records)
    assert len(compared) >= 5, [r["shadow"] for r in records]
    for s in compared:
        assert s["ade_m"] <= 1e-3 and s["fde_m"] <= 2e-3, s
        assert s["run_ms"] > 0
    # Each comparison is for an earlier tick (it runs after its tick was published), each tick at most once.
    ticks = [(r["tick"], r["shadow"]["tick"]) for r in records if r["shadow"]["tick"] is not None]
    assert all(done < at for at, done in ticks)
    assert len({d for _, d in ticks}) == len(ticks)
    # Counts per record add up to the totals (the last tick's run finishes after the last record).
    assert sum(r["shadow"]["counts"]["runs"] for r in records) <= shadow.totals["runs"] <= len(records)
    # Its own recurrent state was committed on its usable runs.
    assert shadow.backend.feed("memory_valid")[0].any()
    assert f"shadow: {shadow.totals['runs']} runs" in shadow.summary()


def test_another_model_disagrees(tiny_bundle, tuned_bundle):
    records, shadow, _ = _loop(tiny_bundle, tuned_bundle, 8)
    compared = [r["shadow"] for r in records if r["shadow"]["ade_m"] is not None]
    assert len(compared) >= 3, [r["shadow"] for r in records]
    assert all(s["ade_m"] > 0.01 and s["fde_m"] > 0 for s in compared), compared
    assert "ADE p50" in shadow.summary()


def test_a_candidate_with_another_contract_is_refused_in_one_line(tiny_bundle, stages_bundle):
    backend = open_engine(str(tiny_bundle), backend="ort")
    cams = open_cameras(["synthetic://"], backend.manifest.camera_names, backend.manifest.camera_sizes)
    runner = Runner(backend, cams, RunConfig(max_ticks=1))
    try:
        with pytest.raises(VlaError) as err:
            Shadow.open(str(stages_bundle), runner)
    finally:
        runner.close()
    assert "input 'images' is uint8 [1, 1, 3, 16, 32] in the candidate" in str(err.value)
    assert "\n" not in str(err.value)
    assert runner.taps == [] and runner.annotators == []


def test_a_dual_rate_primary_is_shadowed_on_the_tick_s_noise_and_the_slow_run_s_frames(stages_bundle):
    """The test stages' trajectory depends on the noise only: the candidate must get this tick's noise (which
    only the fast run reads) and the slow run's frames, and then agrees exactly."""
    records, shadow, runner = _loop(stages_bundle, stages_bundle, 12, stage_rate=3, context_max_age_ms=1000.0)
    assert not runner.summary()["schedule"]["single_rate"]
    compared = [r["shadow"] for r in records if r["shadow"]["ade_m"] is not None]
    assert len(compared) >= 5, [r["shadow"] for r in records]
    assert all(s["ade_m"] == 0.0 and s["fde_m"] == 0.0 for s in compared), compared
    assert "dual-rate primary" in shadow.describe()


def test_a_staged_candidate_runs_as_the_dual_rate_primary_and_the_same_bundle_agrees_exactly(tiny_v2_bundle,
                                                                                            monkeypatch):
    """Reference 2's context reads the ego history as the slow run saw it, its expert as the tick sees it. Run as
    the primary runs (slow stages on the slow run's inputs, once per slow run; fast stages on the tick's), the
    same bundle agrees to the published millimetre from tick 0; as one whole model per tick (the context remade
    from the tick's ego history) it does not, which is why the staged way exists."""
    records, shadow, _ = _loop(tiny_v2_bundle, tiny_v2_bundle, 15, context_max_age_ms=1000.0)
    assert "the candidate's stages as the primary's" in shadow.describe()
    compared = [r["shadow"] for r in records if r["shadow"]["ade_m"] is not None]
    assert len(compared) >= 8 and compared[0]["tick"] <= 1, [r["shadow"] for r in records]
    assert all(s["ade_m"] == 0.0 and s["fde_m"] == 0.0 for s in compared), compared

    monkeypatch.setattr(shadow_module, "staged_split", lambda *_: None)
    records, shadow, _ = _loop(tiny_v2_bundle, tiny_v2_bundle, 15, context_max_age_ms=1000.0)
    assert "whole model once per tick" in shadow.describe()
    whole = [r["shadow"]["ade_m"] for r in records if r["shadow"]["ade_m"] is not None]
    assert whole and max(whole) > 0.0, whole


def test_a_dual_rate_primary_s_slow_stages_are_waited_for_never_run_alongside(stages_bundle):
    """Slow stages taking 60 ms are still running when each tick is published: the candidate waits for them on
    its own thread and runs after them (never alongside), instead of giving the tick up."""
    seen: list[bool] = []

    def wait_for_slow(runner):
        slow = runner.backend.backends["vision"]
        slow.run = paced(slow.run, 60.0)
        shadow = Shadow.open(str(stages_bundle), runner)
        real = shadow.backend.execute  # a staged candidate runs its stages as the primary's

        def execute(stages, store):
            seen.append(runner._slow.worker.busy)  # the primary's slow stages, as the candidate's stages start
            return real(stages, store)

        shadow.backend.execute = execute  # after its warm-up
        return shadow

    records, shadow, _ = _loop(stages_bundle, wait_for_slow, 10, context_max_age_ms=1000.0)
    assert shadow.totals["runs"] >= 3, (shadow.totals, dict(shadow.skips))
    assert seen and not any(seen)
    assert all(r["shadow"]["ade_m"] in (None, 0.0) for r in records)


def test_a_candidate_that_cannot_fit_the_idle_time_never_runs(tiny_bundle, monkeypatch):
    """A candidate taking 80 ms (warm-up median, doubled: 160 ms) never fits a 100 ms tick: skipped, never started,
    so it never competes with the primary."""
    real = engine_module.open_engine

    def slow_candidate(*args, **kwargs):
        backend = real(*args, **kwargs)
        backend.run = paced(backend.run, 80.0)
        return backend

    monkeypatch.setattr(engine_module, "open_engine", slow_candidate)
    records, shadow, _ = _loop(tiny_bundle, lambda runner: Shadow.open(str(tiny_bundle), runner), 6)
    assert shadow.totals["runs"] == 0 and shadow.totals["errors"] == 0
    assert shadow.totals["skipped"] == sum(r["status"] == "ok" for r in records) >= 4
    assert set(shadow.skips) == {"too little time"}
    assert all(r["shadow"]["ade_m"] is None for r in records)
    assert shadow.overlaps == 0
    assert "skipped (no idle time: too little time" in shadow.summary()


def test_a_run_that_overruns_its_plan_is_counted_and_planned_for(tiny_bundle):
    """Warm-up says ~1 ms; the first real run takes 150 ms, past the next tick's due time: counted as an overlap,
    and from then on the candidate is planned at 150 ms, which no 100 ms tick fits."""
    def slow_after_warm_up(runner):
        shadow = Shadow.open(str(tiny_bundle), runner)
        shadow.backend.run = paced(shadow.backend.run, 150.0)
        return shadow

    records, shadow, _ = _loop(tiny_bundle, slow_after_warm_up, 6)
    assert shadow.totals["runs"] == 1 and shadow.overlaps >= 1
    assert shadow.skips["too little time"] >= 2
    assert f"{shadow.overlaps} runs ended after the next tick was due" in shadow.summary()
    assert sum(r["shadow"]["counts"]["runs"] for r in records) == 1  # reported once, at a later record


def test_a_failing_candidate_is_counted_and_the_loop_goes_on(tiny_bundle):
    logged: list[str] = []

    def failing(runner):
        shadow = Shadow.open(str(tiny_bundle), runner)

        def broken():
            raise RuntimeError("candidate exploded")

        shadow.backend.run = broken  # after its warm-up
        return shadow

    records, shadow, _ = _loop(tiny_bundle, failing, 6, log=logged.append)
    assert all(r["status"] == "ok" for r in records)
    assert sum(r["shadow"]["counts"]["errors"] for r in records) >= 3
    assert shadow.totals["runs"] == 0
    assert any("shadow candidate: RuntimeError: candidate exploded" in line for line in logged)
    assert "last error: RuntimeError: candidate exploded" in shadow.summary()


def test_close_does_not_wait_for_a_hung_run(tiny_bundle):
    backend = open_engine(str(tiny_bundle), backend="ort")
    cams = open_cameras(["synthetic://"], backend.manifest.camera_names, backend.manifest.camera_sizes)
    runner = Runner(backend, cams, RunConfig(max_ticks=1))
    try:
        shadow = Shadow.open(str(tiny_bundle), runner)
        shadow.worker.submit(lambda: (time.sleep(3.0), {})[1])
        t0 = time.monotonic()
        shadow.close(timeout=0.2)
        assert time.monotonic() - t0 < 2.0
    finally:
        runner.close()


# ---- the command line -------------------------------------------------------------------------------------------
def test_vla_run_shadow_end_to_end(tiny_bundle):
    proc = run_cli(VLA_RUN, "--engine", tiny_bundle, "--camera", "synthetic://", "--frames", "20", "--budget-ms",
                   "1000", "--shadow", tiny_bundle)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == 20 and all("shadow" in r for r in records)
    assert all(set(r["shadow"]) == {"tick", "ade_m", "fde_m", "run_ms", "counts"} for r in records)
    assert any(r["shadow"]["ade_m"] is not None for r in records)
    assert "vla-run: shadow: candidate vla-reference" in proc.stderr
    assert "\nshadow: " in proc.stderr and " runs, " in proc.stderr


def test_vla_run_shadow_with_another_contract_is_one_line(tiny_bundle, stages_bundle):
    proc = run_cli(VLA_RUN, "--engine", tiny_bundle, "--camera", "synthetic://", "--frames", "2", "--shadow",
                   stages_bundle)
    assert_one_line_error(proc, "--shadow", "input 'images'")
