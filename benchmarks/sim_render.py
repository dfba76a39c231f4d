"""What rendering the synthetic world costs: sim/render.py's WorldRenderer against the synthetic://
camera's SceneRenderer (scene.py), same rig, same size, same format, one OpenCV thread, 3 cameras.

    python benchmarks/sim_render.py [--frames 300] [--sizes 128x64,256x128,640x320] [--fmt rgb] [--town]

The ground is the world's own (vla.sim.world, seed --seed, the ego driving straight on) when that
module is there and --town is not given, else a synthetic town raster (a 120 m street grid, 4 lanes,
markings; 0.1 m/px) with --boxes cars around the ego. Frames of the two renderers alternate, so both
see the same machine load. The issue's goal: <= 10 ms per frame (all three cameras) at 256x128 on one
core.
"""

from __future__ import annotations

import argparse
import sys
import time

import cv2
import numpy as np
from machine import describe

from vla.runtime.inputs.sources.scene import Rig, Road, SceneRenderer
from vla.sim.render import WorldRenderer
from vla.sim.world import GroundMap

NAMES = ["left", "front", "right"]



def town_ground(size_m: float = 600.0, block: float = 120.0, res: float = 0.1) -> GroundMap:
    """A street grid: 15 m roads (2 lanes each way) every ``block`` m, dashed lane lines, yellow centre."""
    n = int(size_m / res)
    img = np.empty((n, n, 3), np.uint8)
    img[:] = (76, 114, 52)
    dash = (np.arange(n) * res) % 9.0 < 3.0  # 3 m dashes every 9 m

    def band(centre: float, a0: float, a1: float, colour: tuple, dashed: bool = False) -> None:
        lo = round((centre + a0 + size_m / 2) / res)
        hi = max(lo + 1, round((centre + a1 + size_m / 2) / res))
        along = dash if dashed else slice(None)
        img[lo:hi, along] = colour  # an east-west road
        img[along, lo:hi] = colour  # a north-south road

    for c in np.arange(-size_m / 2 + block / 2, size_m / 2, block):
        band(c, -7.6, 7.6, (98, 98, 102))
    for c in np.arange(-size_m / 2 + block / 2, size_m / 2, block):
        for a0, a1, colour, dashed in [
            (-7.1, -6.95, (232, 232, 226), False),
            (6.95, 7.1, (232, 232, 226), False),
            (-3.575, -3.425, (232, 232, 226), True),
            (3.425, 3.575, (232, 232, 226), True),
            (-0.25, -0.1, (230, 190, 40), False),
            (0.1, 0.25, (230, 190, 40), False),
        ]:
            band(c, a0, a1, colour, dashed)
    return GroundMap(img, -size_m / 2 + res / 2, -size_m / 2 + res / 2, res)


def scenario(seed: int, n_boxes: int, town: bool = False):
    """(ground, step(frame) -> (pose, (boxes, colours)), what) for the run."""
    world = None
    if not town:
        try:
            from vla.sim.world import World, make_scenario

            world = World(make_scenario(seed))
        except ImportError:
            pass
    if world is not None:

        def step(i: int):
            if i:
                world.step(0.1, 0.5, 0.0)
            return (world.ego.x, world.ego.y, world.ego.yaw), world.boxes()

        return world.ground(), step, f"vla.sim.world seed {seed}"
    ground = town_ground()
    rng = np.random.default_rng(seed)
    lanes = np.array([-5.25, -1.75, 1.75, 5.25])
    y0 = -240.0  # an east-west street's centre (the grid's streets are at -240, -120, 0, ...)
    bx = np.stack(
        [
            rng.uniform(-220.0, 220.0, n_boxes),
            y0 + lanes[rng.integers(0, 4, n_boxes)],
            np.where(rng.random(n_boxes) < 0.5, 0.0, np.pi),
            rng.uniform(4.2, 5.0, n_boxes),
            rng.uniform(1.8, 2.0, n_boxes),
            rng.uniform(1.4, 1.8, n_boxes),
        ],
        axis=1,
    )
    cols = rng.integers(20, 235, (n_boxes, 3)).astype(np.uint8)

    def step_town(i: int):
        x = -200.0 + 1.0 * i  # 10 m/s at 10 Hz
        b = bx.copy()
        b[:, 0] = x + (b[:, 0] - x + 60.0) % 120.0 - 30.0  # keep every car within 30 m behind .. 90 m ahead
        return (x, y0 - 1.75, 0.0), (b, cols)

    return ground, step_town, f"synthetic town grid, {n_boxes} boxes within 90 m"


