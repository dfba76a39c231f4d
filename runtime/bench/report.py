"""What ``vla-bench`` shows of a ``vla.bench/1`` result: a table, Markdown, JSON, a PNG, and ``compare``.

Everything here is a pure function of the result dict (see ``result.py``), so a report can be
re-made from a saved JSON file long after the run, and two saved files can be compared. Times are
milliseconds printed with three decimals, as trtexec prints them, so figures line up one to one.

The machine line comes from ``environment["describe"]`` when the collector wrote one, else from a
few well-known keys; any other environment content is treated as opaque JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VlaError
from ..loop.stats import summarize
from ..loop.tally import format_counts, format_kinds
from .result import FIGURES, SCHEMA, STAGES, Result

NOTE = ("median and percentiles as trtexec computes them (percentile p = sorted[max(N-1-int((1-p/100)*N),0)], "
        "median of an even count = mean of the two middle values)")
#: Table columns: the figures in ``FIGURES`` order, then how many iterations each row covers.
COLUMNS = (*FIGURES, "count")
_HEADERS = {"cv": "cv %"}
#: Figures where a lower value means steadier, not faster.
_SPREAD = ("std", "cv")
#: Top-level keys in the order ``result.py`` documents them: a JSON file reads like its schema.
_KEY_ORDER = ("schema", "mode", "engine", "backend", "settings", "environment", "warnings", "stages", "samples",
              "throughput_qps", "deadline", "status", "fallback_reasons", "limit_warnings", "wall_s", "interrupted",
              "started_at")


# --- small formatting helpers -------------------------------------------------------------------------

def _finite(v: Any) -> float | None:
    """The value as a float, or None for missing/NaN/inf (a saved JSON file has null where NaN was)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _ms(v: Any) -> str:
    f = _finite(v)
    return "-" if f is None else f"{f:.3f}"


def _cell(stats: Mapping[str, Any], column: str) -> str:
    """One table cell: ms with three decimals, cv in percent, count as an integer; '-' when unknown."""
    if column == "count":
        return str(int(stats.get("count") or 0))
    if column == "cv":
        f = _finite(stats.get("cv"))
        return "-" if f is None else f"{100 * f:.2f}"
    return _ms(stats.get(column))


def _value(v: Any) -> str:
    """A setting or version as short text: scalars as is, lists and dicts as compact JSON."""
    if isinstance(v, str):
        return v
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(_jsonable(v), separators=(",", ":"))
    return str(_jsonable(v))


def _lookup(env: Mapping[str, Any], dotted: str) -> Any:
    """``env["cpu.model"]`` or ``env["cpu"]["model"]``: the collector may write either form."""
    if dotted in env:
        return env[dotted]
    node: Any = env
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _short(v: Any) -> str | None:
    """A device (GPU, Jetson) as a few words: a string as is, a dict by its name/model, a list joined."""
    if v is None or v is False or v == "" or v == [] or v == {}:
        return None
    if isinstance(v, Mapping):
        for key in ("describe", "name", "model", "product"):
            if v.get(key):
                return str(v[key])
        return None
    if isinstance(v, (list, tuple)):
        parts = [s for s in map(_short, v) if s]
        return ", ".join(parts) or None
    return str(v)


def machine(result: Result) -> str:
    """The machine line: what figures from different machines must not be compared without."""
    env = result.get("environment")
    if not isinstance(env, Mapping):
        return "unknown machine"
    if env.get("describe"):
        return str(env["describe"])
    parts = []
    if cpu := _short(_lookup(env, "cpu.model")):
        parts.append(cpu)
    if (cores := _lookup(env, "cpu.cores")) is not None:
        parts.append(f"{_value(cores)} cores")
    if osname := _short(_lookup(env, "os")):
        parts.append(osname)
    for key, word in (("gpu", "GPU"), ("jetson", "Jetson")):
        if text := _short(_lookup(env, key)):
            parts.append(text if re.search(rf"\b{word}\b", text, re.IGNORECASE) else f"{word} {text}")
    return ", ".join(parts) or "unknown machine"


