"""``vla-sim``: drive a bundle in closed loop through the simulated world, and sweep it.

    vla-sim --engine bundles/reference --scenarios 20 --seed 1000 --out sim-results
    vla-sim --engine bundles/reference --latency-ms 200 --drop-frames 0.05
    vla-sim --engine 'bundles/ref-{precision}' --sweep latency=0,50,100,200,400 --sweep precision=fp32,fp16,int8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from vla.runtime.cli_support import run_main
from vla.runtime.errors import VlaError

from .closed_loop import SimOptions
from .sweep import engine_for, grid, parse_axis, point_label, table, tasks

EPILOG = """\
Each scenario (seed S, S+1, …) is a route through a seeded road network with traffic and obstacles;
the navigator gives the route commands ("turn left", "change lane to the right", "stop") as the
bundle's L input. The bundle runs in the real vla-run loop (same preprocessing, deadlines, fallbacks,
health, decode) on a simulated clock: the world moves one tick period per tick, and each answer is
followed from when it is published. Without --latency-ms an engine run takes its measured time;
with it, exactly that long, so a run gives the same result on any machine.

Metrics per scenario and overall: route completion, collisions, off-road, comfort (jerk), the
NAVSIM-style score PDMS = NC·DAC·(5·TTC + 5·EP + 2·C)/12, and the loop's status counts.
--out DIR writes results.json and a top-down PNG of each failed scenario (--png all: every one).

