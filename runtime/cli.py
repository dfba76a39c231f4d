"""``vla-run --engine BUNDLE --camera [NAME=]URI ...``: the real-time loop from the command line."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from .cli_support import run_main
from .loop.tally import format_counts, format_kinds
from .stages import parse_rate

EPILOG = """\
cameras (--camera [NAME=]URI, repeatable; NAME is one of the model's camera names):
  synthetic://                     built-in road scene; alone, it feeds every camera as a rig
  synthetic://?size=1280x720&fps=30&format=yuyv&seed=0
                                   fault injection: stall_after=N&stall_ms=M, drop_every=K
  /dev/video0 | v4l2:///dev/video0?format=yuyv&size=1280x720&fps=30
                                   V4L2 camera (linuxpy), raw frames; see --list-cameras
  csi://0?size=1920x1080&fps=30    Jetson CSI camera (GStreamer nvarguscamerasrc)
  gst://PIPELINE                   any GStreamer pipeline (an appsink is appended)
  rtsp://HOST/PATH                 network stream (PyAV/FFmpeg); ?listen=1 waits for a publisher
  lavfi://testsrc2=size=640x480:rate=30
                                   FFmpeg virtual source (PyAV)
  clip.mp4 | file:///data/clip.mp4 a video file, played in real time (?loop=1 to repeat)
  frames/ | file:///data/frames?fps=10
                                   a folder of images, in name order

ego (--ego, vehicle state for the model's ego input):
  camera (default)                 the state the camera source carries (synthetic://); with
                                   cameras that carry none, a standing vehicle (said at start)
  udp://0.0.0.0:9871               JSON datagrams {"schema": "vla.ego/1", "speed": m/s,
                                   "yaw_rate": rad/s, "accel": m/s2, "steering": rad, "seq": n}
  constant://?speed=10&yaw_rate=0  fixed state;  profile://  a scripted drive (demos, tests)

examples:
  vla-run --engine bundles/reference --camera synthetic:// --duration 10
  vla-run --engine bundles/reference --camera front=/dev/video0 --camera left=/dev/video2 \\
          --camera right=/dev/video4 --ego udp://0.0.0.0:9871 --output udp://127.0.0.1:9870
  vla-run --engine bundles/reference --backend torch --device cuda   # the bundle's program.pt2 on the GPU
  vla-run --list-cameras
  vla-run --engine bundles/reference --camera synthetic:// --duration 10 --record run.mcap   # vla-replay run.mcap
  vla-run --engine bundles/reference --record logs/ --record-on fault,late-streak:3 --foxglove

Each tick prints one JSON line (schema vla.tick/2): tick, status (ok | late | fallback | fault)
and reason, deadline_missed (the engine's result was not in hand by the deadline, whatever was
published), warning (--limits warn), frame ids, capture and publish times (monotonic s),
per-stage latency, trajectory. Every status but ok carries the fallback trajectory (the last good
one, slowing to a stop). A summary goes to stderr on exit: ticks by status, deadline misses,
reasons by kind; the exit status is non-zero when a camera was lost.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-run", description="Run a driving model on live cameras and publish "
                                "trajectories under a latency budget.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", metavar="BUNDLE|ONNX",
                   help="bundle folder from vla-export, or an .onnx with an embedded manifest (required)")
    p.add_argument("--list-cameras", action="store_true",
                   help="list V4L2 devices with their formats, sizes and rates, and which library serves "
                   "each camera URI kind; then exit")
    p.add_argument("--camera", action="append", default=[], metavar="[NAME=]URI",
                   help="camera source (default: synthetic://)")
    p.add_argument("--ego", default="camera", metavar="SPEC",
                   help="vehicle-state input: camera (default), udp://HOST:PORT, constant://?speed=…, profile://")
    p.add_argument("--ego-stale-ms", type=float, default=200.0, metavar="MS",
                   help="vehicle state older than this makes a tick fall back (default 200)")
    p.add_argument("--command", metavar="TEXT", help="route command, e.g. 'turn left at the next intersection', read "
                   "with the bundle's vocabulary or tokenizer (default: the bundle's default command)")
    p.add_argument("--rate", type=float, default=10.0, metavar="HZ", help="tick rate (default 10)")
    p.add_argument("--budget-ms", type=float, default=100.0, help="capture-to-publish budget (default 100)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--frames", type=int, metavar="N", help="stop after N ticks")
    stop.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--output", action="append", metavar="FILE|udp://HOST:PORT",
                   help="where records go: a JSON lines file, '-' for stdout (the default), or UDP datagrams; "
                   "repeatable")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on this port (http://HOST:PORT/metrics)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's sampling noise (default 0)")
    p.add_argument("--threads", type=int, help="engine threads (default: the cores this process may use, less one "
                   "left for capture and the loop on machines of 3 or more cores; both on 2 cores)")
    p.add_argument("--backend", choices=("auto", "trt", "ort", "torch"), default="auto",
                   help="engine: auto (TensorRT on cuda or for a .plan when installed, else ONNX Runtime on cpu, "
                   "PyTorch on cuda), trt (TensorRT), ort (ONNX Runtime, CPU only), torch (the bundle's "
                   "program.pt2) (default auto)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the engine runs (default cpu); cuda needs TensorRT or a CUDA build of PyTorch")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="launch each tick's device work plainly instead of replaying it as a CUDA graph (GPU data "
                   "path), and TensorRT's engine likewise (for comparison and debugging; the results are the same)")
    p.add_argument("--rebuild", action="store_true",
                   help="TensorRT: rebuild the bundle's cached plan when it is stale (another TensorRT version, "
                   "GPU, bundle or plugins) instead of refusing it")
    p.add_argument("--stall-ms", type=float, default=500.0, help="a camera silent this long is stalled (default 500)")
    p.add_argument("--max-curvature", type=float, default=0.3, metavar="1/M",
                   help="publish a fallback when the trajectory curves tighter than this (default 0.3)")
    p.add_argument("--max-accel", type=float, default=8.0, metavar="M/S2",
                   help="... or accelerates/brakes harder than this (default 8)")
    p.add_argument("--max-speed", type=float, default=60.0, metavar="M/S", help="... or is faster (default 60)")
    p.add_argument("--limits", choices=("enforce", "warn", "off"), default="enforce",
                   help="what the three limits above do: enforce (fall back, naming the limit and the value; the "
                   "default); warn (publish the model's trajectory anyway, with a warning naming them: bring-up of "
                   "an untrained or unfamiliar model); off (no limits; a non-finite output still falls back)")
    p.add_argument("--stop-horizon", type=float, default=4.0, metavar="S",
                   help="a fallback trajectory slows to a stop over this many seconds (default 4)")
    p.add_argument("--fault-after", type=int, default=5, metavar="N",
                   help="N consecutive fallbacks make a fault: every line says 'fault' until recovery (default 5)")
    p.add_argument("--fault-stall-ms", type=float, default=1000.0, metavar="MS",
                   help="a camera silent this long is a fault at once (default 1000)")
    p.add_argument("--recover-after", type=int, default=3, metavar="N",
                   help="N consecutive good ticks end a fault (default 3)")
    p.add_argument("--cpu", metavar="LIST", help="pin the loop to these CPUs, e.g. 2 or 2-3 (warns if not permitted)")
    p.add_argument("--rt-priority", type=int, metavar="N",
                   help="run under SCHED_FIFO at priority N (1-99; warns if not permitted)")
    p.add_argument("--sync", choices=("frame", "clock"), default="frame",
                   help="frame: tick on the primary camera's frames, e.g. every third frame of a 30 fps camera at "
                   "10 Hz (default); clock: tick on a fixed grid, on the newest frames")
    p.add_argument("--sync-tolerance-ms", type=float, default=50.0, metavar="MS",
                   help="the most a camera's frame may trail the newest of the group; must exceed the "
                   "frame period of free-running cameras (default 50)")
    p.add_argument("--frame-wait-ms", type=float, default=50.0, metavar="MS",
                   help="how long past its time a tick waits for the primary's frame, and for lagging cameras "
                   "(default 50)")
    p.add_argument("--stage-rate", metavar="tick|async|every:N",
                   help="a bundle of stages: when its slow stages (vision, context) run: async (whenever their "
                   "worker is free), every:N (every Nth tick) or tick (every stage every tick, one rate); "
                   "default: as the manifest declares")
    rec = p.add_argument_group("recording and live view (MCAP with Foxglove schemas; vla-replay reads it)")
    rec.add_argument("--record", metavar="FILE.mcap|DIR",
                     help="record the run: every engine input and output (lossless, for vla-replay), tick records, "
                     "camera views, trajectory, ego, commands, health; with --record-on, a folder of snippets")
    rec.add_argument("--record-raw", action="store_true",
                     help="also record the cameras' raw frames, so replay runs the preprocessing too")
    rec.add_argument("--record-on", metavar="TRIGGERS",
                     help="keep the last --record-pre seconds in memory and write a snippet around each trigger: "
                     "comma list of fault, fallback, late, late-streak:N, surprise>X, disagreement>X, manual "
                     "(manual: kill -USR1 PID)")
    rec.add_argument("--record-pre", type=float, default=10.0, metavar="S",
                     help="seconds kept before a trigger (default 10)")
    rec.add_argument("--record-post", type=float, default=5.0, metavar="S",
                     help="seconds recorded after a trigger (default 5)")
    rec.add_argument("--record-budget", default="2G", metavar="SIZE",
                     help="disk budget of the snippet folder; the oldest snippets go first (default 2G)")
    rec.add_argument("--foxglove", nargs="?", type=int, const=8765, metavar="PORT",
                     help="serve the same channels live to Foxglove (WebSocket, default port 8765)")
    p.add_argument("--shadow", metavar="BUNDLE",
                   help="run a candidate bundle (ONNX Runtime, one thread) on the same inputs whenever the engine is "
                   "idle (never delaying it) and publish its disagreement with the primary (ADE, metres) in each "
                   "record")
    p.add_argument("--context-max-age", type=float, metavar="MS",
                   help="a bundle of stages: the oldest slow-stage context a tick may use, capture to capture; "
                   "older falls back (default: the manifest's max_age_ms)")
    return p


