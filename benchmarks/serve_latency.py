"""vla-serve's drive round trip, as AlpaSim sees it: carla-driver-interface's FakeLoop against a real
``vla-serve`` process on loopback, with the reference bundle (model 2: three stages, controls).

Each drive call is timed on the client (a gRPC interceptor on the channel FakeLoop is given: the request
serialised, sent, decided, the plan sent back and parsed), and compared with the engine's own run time for
that same drive, which the server reports in the debug payload (``--mode carla``: FakeLoop reads it as
``CarlaDriveDebugInfo``; the alpasim mode's pickled dict carries the same numbers). The difference is what
serving costs on top of the engine: gRPC, the inputs (preprocess, ego, command), the decode and the plan.
Observations (images, egomotion, route) are timed too; AlpaSim sends them before each drive.

Target: drive round trip p99 <= 100 ms on this machine, engine included (AlpaSim steps at 10 Hz).

    python benchmarks/serve_latency.py [--bundle bundles/reference] [--steps 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from carla_driver_interface.protocol import channel_options
from carla_driver_interface.testing import FakeCamera, FakeLoop

from vla.runtime.loop.stats import percentile

TARGET_P99_MS = 100.0
#: Three cameras the reference bundle maps by name (front, left, right), at AlpaSim-like 16:9 sizes.
CAMERAS = (FakeCamera("camera_front_wide_120fov", width=640, height=360, fov_deg=120.0, pitch_down_deg=5.0),
           FakeCamera("camera_cross_left_120fov", width=640, height=360, fov_deg=120.0, yaw_left_deg=70.0),
           FakeCamera("camera_cross_right_120fov", width=640, height=360, fov_deg=120.0, yaw_left_deg=-70.0))


class Timer(grpc.UnaryUnaryClientInterceptor):
    """Wall time of every unary call, by method name."""

    def __init__(self) -> None:
        self.ms: dict[str, list[float]] = {}

    def intercept_unary_unary(self, continuation, details, request):  # grpc's interface
        start = time.perf_counter()
        outcome = continuation(details, request)
        outcome.result()  # a blocking call is done here; waiting makes the time the round trip either way
        self.ms.setdefault(details.method.rsplit("/", 1)[-1], []).append((time.perf_counter() - start) * 1000.0)
        return outcome


def export(bundle: Path) -> None:
    if not (bundle / "manifest.json").exists():
        print(f"serve_latency: exporting the reference model to {bundle}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "vla.export.cli", "reference", "-o", str(bundle)], check=True)


def start_server(bundle: Path, extra: list[str]) -> tuple[subprocess.Popen, int, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "vla.serve.cli", "--engine", str(bundle), "--port", "0",
                             "--mode", "carla", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line.rstrip())
        print(line.rstrip(), file=sys.stderr, flush=True)
        if " serving egodriver.EgodriverService " in line:
            port = int(line.rsplit(":", 1)[1])
            threading.Thread(target=lambda: [lines.append(ln.rstrip()) for ln in proc.stderr], daemon=True).start()
            return proc, port, lines
    raise SystemExit("serve_latency: vla-serve did not start:\n" + "\n".join(lines))


def figures(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"count": len(s), "p50": percentile(s, 50), "p90": percentile(s, 90), "p99": percentile(s, 99),
            "max": s[-1], "mean": float(np.mean(s))} if s else {"count": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("bundles/reference"),
                    help="bundle to serve (exported with `vla-export reference` when missing)")
    ap.add_argument("--steps", type=int, default=300, help="drive calls measured (default 300: 30 s of AlpaSim)")
    ap.add_argument("--skip", type=int, default=10, help="first drives left out (caches settling; default 10)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra vla-serve argument (repeatable)")
    args = ap.parse_args()
    export(args.bundle)
    proc, port, lines = start_server(args.bundle, args.serve_arg)
    timer = Timer()
    try:
        channel = grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options()), timer)
        with FakeLoop(channel, CAMERAS, initial_speed_mps=8.0) as loop:
            result = loop.run(args.steps + args.skip, seed=0)
        channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    drive = timer.ms["drive"][args.skip:]
    scalars = [d.scalars for d in result.debug[args.skip:] if d is not None]
    engine = [s["engine_ms"] for s in scalars if "engine_ms" in s]
    decision = [s["decision_ms"] for s in scalars if "decision_ms" in s]
    overhead = [r - e for r, e in zip(drive, engine, strict=False)] if len(engine) == len(drive) else []
    out = {
        "bundle": str(args.bundle), "steps": len(drive), "cameras": [f"{c.logical_id} {c.width}x{c.height} JPEG"
                                                                     for c in CAMERAS],
        "drive_round_trip_ms": figures(drive), "engine_ms": figures(engine), "decision_ms": figures(decision),
        "serving_overhead_ms": figures(overhead),
        "observations_ms": {m: figures(v[args.skip:]) for m, v in timer.ms.items() if m.startswith("submit_")},
        "holds": sum(1 for s in scalars if s.get("hold")), "fallbacks": sum(1 for s in scalars if s.get("ok") == 0.0),
        "distance_m": float(result.ego.positions[-1][0]),
        "server_lines": [ln for ln in lines if " closed: " in ln or "warm-up" in ln],
    }
    rt, eng = out["drive_round_trip_ms"], out["engine_ms"]
    out["p99_ratio_round_trip_to_engine"] = rt["p99"] / eng["p99"] if eng.get("count") else None
    out["target_met"] = rt["p99"] <= TARGET_P99_MS
    print(json.dumps(out, indent=2))
    print(f"drive round trip p50 {rt['p50']:.1f} ms, p99 {rt['p99']:.1f} ms (target <= {TARGET_P99_MS:g}: "
          f"{'met' if out['target_met'] else 'NOT met'}); engine p50 {eng['p50']:.1f} ms, p99 {eng['p99']:.1f} ms; "
          f"serving overhead p50 {out['serving_overhead_ms'].get('p50', float('nan')):.1f} ms, "
          f"p99 {out['serving_overhead_ms'].get('p99', float('nan')):.1f} ms over {len(drive)} drives",
          file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
