"""``vla-bench``: latency of an engine or of the whole loop, in figures comparable with trtexec's.

    vla-bench --engine bundles/reference                     # engine mode: preprocess, compute, decode
    vla-bench --engine any_model.onnx --shapes x:1x3x224x224 # any ONNX graph, generated inputs
    vla-bench --engine bundles/reference --loop --ticks 300  # the real vla-run pipeline, per tick
    vla-bench compare before.json after.json                 # per-figure ratios of two reports
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..cli_support import run_main
from ..errors import VlaError
from ..stages import parse_rate

EPILOG = """\
figures: min, mean, median, p90, p95, p99, p99.9, max, standard deviation and coefficient of
variation per stage, in ms; median and percentiles exactly as trtexec computes them
(percentile p = sorted[max(N-1-int((1-p/100)*N), 0)]; the median of an even count is the mean of
the two middle values). Engine mode runs until both --iterations and --duration are reached, after
--warmup seconds, as trtexec does. Every report carries the machine, versions and clock state;
on a Jetson, tegrastats is sampled during the run.

examples:
  vla-bench --engine bundles/reference --json ref.json --png ref.png
  vla-bench --engine bundles/reference-int8 --json int8.json && vla-bench compare ref.json int8.json
  vla-bench --engine bundles/reference --loop --ticks 600 --budget-ms 100 --markdown loop.md
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-bench", description=__doc__.split("\n\n")[0].strip(), epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True, metavar="PATH", help="a bundle folder, an .onnx, or a TensorRT .plan")
    p.add_argument("--backend", choices=("auto", "ort", "trt", "torch"), default="auto",
                   help="as vla-run: auto picks TensorRT for a .plan or on --device cuda when installed, "
                   "else ONNX Runtime on the CPU (default auto)")
    p.add_argument("--iterations", type=int, default=10, metavar="N",
                   help="at least N timed runs (default 10)")
    p.add_argument("--duration", type=float, default=3.0, metavar="S", help="and at least S seconds (default 3)")
    p.add_argument("--warmup", type=float, default=0.2, metavar="S", help="untimed warm-up seconds (default 0.2)")
    p.add_argument("--budget-ms", type=float, default=None, metavar="MS",
                   help="count end-to-end times above this as deadline misses (loop mode default 100)")
    p.add_argument("--shapes", metavar="SPEC", help="symbolic input dims, trtexec syntax: name:1x3x224x224,...")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads "
                       "(default: every core on 1-2 cores, else cores - 1)")
    p.add_argument("--spin-wait", action="store_true", help="let ONNX Runtime's threads spin between runs")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the engine runs, as vla-run --device (default cpu)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay CUDA graphs: TensorRT's engine (engine mode), the tick's device work (--loop "
                   "--device cuda), as vla-run does by default")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    p.add_argument("--stage", metavar="NAME", help="a bundle of stages: time this stage alone (a repeat stage with "
                   "all its steps); without it every stage is timed inside each run, as stage:NAME rows")
    p.add_argument("--command", metavar="TEXT", help="route command, encoded as vla-run --command does (default: "
                   "the bundle's default command)")
    p.add_argument("--cpu", metavar="LIST", help="pin to these CPUs, as vla-run --cpu (e.g. 2-5)")
    p.add_argument("--rt-priority", type=int, metavar="N",
                   help="run under SCHED_FIFO priority N, as vla-run --rt-priority (a warning when not permitted)")
    g = p.add_argument_group("loop mode (the real vla-run pipeline)")
    g.add_argument("--loop", action="store_true", help="time the loop per tick instead of the engine")
    g.add_argument("--camera", default="synthetic://", help="camera URI (default synthetic://)")
    g.add_argument("--rate", type=float, default=10.0, help="ticks per second (default 10)")
    g.add_argument("--ticks", type=int, default=300, help="timed ticks (default 300)")
    g.add_argument("--stage-rate", metavar="tick|async|every:N",
                   help="a bundle of stages: when its slow stages run, as vla-run --stage-rate")
    g.add_argument("--limits", choices=("enforce", "warn", "off"), default="enforce",
                   help="the plausibility limits, as vla-run --limits: enforce (default), warn, off")
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="FILE", help="write the full result (vla.bench/1) as JSON")
    g.add_argument("--markdown", metavar="FILE", help="write a Markdown section for RESULTS.md")
    g.add_argument("--png", metavar="FILE", help="write a latency histogram and per-run timeline (matplotlib)")
    return p


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-bench compare", description="Per-figure ratios B/A of two vla-bench "
                                "JSON reports (below 1: B is faster).")
    p.add_argument("a", metavar="A.json")
    p.add_argument("b", metavar="B.json")
    return p


