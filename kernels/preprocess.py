"""``preprocess``: a raw camera frame into an engine input slot in one pass (CPU twin or CUDA).

The kernel (``kernels/src/preprocess.h``) maps every output pixel to the source through one 3x3
matrix, so a centred resize, an ROI crop and a calibration homography are the same operation. This
module turns the user's words into that matrix and into the colour and normalisation constants;
the native side re-checks everything that touches memory.

Conventions:

- pixel coordinates are pixel centres (0 is the centre of the first pixel), as in OpenCV;
- ``roi=(x, y, w, h)`` in source pixels is resized to the output size, with the half-pixel alignment
  of ``cv2.resize``; ``homography`` (3x3) maps output pixels to source pixels (OpenCV's
  ``WARP_INVERSE_MAP``); samples that fall outside the frame get ``border``;
- YUV is BT.601 or BT.709, limited ("TV", Y 16..235) or full range; chroma is taken from each
  pixel's own 2x1 or 2x2 block; RGB values are clamped to [0, 255] before interpolation, as
  ``cv2.cvtColor`` does; gray is full-range luma;
- ``mean`` and ``std`` are in pixel units (0..255) per output channel: ``out = (v - mean) / std``;
  ``mean=0, std=255`` gives [0, 1];
- uint8 outputs are rounded and saturated; float16 rounds to nearest even (NumPy's rule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from .arrays import as_kernel_array

FORMATS: tuple[str, ...] = tuple(_core.PIXEL_FORMATS)
__all__ = ["FORMATS", "PreparedPreprocess", "centre_crop", "frame_size", "prepare", "preprocess", "preprocess_many",
           "preprocess_start", "roi_matrix", "yuv_coefficients"]
MAX_HOMOGRAPHY_ENTRY = 1e15
COLORSPACES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


def yuv_coefficients(colorspace: str, full_range: bool) -> tuple[float, ...]:
    """(y offset, y scale, rV, gU, gV, bU) of R = ys(Y - yo) + rV V', G = … + gU U' + gV V', B = … + bU U'."""
    try:
        kr, kb = COLORSPACES[colorspace]
    except KeyError:
        raise ValueError(f"colorspace: {colorspace!r} is not one of {sorted(COLORSPACES)}") from None
    kg = 1.0 - kr - kb
    yo, ys, cs = (0.0, 1.0, 1.0) if full_range else (16.0, 255.0 / 219.0, 255.0 / 224.0)
    return (yo, ys, 2 * (1 - kr) * cs, -2 * kb * (1 - kb) / kg * cs, -2 * kr * (1 - kr) / kg * cs, 2 * (1 - kb) * cs)


def frame_size(src: Any, fmt: str) -> tuple[int, int]:
    """(width, height) in pixels of a raw frame array of the given format."""
    shape = tuple(src.shape)
    if fmt in ("nv12", "i420"):
        return shape[1], shape[0] * 2 // 3
    if fmt in ("yuyv", "uyvy") and len(shape) == 2:
        return shape[1] // 2, shape[0]
    return shape[1], shape[0]


def roi_matrix(roi: Sequence[float], out_w: int, out_h: int) -> list[float]:
    """Output pixel -> source pixel for a resize of ``roi`` to (out_w, out_h), cv2.resize's alignment."""
    x, y, w, h = (float(v) for v in roi)
    sx, sy = w / out_w, h / out_h
    return [sx, 0.0, x + 0.5 * sx - 0.5, 0.0, sy, y + 0.5 * sy - 0.5, 0.0, 0.0, 1.0]


def _triple(name: str, value: float | Sequence[float]) -> tuple[float, float, float]:
    vals = [float(value)] * 3 if np.isscalar(value) else [float(v) for v in value]
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{name}: expected a number or 3 finite numbers, got {value!r}")
    return vals[0], vals[1], vals[2]


