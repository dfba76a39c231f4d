"""``vla-replay LOGS_DIR --engine BUNDLE [--ray [ADDRESS]]``: every log of a folder through one bundle.

The check a candidate bundle must pass before it ships: replay what the fleet recorded, log by log,
and compare every output with the recording (``replayer.py``, openpilot's tolerance rule). A folder
holds many logs and each replay is independent, so they spread over workers:

- without ``--ray``: in this process, one engine opened once, the logs one after another;
- with ``--ray``: on Ray Data, ``from_items`` of the paths through ``map_batches`` with a callable
  class (``ReplayActor``): one actor per worker opens the engine once (opening costs more than
  replaying a short log) and replays the logs it is handed. An embedded local Ray by default (as
  ``vla-sim --ray`` does), a cluster's ``ADDRESS`` otherwise; on a cluster the folder and the bundle
  must be at the same paths on every node (a shared file system).

A log that cannot be replayed (truncated, corrupt, recorded with another model) is a row with its
one-line error, never the end of the fleet. The result is a table, one row per (log, output)
(``COLUMNS``), as Parquet or CSV, and a summary on stderr. Exit 0: every log within tolerance; 1: a
regression; 2: a log that could not be replayed (the one-line error names the first).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VlaError, one_line
from ..ray_start import quiet_ray, start_ray

#: The table's columns, in order: what a row says about one output of one log.
COLUMNS = ("log", "status", "output", "tol", "runs", "max_abs", "bad_values", "first_bad_tick", "error", "seconds")
OK, REGRESSION, ERROR = "ok", "regression", "error"
#: Worst first: a log's status is the worst of its rows'.
_SEVERITY = {OK: 0, REGRESSION: 1, ERROR: 2}
TABLE_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class ReplayOptions:
    """What every worker needs to replay a log: plain values, so they travel to Ray actors as they are."""

    engine: str
    tol: tuple[str, ...] = ()
    salvage: bool = False
    threads: int | None = None


# ---- pure: rows and the summary -------------------------------------------------------------------
def error_text(message: str, path: str | None = None) -> str:
    """An error as one line, without the log's path in front (the row's ``log`` column names it)."""
    text = one_line(message, limit=10_000)  # the table keeps the whole message
    if path and text.startswith(path + ": "):
        text = text[len(path) + 2:]
    return text


def error_row(log: str, message: str, seconds: float = 0.0) -> dict[str, Any]:
    """The one row of a log that could not be replayed."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(log=log, status=ERROR, error=message, seconds=round(seconds, 3))
    return row


def report_rows(log: str, report: dict[str, Any], seconds: float) -> list[dict[str, Any]]:
    """A replay report (``ReplayReport.as_dict()``) as table rows, one per output compared.

    A replay that compared nothing (a snippet whose runs all began before the file did) is an error
    row: a check that looked at nothing must not pass."""
    diffs = list(report.get("outputs") or [])
    if report.get("preprocess"):
        diffs.append(report["preprocess"])
    if not report.get("compared") or not diffs:
        return [error_row(log, f"no engine run to compare ({report.get('runs', 0)} runs, "
                               f"{report.get('skipped', 0)} skipped)", seconds)]
    rows = []
    for d in diffs:
        first = d.get("first_bad")
        rows.append({"log": log, "status": REGRESSION if d["bad_values"] else OK, "output": d["output"],
                     "tol": float(d["tol"]), "runs": int(d["runs"]), "max_abs": float(d["max_abs"]),
                     "bad_values": int(d["bad_values"]), "first_bad_tick": None if not first else int(first[1]),
                     "error": None, "seconds": round(seconds, 3)})
    return rows