def _check(args: argparse.Namespace) -> None:
    if args.iterations < 1 or args.ticks < 1:
        raise VlaError("--iterations and --ticks must be at least 1")
    if args.duration < 0 or args.warmup < 0:
        raise VlaError("--duration and --warmup must be 0 or more")
    if args.budget_ms is not None and args.budget_ms <= 0:
        raise VlaError("--budget-ms must be positive")
    if args.rate <= 0:
        raise VlaError("--rate must be positive")
    for name in ("json", "markdown", "png"):
        target = getattr(args, name)
        if target and not Path(target).resolve().parent.is_dir():
            raise VlaError(f"--{name} {target}: its folder does not exist")
        if target and Path(target).is_dir():
            raise VlaError(f"--{name} {target}: is a folder; give a file name")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def bench(args: argparse.Namespace) -> int:
    from . import environment, report
    from .engine_bench import BenchConfig, open_target, parse_shapes, run_bench
    from .loop_bench import run_loop_bench

    _check(args)
    from ..loop.realtime import apply_realtime

    realtime = apply_realtime(args.cpu, args.rt_priority, prog="vla-bench")
    env = environment.collect()
    env["describe"] = environment.describe(env)
    # Ctrl-C and a service stop report what was measured. SIGINT is set here too, not left to Python:
    # a process started from a background job (a CI script's `&`) inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    with environment.TegrastatsSampler() as tegra:
        if args.loop:
            result = run_loop_bench(args.engine, args.camera, ticks=args.ticks, rate_hz=args.rate,
                                    budget_ms=args.budget_ms or 100.0, threads=args.threads, backend=args.backend,
                                    device=args.device, cuda_graph=args.cuda_graph, limits=args.limits,
                                    command=args.command,
                                    stage_rate=None if args.stage_rate is None else parse_rate(args.stage_rate))
        else:
            cfg = BenchConfig(iterations=args.iterations, duration_s=args.duration, warmup_s=args.warmup,
                              budget_ms=args.budget_ms, shapes=parse_shapes(args.shapes), threads=args.threads,
                              spin_wait=args.spin_wait, cuda_graph=args.cuda_graph, seed=args.seed,
                              device=args.device, command=args.command, stage=args.stage)
            target = open_target(args.engine, args.backend, cfg)
            print(f"vla-bench: warming up for {cfg.warmup_s:g} s, then timing at least {cfg.iterations} runs and "
                  f"{cfg.duration_s:g} s (Ctrl-C stops early and reports what was measured)",
                  file=sys.stderr, flush=True)
            try:
                result = run_bench(target, cfg)
            finally:
                target.close()
    env["tegrastats"] = tegra.summary()
    result["settings"]["realtime"] = realtime or None
    result["environment"] = env
    result["warnings"] = environment.clock_warnings(env)
    print(report.format_table(result))
    writers = ((args.json, lambda p: Path(p).write_text(report.to_json(result))),
               (args.markdown, lambda p: Path(p).write_text(report.to_markdown(result))),
               (args.png, lambda p: report.write_png(result, p)))
    for target, write in writers:
        if target:
            try:
                write(target)
            except OSError as exc:  # the figures are on stdout already; say what was not saved
                raise VlaError(f"{target}: cannot write ({exc.strerror or exc})") from None
    return 130 if result["interrupted"] else 0


def compare(argv: list[str]) -> int:
    from . import report

    args = compare_parser().parse_args(argv)
    print(report.compare(report.load_result(args.a), report.load_result(args.b)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        return run_main("vla-bench", lambda: compare(argv[1:]))
    args = build_parser().parse_args(argv)
    return run_main("vla-bench", lambda: bench(args))


if __name__ == "__main__":
    sys.exit(main())