def _settings(result: Result) -> str:
    """The settings that applied (None means 'does not apply to this mode', so it is left out)."""
    settings = result.get("settings") or {}
    items = [f"{k}={_value(v)}" for k, v in settings.items() if v is not None]
    return ", ".join(items) or "defaults"


def _versions(result: Result) -> str | None:
    env = result.get("environment")
    versions = env.get("versions") if isinstance(env, Mapping) else None
    if isinstance(versions, Mapping):
        items = [f"{k} {_value(v)}" for k, v in versions.items() if v is not None]
        return ", ".join(items) or None
    return _value(versions) if versions else None


def _stages(result: Result) -> list[tuple[str, Mapping[str, Any]]]:
    """(stage, stats) for the stages measured, in pipeline order; unknown names follow in their own order."""
    stages = result.get("stages") or {}
    order = [s for s in STAGES if s in stages] + [s for s in stages if s not in STAGES]
    return [(s, stages[s]) for s in order if isinstance(stages[s], Mapping) and stages[s].get("count")]


def _measured(result: Result) -> int:
    """How many iterations the figures cover: e2e's count, else the largest stage count."""
    stages = dict(_stages(result))
    if "e2e" in stages:
        return int(stages["e2e"]["count"])
    counts = [int(s["count"]) for s in stages.values()]
    counts += [len(v) for v in (result.get("samples") or {}).values()]
    return max(counts, default=0)


def _deadline_line(result: Result) -> str | None:
    deadline = result.get("deadline")
    if not isinstance(deadline, Mapping) or _finite(deadline.get("budget_ms")) is None:
        return None
    misses = int(deadline.get("misses") or 0)
    total = _measured(result)
    rate = _finite(deadline.get("rate"))
    if rate is None:
        rate = misses / total if total else 0.0
    budget = _finite(deadline["budget_ms"])
    line = f"deadline misses: {misses} of {total} ({100 * rate:.2f}%) over {budget:g} ms budget"
    # Loop mode: a miss is published late, as a fallback or as a fault; say which, so a run whose
    # misses all became fallbacks does not read as "late 0" (vla.runtime.loop.tally).
    by_status = deadline.get("by_status")
    if misses and isinstance(by_status, Mapping) and by_status:
        line += f" (published {format_counts(by_status)})"
    return line


def _count_lines(result: Result) -> list[str]:
    """Loop mode: ticks by status (every status, 0 included), the reasons of those not ok by kind,
    and the ticks published despite a plausibility limit; nothing for engine mode."""
    lines = []
    status = result.get("status")
    if isinstance(status, Mapping) and status:
        lines.append("status: " + format_counts({k: int(v or 0) for k, v in status.items()}))
    for key, title in (("fallback_reasons", "fallback reasons"),
                       ("limit_warnings", "published despite a limit (--limits warn)")):
        kinds = result.get(key)
        if isinstance(kinds, Mapping) and kinds:
            lines.append(f"{title}: " + format_kinds({k: int(v or 0) for k, v in kinds.items()}))
    return lines


def _throughput_line(result: Result) -> str | None:
    qps = _finite(result.get("throughput_qps"))
    return None if qps is None else f"throughput: {qps:.2f} qps"


def _interrupted_line(result: Result) -> str | None:
    if not result.get("interrupted"):
        return None
    return f"interrupted: figures cover the {_measured(result)} iterations measured before Ctrl-C"


def _timed_line(result: Result) -> str | None:
    wall = _finite(result.get("wall_s"))
    started = result.get("started_at")
    if wall is None and not started:
        return None
    text = f"timed: {wall:.1f} s" if wall is not None else "timed"
    return f"{text} from {started}" if started else text