def log_status(rows: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Each log's status: the worst of its rows', in the order the logs first appear."""
    out: dict[str, str] = {}
    for row in rows:
        now = out.get(row["log"], OK)
        out[row["log"]] = max(now, row["status"], key=_SEVERITY.__getitem__)
    return out


def closeness(row: dict[str, Any]) -> float:
    """How far an output went towards its tolerance (1: at it; more: beyond); a difference where the
    tolerance is zero (bit-exact asked) is infinitely far."""
    max_abs, tol = row.get("max_abs") or 0.0, row.get("tol") or 0.0
    if tol > 0:
        return max_abs / tol
    return math.inf if max_abs > 0 else 0.0


@dataclass
class Summary:
    """What the fleet replay says in the end: counts of logs, the worst output, the exit code."""

    logs: int
    ok: int
    regression: int
    error: int
    seconds: float
    worst: dict[str, Any] | None  # the compared row closest to (or furthest beyond) its tolerance
    first_error: dict[str, Any] | None
    first_regression: dict[str, Any] | None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def logs_per_s(self) -> float:
        return self.logs / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return 2 if self.error else 1 if self.regression else 0

    def as_dict(self) -> dict[str, Any]:
        return {"logs": self.logs, "ok": self.ok, "regression": self.regression, "error": self.error,
                "seconds": round(self.seconds, 3), "logs_per_s": round(self.logs_per_s, 3), "worst": self.worst,
                "first_error": self.first_error, "first_regression": self.first_regression,
                "exit_code": self.exit_code}


def summarize(rows: Sequence[dict[str, Any]], seconds: float) -> Summary:
    """The summary of a fleet's rows (in log order) replayed in ``seconds``."""
    status = log_status(rows)
    counts = {s: sum(1 for v in status.values() if v == s) for s in (OK, REGRESSION, ERROR)}
    compared = [r for r in rows if r["status"] != ERROR]
    worst = max(compared, key=lambda r: (closeness(r), r["max_abs"]), default=None)
    first_error = next((r for r in rows if r["status"] == ERROR), None)
    bad = [r for r in rows if r["status"] == REGRESSION]
    # the regression that shows first: earliest log, then earliest tick in it
    order = {log: i for i, log in enumerate(status)}
    first_regression = min(bad, key=lambda r: (order[r["log"]], r["first_bad_tick"] if r["first_bad_tick"] is not None
                                               else math.inf), default=None)
    return Summary(len(status), counts[OK], counts[REGRESSION], counts[ERROR], seconds, worst, first_error,
                   first_regression, counts)


def format_summary(summary: Summary, where: str) -> list[str]:
    """The summary for people (stderr). No line says "error": the one-line error that ends a fleet with
    a log that could not be replayed is the caller's, so scripts find exactly one."""
    s = summary
    lines = [f"vla-replay: {s.logs} logs replayed {where} in {s.seconds:.1f} s ({s.logs_per_s:.2f} logs/s): "
             f"{s.ok} ok, {s.regression} regression, {s.error} failed"]
    w = s.worst
    if w is None:
        lines.append("vla-replay: worst output: none compared")
    elif w["max_abs"] == 0.0:
        lines.append("vla-replay: worst output: none; every output of every replayed log is bit-exact")
    else:
        lines.append(f"vla-replay: worst output: '{w['output']}' in {w['log']}: max |a-b| {w['max_abs']:.3g} "
                     f"(tol {w['tol']:.2g}, {closeness(w):.2g}× of it)")
    r = s.first_regression
    if r is not None:
        lines.append(f"vla-replay: REGRESSION: {s.regression} of {s.logs} logs beyond tolerance; first: {r['log']}, "
                     f"output '{r['output']}' from tick {r['first_bad_tick']} ({r['bad_values']} values beyond "
                     f"tol {r['tol']:.2g})")
    return lines


# ---- files ---------------------------------------------------------------------------------------
def list_logs(folder: Path) -> list[Path]:
    """The folder's ``*.mcap`` files, sorted (not its sub-folders): a one-line error when there is none."""
    logs = sorted(p for p in folder.glob("*.mcap") if p.is_file())
    if not logs:
        raise VlaError(f"{folder}: no .mcap recordings in this folder; record some with vla-run --record FILE.mcap")
    return logs


def table_path(folder: Path, out: str | None) -> Path:
    """Where the table goes (default: the logs' folder, ``replay.csv``); checked before any work."""
    path = Path(out) if out else folder / "replay.csv"
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise VlaError(f"--out {path}: the table is .parquet or .csv")
    if not path.parent.is_dir():
        raise VlaError(f"--out {path}: no such folder {path.parent}")
    return path


def _arrow_schema() -> Any:
    import pyarrow as pa

    types = {"log": pa.string(), "status": pa.string(), "output": pa.string(), "tol": pa.float64(),
             "runs": pa.int64(), "max_abs": pa.float64(), "bad_values": pa.int64(), "first_bad_tick": pa.int64(),
             "error": pa.string(), "seconds": pa.float64()}
    return pa.schema([(c, types[c]) for c in COLUMNS])


def rows_table(rows: Sequence[dict[str, Any]]) -> Any:
    """The rows as a pyarrow Table with the fixed schema (None -> null), so every table has one shape."""
    import pyarrow as pa

    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=_arrow_schema())