@dataclass(frozen=True)
class PreparedPreprocess:
    """One camera's preprocessing with everything but the frame worked out (:func:`prepare`).

    The matrix, colour and normalisation constants depend only on the frame size and the options,
    so a loop computes them once per camera and per frame size, and a tick only hands over frames.
    """

    fmt: str
    out: Any  # the output array in a form the native side reads (DLPack producers already converted)
    frame_size: tuple[int, int]  # (width, height) the matrix was made for
    args: tuple  # _core arguments after (src, fmt code, out): layout, matrix, bilinear, yuv, ...

    def check(self, src: Any) -> Any:
        """``src`` as the kernels read it, if it is a frame of ``frame_size``; else a ValueError."""
        src = as_kernel_array(src, "src")
        if not hasattr(src, "shape") or len(src.shape) not in (2, 3):
            raise ValueError(f"src: expected a 2-D or 3-D frame array, got {type(src).__name__}")
        size = frame_size(src, self.fmt)
        if size != self.frame_size:
            w, h = self.frame_size
            raise ValueError(f"src: a {size[0]}x{size[1]} frame, but this preprocessing was prepared for {w}x{h}")
        return src

    def job(self, src: Any) -> tuple:
        """The native job tuple for one frame of ``frame_size``; a ValueError names a mismatch."""
        return (self.check(src), FORMATS.index(self.fmt), self.out, *self.args)


def prepare(
    fmt: str,
    out: Any,
    size: tuple[int, int],
    *,
    roi: Sequence[float] | None = None,
    interp: str = "bilinear",
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    colorspace: str = "bt601",
    full_range: bool = False,
    homography: Any = None,
    layout: str = "chw",
    channel_order: str = "rgb",
    border: float | Sequence[float] = 0.0,
) -> PreparedPreprocess:
    """Check the options of :func:`preprocess` for frames of ``size`` (width, height) and work out
    the kernel's constants once; run it with :func:`preprocess_many` (or ``preprocess``)."""
    kernel_out = as_kernel_array(out, "out")
    if fmt not in FORMATS:
        raise ValueError(f"fmt: {fmt!r} is not one of {list(FORMATS)}")
    if interp not in ("bilinear", "nearest"):
        raise ValueError(f"interp: {interp!r} is not 'bilinear' or 'nearest'")
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order: {channel_order!r} is not 'rgb' or 'bgr'")
    if layout not in ("chw", "hwc"):
        raise ValueError(f"layout: {layout!r} is not 'chw' or 'hwc'")
    if not hasattr(kernel_out, "shape") or len(kernel_out.shape) != 3:
        raise ValueError("out: expected a 3-D array ((3, H, W) or (H, W, 3)), got "
                         f"{getattr(kernel_out, 'shape', kernel_out)!r}")
    out_h, out_w = kernel_out.shape[1:3] if layout == "chw" else kernel_out.shape[0:2]
    width, height = (int(v) for v in size)
    if homography is not None:
        if roi is not None:
            raise ValueError("roi: give roi or homography, not both (fold the crop into the homography)")
        h = np.asarray(homography, dtype=np.float64)
        if h.shape != (3, 3) or not np.isfinite(h).all():
            raise ValueError(f"homography: expected a finite 3x3 matrix, got shape {h.shape}")
        h = h / h[2, 2] if h[2, 2] != 0 else h
        # Within this bound every projected coordinate stays finite in float32 (the CPU twin is
        # compiled to assume finite values; see CMakeLists.txt).
        if np.abs(h).max() > MAX_HOMOGRAPHY_ENTRY:
            raise ValueError(f"homography: entries above {MAX_HOMOGRAPHY_ENTRY:g} (after scaling h[2, 2] to 1) "
                             "are not a camera mapping; check the matrix")
        matrix = [float(v) for v in h.ravel()]
    else:
        x, y, w, hh = (0.0, 0.0, float(width), float(height)) if roi is None else (float(v) for v in roi)
        if not (w > 0 and hh > 0 and x >= 0 and y >= 0 and x + w <= width and y + hh <= height):
            raise ValueError(f"roi: ({x:g}, {y:g}, {w:g}, {hh:g}) is not a non-empty window inside the "
                             f"{width}x{height} frame")
        matrix = roi_matrix((x, y, w, hh), max(int(out_w), 1), max(int(out_h), 1))
    m, s = _triple("mean", mean), _triple("std", std)
    if min(s) <= 0:
        raise ValueError(f"std: must be > 0, got {std!r}")
    scale = tuple(1.0 / v for v in s)
    bias = tuple(-a / b for a, b in zip(m, s, strict=True))
    args = (layout, matrix, interp == "bilinear", yuv_coefficients(colorspace, bool(full_range)),
            channel_order == "bgr", scale, bias, _triple("border", border))
    return PreparedPreprocess(fmt, kernel_out, (width, height), args)