def _grid(rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> list[str]:
    """Fixed-width columns: names (columns in ``left``) left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in rows]


# --- the reports ---------------------------------------------------------------------------------------

def format_table(result: Result) -> str:
    """The stdout report: what ran where, then one row per stage with trtexec's figures in ms."""
    lines = [f"vla-bench {result.get('mode', '?')} mode: {result.get('engine', '?')}",
             f"backend: {result.get('backend') or 'unknown'}",
             f"settings: {_settings(result)}",
             f"machine: {machine(result)}"]
    if timed := _timed_line(result):
        lines.append(timed)
    lines += [f"warning: {w}" for w in result.get("warnings") or ()]
    lines.append("")
    stages = _stages(result)
    if stages:
        header = ["stage", *(_HEADERS.get(c, c) for c in COLUMNS)]
        lines += _grid([header, *([name, *(_cell(st, c) for c in COLUMNS)] for name, st in stages)])
    else:
        lines.append("no stage was measured")
    lines += [ln for ln in (_throughput_line(result), _deadline_line(result)) if ln]
    lines += _count_lines(result)
    if interrupted := _interrupted_line(result):
        lines.append(interrupted)
    lines.append(f"note: times in ms, cv in % of the mean; {NOTE}")
    return "\n".join(lines) + "\n"


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell or bullet ('|' would split the cell)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(result: Result) -> str:
    """The report as a Markdown section to paste into benchmarks/RESULTS.md (machine first: figures need it)."""
    started = str(result.get("started_at") or "")[:10]
    heading = f"## vla-bench {result.get('mode', '?')}: `{result.get('engine', '?')}`"
    lines = [heading + (f", {started}" if started else ""), "",
             f"- Machine: {_md(machine(result))}",
             f"- Backend: {_md(result.get('backend') or 'unknown')}"]
    if versions := _versions(result):
        lines.append(f"- Versions: {_md(versions)}")
    lines.append(f"- Settings: {_md(_settings(result))}")
    if timed := _timed_line(result):
        lines.append(f"- {_md(timed[0].upper() + timed[1:])}")
    for line in (_throughput_line(result), _deadline_line(result), *_count_lines(result), _interrupted_line(result)):
        if line:
            lines.append(f"- {_md(line[0].upper() + line[1:])}")
    lines += [f"- Warning: {_md(w)}" for w in result.get("warnings") or ()]
    lines.append("")
    header = ["stage", *(_HEADERS.get(c, c) for c in COLUMNS)]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    for name, st in _stages(result):
        lines.append("| " + " | ".join([_md(name), *(_cell(st, c) for c in COLUMNS)]) + " |")
    lines += ["", f"Times in ms, cv in % of the mean; {NOTE}."]
    return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN/inf as null (JSON has neither)."""
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)  # anything else (a datetime, an enum) as its text rather than a failed save


def _ordered(result: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level keys in schema order and stages in pipeline order, so two saves of one run diff cleanly."""
    out = {k: result[k] for k in _KEY_ORDER if k in result}
    out.update({k: result[k] for k in sorted(result, key=str) if k not in out})
    for key in ("stages", "samples"):
        if isinstance(out.get(key), Mapping):
            per = out[key]
            out[key] = {s: per[s] for s in [*(s for s in STAGES if s in per), *(s for s in per if s not in STAGES)]}
    return out


def _dump(obj: Any, indent: str = "") -> str:
    """Indented JSON, except that a list of plain values stays on one line: 10 000 samples per stage
    would otherwise be 10 000 lines each."""
    inner = indent + "  "
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(k)}: {_dump(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + _dump(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj, allow_nan=False, separators=(", ", ": "))


def to_json(result: Result) -> str:
    """The result as indented JSON that any tool can read back (strict JSON: no NaN, no numpy types)."""
    return _dump(_jsonable(_ordered(result))) + "\n"


# --- PNG -----------------------------------------------------------------------------------------------

def write_png(result: Result, path: str | Path) -> None:
    """Latency histogram (e2e, compute) and per-iteration timeline of every stage, 1200x700 px.

    The histogram shows the shape a percentile hides (two modes, a long tail); the timeline shows
    when slow iterations happened (warm-up left over, thermal throttling, a periodic neighbour).
    """
    try:
        import matplotlib  # noqa: F401  (imported here: reports without --png must not need it)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        from ..cli_support import install_hint

        raise VlaError(f"--png needs {install_hint('matplotlib')}") from None

    samples = {k: v for k, v in (result.get("samples") or {}).items() if v}
    order = [s for s in STAGES if s in samples] + [s for s in samples if s not in STAGES]
    deadline = result.get("deadline")
    budget = _finite(deadline.get("budget_ms")) if isinstance(deadline, Mapping) else None
    if budget is None:
        budget = _finite((result.get("settings") or {}).get("budget_ms"))

    # A Figure on an Agg canvas, not pyplot: nothing global (no backend switch, no figure registry
    # that would keep every figure alive until closed), so it is safe in any process.
    fig = Figure(figsize=(12, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"{result.get('engine', '?')} on {result.get('backend') or 'unknown backend'}\n{machine(result)}",
                 fontsize=10)
    hist_ax, time_ax = fig.subplots(2, 1)
    colors = {s: f"C{i}" for i, s in enumerate(order)}

    hist_stages = [s for s in ("e2e", "compute") if s in samples] or order[:1]
    if hist_stages:
        values = [[_finite(v) for v in samples[s]] for s in hist_stages]
        values = [[v for v in vs if v is not None] for vs in values]
        lo = min(min(vs, default=0.0) for vs in values)
        hi = max(max(vs, default=0.0) for vs in values)
        bins = np.linspace(lo, hi, 61) if hi > lo else 10  # shared bins: the two shapes compare directly
        for stage, vs in zip(hist_stages, values, strict=True):
            if not vs:
                continue
            color = colors[stage]
            hist_ax.hist(vs, bins=bins, alpha=0.5, color=color, label=f"{stage} ({len(vs)})")
            st = (result.get("stages") or {}).get(stage) or summarize(vs)
            for fig_name, style in (("median", "--"), ("p99", ":")):
                if (x := _finite(st.get(fig_name))) is not None:
                    hist_ax.axvline(x, color=color, linestyle=style, label=f"{stage} {fig_name} {x:.3f} ms")
    else:
        hist_ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=hist_ax.transAxes)
    if budget is not None:
        hist_ax.axvline(budget, color="red", linewidth=1.5, label=f"budget {budget:g} ms")
    hist_ax.set_xlabel("latency (ms)")
    hist_ax.set_ylabel("iterations")
    hist_ax.set_title("latency histogram", fontsize=10)

    for stage in order:
        ys = [np.nan if (f := _finite(v)) is None else f for v in samples[stage]]
        time_ax.plot(range(1, len(ys) + 1), ys, linewidth=0.8, color=colors[stage], label=stage)
    if budget is not None:
        time_ax.axhline(budget, color="red", linewidth=1.5, label=f"budget {budget:g} ms")
    time_ax.set_xlabel("iteration")
    time_ax.set_ylabel("ms")
    time_ax.set_title("per-iteration timeline", fontsize=10)
    for ax in (hist_ax, time_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)

    try:
        fig.savefig(path, format="png", dpi=100)
    except OSError as e:
        raise VlaError(f"cannot write {path}: {e.strerror or e}") from None


# --- compare -------------------------------------------------------------------------------------------

def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or a == 0 else b / a


def _better(a: float | None, b: float | None, lower_is_better: bool) -> str | None:
    """'A', 'B' or '=' for which result has the better figure; None when one is unknown."""
    if a is None or b is None:
        return None
    if a == b:
        return "="
    return "B" if (b < a) == lower_is_better else "A"


def compare_rows(a: Result, b: Result) -> list[dict[str, Any]]:
    """Per stage in both results and per figure: A, B, B/A and which is better; then throughput.

    Rows are ``{"stage", "figure", "unit", "a", "b", "ratio", "better"}``. For times a ratio < 1
    means B is faster; for std and cv lower means steadier; for throughput (qps) higher is better.
    Values are None where a result lacks the figure; ratio is None when A's value is 0 or unknown.
    """
    sa, sb = dict(_stages(a)), dict(_stages(b))
    rows = []
    for stage in [s for s in sa if s in sb]:
        for figure in FIGURES:
            va, vb = _finite(sa[stage].get(figure)), _finite(sb[stage].get(figure))
            rows.append({"stage": stage, "figure": figure, "unit": "" if figure == "cv" else "ms",
                         "a": va, "b": vb, "ratio": _ratio(va, vb), "better": _better(va, vb, True)})
    qa, qb = _finite(a.get("throughput_qps")), _finite(b.get("throughput_qps"))
    if qa is not None or qb is not None:
        rows.append({"stage": "throughput", "figure": "qps", "unit": "qps", "a": qa, "b": qb,
                     "ratio": _ratio(qa, qb), "better": _better(qa, qb, False)})
    return rows


def _differing_settings(a: Result, b: Result) -> list[str]:
    sa, sb = a.get("settings") or {}, b.get("settings") or {}
    keys = [*sa, *(k for k in sb if k not in sa)]
    return [f"{k} (A {_value(sa.get(k))}, B {_value(sb.get(k))})" for k in keys
            if _jsonable(sa.get(k)) != _jsonable(sb.get(k))]


def _verdict(row: Mapping[str, Any]) -> str:
    better = row["better"]
    if better is None:
        return ""
    if better == "=":
        return "same"
    word = "steadier" if row["figure"] in _SPREAD else "faster"
    return f"{better} {word}"


def compare(a: Result, b: Result) -> str:
    """Two results side by side, with B/A per figure and warnings when they are not like for like."""
    lines = [f"{name}: {r.get('mode', '?')} mode, {r.get('engine', '?')}, {r.get('backend') or 'unknown backend'}, "
             f"on {machine(r)}" for name, r in (("A", a), ("B", b))]
    if machine(a) != machine(b):
        lines.append("warning: figures from different machines: the ratios mix hardware with software")
    if diff := _differing_settings(a, b):
        lines.append(f"warning: settings differ: {', '.join(diff)}")
    for name, r in (("A", a), ("B", b)):
        lines += [f"warning ({name}): {w}" for w in r.get("warnings") or ()]
    lines.append("")
    rows = compare_rows(a, b)
    if not rows:
        lines.append("no stage measured in both")
        return "\n".join(lines) + "\n"

    def fmt(row: Mapping[str, Any], key: str) -> str:
        v = row[key]
        if v is None:
            return "-"
        if row["figure"] == "cv":
            return f"{100 * v:.2f}%"
        return f"{v:.2f}" if row["figure"] == "qps" else f"{v:.3f}"

    table = [["stage", "figure", "A", "B", "B/A", ""]]
    for row in rows:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        table.append([row["stage"], row["figure"], fmt(row, "a"), fmt(row, "b"), ratio, _verdict(row)])
    lines += _grid(table, left=(0, 1, 5))
    lines.append(f"note: times in ms; B/A < 1 means B is faster (for qps, > 1 means B is faster); {NOTE}")
    return "\n".join(lines) + "\n"


def load_result(path: str | Path) -> Result:
    """A saved ``vla.bench/1`` result; anything else is a user error with a one-line reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise VlaError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise VlaError(f"{path}: is a directory, not a vla-bench JSON result") from None
    except UnicodeDecodeError:
        raise VlaError(f"{path}: not a vla-bench JSON result (not UTF-8 text)") from None
    except OSError as e:
        raise VlaError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise VlaError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != SCHEMA:
        raise VlaError(f"{path}: not a {SCHEMA} result (schema is {json.dumps(_jsonable(schema))[:40]})")
    if not isinstance(data.get("stages"), dict):
        raise VlaError(f"{path}: a {SCHEMA} result without its 'stages' table")
    return data


__all__ = ["compare", "compare_rows", "format_table", "load_result", "machine", "to_json", "to_markdown", "write_png"]
