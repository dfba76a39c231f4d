"""What the synthetic camera rig costs: CPU share of its process and the delay from a frame's
capture time to the moment a consumer sees it (the rig's "readout" latency, part of every e2e).

    python benchmarks/camera_rig.py [--uri synthetic://] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from machine import describe

from vla.runtime.inputs.sources import open_cameras


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uri", default="synthetic://")
    p.add_argument("--cameras", default="front,left,right")
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    names = args.cameras.split(",")
    cams = open_cameras([args.uri], names)
    try:
        src = cams[names[0]]
        pid = src.pid
        delays, last = [], -1
        c0, t0 = cpu_seconds(pid), time.monotonic()
        while time.monotonic() - t0 < args.seconds:
            frame = src.newest()
            if frame is not None and frame.seq != last:
                delays.append((time.monotonic() - frame.capture_time) * 1000.0)
                last = frame.seq
            time.sleep(0.0005)
        share = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    finally:
        for cam in cams.values():
            cam.close()
    d = np.array(delays)
    print(f"machine: {describe()}")
    print(f"{args.uri} x {len(names)} cameras: {len(d)} frames in {args.seconds:g} s; rig process "
          f"{100 * share:.0f}% of one core; capture -> visible p50 {np.median(d):.1f} ms, "
          f"p99 {np.percentile(d, 99):.1f} ms (polling every 0.5 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