LIMITS_NOTE = {"warn": "trajectories beyond --max-curvature/--max-accel/--max-speed are published, with a warning",
               "off": "no plausibility limits; non-finite outputs still fall back"}


def format_summary(s: dict[str, Any]) -> str:
    """The exit summary, for people; the same figures are in Runner.summary() for programs.

    Ticks by status (every status, 0 included); deadline misses (every tick whose engine result was
    not in hand by its deadline, whatever was published) with what was published instead; each
    tick that was not ok by the kind of its own reason; ticks published despite a limit."""
    misses = s["deadline_misses"]
    published = format_counts(s.get("deadline_misses_by_status") or {}, zeros=False)
    lines = [
        f"summary: {s['ticks']} ticks ({format_counts(s['status'])}); deadline misses {misses} "
        f"({f'published {published}; ' if misses else ''}budget {s['budget_ms']:g} ms); "
        f"skipped ticks {s['skipped_ticks']}; dropped frames {sum(s['dropped_frames'].values())}"
        + (f" {s['dropped_frames']}" if s["dropped_frames"] else ""),
    ]
    last = s.get("last_reasons")
    if s["fallback_reasons"]:
        lines.append("fallback reasons: " + format_kinds(s["fallback_reasons"], last))
    if s.get("limit_warnings"):
        lines.append("published despite a limit (--limits warn): " + format_kinds(s["limit_warnings"], last))
    if s.get("limits") == "off":
        lines.append("limits off: no plausibility limits were checked (non-finite outputs still fell back)")
    limited = sum(n for kind, n in s["fallback_reasons"].items() if kind.startswith("implausible trajectory beyond "))
    if limited and s.get("limits", "enforce") == "enforce":
        lines.append(f"limits: {limited} ticks fell back on a plausibility limit; to see the model's own trajectories "
                     "(bring-up of an untrained or unfamiliar model), --limits warn publishes them with a warning")
    if s["health_events"]:
        lines.append("health: " + "; ".join(s["health_events"]))
    lines.append(f"{'stage (ms)':<12}{'p50':>9}{'p99':>9}{'max':>9}{'mean':>9}")
    for stage, st in s["latency_ms"].items():
        lines.append(f"{stage:<12}{st['median']:9.2f}{st['p99']:9.2f}{st['max']:9.2f}{st['mean']:9.2f}")
    for stage, st in (s.get("stage_latency_ms") or {}).items():  # a bundle of stages: each graph's own time
        lines.append(f"{'  ' + stage:<12}{st['median']:9.2f}{st['p99']:9.2f}{st['max']:9.2f}{st['mean']:9.2f}")
    sched, age = s.get("schedule"), s.get("context_age_ms")
    if sched and not sched["single_rate"]:
        rate = sched["rate"] if isinstance(sched["rate"], str) else f"every {sched['rate']} ticks"
        lines.append(f"dual rate: {'+'.join(sched['slow'])} {rate} ({sched['slow_runs']} runs, {sched['slow_errors']} "
                     f"failed), {'+'.join(sched['fast'])} every tick; context age "
                     + (f"p50 {age['median']:.0f} ms, p99 {age['p99']:.0f} ms" if age else "-")
                     + f" (max {sched['max_age_ms']:g} ms)")
    if s.get("late_runs_committed"):
        lines.append(f"late engine runs committed to state: {s['late_runs_committed']}")
    if s["ended"]:
        lines.append(f"ended: {s['ended']}")
    return "\n".join(lines)


