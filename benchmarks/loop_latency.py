"""The skeleton's acceptance figure: vla-run on the reference bundle, synthetic cameras, N ticks.

Runs the real pipeline (``vla-run`` in its own process, the synthetic rig in another) and reports,
from the published JSON lines, p50/p99/max per stage with trtexec's percentile definitions, the
deadline misses and fallbacks, and whether the loop held its rate. It judges the target
"p99 end-to-end ≤ budget at 10 Hz" and exits non-zero when it is missed.

    python benchmarks/loop_latency.py --engine bundles/reference --ticks 300
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from machine import CAMERA_720P, describe

from vla.runtime.loop.stats import summarize


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="bundles/reference")
    p.add_argument("--camera", default=CAMERA_720P, help=f"camera URI (default {CAMERA_720P}: real-size frames)")
    p.add_argument("--ticks", type=int, default=300)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--budget-ms", type=float, default=100.0)
    p.add_argument("--sync", choices=("frame", "clock"), default="frame", help="vla-run --sync")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args()

    cmd = [sys.executable, "-m", "vla.runtime.cli", "--engine", args.engine, "--camera", args.camera,
           "--frames", str(args.ticks), "--rate", str(args.rate), "--budget-ms", str(args.budget_ms),
           "--sync", args.sync]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    stages = {s: summarize([r["latency_ms"][s] for r in records if s in r["latency_ms"]])
              for s in ("preprocess", "engine", "decode", "e2e")}
    status = {s: sum(r["status"] == s for r in records) for s in ("ok", "late", "fallback")}
    span = records[-1]["publish_time"] - records[0]["publish_time"]
    achieved_hz = (len(records) - 1) / span if span > 0 else float("nan")
    result = {
        "machine": describe(),
        "command": " ".join(cmd[1:]),
        "ticks": len(records), "status": status, "achieved_hz": achieved_hz, "wall_s": wall,
        "latency_ms": stages,
    }
    print(f"machine: {result['machine']}")
    print(f"ticks {len(records)} at {achieved_hz:.2f} Hz (target {args.rate:g}); status {status}")
    print(f"{'stage (ms)':<12}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'mean':>8}")
    for name, st in stages.items():
        print(f"{name:<12}{st['median']:8.2f}{st['p90']:8.2f}{st['p99']:8.2f}{st['max']:8.2f}{st['mean']:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    held = abs(achieved_hz - args.rate) / args.rate < 0.02 and stages["e2e"]["p99"] <= args.budget_ms
    print(f"target (p99 e2e ≤ {args.budget_ms:g} ms at {args.rate:g} Hz): {'met' if held else 'MISSED'}")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
