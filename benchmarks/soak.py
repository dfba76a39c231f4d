"""Soak: ``vla-run`` for a long stretch (default 10 minutes at 10 Hz) on the reference model with
synthetic cameras, reporting tail latency, deadline misses, dropped frames, fallbacks and whether
memory grows.

RSS of the loop process (and of the camera process) is sampled from /proc every few seconds;
"start" is taken after a minute of warm-up (allocators and caches settle), "end" at the last sample.
The loop's RSS is also reported per minute, with a least-squares slope over the settled samples, so
a leak (steady slope) can be told from allocators settling (steps that stop): the growth over the
second half of the run is the figure to judge, since a leak keeps growing there and a step does not.
The target from issue 4: p99.9 / p50 ≤ 1.3 end-to-end and no RSS growth beyond noise.

    python benchmarks/soak.py --engine bundles/reference --minutes 10 [--json FILE] [-- --threads 1 ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import CAMERA_720P, describe

from vla.runtime.loop.stats import summarize


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def per_minute(samples: list[tuple[float, float, float]]) -> list[float]:
    """The loop's RSS (MB) at the last sample of each whole minute."""
    by_minute: dict[int, float] = {}
    for t, loop, _ in samples:
        by_minute[int(t // 60)] = loop
    return [by_minute[m] for m in sorted(by_minute)]


def slope_mb_per_min(samples: list[tuple[float, float, float]]) -> float:
    """Least-squares slope of the loop's RSS over time, in MB per minute."""
    if len(samples) < 2:
        return 0.0
    ts = [s[0] / 60.0 for s in samples]
    ys = [s[1] for s in samples]
    tm, ym = sum(ts) / len(ts), sum(ys) / len(ys)
    den = sum((t - tm) ** 2 for t in ts)
    return sum((t - tm) * (y - ym) for t, y in zip(ts, ys, strict=True)) / den if den else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="bundles/reference")
    p.add_argument("--camera", default=CAMERA_720P, help=f"camera URI (default {CAMERA_720P}: real-size frames)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--warmup-s", type=float, default=60.0)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("vla_run_args", nargs="*", metavar="-- VLA_RUN_ARGS", help="more vla-run options, after --")
    args = p.parse_args()

    out = Path(tempfile.mkdtemp(prefix="vla-soak-")) / "run.jsonl"
    cmd = [sys.executable, "-m", "vla.runtime.cli", "--engine", args.engine, "--camera", args.camera,
           "--duration", str(args.minutes * 60), "--output", str(out), *args.vla_run_args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float, float]] = []  # (t, loop MB, cameras MB)
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            time.sleep(args.sample_s)
            loop = rss_mb(proc.pid)
            cams = sum(r for r in (rss_mb(c) for c in children(proc.pid)) if r)
            if loop is not None:
                samples.append((time.monotonic() - t0, loop, cams))
    except KeyboardInterrupt:
        proc.terminate()
    _, err = proc.communicate()
    if proc.returncode != 0:
        print(err, file=sys.stderr)
        return proc.returncode or 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    e2e = summarize([r["latency_ms"]["e2e"] for r in records])  # every published line: its frame's age
    engine = summarize([r["latency_ms"]["engine"] for r in records if "engine" in r["latency_ms"]])
    status = {s: sum(r["status"] == s for r in records) for s in ("ok", "late", "fallback", "fault")}
    settled = [s for s in samples if s[0] >= args.warmup_s] or samples
    start, end = settled[0], settled[-1]
    summary_line = next((ln for ln in err.splitlines() if ln.startswith("summary:")), "")
    result = {
        "machine": describe(),
        "command": " ".join(cmd[1:]),
        "ticks": len(records), "status": status, "e2e_ms": e2e, "engine_ms": engine,
        "p999_over_p50": e2e["p99.9"] / e2e["median"],
        "rss_mb": {"loop_start": start[1], "loop_end": end[1], "cameras_start": start[2], "cameras_end": end[2],
                   "loop_max": max(s[1] for s in settled), "loop_min": min(s[1] for s in settled),
                   "loop_by_minute": per_minute(samples), "loop_slope_mb_per_min": slope_mb_per_min(settled),
                   "loop_growth_second_half_mb": end[1] - next(s[1] for s in samples if s[0] >= samples[-1][0] / 2)},
        "vla_run_summary": summary_line,
    }
    print(f"machine: {result['machine']}")
    print(f"ticks {len(records)}; status {status}; {summary_line}")
    print(f"e2e ms: p50 {e2e['median']:.1f}  p99 {e2e['p99']:.1f}  p99.9 {e2e['p99.9']:.1f}  max {e2e['max']:.1f}"
          f"  (p99.9/p50 = {result['p999_over_p50']:.2f}, target <= 1.3)")
    print(f"engine ms: p50 {engine['median']:.1f}  p99 {engine['p99']:.1f}  p99.9 {engine['p99.9']:.1f}"
          f"  max {engine['max']:.1f}")
    r = result["rss_mb"]
    print(f"RSS MB after {args.warmup_s:g} s: loop {r['loop_start']:.1f} -> {r['loop_end']:.1f} "
          f"(min {r['loop_min']:.1f}, max {r['loop_max']:.1f}); "
          f"cameras {r['cameras_start']:.1f} -> {r['cameras_end']:.1f}")
    print("loop RSS MB per minute: " + " ".join(f"{v:.1f}" for v in r["loop_by_minute"])
          + f"; slope after warm-up {r['loop_slope_mb_per_min']:+.3f} MB/min; "
          f"growth over the second half {r['loop_growth_second_half_mb']:+.2f} MB (a leak grows there too)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