def list_cameras() -> int:
    from .inputs.sources.probe import backend_report, format_camera_list, list_v4l2_devices

    print(format_camera_list(list_v4l2_devices(), backend_report()))
    return 0


def run(args: argparse.Namespace) -> int:
    from .engine import open_engine
    from .errors import VlaError
    from .inputs.commands import CommandEncoder
    from .inputs.ego_input import FrameEgoInput, open_ego_input
    from .inputs.sources import open_cameras
    from .loop.realtime import apply_realtime
    from .loop.runner import RunConfig, Runner
    from .outputs.sinks import open_sink

    if args.list_cameras:
        return list_cameras()
    if not args.engine:
        raise VlaError("--engine BUNDLE is required (a bundle folder from vla-export, or an .onnx); "
                       "see vla-run --help")

    given = [(f, v) for f, v in (("--frames", args.frames), ("--duration", args.duration),
                                 ("--threads", args.threads)) if v is not None]
    for flag, value in (*given, ("--rate", args.rate), ("--budget-ms", args.budget_ms), ("--stall-ms", args.stall_ms),
                        ("--max-curvature", args.max_curvature), ("--max-accel", args.max_accel),
                        ("--max-speed", args.max_speed), ("--stop-horizon", args.stop_horizon),
                        ("--fault-after", args.fault_after), ("--fault-stall-ms", args.fault_stall_ms),
                        ("--recover-after", args.recover_after), ("--ego-stale-ms", args.ego_stale_ms),
                        ("--sync-tolerance-ms", args.sync_tolerance_ms), ("--frame-wait-ms", args.frame_wait_ms)):
        if not value > 0:
            raise VlaError(f"{flag} must be > 0 (got {value:g})")
    realtime = apply_realtime(args.cpu, args.rt_priority)
    stage_rate = None if args.stage_rate is None else parse_rate(args.stage_rate)
    backend = open_engine(args.engine, threads=args.threads, backend=args.backend, device=args.device,
                          stage_rate=stage_rate,
                          rebuild=args.rebuild, cuda_graph=not args.no_cuda_graph)
    config = RunConfig(rate_hz=args.rate, budget_ms=args.budget_ms, max_ticks=args.frames,
                       duration_s=args.duration, command=args.command, seed=args.seed, stall_ms=args.stall_ms,
                       sync=args.sync, max_curvature=args.max_curvature, max_accel=args.max_accel,
                       max_speed=args.max_speed, limits=args.limits, stop_horizon_s=args.stop_horizon,
                       fault_after=args.fault_after,
                       fault_stall_ms=args.fault_stall_ms, recover_after=args.recover_after,
                       ego_stale_ms=args.ego_stale_ms, sync_tolerance_ms=args.sync_tolerance_ms,
                       frame_wait_ms=args.frame_wait_ms, cuda_graph=not args.no_cuda_graph,
                       stage_rate=stage_rate,
                       context_max_age_ms=args.context_max_age,
                       log=lambda line: print(f"vla-run: {line}", file=sys.stderr, flush=True))
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise VlaError(f"--metrics-port must be 0-65535 (got {args.metrics_port})")
    # A command the model cannot take is refused before any camera opens (an RTSP open takes seconds).
    CommandEncoder(backend.manifest).encode(args.command)
    ego = None if args.ego == "camera" else open_ego_input(args.ego)
    cameras: dict = {}
    sinks: list = []
    metrics = recording = shadow = None
    try:
        cameras = open_cameras(args.camera, backend.manifest.camera_names, backend.manifest.camera_sizes)
        runner = Runner(backend, cameras, config, ego=ego)
        if args.shadow:
            from .loop.shadow import Shadow

            shadow = Shadow.open(args.shadow, runner, threads=None)  # one thread: the primary keeps its cores
        if args.record or args.record_on or args.foxglove is not None:
            from .record.session import RecordingSession, RecordOptions

            recording = RecordingSession(runner, RecordOptions(
                args.record, args.record_raw, args.record_on, args.record_pre, args.record_post, args.record_budget,
                args.foxglove, {n: c.uri for n, c in cameras.items()}, str(args.engine)))
        for target in args.output or ["-"]:
            sinks.append(open_sink(target))
        if args.metrics_port is not None:
            from .outputs.metrics import Metrics

            metrics = Metrics(args.metrics_port)
            metrics.set_info(model=backend.manifest.name, backend=backend.describe())
    except BaseException:
        for closable in (*sinks, *cameras.values(), *([ego] if ego is not None else []),
                         *([recording.dispatcher] if recording else []), *([shadow] if shadow else [])):
            closable.close()
        raise
    # One line (tools read the first three): the engine, and which backend and why (select.choose_backend).
    print(f"vla-run: {backend.manifest.name} on {backend.describe()}; "
          f"backend {backend.name} ({getattr(backend, 'selection', args.backend)})", file=sys.stderr)
    print("vla-run: cameras " + ", ".join(f"{n}={c.uri}" for n, c in cameras.items())
          + (f"; command '{runner.command_name}'" if runner.command_name else "; no command input")
          + f"; {args.rate:g} Hz, budget {args.budget_ms:g} ms"
          + ("" if args.limits == "enforce" else f"; limits {args.limits} ({LIMITS_NOTE[args.limits]})")
          + (f"; {', '.join(realtime)}" if realtime else ""), file=sys.stderr)
    standing = args.ego == "camera" and not isinstance(runner.ego_input, FrameEgoInput)
    print(f"vla-run: ego {runner.ego_input.describe()}"
          + (" (these cameras carry no vehicle state: a standing vehicle; give --ego udp://…)" if standing else "")
          + (f"; metrics on http://0.0.0.0:{metrics.port}/metrics" if metrics else "")
          + f"; data path {runner.data_path}", file=sys.stderr)
    if shadow is not None:
        print(f"vla-run: {shadow.describe()}", file=sys.stderr)
    if recording is not None:
        print(f"vla-run: {recording.describe()}", file=sys.stderr)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: runner.stop(f"signal {signal.Signals(signum).name}"))
    try:
        for record in runner:
            # Counted before it is published, so a scrape never lags what a consumer has already read.
            if metrics is not None:
                metrics.observe(record)
                metrics.dropped_totals(runner.dropped)
            for sink in sinks:
                sink.write(record)
    finally:
        for sink in sinks:
            sink.close()
        runner.close()
        if shadow is not None:
            shadow.close()
        if metrics is not None:
            metrics.close()
        summary = runner.summary()
        print(format_summary(summary), file=sys.stderr)
        if shadow is not None:
            print(shadow.summary(), file=sys.stderr)
        if recording is not None:
            print(recording.close(), file=sys.stderr)
    if summary["failure"]:
        raise VlaError(summary["failure"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("vla-run", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
