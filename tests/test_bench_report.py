"""vla-bench reports: the numbers printed are the ones trtexec would give for the same samples.

Results are built from known sample lists (1..1000 ms: median 500.5, p90 900, p99 991, p99.9 1000
by trtexec's float32 percentile) so every figure checked here is known exactly.
"""

from __future__ import annotations

import copy
import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest

from vla.runtime.bench import report
from vla.runtime.bench.result import FIGURES, SCHEMA
from vla.runtime.errors import VlaError
from vla.runtime.loop.stats import summarize


def make_result(scale: float = 1.0, budget: float | None = 997, interrupted: bool = False,
                environment: dict | None = None, **overrides) -> dict:
    """An engine-mode result for e2e = 1..1000 ms (shuffled run order), compute = e2e / 2, preprocess 0.25."""
    e2e = [float(v) for v in range(1, 1001)]
    random.Random(0).shuffle(e2e)
    samples = {"preprocess": [0.25] * 1000, "compute": [v / 2 for v in e2e], "e2e": e2e}
    samples = {k: [scale * v for v in vs] for k, vs in samples.items()}
    misses = sum(v > budget for v in samples["e2e"]) if budget is not None else 0
    result = {
        "schema": SCHEMA, "mode": "engine", "engine": "bundles/reference",
        "backend": "onnxruntime 1.32.0 CPUExecutionProvider, 2 threads",
        "settings": {"iterations": 1000, "duration_s": None, "warmup_s": 2.0, "budget_ms": budget, "shapes": None,
                     "cuda_graph": None, "spin_wait": None, "threads": 2, "rate_hz": None, "cameras": None},
        "environment": environment if environment is not None else {"describe": "AMD EPYC, 2 cores, Linux 6.18"},
        "warnings": ["clocks are not fixed: governor is schedutil"],
        "stages": {k: summarize(vs) for k, vs in samples.items()},
        "samples": samples,
        "throughput_qps": 2.0 / scale,
        "deadline": {"budget_ms": budget, "misses": misses, "rate": misses / 1000} if budget is not None else None,
        "wall_s": 500.0 * scale, "interrupted": interrupted, "started_at": "2026-11-26T10:00:00+00:00",
    }
    result.update(overrides)
    return result


