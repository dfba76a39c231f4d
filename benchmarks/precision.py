"""Precision benchmark: the reference model exported FP32, FP16 and INT8, timed side by side on ONNX
Runtime CPU, with each one's trajectory error on held-out synthetic drives the export never saw.

Targets from issue 5: INT8 ≥ 1.5× faster than FP32 with trajectory ADE ≤ 2% of the reference
trajectories' spread; the FP32 export (with its parity check) ≤ 60 s on 2 cores.

Latencies are interleaved run for run (FP32, FP16, INT8, FP32, ...) so machine noise hits them
alike; the ratio of medians is the figure. The held-out drives here use seeds 20000+, disjoint from
the export's own gate (10000+) and calibration (1000+) drives.

    python benchmarks/precision.py [--out bundles/bench] [--runs 30] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx
from machine import describe
from reference_export import export_reference

from vla.export.accuracy import measure as measure_accuracy
from vla.export.parity import run_torch
from vla.export.reference import build_reference
from vla.export.scenes import scene_sets
from vla.export.speed import median_latencies_ms
from vla.runtime.backends.ort import open_session
from vla.runtime.cli_support import run_main
from vla.runtime.manifest import parse_manifest

BENCH_SEED = 20_000


def measure_precisions(out: Path, runs: int = 30, threads: int | None = None, heldout: int = 16, reuse: bool = False
            ) -> dict:
    """Export (unless reusing) and measure the three precisions; the figures as a dict."""
    seconds = {}
    for precision in ("fp32", "fp16", "int8"):
        if not (reuse and (out / precision / "model.onnx").exists()):
            seconds[precision] = round(export_reference(out / precision, "--precision", precision), 1)
            print(f"exported {precision} in {seconds[precision]} s", file=sys.stderr)
    models = {k: onnx.load(str(out / k / "model.onnx")) for k in ("fp32", "fp16", "int8")}
    spec = parse_manifest(json.loads((out / "fp32" / "manifest.json").read_text()))
    sess32 = open_session(str(out / "fp32" / "model.onnx"))
    names = [o.name for o in sess32.get_outputs()]

    def step(feeds):
        return dict(zip(names, sess32.run(None, feeds), strict=True))

    held = scene_sets(spec, step, count=heldout, seed=BENCH_SEED)
    net = build_reference()
    refs = [run_torch(net, spec, feeds) for feeds in held]
    accuracy = {}
    for k in ("fp32", "fp16", "int8"):
        sess = open_session(str(out / k / "model.onnx"))
        got = [dict(zip(names, sess.run(None, feeds), strict=True)) for feeds in held]
        accuracy[k] = measure_accuracy(spec, refs, got)["trajectory"]
    latency = median_latencies_ms(models, held[0], runs=runs, warmup=3, threads=threads)
    excluded = {k: len(json.loads((out / k / "manifest.json").read_text())["export"]["precision"]
                       .get("excluded", [])) for k in ("fp16", "int8")}
    return {
        "machine": describe(),
        "export_seconds": seconds,
        "latency_ms": latency,
        "speedup_vs_fp32": {k: latency["fp32"] / latency[k] for k in latency},
        "trajectory": accuracy,
        "excluded_nodes": excluded,
        "heldout_sets": len(held),
    }


def table(result: dict) -> list[str]:
    """The Markdown table of a ``measure`` result."""
    lat, acc, seconds, excluded = (result["latency_ms"], result["trajectory"], result["export_seconds"],
                                   result["excluded_nodes"])
    rows = ["| precision | median ms | × FP32 | ADE m | FDE m | ADE / spread | nodes kept FP32 | export s |",
            "|---|---|---|---|---|---|---|---|"]
    for k in ("fp32", "fp16", "int8"):
        t = acc[k]
        rows.append(f"| {k} | {lat[k]:.1f} | {result['speedup_vs_fp32'][k]:.2f} | {t['ade_m']:.4f} | "
                    f"{t['fde_m']:.4f} | {100 * t['rel_ade']:.2f}% | {excluded.get(k, '-')} | {seconds.get(k, '-')} |")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bundles/bench"))
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: the runtime's)")
    p.add_argument("--heldout", type=int, default=16)
    p.add_argument("--reuse", action="store_true", help="reuse bundles already in --out")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    result = measure_precisions(args.out, args.runs, args.threads, args.heldout, args.reuse)
    result["command"] = "python benchmarks/precision.py " + " ".join(sys.argv[1:])
    accuracy, seconds = result["trajectory"], result["export_seconds"]
    print(f"machine: {result['machine']}")
    print("\n".join(table(result)))
    print(f"spread of the reference trajectories: {accuracy['fp32']['spread_m']:.2f} m over "
          f"{result['heldout_sets']} sets")
    ok = result["speedup_vs_fp32"]["int8"] >= 1.5 and accuracy["int8"]["rel_ade"] <= 0.02
    print(f"INT8 target (>= 1.5x, ADE <= 2% of spread): {'met' if ok else 'NOT met'}")
    if "fp32" in seconds:
        print(f"FP32 export target (<= 60 s): {'met' if seconds['fp32'] <= 60 else 'NOT met'} ({seconds['fp32']} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_main("precision", main))
