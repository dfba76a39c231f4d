"""``vla-serve --engine BUNDLE --port PORT``: a bundle as NVIDIA AlpaSim's driver, over its egodriver gRPC contract."""

from __future__ import annotations

import argparse
import gc
import logging
import sys

from vla.runtime.cli_support import run_main

EPILOG = """\
what the simulator sends, and what it gets back:
  start_session      the cameras (logical id, intrinsics, rig_to_camera); a duplicate id is ALREADY_EXISTS
  submit_image_*     JPEG or PNG, decoded at once (undecodable: INVALID_ARGUMENT); resized to the declared
                     size if it differs; cameras the bundle does not read are accepted and ignored
  submit_egomotion_* ego poses in the local frame; timestamps not newer than the last are dropped; speed,
                     acceleration and yaw rate from the dynamic state where given, else from the poses
  submit_route       the route (rig frame) -> the command: "turn left" / "turn right" at its next junction
                     within --route-lookahead, else "follow the road" (--command fixes one instead)
  drive              the plan in the local frame: the ego's pose at time_now_us, then ego pose o waypoint k at
                     time_now_us + k*dt, reaching time_query_us; an empty plan ("hold") until the session has
                     egomotion and an image from every camera the bundle reads
  an unknown session is NOT_FOUND; no request stops the server; SIGTERM stops it cleanly (exit 0)

cameras: each bundle camera takes the simulator camera --camera-map names, else the first declared one whose
id contains its name (front/left/right: camera_front_wide_120fov is 'front'), else the next declared one in
order; a bundle camera left without one sees a neutral frame (said when the session starts).

examples:
  vla-serve --engine bundles/reference --port 50051
  carla-driver-interface demo --driver localhost:50051 --steps 100        # a closed loop on a fake road
  vla-serve --engine bundles/reference --port 50051 --host 0.0.0.0 \\
            --camera-map front=camera_front_wide_120fov --camera-map left=camera_cross_left_120fov
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-serve", description="Serve a bundle as NVIDIA AlpaSim's driver: the "
                                "egodriver gRPC contract (egodriver.EgodriverService, AlpaSim API 0.55.0), "
                                "answered by the runtime's engine.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", required=True, metavar="BUNDLE|ONNX",
                   help="bundle folder from vla-export, or an .onnx with an embedded manifest")
    p.add_argument("--port", type=int, default=50051,
                   help="TCP port to listen on (default 50051, AlpaSim's; 0 picks a free one and prints it)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every "
                   "interface, e.g. a simulator in a container), or unix:///path/driver.sock")
    p.add_argument("--backend", choices=("auto", "ort", "torch", "trt"), default="auto",
                   help="engine backend, as vla-run's (default auto)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the torch backend runs")
    p.add_argument("--threads", type=int, metavar="N", help="engine threads (default: the runtime's choice)")
    p.add_argument("--camera-map", action="append", default=[], metavar="NAME=ID",
                   help="feed the bundle's camera NAME from the simulator's camera ID (repeatable, or "
                   "comma-separated); a session that does not declare ID is refused")
    p.add_argument("--command", metavar="TEXT",
                   help="one route command for every drive, read with the bundle's vocabulary (default: from "
                   "each session's route)")
    p.add_argument("--route-lookahead", type=float, default=50.0, metavar="M",
                   help="how far along the route to look for its next junction (default 50 m)")
    p.add_argument("--turn-angle", type=float, default=45.0, metavar="DEG",
                   help="a route turning at least this much is a junction turn (default 45 degrees)")
    p.add_argument("--limits", choices=("enforce", "warn", "off"), default="enforce",
                   help="the plausibility limits, as vla-run's: enforce (an implausible trajectory is replaced "
                   "by the fallback, slowing to a stop; default), warn (sent anyway: bring-up of an untrained "
                   "model), off")
    p.add_argument("--max-curvature", type=float, default=0.3, metavar="1/M", help="limit (default 0.3)")
    p.add_argument("--max-accel", type=float, default=8.0, metavar="M/S2", help="limit (default 8)")
    p.add_argument("--max-speed", type=float, default=60.0, metavar="M/S", help="limit (default 60)")
    p.add_argument("--stop-horizon", type=float, default=4.0, metavar="S",
                   help="a fallback slows to a stop over this long (default 4)")
    p.add_argument("--mode", choices=("alpasim", "carla"), default="alpasim",
                   help="the runtime on the other end: alpasim (an AlpaSim runtime; default) or carla "
                   "(autoware_carla_scenario); they differ only in the debug payload, the renderer data and the "
                   "contract revision taken for a client that declares none (alpasim: 2)")
    p.add_argument("--max-workers", type=int, default=8, metavar="N", help="gRPC handler threads (default 8)")
    p.add_argument("--warmup-runs", type=int, default=10, metavar="N",
                   help="whole decisions run before the port opens (default 10)")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"),
                   help="carla-driver-interface's own log messages (default warning)")
    return p


def run(args: argparse.Namespace) -> int:
    from vla.runtime.engine import open_engine
    from vla.runtime.errors import VlaError
    from vla.runtime.loop.stats import summarize

    from .cameras import parse_camera_map
    from .decide import DecideConfig, Decider
    from .server import VlaDriver, serve

    def log(line: str) -> None:
        print(f"vla-serve: {line}", file=sys.stderr, flush=True)

    for flag, value in (("--route-lookahead", args.route_lookahead), ("--turn-angle", args.turn_angle),
                        ("--max-curvature", args.max_curvature), ("--max-accel", args.max_accel),
                        ("--max-speed", args.max_speed), ("--stop-horizon", args.stop_horizon),
                        ("--max-workers", args.max_workers), *((("--threads", args.threads),) if args.threads
                                                                is not None else ())):
        if not value > 0:
            raise VlaError(f"{flag} must be > 0 (got {value:g})")
    if not 0 <= args.port <= 65535:
        raise VlaError(f"--port must be 0-65535 (got {args.port})")
    if not 0 < args.turn_angle < 180:
        raise VlaError(f"--turn-angle must be between 0 and 180 degrees (got {args.turn_angle:g})")
    logging.basicConfig(level=args.log_level.upper(), format="vla-serve: %(name)s: %(message)s")
    # Every stage every drive (stage_rate "tick"): the simulator waits for the decision, so one engine run
    # holds the whole model and the threads are not split between two workers.
    backend = open_engine(args.engine, threads=args.threads, backend=args.backend, device=args.device,
                          stage_rate="tick")
    try:
        camera_map = parse_camera_map(args.camera_map, backend.manifest.camera_names)
        decider = Decider(backend, DecideConfig(args.limits, args.max_curvature, args.max_accel, args.max_speed,
                                                args.stop_horizon, args.command))
        log(f"{backend.manifest.name} on {backend.describe()}; backend {backend.name} "
            f"({getattr(backend, 'selection', args.backend)})")
        log(decider.warm_up(args.warmup_runs))
        for note in decider.notes:
            log(f"warning: {note}")
        command = (f"command '{args.command}' for every drive" if args.command is not None else
                   f"command from the route (next junction within {args.route_lookahead:g} m, "
                   f"turns of {args.turn_angle:g} deg or more)" if decider.takes_command else
                   "no command input")
        log(f"cameras {', '.join(decider.cameras) or 'none'}"
            + (f" (--camera-map {', '.join(f'{k}={v}' for k, v in camera_map.items())})" if camera_map else "")
            + f"; {command}; limits {args.limits}")
        driver = VlaDriver(decider, camera_map, args.route_lookahead, args.turn_angle, log)
        # As vla-run does before tick 0: what exists now is permanent, so later collections do not walk it.
        gc.collect()
        gc.freeze()
        servicer, why = serve(driver, args.host, args.port, args.mode, args.max_workers, log)
    finally:
        backend.close()
    figures = ""
    if len(servicer.drive_ms):
        st = summarize(servicer.drive_ms.values())
        figures = f"; drive p50 {st['median']:.1f} ms, p99 {st['p99']:.1f} ms, max {st['max']:.1f} ms (server side)"
    log(f"stopped ({why}): {driver.closed} session(s) closed, {len(driver.sessions)} open, "
        f"{servicer.drives} drive(s){figures}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("vla-serve", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