Sweeps run every scenario at every point of the grid on Ray (an embedded local Ray unless
--ray-address), and write sweep.json, sweep.md (the table) and sweep.png (score vs latency, one line
per precision) to --out. A precision axis needs one bundle per precision: --engine 'DIR-{precision}'.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-sim", description="Drive a bundle in closed loop through the simulated "
                                "world, through the real runtime loop.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True, help="the bundle folder (vla-export); with a precision sweep, a "
                   "template like 'bundles/ref-{precision}'")
    p.add_argument("--scenarios", type=int, default=5, help="how many scenarios (default 5)")
    p.add_argument("--seed", type=int, default=1000, help="the first scenario's seed (default 1000: the held-out "
                   "seeds; vla-train uses seeds below 1000)")
    p.add_argument("--latency-ms", type=float, default=None, help="every engine run takes exactly this long on "
                   "the simulated clock (default: its measured time)")
    p.add_argument("--drop-frames", type=float, default=0.0, metavar="P", help="each camera loses each frame "
                   "with probability P (default 0)")
    p.add_argument("--realtime", action="store_true", help="run on the wall clock instead of the simulated one")
    p.add_argument("--budget-ms", type=float, default=None, help="the loop's deadline after capture (default 100, "
                   "or the injected latency + 50 if that is more)")
    p.add_argument("--rate", type=float, default=10.0, help="ticks (and camera frames) per second (default 10)")
    p.add_argument("--duration", type=float, default=None, help="seconds per scenario (default: the scenario's)")
    p.add_argument("--format", default="rgb", help="the cameras' pixel format (rgb, bgr, yuyv, uyvy, nv12, i420, "
                   "gray; default rgb)")
    p.add_argument("--backend", default="auto", help="ort, torch or trt (default auto, as vla-run)")
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: as vla-run; 1 per Ray worker)")
    p.add_argument("--stage-rate", default=None, help="a bundle of stages: tick, async or every:N (as vla-run)")
    p.add_argument("--out", type=Path, default=None, help="write results.json (and PNGs; sweeps: sweep.*) here")
    p.add_argument("--png", choices=("failed", "all", "none"), default="failed",
                   help="top-down pictures to write with --out (default: failed scenarios)")
    p.add_argument("--sweep", action="append", default=[], metavar="AXIS=V1,V2",
                   help="sweep an axis (latency, precision, drop, stage_rate); repeat for a grid")
    p.add_argument("--ray-address", default=None, help="a Ray cluster for sweeps (default: an embedded local Ray)")
    p.add_argument("--workers", type=int, default=None, help="Ray workers for a local sweep (default: the CPU count)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check(args: argparse.Namespace) -> None:
    if args.scenarios < 1:
        raise VlaError(f"--scenarios must be >= 1 (got {args.scenarios})")
    if args.latency_ms is not None and args.latency_ms < 0:
        raise VlaError(f"--latency-ms must be >= 0 (got {args.latency_ms:g})")
    if not 0.0 <= args.drop_frames < 1.0:
        raise VlaError(f"--drop-frames must be in [0, 1) (got {args.drop_frames:g})")
    for flag, value in (("--rate", args.rate), ("--budget-ms", args.budget_ms), ("--duration", args.duration)):
        if value is not None and not value > 0:
            raise VlaError(f"{flag} must be > 0 (got {value:g})")
    from vla.runtime.inputs.sources.base import PIXEL_FORMATS

    if args.format not in PIXEL_FORMATS:
        raise VlaError(f"--format {args.format!r}: one of {', '.join(PIXEL_FORMATS)}")


def _options(args: argparse.Namespace) -> SimOptions:
    from vla.runtime.stages import parse_rate

    return SimOptions(latency_ms=args.latency_ms, drop_frames=args.drop_frames, realtime=args.realtime,
                      rate_hz=args.rate, budget_ms=args.budget_ms, fmt=args.format, duration_s=args.duration,
                      stage_rate=None if args.stage_rate is None else parse_rate(args.stage_rate))


def _progress(total: int, disable: bool, unit: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, file=sys.stderr, disable=True if disable else None, dynamic_ncols=True)


def run_scenarios(args: argparse.Namespace) -> int:
    from vla.runtime.engine import open_engine

    from .closed_loop import drive
    from .report import draw_failed, overall, scenario_line, summary_line, write_results
    from .world import make_scenario

    options = _options(args)
    backend = open_engine(args.engine, threads=args.threads, backend=args.backend, stage_rate=options.stage_rate)
    clock = "wall clock" if options.realtime else (
        "simulated clock, measured engine time" if options.latency_ms is None
        else f"simulated clock, engine time {options.latency_ms:g} ms")
    print(f"vla-sim: {backend.manifest.name} on {backend.describe()}; {args.scenarios} scenarios from seed "
          f"{args.seed}; {clock}; budget {options.budget():g} ms"
          + (f"; frame drops {options.drop_frames:g}" if options.drop_frames else ""), file=sys.stderr)
    drives, started = [], time.monotonic()
    bar = _progress(args.scenarios, args.no_progress, "scenario")
    try:
        for seed in range(args.seed, args.seed + args.scenarios):
            scenario = make_scenario(seed)

            def ticked(record: dict[str, Any], seed: int = seed) -> None:
                bar.set_postfix_str(f"seed {seed} tick {record['tick']} {record['status']}", refresh=False)

            d = drive(backend, scenario, options, on_tick=ticked)
            drives.append(d)
            bar.update(1)
            bar.write(scenario_line(d.result), file=sys.stdout)
    finally:
        bar.close()
        backend.close()
    results = [d.result for d in drives]
    total = overall(results)
    print(f"vla-sim: {summary_line(total, len(results))} in {time.monotonic() - started:.0f} s")
    if args.out is not None:
        config = {"engine": args.engine, "seeds": [args.seed, args.seed + args.scenarios - 1],
                  "options": options.__dict__, "model": backend.manifest.name}
        path = write_results(args.out, config, results, total)
        print(f"vla-sim: results {path}")
        if args.png != "none":
            for png in draw_failed(args.out, drives, every=args.png == "all"):
                print(f"vla-sim: picture {png}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    import os

    from .parallel import run_on_ray
    from .report import overall

    axes = [parse_axis(text) for text in args.sweep]
    points = grid(axes)
    seeds = list(range(args.seed, args.seed + args.scenarios))
    todo = tasks(args.engine, points, seeds)
    for engine in sorted({t.engine for t in todo}):
        if not Path(engine).exists():
            raise VlaError(f"bundle {engine} not found (the sweep needs it; export it with vla-export … -o {engine})")
    options = _options(args)
    workers = args.workers or os.cpu_count() or 1
    print(f"vla-sim: sweep of {len(points)} points x {len(seeds)} scenarios = {len(todo)} runs on Ray "
          f"({args.ray_address or f'local, {workers} workers'})", file=sys.stderr)
    bar = _progress(len(todo), args.no_progress, "run")
    try:
        results = run_on_ray(todo, options, address=args.ray_address, workers=workers, backend=args.backend,
                             threads=args.threads or 1,
                             on_result=lambda task, r: (bar.update(1), bar.set_postfix_str(point_label(task.point))))
    finally:
        bar.close()
    by_point: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for task, result in zip(todo, results, strict=True):
        by_point[points.index(task.point)].append(result)
    rows = [{"point": p, "engine": engine_for(args.engine, p), "scenarios": len(by_point[i]),
             "overall": overall(by_point[i]), "scenarios_results": by_point[i]} for i, p in enumerate(points)]
    names = [n for n, _ in axes]
    text = table(rows, names)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.json").write_text(json.dumps({"axes": dict(axes), "seeds": seeds, "rows": rows},
                                                        indent=1, default=str) + "\n")
        (args.out / "sweep.md").write_text(text + "\n")
        if "latency" in names:
            from .plots import sweep_plot

            flat = [{"latency_ms": r["point"]["latency"], "score": r["overall"]["score"],
                     "precision": r["point"].get("precision", "bundle")} for r in rows]
            print(f"vla-sim: plot {sweep_plot(args.out / 'sweep.png', flat)}")
        print(f"vla-sim: table {args.out / 'sweep.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        _check(args)
        return run_sweep(args) if args.sweep else run_scenarios(args)

    return run_main("vla-sim", body)


if __name__ == "__main__":
    sys.exit(main())
