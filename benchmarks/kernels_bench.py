"""Preprocessing kernel vs the usual chains, measured side by side in one run on the same cores.

CPU: the CPU twin (``vla.kernels.preprocess``) vs the OpenCV chain (cvtColor -> resize -> float ->
normalise -> transpose) vs a NumPy chain (the same steps in NumPy), for 1920x1080 and 1280x720
YUYV and NV12 frames into 3x128x256 and 3x256x512, float32 and float16. All three see the same
frame, do bilinear resizing of the whole frame and normalise with the same mean/std.

GPU (only with a CUDA device, CuPy and PyTorch): the CUDA kernel vs a PyTorch-ops chain on the
device, timed with CUDA events, with achieved bandwidth (frame bytes read once + output bytes
written once, the one-pass floor) against the measured device-to-device copy bandwidth.

    python benchmarks/kernels_bench.py [--json FILE] [--repeat N]

Times are medians of ``--repeat`` runs (after warm-up), in milliseconds; ratios are against our
kernel in the same run, so a noisy machine moves both sides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial

import cv2
import numpy as np
from machine import describe

import vla.kernels as K

MEAN, STD = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
THREADS = 0  # --threads: 0 = all cores
SIZES = {"1080p": (1920, 1080), "720p": (1280, 720)}
OUTS = {"3x128x256": (128, 256), "3x256x512": (256, 512)}
_CV_CODE = {"yuyv": cv2.COLOR_YUV2RGB_YUYV, "nv12": cv2.COLOR_YUV2RGB_NV12}


def make_frame(fmt: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    shape = (h, w, 2) if fmt == "yuyv" else (h * 3 // 2, w)
    return rng.integers(16, 236, size=shape, dtype=np.uint8)


def median_ms(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def opencv_chain(frame, fmt, out_h, out_w, dtype):
    rgb = cv2.cvtColor(frame, _CV_CODE[fmt])
    small = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    f = small.astype(np.float32)
    f -= MEAN
    f /= STD
    return np.ascontiguousarray(f.transpose(2, 0, 1)).astype(dtype, copy=False)


class NumpyChain:
    """The same steps in NumPy: BT.601 limited-range conversion, bilinear gather, normalise, transpose."""

    def __init__(self, fmt, w, h, out_h, out_w):
        self.fmt, self.w, self.h = fmt, w, h
        sx = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
        sy = np.clip((np.arange(out_h) + 0.5) * h / out_h - 0.5, 0, h - 1)
        self.x0, self.y0 = np.floor(sx).astype(int), np.floor(sy).astype(int)
        self.x1, self.y1 = np.minimum(self.x0 + 1, w - 1), np.minimum(self.y0 + 1, h - 1)
        self.ax, self.ay = (sx - self.x0)[None, :, None], (sy - self.y0)[:, None, None]

    def __call__(self, frame, dtype):
        h = self.h
        if self.fmt == "yuyv":
            y = frame[:, :, 0].astype(np.float32)
            u = np.repeat(frame[:, 0::2, 1], 2, axis=1).astype(np.float32)
            v = np.repeat(frame[:, 1::2, 1], 2, axis=1).astype(np.float32)
        else:
            y = frame[:h].astype(np.float32)
            uv = frame[h:]
            u = np.repeat(np.repeat(uv[:, 0::2], 2, 0), 2, 1).astype(np.float32)
            v = np.repeat(np.repeat(uv[:, 1::2], 2, 0), 2, 1).astype(np.float32)
        yy = 1.164383 * (y - 16.0)
        u -= 128.0
        v -= 128.0
        rgb = np.stack([yy + 1.596027 * v, yy - 0.391762 * u - 0.812968 * v, yy + 2.017232 * u], axis=-1)
        np.clip(rgb, 0, 255, out=rgb)
        top = rgb[self.y0][:, self.x0] * (1 - self.ax) + rgb[self.y0][:, self.x1] * self.ax
        bot = rgb[self.y1][:, self.x0] * (1 - self.ax) + rgb[self.y1][:, self.x1] * self.ax
        small = top * (1 - self.ay) + bot * self.ay
        return np.ascontiguousarray(((small - MEAN) / STD).transpose(2, 0, 1)).astype(dtype, copy=False)


def cpu_rows(repeat: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for size, (w, h) in SIZES.items():
        for fmt in ("yuyv", "nv12"):
            frame = make_frame(fmt, w, h, rng)
            for out_name, (oh, ow) in OUTS.items():
                numpy_chain = NumpyChain(fmt, w, h, oh, ow)
                for dtype in (np.float32, np.float16):
                    out = np.empty((3, oh, ow), dtype)
                    ours = median_ms(partial(K.preprocess, frame, fmt, out, mean=MEAN, std=STD, threads=THREADS),
                                     repeat)
                    ocv = median_ms(partial(opencv_chain, frame, fmt, oh, ow, dtype), repeat)
                    npy = median_ms(partial(numpy_chain, frame, dtype), max(5, repeat // 4))
                    rows.append({"frame": f"{size} {fmt}", "out": f"{out_name} {np.dtype(dtype).name}",
                                 "ours_ms": ours, "opencv_ms": ocv, "numpy_ms": npy,
                                 "vs_opencv": ocv / ours, "vs_numpy": npy / ours})
                    print(f"{size:>6} {fmt:5} -> {out_name} {np.dtype(dtype).name:8} ours {ours:7.3f} ms | "
                          f"opencv {ocv:7.3f} ms ({ocv / ours:5.2f}x) | numpy {npy:8.3f} ms ({npy / ours:6.1f}x)",
                          flush=True)
    return rows


def torch_chain(torch, tframe, fmt, h, oh, ow, tdtype, mean, std):
    """The usual GPU chain in PyTorch ops: convert the whole frame, resize, normalise, cast."""
    if fmt == "yuyv":
        y = tframe[:, :, 0].float()
        u = tframe[:, 0::2, 1].float().repeat_interleave(2, dim=1)
        v = tframe[:, 1::2, 1].float().repeat_interleave(2, dim=1)
    else:
        y = tframe[:h].float()
        u = tframe[h:, 0::2].float().repeat_interleave(2, 0).repeat_interleave(2, 1)
        v = tframe[h:, 1::2].float().repeat_interleave(2, 0).repeat_interleave(2, 1)
    yy = 1.164383 * (y - 16)
    u, v = u - 128, v - 128
    rgb = torch.stack([yy + 1.596027 * v, yy - 0.391762 * u - 0.812968 * v, yy + 2.017232 * u]).clamp_(0, 255)
    small = torch.nn.functional.interpolate(rgb[None], size=(oh, ow), mode="bilinear", align_corners=False)[0]
    return ((small - mean) / std).to(tdtype)


def gpu_rows(repeat: int) -> list[dict] | str:
    """CUDA kernel vs a PyTorch-ops chain on the device; a reason string when that cannot run here."""
    if not K.cuda_available():
        return K.cuda_status()
    try:
        import cupy
        import torch
    except ImportError as exc:
        return f"GPU benchmark needs CuPy and PyTorch ({exc})"
    rng = np.random.default_rng(0)
    n = 256 * 2**20  # device-to-device copy bandwidth, the floor's yardstick
    a, b = cupy.empty(n, cupy.uint8), cupy.empty(n, cupy.uint8)
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    b[...] = a
    start.record()
    for _ in range(10):
        b[...] = a
    stop.record()
    stop.synchronize()
    copy_gbs = 2 * n * 10 / (cupy.cuda.get_elapsed_time(start, stop) / 1000) / 1e9
    mean = torch.tensor(MEAN, device="cuda").view(3, 1, 1)
    std = torch.tensor(STD, device="cuda").view(3, 1, 1)
    rows = []
    for size, (w, h) in SIZES.items():
        for fmt in ("yuyv", "nv12"):
            frame = cupy.asarray(make_frame(fmt, w, h, rng))
            tframe = torch.as_tensor(frame, device="cuda")
            for out_name, (oh, ow) in OUTS.items():
                for dtype, tdtype in ((cupy.float32, torch.float32), (cupy.float16, torch.float16)):
                    out = cupy.empty((3, oh, ow), dtype)

                    ours = partial(K.preprocess, frame, fmt, out, mean=MEAN, std=STD)
                    chain = partial(torch_chain, torch, tframe, fmt, h, oh, ow, tdtype, mean, std)
                    timings = {}
                    for name, fn in (("ours", ours), ("torch", chain)):
                        for _ in range(5):
                            fn()
                        ev0, ev1 = cupy.cuda.Event(), cupy.cuda.Event()
                        ev0.record()
                        for _ in range(repeat):
                            fn()
                        ev1.record()
                        ev1.synchronize()
                        timings[name] = cupy.cuda.get_elapsed_time(ev0, ev1) / repeat
                    moved = frame.nbytes + out.nbytes
                    gbs = moved / (timings["ours"] / 1000) / 1e9
                    rows.append({"frame": f"{size} {fmt}", "out": f"{out_name} {np.dtype(dtype).name}",
                                 "cuda_ms": timings["ours"], "torch_ms": timings["torch"],
                                 "vs_torch": timings["torch"] / timings["ours"], "gbs": gbs,
                                 "copy_gbs": copy_gbs, "of_copy": gbs / copy_gbs})
                    print(f"GPU {size:>6} {fmt:5} -> {out_name} {np.dtype(dtype).name:8} cuda {timings['ours']:.4f} ms"
                          f" | torch {timings['torch']:.4f} ms ({timings['torch'] / timings['ours']:.1f}x) | "
                          f"{gbs:.0f} GB/s = {100 * gbs / copy_gbs:.0f}% of copy ({copy_gbs:.0f} GB/s)", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--threads", type=int, default=0,
                   help="threads for both OpenCV and the CPU twin (default 0: all cores)")
    args = p.parse_args()
    if args.threads > 0:
        cv2.setNumThreads(args.threads)
    global THREADS
    THREADS = args.threads
    machine = f"{describe()}, OpenCV threads {cv2.getNumThreads()}"
    print(f"machine: {machine}; {K.cuda_status()}")
    try:
        cpu = cpu_rows(args.repeat)
        gpu = gpu_rows(args.repeat)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if isinstance(gpu, str):
        print(f"GPU: not run: {gpu}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "cpu": cpu, "gpu": gpu}, f, indent=2)
    target = next(r for r in cpu if r["frame"] == "1080p yuyv" and r["out"] == "3x256x512 float32")
    print(f"target (CPU twin >= 3x the OpenCV chain, 1080p YUYV -> 3x256x512 float32): "
          f"{target['vs_opencv']:.2f}x, {'met' if target['vs_opencv'] >= 3 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