def run(size: tuple[int, int], fmt: str, frames: int, seed: int, n_boxes: int, town: bool) -> dict:
    w, h = size
    rig = Rig(NAMES, w, h)
    ground, step, what = scenario(seed, n_boxes, town)
    t0 = time.perf_counter()
    ours = WorldRenderer(rig, ground, fmt)
    build_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    peer = SceneRenderer(Road(seed), rig, fmt)
    build_peer = time.perf_counter() - t0
    out_a, out_b = ours.new_outputs(), peer.new_outputs()
    ta, tb, ca, cb, nb = [], [], [], [], []
    for i in range(frames + 20):
        pose, (boxes, colours) = step(i)
        t0, c0 = time.perf_counter(), time.thread_time()
        ours.render(pose, boxes, colours, out_a)
        t1, c1 = time.perf_counter(), time.thread_time()
        peer.render(0.1 * i, out_b)
        t2, c2 = time.perf_counter(), time.thread_time()
        if i >= 20:  # warm-up: caches, first-touch pages
            ta.append(t1 - t0)
            tb.append(t2 - t1)
            ca.append(c1 - c0)
            cb.append(c2 - c1)
            nb.append(len(boxes))
    a, b = np.array(ta) * 1e3, np.array(tb) * 1e3
    return {
        "size": f"{w}x{h}",
        "ours_p50": float(np.median(a)),
        "ours_p99": float(np.percentile(a, 99)),
        "peer_p50": float(np.median(b)),
        "peer_p99": float(np.percentile(b, 99)),
        "ours_cpu": float(np.median(ca)) * 1e3,  # thread CPU time: immune to preemption on a busy machine
        "peer_cpu": float(np.median(cb)) * 1e3,
        "build_ours": build_ours * 1e3,
        "build_peer": build_peer * 1e3,
        "boxes": float(np.mean(nb)),
        "what": what,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--sizes", default="128x64,256x128,640x320", help="WxH per camera, comma-separated")
    p.add_argument("--fmt", default="rgb")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--town", action="store_true", help="the synthetic town, not vla.sim.world")
    p.add_argument("--boxes", type=int, default=10, help="cars around the ego (synthetic town only)")
    args = p.parse_args()
    cv2.setNumThreads(1)
    rows = []
    for s in args.sizes.split(","):
        w, h = (int(v) for v in s.lower().split("x"))
        rows.append(run((w, h), args.fmt, args.frames, args.seed, args.boxes, args.town))
    print(
        f"machine: {describe()}; OpenCV {cv2.__version__}, 1 thread; {args.fmt}, 3 cameras (left, front, right), "
        f"hfov 100 deg; {args.frames} frames each; world: {rows[0]['what']}"
    )
    print()
    print(
        "| size per camera | WorldRenderer p50 / p99 ms | SceneRenderer p50 / p99 ms | ratio p50 (world / scene) "
        "| CPU ms p50 (world / scene) | boxes | build ms (world / scene) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ours, peer = f"{r['ours_p50']:.2f} / {r['ours_p99']:.2f}", f"{r['peer_p50']:.2f} / {r['peer_p99']:.2f}"
        ratio, build = r["ours_p50"] / r["peer_p50"], f"{r['build_ours']:.0f} / {r['build_peer']:.0f}"
        cpu = f"{r['ours_cpu']:.2f} / {r['peer_cpu']:.2f}"
        print(f"| {r['size']} | {ours} | {peer} | {ratio:.2f} | {cpu} | {r['boxes']:.1f} | {build} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
