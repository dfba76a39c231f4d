"""``vla-replay LOG.mcap [--engine BUNDLE]``: recorded inputs through an engine, compared with the recording.

Exit 0: every output within tolerance. Exit 1: a regression, with a report naming the first
differing tick and output and the worst differences. Exit 2: a one-line error (no such file, a
truncated or corrupt log, a log recorded with another model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..cli_support import run_main
from ..errors import VlaError

EPILOG = """\
tolerance (openpilot's rule): an output differs where |a - b| > max(tol, tol * max(|a|, |b|)).
  --tol NAME=X for one output, --tol X for all; else the bundle manifest's per-output "tolerance";
  else by the replaying bundle's precision: fp32 1e-4, fp16 5e-2, int8 0.3. --tol 0 asks for bit-exact.

examples:
  vla-run --engine bundles/reference --camera synthetic:// --duration 10 --record run.mcap
  vla-replay run.mcap                                   # the bundle it was recorded with: zero differences
  vla-replay run.mcap --engine bundles/reference-fp16   # a candidate: its differences against its tolerances
  vla-replay run.mcap --engine bundles/new --update new.mcap   # accept: a new reference log
  vla-replay logs/ --engine bundles/new --ray --out fleet.parquet   # a folder of logs, on Ray Data
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-replay", description="Replay recorded runs through an engine, "
                                "deterministically, and compare every output with the recording.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", metavar="LOG.mcap|DIR", help="a recording from vla-run --record, or a folder of them")
    p.add_argument("--engine", metavar="BUNDLE",
                   help="the bundle to replay with (default: the one the log names, if it is still there)")
    p.add_argument("--tol", action="append", default=[], metavar="[NAME=]X",
                   help="tolerance for one output (NAME=X) or all (X); repeatable")
    p.add_argument("--update", metavar="OUT.mcap",
                   help="write a new reference log: the recording with this engine's outputs and identity")
    p.add_argument("--salvage", action="store_true",
                   help="replay what a truncated log holds (a recorder killed mid-run) instead of refusing it")
    p.add_argument("--threads", type=int, help="engine threads (default: as vla-run)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON ('-' for stdout)")
    fleet = p.add_argument_group("fleet replay (LOG is a folder)")
    fleet.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="replay on Ray Data: an embedded local Ray (default) or a cluster's ADDRESS")
    fleet.add_argument("--workers", type=int, default=2, help="engine actors (one engine each; default 2)")
    fleet.add_argument("--out", metavar="TABLE.parquet|TABLE.csv",
                       help="fleet results table, one row per log and output (default: LOG_DIR/replay.csv)")
    return p


def write_json(obj: Any, dest: str) -> None:
    """``--json DEST``: the report as indented JSON into a file, or on stdout for ``-``."""
    text = json.dumps(obj, indent=2)
    if dest == "-":
        print(text)
    else:
        Path(dest).write_text(text + "\n")


def format_report(report: Any) -> str:
    """The report for people: identity, counts, per-output worst differences, the first regression."""
    d = report.as_dict()
    rec, new = report.recorded_identity, report.bundle_identity
    lines = [f"vla-replay: {d['log']}: {d['replayed']} of {d['runs']} engine runs replayed"
             + (f" ({d['skipped']} skipped: their inputs begin before the file does)" if d["skipped"] else "")
             + (f" ({d['failed_live']} failed live: the engine raised, so the loop used nothing of them)"
                if d["failed_live"] else "")
             + f", {d['compared']} compared, in {d['seconds']:.1f} s",
             f"vla-replay: recorded with {rec.get('model', '?')} {rec.get('precision', '?')} on "
             f"{rec.get('backend', '?')}; replayed with {new['model']} {new['precision']} on {new['backend']}"
             + (" (the same bundle)" if report.same_bundle else " (another bundle)")]
    if d["truncated"]:
        lines.append(f"vla-replay: warning: the log is truncated ({d['truncated']}): only its complete part was "
                     "replayed")
    lines.append(f"{'output':<24}{'tol':>9}{'runs':>6}{'max |a-b|':>12}{'beyond tol':>12}  worst at")
    rows = list(report.diffs.values()) + ([report.preprocess] if report.preprocess else [])
    for o in rows:
        worst = "-" if o.worst_tick is None else f"tick {o.worst_tick} (run {o.worst_run})"
        lines.append(f"{o.name:<24}{o.tol:>9.2g}{o.runs:>6}{o.max_abs:>12.3g}{o.bad_values:>12}  {worst}")
    first = report.first_regression()
    if first is None:
        lines.append("vla-replay: ok: every output within tolerance"
                     + (" (bit-exact)" if all(o.max_abs == 0.0 for o in rows) else ""))
    else:
        run, tick, index = first.first_bad
        lines.append(f"vla-replay: REGRESSION: first difference at tick {tick} (run {run}), output '{first.name}' "
                     f"[flat index {index}]; {len(report.regressions)} output(s) beyond tolerance")
    return "\n".join(lines)


def replay_one(log: Path, engine: str | None, tol: list[str], salvage: bool, threads: int | None,
               keep_outputs: bool = False) -> Any:
    """Read, open the engine (the log's own unless given), replay: the recording and the report
    (``keep_outputs``: with every run's replayed outputs, for ``--update``)."""
    from .compare import Tolerances
    from .reader import read_recording
    from .replayer import Replayer, open_for_replay

    tolerances = Tolerances.parse(tol)
    rec = read_recording(log, salvage=salvage)
    if engine is None:
        engine = rec.bundle.get("engine")
        if not engine or not Path(engine).exists():
            raise VlaError(f"{log}: recorded with bundle '{engine or '?'}', which is not here; give --engine BUNDLE")
    backend = open_for_replay(engine, threads)
    try:
        return rec, Replayer(backend, engine, tolerances, keep_outputs).replay(rec)
    finally:
        backend.close()


def run(args: argparse.Namespace) -> int:
    log = Path(args.log)
    if log.is_dir():
        from .fleet import run_fleet

        return run_fleet(args)
    if args.ray is not None:
        raise VlaError("--ray replays a folder of logs: give LOG_DIR")
    rec, report = replay_one(log, args.engine, args.tol, args.salvage, args.threads, keep_outputs=bool(args.update))
    print(format_report(report), file=sys.stderr)
    if args.json:
        write_json(report.as_dict(), args.json)
    if args.update:
        from .update import write_updated

        n = write_updated(rec, report, Path(args.update))
        print(f"vla-replay: wrote the new reference log {args.update} ({n} messages)", file=sys.stderr)
        return 0
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("vla-replay", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
