"""Closed-loop figures of the trained reference model (issue 18's targets), in one command.

1. Exports the trained reference model at FP32, FP16 and INT8 (skipped when the bundle is there).
2. Targets: vla-sim on the held-out seeds (default 1000..1019) with the FP32 and the INT8 bundle, the
   engine's measured time on the simulated clock (what this machine does): route completion,
   collisions, off-road, score (PDMS), ticks ok. INT8 must be within 2 points of FP32 on the score.
3. The sweep: score vs injected engine latency (0..400 ms) for each precision, on local Ray
   (`vla-sim --sweep`), on the first --sweep-seeds seeds.

    python benchmarks/closed_loop.py [--bundles bundles] [--out sim-bench] [--seeds 20] [--sweep-seeds 20]

Prints markdown for RESULTS.md; every vla-sim run leaves its results.json / sweep.* under --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8")
LATENCIES = "0,50,100,200,400"


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def export(bundles: Path) -> None:
    for p in PRECISIONS:
        out = bundles / f"ref-{p}"
        if not (out / "manifest.json").is_file():
            run(["vla-export", "reference", "--precision", p, "-o", str(out)])


def targets(bundles: Path, out: Path, seed: int, n: int) -> list[dict]:
    rows = []
    for p in ("fp32", "int8"):
        dest = out / f"targets-{p}"
        run(["vla-sim", "--engine", str(bundles / f"ref-{p}"), "--scenarios", str(n), "--seed", str(seed),
             "--out", str(dest), "--no-progress"])
        total = json.loads((dest / "results.json").read_text())["overall"]
        rows.append({"precision": p, **total})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, default=Path("bundles"))
    ap.add_argument("--out", type=Path, default=Path("sim-bench"))
    ap.add_argument("--seed", type=int, default=1000, help="first held-out seed (default 1000)")
    ap.add_argument("--seeds", type=int, default=20, help="held-out scenarios for the targets (default 20)")
    ap.add_argument("--sweep-seeds", type=int, default=20, help="scenarios per sweep point (default 20)")
    ap.add_argument("--no-sweep", action="store_true")
    args = ap.parse_args()
    export(args.bundles)
    rows = targets(args.bundles, args.out, args.seed, args.seeds)
    print("| precision | scenarios | route completion | collisions | off-road | score (PDMS) | ticks ok |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['precision']} | {r['episodes']} | {100 * r['route_completion']:.1f} % | {r['collisions']} | "
              f"{r['offroad']} | {r['score']:.3f} | {100 * r['ok_fraction']:.1f} % |")
    gap = 100 * (rows[1]["score"] - rows[0]["score"])
    print(f"\nINT8 - FP32 score: {gap:+.1f} points (target: within 2 either way)")
    if not args.no_sweep:
        run(["vla-sim", "--engine", str(args.bundles / "ref-{precision}"), "--sweep", f"latency={LATENCIES}",
             "--sweep", "precision=" + ",".join(PRECISIONS), "--scenarios", str(args.sweep_seeds),
             "--seed", str(args.seed), "--out", str(args.out / "sweep"), "--no-progress"])
        print((args.out / "sweep" / "sweep.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