def write_table(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Parquet through pyarrow, or CSV (empty cells for nulls) with the stdlib."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(rows_table(rows), path)
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if r.get(c) is None else r[c] for c in COLUMNS})


# ---- replaying -----------------------------------------------------------------------------------
class LogReplayer:
    """One engine, opened once, that turns log paths into rows (in this process or in a Ray actor).

    An engine that does not open is kept as an error, not raised: in a Ray actor a raise would end the
    dataset with a traceback; here each log becomes an error row naming the engine's problem."""

    def __init__(self, options: ReplayOptions) -> None:
        from .compare import Tolerances
        from .replayer import Replayer, open_for_replay

        self.options = options
        self.problem: str | None = None
        self.backend: Any = None
        self.replayer: Any = None
        try:
            tolerances = Tolerances.parse(options.tol)
            self.backend = open_for_replay(options.engine, options.threads)
            self.replayer = Replayer(self.backend, options.engine, tolerances)
        except VlaError as exc:
            msg = error_text(str(exc))
            self.problem = msg if msg.startswith("--engine") else f"--engine {options.engine}: {msg}"

    def rows(self, path: str, name: str) -> list[dict[str, Any]]:
        """Replay one log: its rows, or its error row (any failure stays with this log)."""
        from .reader import read_recording

        t0 = time.perf_counter()
        if self.problem is not None:
            return [error_row(name, self.problem)]
        try:
            rec = read_recording(path, salvage=self.options.salvage)
            report = self.replayer.replay(rec)
        except VlaError as exc:
            return [error_row(name, error_text(str(exc), str(path)), time.perf_counter() - t0)]
        except Exception as exc:  # a bug or a file no check foresaw: this log's row, not the fleet's end
            return [error_row(name, f"{type(exc).__name__}: {error_text(str(exc), str(path))} (a bug in vla "
                                    "or an unforeseen damage; replay this log alone with VLA_DEBUG=1)",
                              time.perf_counter() - t0)]
        return report_rows(name, report.as_dict(), time.perf_counter() - t0)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


class ReplayActor:
    """Ray Data's callable class: built once per actor (the engine opened once), then called with
    batches of ``{"path", "name"}`` rows; answers a pyarrow Table of result rows with the fixed schema
    (a None in a float column stays a null, whatever the batch)."""

    def __init__(self, options: ReplayOptions) -> None:
        self.replayer = LogReplayer(options)

    def __call__(self, batch: dict[str, Any]) -> Any:
        rows: list[dict[str, Any]] = []
        for path, name in zip(batch["path"], batch["name"], strict=True):
            rows += self.replayer.rows(str(path), str(name))
        return rows_table(rows)


def replay_here(logs: Sequence[Path], options: ReplayOptions) -> list[dict[str, Any]]:
    """Every log in this process, one after another, with one engine."""
    replayer = LogReplayer(options)
    if replayer.problem is not None:  # here, unlike in an actor, the fleet can stop with one line at once
        raise VlaError(replayer.problem)
    try:
        rows: list[dict[str, Any]] = []
        for p in logs:
            rows += replayer.rows(str(p), p.name)
        return rows
    finally:
        replayer.close()