def preprocess_start(jobs: Sequence[tuple[PreparedPreprocess, Any]], *, stream: Any = None,
                     threads: int = 0) -> Any:
    """Start several prepared jobs, ``[(prepared, frame), ...]``; ``.wait()`` on the result finishes them.

    Host frames: the rows of all jobs are shared by one team of ``threads`` (0: all cores); the
    helper threads start at once, and the caller's thread joins in at ``wait()``, so it can do other
    work in between (the loop fills its other inputs). Do not touch the outputs before ``wait()``.
    Device frames: the kernels are launched in order on ``stream`` and ``wait()`` returns at once
    (synchronise the stream to wait for them). Every job is checked before any starts; a ValueError
    starts with ``jobs[i]`` for the job it is about.
    """
    native = []
    for i, (prepared, src) in enumerate(jobs):
        try:
            native.append(prepared.job(src))
        except ValueError as exc:
            raise ValueError(f"jobs[{i}]: {exc}") from None
    return _core.PreprocessRun(native, stream, int(threads))


def preprocess_many(jobs: Sequence[tuple[PreparedPreprocess, Any]], *, stream: Any = None, threads: int = 0) -> None:
    """Run several prepared jobs in one native call: :func:`preprocess_start`, then wait."""
    preprocess_start(jobs, stream=stream, threads=threads).wait()


def preprocess(
    src: Any,
    fmt: str,
    out: Any,
    *,
    roi: Sequence[float] | None = None,
    interp: str = "bilinear",
    mean: float | Sequence[float] = 0.0,
    std: float | Sequence[float] = 1.0,
    colorspace: str = "bt601",
    full_range: bool = False,
    homography: Any = None,
    layout: str = "chw",
    channel_order: str = "rgb",
    border: float | Sequence[float] = 0.0,
    stream: Any = None,
    threads: int = 0,
) -> Any:
    """Convert, crop/warp, resize, normalise and lay out ``src`` into ``out`` in one pass; return ``out``.

    ``src``: a uint8 frame (NumPy, a device array with ``__cuda_array_interface__``, or any DLPack
    producer such as a PyTorch tensor): yuyv/uyvy
    (H, W, 2) or (H, 2W); nv12/i420 (H*3/2, W); rgb/bgr (H, W, 3); gray (H, W); rows may be padded
    (the row pitch is the array's first stride). ``out``: (3, H, W) for ``layout="chw"`` or (H, W, 3)
    for ``"hwc"``, uint8/float32/float16, any strides; pass ``engine_input[0, camera]`` to write a
    camera's slot of a batched input directly. Device arrays run on ``stream`` (a handle or an object
    with ``.cuda_stream``/``.ptr``) and return without synchronising. ``threads=0``: all cores.
    A loop that converts the same cameras every tick should :func:`prepare` once instead.
    """
    kernel_src = as_kernel_array(src, "src")
    if not hasattr(kernel_src, "shape") or len(kernel_src.shape) not in (2, 3):
        raise ValueError(f"src: expected a 2-D or 3-D frame array, got {type(kernel_src).__name__}")
    prepared = prepare(fmt, out, frame_size(kernel_src, fmt), roi=roi, interp=interp, mean=mean, std=std,
                       colorspace=colorspace, full_range=full_range, homography=homography, layout=layout,
                       channel_order=channel_order, border=border)
    _core.preprocess(*prepared.job(kernel_src), stream, int(threads))
    return out


def centre_crop(width: int, height: int, out_w: int, out_h: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the largest centred window with the output's aspect ratio."""
    if width * out_h > height * out_w:  # too wide: trim the sides
        w = round(height * out_w / out_h)
        return (width - w) // 2, 0, w, height
    h = round(width * out_h / out_w)
    return 0, (height - h) // 2, width, h