def row(text: str, stage: str, sep: str | None = None) -> list[str]:
    """The cells of the table row for ``stage`` (whitespace-separated, or split on '|' for Markdown)."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(sep)] if sep else line.split()
        if cells and cells[0] == stage:
            return cells
    raise AssertionError(f"no row for {stage!r} in:\n{text}")


def header_index(text: str, sep: str | None = None) -> dict[str, int]:
    line = next(ln for ln in text.splitlines() if ln.strip().strip("|").strip().startswith("stage"))
    cells = [c.strip() for c in line.strip().strip("|").split(sep)] if sep else line.replace("cv %", "cv%").split()
    return {c.replace("cv %", "cv%"): i for i, c in enumerate(cells)}


# --- table ---------------------------------------------------------------------------------------------

def test_table_shows_trtexec_figures_for_known_data():
    text = report.format_table(make_result())
    cols = header_index(text)
    e2e, compute = row(text, "e2e"), row(text, "compute")
    assert e2e[cols["median"]] == "500.500"
    assert e2e[cols["p90"]] == "900.000"
    assert e2e[cols["p99"]] == "991.000"  # trtexec's float32 index: sorted[990], not sorted[989]
    assert e2e[cols["p99.9"]] == "1000.000"
    assert e2e[cols["min"]] == "1.000" and e2e[cols["max"]] == "1000.000"
    assert e2e[cols["cv%"]] == "57.68" and e2e[cols["count"]] == "1000"
    assert compute[cols["median"]] == "250.250" and compute[cols["p99"]] == "495.500"
    assert "median and percentiles as trtexec computes them (percentile p = sorted[max(N-1-int((1-p/100)*N),0)]" \
        in text


def test_table_rows_follow_pipeline_order_and_omit_absent_stages():
    r = make_result()
    r["stages"] = dict(reversed(r["stages"].items()))  # the table, not the dict, decides the order
    r["stages"]["h2d"] = summarize([])  # {"count": 0}: nothing measured, no row
    text = report.format_table(r)
    first = [ln.split()[0] for ln in text.splitlines() if ln.split()]
    stages = [s for s in first if s in ("preprocess", "h2d", "compute", "d2h", "decode", "overhead", "e2e")]
    assert stages == ["preprocess", "compute", "e2e"]


def test_header_names_what_ran_where_and_warnings():
    r = make_result()
    lines = report.format_table(r).splitlines()
    assert "engine" in lines[0] and "bundles/reference" in lines[0]
    assert any(ln.startswith("backend: onnxruntime 1.32.0") for ln in lines)
    assert any(ln.startswith("settings:") and "threads=2" in ln and "cuda_graph" not in ln for ln in lines)
    assert "machine: AMD EPYC, 2 cores, Linux 6.18" in lines
    assert "warning: clocks are not fixed: governor is schedutil" in lines


def test_machine_line_falls_back_to_environment_keys():
    env = {"cpu": {"model": "ARMv8 Processor rev 1 (v8l)", "cores": 12}, "os": "Linux 5.15.148-tegra",
           "gpu": {"name": "Orin (nvgpu)"}, "jetson": {"model": "Jetson AGX Orin"}}
    line = report.machine(make_result(environment=env))
    assert line == "ARMv8 Processor rev 1 (v8l), 12 cores, Linux 5.15.148-tegra, GPU Orin (nvgpu), Jetson AGX Orin"
    assert report.machine(make_result(environment={"cpu.model": "AMD EPYC", "cpu.cores": 2})) == "AMD EPYC, 2 cores"


def test_deadline_line_count_and_rate():
    text = report.format_table(make_result(budget=997))
    assert "deadline misses: 3 of 1000 (0.30%) over 997 ms budget" in text.splitlines()
    assert "throughput: 2.00 qps" in text.splitlines()
    assert "deadline" not in report.format_table(make_result(budget=None))


def test_loop_counts_status_reasons_and_where_misses_went():
    """Loop mode: every status, the misses by what was published instead, the reasons by kind."""
    misses = {"late": 3, "fallback": 5, "fault": 2}
    r = make_result(mode="loop", status={"ok": 990, "late": 3, "fallback": 5, "fault": 2},
                    deadline={"budget_ms": 997, "misses": 10, "rate": 0.01, "by_status": misses},
                    fallback_reasons={"late": 6, "engine overrun": 4},
                    limit_warnings={"implausible trajectory beyond --max-speed": 7})
    text = report.format_table(r).splitlines()
    assert "deadline misses: 10 of 1000 (1.00%) over 997 ms budget (published late 3, fallback 5, fault 2)" in text
    assert "status: ok 990, late 3, fallback 5, fault 2" in text
    assert "fallback reasons: late x6, engine overrun x4" in text
    assert "published despite a limit (--limits warn): implausible trajectory beyond --max-speed x7" in text
    md = report.to_markdown(r)
    assert "- Status: ok 990, late 3, fallback 5, fault 2" in md and "- Fallback reasons: late x6" in md
    saved = json.loads(report.to_json(r))
    assert saved["status"] == r["status"] and saved["deadline"]["by_status"] == misses
    keys = list(saved)
    assert keys.index("deadline") < keys.index("status") < keys.index("fallback_reasons") < keys.index("wall_s")
    # Engine mode has no ticks: no such lines.
    assert not any(ln.startswith(("status:", "fallback reasons:")) for ln in report.format_table(make_result())
                   .splitlines())


def test_interrupted_wording():
    r = make_result(interrupted=True)
    assert "interrupted: figures cover the 1000 iterations measured before Ctrl-C" in report.format_table(r)
    assert "interrupted" not in report.format_table(make_result())


# --- Markdown ------------------------------------------------------------------------------------------

def test_markdown_has_a_row_per_stage_with_the_table_numbers():
    r = make_result()
    md, text = report.to_markdown(r), report.format_table(r)
    assert md.startswith("## ")
    assert "- Machine: AMD EPYC, 2 cores, Linux 6.18" in md
    md_cols, cols = header_index(md, "|"), header_index(text)
    assert set(md_cols) == set(cols)
    assert sum(ln.startswith("| ") for ln in md.splitlines()) == 2 + 3  # header, rule, 3 stages
    for stage in ("preprocess", "compute", "e2e"):
        md_row, row_ = row(md, stage, "|"), row(text, stage)
        assert {c: md_row[i] for c, i in md_cols.items()} == {c: row_[i] for c, i in cols.items()}
    assert row(md, "e2e", "|")[md_cols["p99"]] == "991.000"
    assert "| h2d |" not in md


# --- JSON ----------------------------------------------------------------------------------------------

def nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def test_to_json_round_trips_with_nan_as_null_and_numpy_scalars():
    r = make_result()
    r["stages"]["overhead"] = summarize([0.0, 0.0])  # mean 0: cv is NaN
    assert math.isnan(r["stages"]["overhead"]["cv"])
    r["environment"]["cores"] = np.int64(2)
    r["environment"]["load"] = np.float32(0.5)
    r["throughput_qps"] = np.float64(2.0)
    text = report.to_json(r)
    assert "NaN" not in text
    back = json.loads(text)
    assert back == nan_to_none(r)
    assert back["stages"]["overhead"]["cv"] is None
    assert type(back["environment"]["cores"]) is int
    assert text == report.to_json(copy.deepcopy(r))  # stable
    assert text.startswith('{\n  "schema": "vla.bench/1"')
    assert len(text.splitlines()) < 200  # sample lists stay on one line each


# --- PNG -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [997, None])
def test_write_png_writes_a_real_png(tmp_path, budget):
    pytest.importorskip("matplotlib")
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "bench.png"
    report.write_png(make_result(budget=budget), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(path))
    assert img is not None
    h, w = img.shape[:2]
    assert abs(w - 1200) <= 10 and abs(h - 700) <= 10, (w, h)
    assert img.std() > 10  # something was drawn


def test_write_png_without_matplotlib_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(VlaError, match=r"^--png needs matplotlib, from the bench extra: pip install "
                       r"'vla-runtime\[bench\]'"):
        report.write_png(make_result(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_importing_report_does_not_import_matplotlib():
    code = "import sys, vla.runtime.bench.report; print('matplotlib' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# --- compare -------------------------------------------------------------------------------------------

def test_compare_rows_ratios_are_b_over_a():
    a, b = make_result(), make_result(scale=2.0)
    rows = report.compare_rows(a, b)
    by = {(r["stage"], r["figure"]): r for r in rows}
    assert {s for s, _ in by} == {"preprocess", "compute", "e2e", "throughput"}
    for figure in FIGURES:
        r = by[("e2e", figure)]
        if figure == "cv":
            assert r["ratio"] == 1.0 and r["better"] == "="
        else:
            assert r["ratio"] == 2.0, (figure, r)
            assert r["better"] == "A"
    assert by[("e2e", "p99")]["a"] == 991.0 and by[("e2e", "p99")]["b"] == 1982.0
    assert by[("throughput", "qps")]["ratio"] == 0.5 and by[("throughput", "qps")]["better"] == "A"
    # and the other way round B is the faster one
    back = {(r["stage"], r["figure"]): r for r in report.compare_rows(b, a)}
    assert back[("e2e", "median")]["ratio"] == 0.5 and back[("e2e", "median")]["better"] == "B"


def test_compare_rows_only_stages_in_both():
    a = make_result()
    b = make_result(stages={"e2e": a["stages"]["e2e"], "h2d": summarize([1.0])})
    assert {r["stage"] for r in report.compare_rows(a, b)} == {"e2e", "throughput"}


def test_compare_warns_about_different_machines_and_settings():
    a = make_result()
    same = report.compare(a, make_result(scale=2.0))
    assert "different machines" not in same and "settings differ" not in same
    assert same.splitlines()[0].startswith("A: engine mode, bundles/reference")
    assert "B/A" in same and "A faster" in same

    b = make_result(environment={"describe": "Jetson AGX Orin 64GB, MAXN"})
    b["settings"] = {**b["settings"], "threads": 4}
    diff = report.compare(a, b)
    assert "warning: figures from different machines" in diff
    assert "warning: settings differ: threads (A 2, B 4)" in diff.splitlines()
    assert "Jetson AGX Orin 64GB, MAXN" in diff.splitlines()[1]


def test_compare_of_saved_results(tmp_path):
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(report.to_json(make_result()))
    pb.write_text(report.to_json(make_result(scale=2.0)))
    rows = report.compare_rows(report.load_result(pa), report.load_result(pb))
    assert {(r["figure"], r["ratio"]) for r in rows if r["stage"] == "e2e"} >= {("median", 2.0), ("p99", 2.0)}


# --- load_result ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, problem", [
    (None, "no such file"),
    ('{"schema": "vla.bench/1", "stages": ', "not valid JSON"),
    ('{"schema": "vla.bench/2", "stages": {}}', "not a vla.bench/1 result"),
    ("[1, 2]", "not a vla.bench/1 result"),
])
def test_load_result_errors_are_one_line_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(VlaError) as err:
        report.load_result(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and problem in msg, msg