def replay_on_ray(logs: Sequence[Path], options: ReplayOptions, workers: int) -> list[dict[str, Any]]:
    """Every log on Ray Data (Ray must be up: ``ray_start.start_ray``): ``workers`` actors, a log per batch, so a
    slow log holds up one actor only. Rows in log order, each log's in its report's order."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    quiet_ray()  # Ray Data sets its loggers up when first imported
    items = [{"path": str(p.resolve()), "name": p.name} for p in logs]
    with warnings.catch_warnings():
        # max_restarts goes through ray_remote_args, deprecated but the only way in Ray 2.60. Ray Data's
        # default (restart forever) would retry an engine that crashes its process without end, and
        # logs a C++ error line about the constructor's arguments on every run.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ray.data.from_items(items).map_batches(
            ReplayActor, fn_constructor_kwargs={"options": options}, batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=max(1, workers)), num_cpus=1, max_restarts=0)
    try:
        rows = ds.take_all()
    except Exception as exc:  # an actor that died (its engine crashed the process), a cluster lost
        raise VlaError(f"the fleet replay on Ray failed: {type(exc).__name__}: {error_text(str(exc))[:300]}; "
                       "replay the folder without --ray to see which log") from None
    order = {p.name: i for i, p in enumerate(logs)}
    rows.sort(key=lambda r: order[r["log"]])  # stable: each log's rows keep their order
    return [{c: _plain(r.get(c)) for c in COLUMNS} for r in rows]


def _plain(value: Any) -> Any:
    """Numpy scalars from Ray Data as Python values (NaN from a null number back to None)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# ---- the command -----------------------------------------------------------------------------------
def run_fleet(args: argparse.Namespace) -> int:
    """``vla-replay LOGS_DIR --engine BUNDLE [--ray [ADDRESS]] [--workers N] [--out TABLE]``."""
    from ..bundle import must_exist, resolve, staged_manifest
    from ..cli_support import require
    from .cli import write_json
    from .compare import Tolerances

    folder = Path(args.log)
    if not args.engine:
        raise VlaError(f"{folder} is a folder of logs: give --engine BUNDLE, the bundle to replay every log with")
    if getattr(args, "update", None):
        raise VlaError("--update writes one new reference log: give one LOG.mcap, not a folder")
    workers = getattr(args, "workers", None)
    workers = 2 if workers is None else workers
    if workers < 1:
        raise VlaError(f"--workers {workers}: at least 1")
    must_exist(args.engine)
    if staged_manifest(args.engine) is None:  # the bundle's form, checked without opening it: said once
        resolve(args.engine)
    Tolerances.parse(args.tol)  # a bad --tol is the user's one line now, not an error row per log
    logs = list_logs(folder)
    out = table_path(folder, getattr(args, "out", None))
    if out.suffix.lower() == ".parquet" or args.ray is not None:
        require("pyarrow")
    options = ReplayOptions(str(args.engine), tuple(args.tol), bool(args.salvage), args.threads)
    t0 = time.perf_counter()
    if args.ray is None:
        rows = replay_here(logs, options)
        where = "in this process"
    else:
        require("ray")
        # a core per actor; the bundle by its absolute path, as actors need not share our working directory
        options = ReplayOptions(str(Path(options.engine).resolve()), options.tol, options.salvage,
                                1 if options.threads is None else options.threads)
        started = start_ray(args.ray, workers)
        up = time.perf_counter() - t0
        t0 += up  # throughput is the fleet's: Ray's start-up is said apart
        try:
            rows = replay_on_ray(logs, options, workers)
        finally:
            if started:
                import ray

                ray.shutdown()
        where = (f"on Ray ({workers} workers, {'embedded' if args.ray == 'local' else args.ray}; "
                 f"Ray up in {up:.1f} s)")
    summary = summarize(rows, time.perf_counter() - t0)
    write_table(rows, out)
    for line in format_summary(summary, where):
        print(line, file=sys.stderr)
    print(f"vla-replay: table: {out} ({len(rows)} rows)", file=sys.stderr)
    if args.json:
        write_json({"summary": summary.as_dict(), "rows": rows}, args.json)
    first = summary.first_error
    if first is not None:
        raise VlaError(f"{summary.error} of {summary.logs} logs could not be replayed; first: {first['log']}: "
                       f"{first['error']}")
    return summary.exit_code
