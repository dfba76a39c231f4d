"""Fleet replay's scaling on Ray Data (issue 19: "scaling from 1 to 2 workers measured").

Records ``--logs`` logs of ``--ticks`` ticks with ``vla-run --record`` (one synthetic seed each, into a
temporary folder, once), then replays the whole folder with ``vla-replay``'s own functions:

- in this process, one engine (``threads=1``, as each actor has): the work without Ray;
- on an embedded local Ray (started once, as many CPUs as the most workers asked, not timed), with
  ``--workers`` 1 then 2 (and any others given), ``--repeats`` times each, interleaved so drift of
  the machine falls on every arm alike.

Each Ray figure is the wall time of one Ray Data execution: the actors' start-up (a process each,
imports, the engine opened once) is part of it, as it is of every ``vla-replay --ray``. "replay s" is
the sum of the logs' own replay times (read + replay), the work the workers share.

    python benchmarks/fleet_replay.py --engine /tmp/b/v2
    python benchmarks/fleet_replay.py --engine bundles/reference --logs 16 --ticks 50 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import describe

from vla.runtime.ray_start import start_ray
from vla.runtime.replay.fleet import ReplayOptions, log_status, replay_here, replay_on_ray

VLA_RUN = [sys.executable, "-m", "vla.runtime.cli"]


def record_logs(engine: str, folder: Path, logs: int, ticks: int, parallel: int = 2) -> list[Path]:
    """``logs`` recordings of ``ticks`` ticks, a synthetic seed each, ``parallel`` vla-run at a time."""
    paths = [folder / f"log-{i:03d}.mcap" for i in range(logs)]
    pending = list(enumerate(paths))
    running: list[tuple[Path, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < parallel:
            i, path = pending.pop(0)
            cmd = [*VLA_RUN, "--engine", engine, "--camera", f"synthetic://?seed={i + 1}", "--frames", str(ticks),
                   "--record", str(path)]
            running.append((path, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                   text=True)))
        path, proc = running.pop(0)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"fleet_replay: recording {path.name} failed: {err.strip().splitlines()[-1:]}")
    return paths


def timed(label: str, workers: int | None, call: Any) -> dict[str, Any]:
    """One fleet replay: wall time, the logs' own replay time, and whether every log replayed ok."""
    t0 = time.perf_counter()
    rows = call()
    wall = time.perf_counter() - t0
    status = log_status(rows)
    per_log = {r["log"]: r["seconds"] for r in rows}
    bad = sorted(name for name, s in status.items() if s != "ok")
    if bad:
        print(f"fleet_replay: warning: {label}: {len(bad)} logs not ok (first {bad[0]})", file=sys.stderr)
    return {"label": label, "workers": workers, "wall_s": wall, "replay_s": sum(per_log.values()),
            "logs": len(status), "not_ok": len(bad)}


def summarize_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration (label): the median wall time over repeats and its throughput."""
    out: list[dict[str, Any]] = []
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        wall = statistics.median(r["wall_s"] for r in mine)
        out.append({"label": label, "workers": mine[0]["workers"], "repeats": len(mine), "wall_s": wall,
                    "wall_all_s": [round(r["wall_s"], 3) for r in mine],
                    "replay_s": statistics.median(r["replay_s"] for r in mine), "logs": mine[0]["logs"],
                    "logs_per_s": mine[0]["logs"] / wall if wall > 0 else 0.0,
                    "not_ok": max(r["not_ok"] for r in mine)})
    return out


def table(results: list[dict[str, Any]], base: dict[str, Any] | None) -> str:
    lines = ["| configuration | workers | wall s (median) | replay s | logs/s | speed-up vs 1 worker |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        speed = f"{base['wall_s'] / r['wall_s']:.2f}×" if base and r["workers"] else "–"
        lines.append(f"| {r['label']} | {r['workers'] or '–'} | {r['wall_s']:.2f} | {r['replay_s']:.2f} | "
                     f"{r['logs_per_s']:.2f} | {speed} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="bundles/reference", help="bundle to record and replay with "
                   "(default bundles/reference)")
    p.add_argument("--logs", type=int, default=8, help="logs in the fleet (default 8)")
    p.add_argument("--ticks", type=int, default=30, help="ticks per log (default 30)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray workers to compare (default 1 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration, interleaved (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args()
    if not Path(args.engine).exists():
        p.error(f"--engine {args.engine}: no such bundle")
    options = ReplayOptions(args.engine, threads=1)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vla-fleet-replay-") as tmp:
        t0 = time.perf_counter()
        logs = record_logs(args.engine, Path(tmp), args.logs, args.ticks)
        mb = sum(p.stat().st_size for p in logs) / 1e6
        print(f"fleet_replay: recorded {len(logs)} logs × {args.ticks} ticks ({mb:.1f} MB) in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        start_ray("local", max(args.workers))
        ray_up = time.perf_counter() - t0
        try:
            for rep in range(args.repeats):
                order = args.workers if rep % 2 == 0 else list(reversed(args.workers))
                runs.append(timed("in-process, 1 engine", None, lambda: replay_here(logs, options)))
                for w in order:
                    runs.append(timed(f"Ray Data, {w} actor{'s' if w > 1 else ''}", w,
                                      lambda w=w: replay_on_ray(logs, options, w)))
                    print(f"fleet_replay: repeat {rep + 1}: {w} workers {runs[-1]['wall_s']:.2f} s",
                          file=sys.stderr, flush=True)
        finally:
            import ray

            ray.shutdown()
    results = summarize_runs(runs)
    base = next((r for r in results if r["workers"] == 1), None)
    machine = describe()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {machine}; load average at the end {load} (other work on the cores slows both arms and "
          "hides scaling)")
    print(f"bundle {args.engine}; {args.logs} logs × {args.ticks} ticks; engine threads 1 per actor; embedded "
          f"local Ray (started once in {ray_up:.1f} s, not counted); median of {args.repeats} interleaved runs; "
          "Ray wall time includes the actors' start-up (engine opened once per actor)")
    print()
    print(table(results, base))
    two = next((r for r in results if r["workers"] == 2), None)
    if base and two:
        print()
        print(f"speed-up 1 → 2 workers: {base['wall_s'] / two['wall_s']:.2f}× "
              f"({base['logs_per_s']:.2f} → {two['logs_per_s']:.2f} logs/s)")
    if args.json:
        figures = {"machine": machine, "load": os.getloadavg(), "engine": args.engine, "logs": args.logs,
                   "ticks": args.ticks, "ray_start_s": ray_up, "results": results, "runs": runs}
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0 if all(r["not_ok"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
