"""The preprocess kernel's CPU twin against independent references.

- OpenCV's chain (cvtColor -> resize -> normalise -> transpose), BT.601 limited range, every format.
  Tolerance 1.5 levels (max) / 0.35 (mean), in 0..255 units: cvtColor rounds its RGB to uint8
  (±0.5) and cv2.resize's bilinear uses 11-bit fixed-point weights (±1/2048 of a neighbour
  difference, up to ±0.25 level at an edge of 255 levels, less after averaging); the kernel keeps
  float RGB.
- FFmpeg's swscale (PyAV) for BT.601 and BT.709, limited and full range, yuyv/nv12/i420 (PyAV cannot
  build uyvy422 frames from arrays; OpenCV covers uyvy), in swscale's accurate mode
  (ACCURATE_RND | FULL_CHR_H_INT: its default table-based path is biased by +0.8..1.5 levels in
  limited range, measured here). swscale interpolates chroma between samples where the kernel, like
  cvtColor and V4L2 consumers, uses each pixel's own 2x1 / 2x2 block; on the smooth test frames
  (chroma changing by up to ~2.5 levels a pixel) that bounds the difference at 3 levels for 4:2:2
  and 6 for 4:2:0 (vertical siting too); mean ≤ 0.6 / 1.2; +0.5 for swscale's own uint8 rounding.
- A NumPy float64 model of the documented arithmetic, for homographies, normalisation, fp16,
  layouts and slots: tolerance 2e-3 (float32 rounding of the kernel).
The CUDA kernel is the same header compiled by nvcc; its tests need a GPU and skip without one.
"""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
from av.video.reformatter import VideoReformatter

import vla.kernels as K
from vla.kernels.preprocess import centre_crop, roi_matrix, yuv_coefficients

RNG = np.random.default_rng(1234)


# ---- frame builders --------------------------------------------------------------------------
def smooth(h: int, w: int, lo: int = 0, hi: int = 255, rng=RNG) -> np.ndarray:
    small = rng.integers(lo, hi + 1, (max(2, h // 16), max(2, w // 16))).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), lo, hi).round().astype(np.uint8)


def planes(h: int, w: int, smooth_frame: bool, full: bool = False):
    """Y [h, w] and U, V [h, w/2] (4:2:2) or [h/2, w/2] (4:2:0 derived by the caller)."""
    lo, hi = (0, 255) if full else (16, 235)
    clo, chi = (0, 255) if full else (16, 240)
    if smooth_frame:
        return smooth(h, w, lo, hi), smooth(h, w // 2, clo, chi), smooth(h, w // 2, clo, chi)
    return (RNG.integers(lo, hi + 1, (h, w), dtype=np.uint8), RNG.integers(clo, chi + 1, (h, w // 2), dtype=np.uint8),
            RNG.integers(clo, chi + 1, (h, w // 2), dtype=np.uint8))


def pack(fmt: str, y: np.ndarray, u: np.ndarray, v: np.ndarray, pad: int = 0) -> np.ndarray:
    """A raw frame of ``fmt`` (4:2:0 formats take every other chroma row), rows padded by ``pad`` bytes."""
    h, w = y.shape
    if fmt in ("yuyv", "uyvy"):
        buf = np.zeros((h, 2 * w + pad), np.uint8)
        f = buf[:, : 2 * w].reshape(h, w, 2)
        yi, ci = (0, 1) if fmt == "yuyv" else (1, 0)
        f[:, :, yi] = y
        f[:, 0::2, ci], f[:, 1::2, ci] = u, v
        return f
    u2, v2 = u[0::2], v[0::2]
    buf = np.zeros((h * 3 // 2, w + pad), np.uint8)
    f = buf[:, :w]
    f[:h] = y
    if fmt == "nv12":
        uv = f[h:]
        uv[:, 0::2], uv[:, 1::2] = u2, v2
    else:  # i420: U then V planes, each (h/2) rows of (pitch/2) bytes
        pitch = w + pad
        flat = buf.reshape(-1)
        for k, plane in enumerate((u2, v2)):
            start = h * pitch + k * (h // 2) * (pitch // 2)
            view = flat[start : start + (h // 2) * (pitch // 2)].reshape(h // 2, pitch // 2)
            view[:, : w // 2] = plane
    return f


def rgb_model(fmt: str, frame: np.ndarray, colorspace="bt601", full=False) -> np.ndarray:
    """Float64 RGB of every source pixel, by the documented formula (the independent model)."""
    yo, ys, rv, gu, gv, bu = yuv_coefficients(colorspace, full)
    if fmt in ("rgb", "bgr", "gray"):
        rgb = frame[..., ::-1] if fmt == "bgr" else (np.repeat(frame[..., None], 3, 2) if fmt == "gray" else frame)
        return rgb.astype(np.float64)
    if fmt in ("yuyv", "uyvy"):
        f = frame.reshape(frame.shape[0], -1, 2) if frame.ndim == 2 else frame
        yi, ci = (0, 1) if fmt == "yuyv" else (1, 0)
        y = f[:, :, yi].astype(np.float64)
        u = np.repeat(f[:, 0::2, ci], 2, axis=1).astype(np.float64)
        v = np.repeat(f[:, 1::2, ci], 2, axis=1).astype(np.float64)
    else:
        h = frame.shape[0] * 2 // 3
        w = frame.shape[1]
        y = frame[:h].astype(np.float64)
        if fmt == "nv12":
            uv = frame[h:]
            u, v = uv[:, 0::2], uv[:, 1::2]
        else:
            pitch = frame.strides[0]
            flat = np.lib.stride_tricks.as_strided(frame, shape=(frame.shape[0] * pitch,), strides=(1,))
            u = flat[h * pitch : h * pitch + (h // 2) * (pitch // 2)].reshape(h // 2, pitch // 2)[:, : w // 2]
            start = h * pitch + (h // 2) * (pitch // 2)
            v = flat[start : start + (h // 2) * (pitch // 2)].reshape(h // 2, pitch // 2)[:, : w // 2]
        u = np.repeat(np.repeat(u, 2, 0), 2, 1).astype(np.float64)
        v = np.repeat(np.repeat(v, 2, 0), 2, 1).astype(np.float64)
    yy = ys * (y - yo)
    r, g, b = yy + rv * (v - 128), yy + gu * (u - 128) + gv * (v - 128), yy + bu * (u - 128)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255)


def warp_model(rgb: np.ndarray, matrix: np.ndarray, out_h: int, out_w: int, bilinear=True, border=0.0) -> np.ndarray:
    """Sample the model RGB at matrix @ (x, y, 1) for every output pixel ([H, W, 3] float64)."""
    h, w = rgb.shape[:2]
    ys, xs = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    m = np.asarray(matrix, np.float64).reshape(3, 3)
    den = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    sx = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / den
    sy = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / den
    inside = (sx >= -0.5) & (sy >= -0.5) & (sx <= w - 0.5) & (sy <= h - 0.5)
    if bilinear:
        fx, fy = np.floor(sx), np.floor(sy)
        ax, ay = (sx - fx)[..., None], (sy - fy)[..., None]
        x0, x1 = np.clip(fx, 0, w - 1).astype(int), np.clip(fx + 1, 0, w - 1).astype(int)
        y0, y1 = np.clip(fy, 0, h - 1).astype(int), np.clip(fy + 1, 0, h - 1).astype(int)
        top = rgb[y0, x0] + ax * (rgb[y0, x1] - rgb[y0, x0])
        bot = rgb[y1, x0] + ax * (rgb[y1, x1] - rgb[y1, x0])
        out = top + ay * (bot - top)
    else:
        out = rgb[np.clip(np.floor(sy + 0.5), 0, h - 1).astype(int), np.clip(np.floor(sx + 0.5), 0, w - 1).astype(int)]
    out[~inside] = border
    return out


# ---- against OpenCV ---------------------------------------------------------------------------
_CV = {"yuyv": cv2.COLOR_YUV2RGB_YUYV, "uyvy": cv2.COLOR_YUV2RGB_UYVY, "nv12": cv2.COLOR_YUV2RGB_NV12,
       "i420": cv2.COLOR_YUV2RGB_I420, "bgr": cv2.COLOR_BGR2RGB, "gray": cv2.COLOR_GRAY2RGB, "rgb": None}


def make_frame(fmt: str, h: int, w: int, pad: int, smooth_frame: bool) -> np.ndarray:
    if fmt in ("rgb", "bgr"):
        buf = np.zeros((h, 3 * w + pad), np.uint8)
        f = buf[:, : 3 * w].reshape(h, w, 3)
        f[...] = np.stack([smooth(h, w) for _ in range(3)], -1) if smooth_frame else RNG.integers(0, 256, (h, w, 3))
        return f
    if fmt == "gray":
        buf = np.zeros((h, w + pad), np.uint8)
        buf[:, :w] = smooth(h, w) if smooth_frame else RNG.integers(0, 256, (h, w))
        return buf[:, :w]
    return pack(fmt, *planes(h, w, smooth_frame), pad=pad)


def opencv_rgb(fmt: str, frame: np.ndarray) -> np.ndarray:
    src = np.ascontiguousarray(frame)
    if fmt in ("yuyv", "uyvy") and src.ndim == 3:
        src = src.reshape(src.shape[0], -1, 2)
    if fmt == "i420" and frame.strides[0] != frame.shape[1]:
        # cvtColor's I420 wants unpadded planes: rebuild them from the padded buffer.
        h = frame.shape[0] * 2 // 3
        src = pack("i420", frame[:h], *(_chroma_420(frame, "i420")), pad=0)
    return src if _CV[fmt] is None else cv2.cvtColor(src, _CV[fmt])


def _chroma_420(frame, fmt):
    h, w = frame.shape[0] * 2 // 3, frame.shape[1]
    pitch = frame.strides[0]
    flat = np.lib.stride_tricks.as_strided(frame, shape=(frame.shape[0] * pitch,), strides=(1,))
    n = (h // 2) * (pitch // 2)
    u = flat[h * pitch : h * pitch + n].reshape(h // 2, pitch // 2)[:, : w // 2]
    v = flat[h * pitch + n : h * pitch + 2 * n].reshape(h // 2, pitch // 2)[:, : w // 2]
    return np.repeat(u, 2, 0), np.repeat(v, 2, 0)


@pytest.mark.parametrize("fmt", ["yuyv", "uyvy", "nv12", "i420", "rgb", "bgr", "gray"])
@pytest.mark.parametrize("trial", range(3))
def test_matches_opencv_chain(fmt, trial):
    rng = np.random.default_rng(trial)
    even = fmt in ("yuyv", "uyvy", "nv12", "i420")
    h = int(rng.integers(20, 200)) * 2
    w = int(rng.integers(20, 300)) * 2 + (0 if even else int(rng.integers(0, 2)))  # odd widths where legal
    pad = int(rng.integers(0, 3)) * 16
    frame = make_frame(fmt, h, w, pad, smooth_frame=False)
    out_h, out_w = int(rng.integers(8, h)), int(rng.integers(8, w))
    out = np.empty((3, out_h, out_w), np.float32)
    K.preprocess(frame, fmt, out)
    ref = cv2.resize(opencv_rgb(fmt, frame), (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    diff = np.abs(out.transpose(1, 2, 0) - ref)
    assert diff.max() <= 1.5 and diff.mean() <= 0.35, (diff.max(), diff.mean())
    # nearest: cv2's centre-aligned nearest is INTER_NEAREST_EXACT. Where (i + 0.5) * scale lands on
    # a pixel boundary (a tie), its fixed point and our float32 may pick different neighbours: those
    # rows and columns are left out; everywhere else the pick, and so the value, must agree.
    K.preprocess(frame, fmt, out, interp="nearest")
    ref = cv2.resize(opencv_rgb(fmt, frame), (out_w, out_h), interpolation=cv2.INTER_NEAREST_EXACT)

    def no_tie(n_out, n_in):
        pos = (np.arange(n_out) + 0.5) * n_in / n_out
        return np.abs(pos - np.round(pos)) > 1e-3

    keep = no_tie(out_h, h)[:, None] & no_tie(out_w, w)[None, :]
    # cvtColor's fixed-point coefficients put its uint8 up to ~0.66 from the exact value (measured).
    tol = 0.51 if fmt in ("rgb", "bgr", "gray") else 0.75
    if keep.any():  # an exact 2x scale makes every position a tie
        assert np.abs(out.transpose(1, 2, 0) - ref)[keep].max() <= tol


def test_opencv_chain_with_roi_and_normalisation():
    frame = make_frame("yuyv", 720, 1280, 0, smooth_frame=False)
    roi = (100, 40, 1024, 512)
    mean, std = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
    out = np.empty((3, 128, 256), np.float32)
    K.preprocess(frame, "yuyv", out, roi=roi, mean=mean, std=std)
    x, y, w, h = roi
    crop = opencv_rgb("yuyv", frame)[y : y + h, x : x + w]
    ref = (cv2.resize(crop, (256, 128), interpolation=cv2.INTER_LINEAR) - np.array(mean)) / np.array(std)
    diff = np.abs(out.transpose(1, 2, 0) - ref) * np.array(std)  # back in 0..255 units
    assert diff.max() <= 1.5 and diff.mean() <= 0.35


# ---- against FFmpeg (swscale) -----------------------------------------------------------------
_AV = {"yuyv": "yuyv422", "nv12": "nv12", "i420": "yuv420p"}


def _very_smooth(rng, h, w, lo, hi, n):
    small = rng.uniform(lo, hi, (n, n)).astype(np.float32)
    return np.clip(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), lo, hi).round().astype(np.uint8)


@pytest.mark.parametrize("fmt", ["yuyv", "nv12", "i420"])
@pytest.mark.parametrize(("colorspace", "full"), [("bt601", False), ("bt601", True), ("bt709", False), ("bt709", True)])
def test_matches_ffmpeg_swscale(fmt, colorspace, full):
    from av.video.reformatter import Interpolation

    rng = np.random.default_rng(7)
    h, w = 96, 160
    lo, hi = (0, 255) if full else (16, 235)
    y = _very_smooth(rng, h, w, lo, hi, 8)
    u, v = _very_smooth(rng, h, w // 2, 64, 192, 3), _very_smooth(rng, h, w // 2, 64, 192, 3)
    frame = pack(fmt, y, u, v)
    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format=_AV[fmt])
    ref = VideoReformatter().reformat(
        vf, format="rgb24", src_colorspace="ITU601" if colorspace == "bt601" else "ITU709",
        src_color_range="JPEG" if full else "MPEG", dst_color_range="JPEG",
        interpolation=Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT,
    ).to_ndarray().astype(np.float64)
    out = np.empty((h, w, 3), np.float32)
    K.preprocess(frame, fmt, out, layout="hwc", colorspace=colorspace, full_range=full)
    diff = np.abs(out - ref)
    max_tol, mean_tol = (3.5, 0.6) if fmt == "yuyv" else (6.0, 1.2)
    assert diff.max() <= max_tol and diff.mean() <= mean_tol, (diff.max(), diff.mean())


# ---- against the NumPy model -------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["yuyv", "nv12", "i420", "bgr"])
def test_homography_matches_model_and_opencv_warp(fmt):
    h, w = 120, 200
    frame = make_frame(fmt, h, w, 16, smooth_frame=True)
    angle = np.deg2rad(7)
    hom = np.array([[np.cos(angle), -np.sin(angle), 30], [np.sin(angle), np.cos(angle), 10], [2e-4, 1e-4, 1.0]])
    out = np.empty((3, 90, 150), np.float32)
    K.preprocess(frame, fmt, out, homography=hom, border=(1, 2, 3))
    model = warp_model(rgb_model(fmt, frame), hom, 90, 150, border=np.array([1, 2, 3]))
    np.testing.assert_allclose(out.transpose(1, 2, 0), model, atol=2e-3)
    # OpenCV's warp of the converted frame agrees away from the border (its bilinear is fixed point).
    ref = cv2.warpPerspective(opencv_rgb(fmt, frame), hom, (150, 90), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE).astype(np.float64)
    ys, xs = np.mgrid[0:90, 0:150]
    den = hom[2, 0] * xs + hom[2, 1] * ys + hom[2, 2]
    sx, sy = (hom[0, 0] * xs + hom[0, 1] * ys + hom[0, 2]) / den, (hom[1, 0] * xs + hom[1, 1] * ys + hom[1, 2]) / den
    interior = (sx > 1) & (sy > 1) & (sx < w - 2) & (sy < h - 2)
    assert np.abs(out.transpose(1, 2, 0) - ref)[interior].max() <= 1.5


@pytest.mark.parametrize(("colorspace", "full"), [("bt601", True), ("bt709", False), ("bt709", True)])
def test_colour_matrices_match_model(colorspace, full):
    frame = make_frame("nv12", 64, 96, 0, smooth_frame=False)
    out = np.empty((64, 96, 3), np.float32)
    K.preprocess(frame, "nv12", out, layout="hwc", colorspace=colorspace, full_range=full)
    np.testing.assert_allclose(out, rgb_model("nv12", frame, colorspace, full), atol=2e-3)


def test_output_types_layouts_and_channel_order():
    frame = make_frame("yuyv", 100, 160, 0, smooth_frame=False)
    mean, std = (10.0, 20.0, 30.0), (50.0, 60.0, 70.0)
    f32 = np.empty((3, 50, 80), np.float32)
    K.preprocess(frame, "yuyv", f32, mean=mean, std=std)
    model = warp_model(rgb_model("yuyv", frame), roi_matrix((0, 0, 160, 100), 80, 50), 50, 80)
    np.testing.assert_allclose(f32.transpose(1, 2, 0), (model - mean) / std, atol=2e-4)
    f16 = np.empty((3, 50, 80), np.float16)
    K.preprocess(frame, "yuyv", f16, mean=mean, std=std)
    assert np.array_equal(f16.view(np.uint16), f32.astype(np.float16).view(np.uint16))  # same rounding as NumPy
    u8 = np.empty((50, 80, 3), np.uint8)
    K.preprocess(frame, "yuyv", u8, layout="hwc")
    plain = np.empty((50, 80, 3), np.float32)
    K.preprocess(frame, "yuyv", plain, layout="hwc")
    assert np.array_equal(u8, np.floor(np.clip(plain, 0, 255) + 0.5).astype(np.uint8))
    bgr = np.empty((50, 80, 3), np.float32)
    K.preprocess(frame, "yuyv", bgr, layout="hwc", channel_order="bgr")
    assert np.array_equal(bgr, plain[..., ::-1])


def test_fp16_conversion_rounds_like_numpy():
    # Values straddling fp16 rounding boundaries, subnormals, overflow and NaN (via normalisation).
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for mean, std in ((0.0, 1.0), (127.5, 1e-3), (0.0, 1e5), (0.0, 3e6)):
        ref = np.empty((3, 16, 16), np.float32)
        got = np.empty((3, 16, 16), np.float16)
        K.preprocess(gray, "gray", ref, interp="nearest", mean=mean, std=std)
        K.preprocess(gray, "gray", got, interp="nearest", mean=mean, std=std)
        assert np.array_equal(got.view(np.uint16), ref.astype(np.float16).view(np.uint16)), (mean, std)


def test_writes_only_its_slot_of_a_batched_input():
    frame = make_frame("nv12", 72, 128, 0, smooth_frame=False)
    batch = np.full((2, 3, 3, 36, 64), 7, np.uint8)
    K.preprocess(frame, "nv12", batch[1, 2])
    assert (batch[0] == 7).all() and (batch[1, :2] == 7).all()
    solo = np.empty((3, 36, 64), np.uint8)
    K.preprocess(frame, "nv12", solo)
    assert np.array_equal(batch[1, 2], solo)


# ---- several cameras in one call -----------------------------------------------------------------
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_preprocess_many_equals_one_call_per_camera(threads):
    """One native call for a rig (rows of all cameras shared by the threads) writes exactly what a
    call per camera writes, whatever the split of rows between threads."""
    cams = [("yuyv", 72, 128, 0), ("nv12", 48, 96, 16), ("rgb", 60, 100, 4)]
    frames = [make_frame(fmt, h, w, pad, smooth_frame=False) for fmt, h, w, pad in cams]
    batch = np.zeros((1, 3, 3, 37, 61), np.float32)
    solo = np.zeros_like(batch)
    jobs = []
    for i, ((fmt, h, w, _pad), frame) in enumerate(zip(cams, frames, strict=True)):
        roi = centre_crop(w, h, 61, 37)
        opts = dict(roi=roi, mean=(120.0, 110.0, 100.0), std=(60.0, 55.0, 50.0))
        jobs.append((K.prepare(fmt, batch[0, i], (w, h), **opts), frame))
        K.preprocess(frame, fmt, solo[0, i], threads=1, **opts)
    K.preprocess_many(jobs, threads=threads)
    assert np.array_equal(batch, solo)
    assert np.abs(batch).sum() > 0


def test_preprocess_many_names_the_bad_job():
    good = make_frame("yuyv", 16, 16, 0, smooth_frame=False)
    out = np.zeros((2, 3, 8, 8), np.uint8)
    prepared = [K.prepare("yuyv", out[i], (16, 16)) for i in range(2)]
    with pytest.raises(ValueError, match=r"^jobs\[1\]: src: a 32x16 frame, but .* prepared for 16x16"):
        K.preprocess_many([(prepared[0], good), (prepared[1], np.zeros((16, 32, 2), np.uint8))])
    with pytest.raises(ValueError, match=r"^jobs\[1\]: src: dtype must be uint8"):
        K.preprocess_many([(prepared[0], good), (prepared[1], good.astype(np.uint16))])
    assert not out.any()  # every job is checked before any runs
    K.preprocess_many([])  # nothing to do is not an error


def test_homography_too_large_to_stay_finite_is_refused():
    # The CPU twin is compiled to assume finite values; this bound keeps every projection finite.
    with pytest.raises(ValueError, match="homography: entries above"):
        K.preprocess(np.zeros((8, 8), np.uint8), "gray", np.zeros((3, 4, 4), np.float32),
                     homography=[[1e16, 0, 0], [0, 1, 0], [0, 0, 1]])


# ---- bad input: a ValueError naming the argument ------------------------------------------------
def _bad_cases():
    ok_yuyv = np.zeros((8, 8, 2), np.uint8)
    out = np.zeros((3, 4, 4), np.float32)
    return [
        ("src", lambda: K.preprocess(ok_yuyv.astype(np.uint16), "yuyv", out)),
        ("src", lambda: K.preprocess(np.zeros((8, 7, 2), np.uint8), "yuyv", out)),  # odd width
        ("src", lambda: K.preprocess(np.zeros((8, 14), np.uint8), "uyvy", out)),  # 7 pixels per row
        ("src", lambda: K.preprocess(np.zeros((13, 8), np.uint8), "nv12", out)),  # rows not H*3/2
        ("src", lambda: K.preprocess(np.zeros((8, 16, 2), np.uint8)[:, ::2], "yuyv", out)),  # impossible strides
        ("src", lambda: K.preprocess(np.zeros((8, 8, 4), np.uint8), "rgb", out)),
        ("src", lambda: K.preprocess([[1, 2], [3, 4]], "gray", out)),
        ("roi", lambda: K.preprocess(ok_yuyv, "yuyv", out, roi=(4, 4, 8, 8))),
        ("roi", lambda: K.preprocess(ok_yuyv, "yuyv", out, roi=(0, 0, 0, 4))),
        ("roi", lambda: K.preprocess(ok_yuyv, "yuyv", out, roi=(0, 0, 4, 4), homography=np.eye(3))),
        ("homography", lambda: K.preprocess(ok_yuyv, "yuyv", out, homography=np.eye(2))),
        ("out", lambda: K.preprocess(ok_yuyv, "yuyv", np.zeros((4, 4, 4), np.float32))),
        ("out", lambda: K.preprocess(ok_yuyv, "yuyv", np.zeros((3, 4, 4), np.float64))),
        ("out", lambda: K.preprocess(ok_yuyv, "yuyv", np.zeros((3, 16), np.float32))),
        ("out", lambda: K.preprocess(ok_yuyv, "yuyv", np.zeros((3, 4, 4), np.float32)[:, :0])),
        ("fmt", lambda: K.preprocess(ok_yuyv, "yuv444", out)),
        ("std", lambda: K.preprocess(ok_yuyv, "yuyv", out, std=0)),
        ("mean", lambda: K.preprocess(ok_yuyv, "yuyv", out, mean=(1, 2))),
        ("colorspace", lambda: K.preprocess(ok_yuyv, "yuyv", out, colorspace="bt2020")),
        ("interp", lambda: K.preprocess(ok_yuyv, "yuyv", out, interp="cubic")),
    ]


@pytest.mark.parametrize(("index", "name"), [(i, n) for i, (n, _) in enumerate(_bad_cases())])
def test_bad_input_names_the_argument(index, name):
    with pytest.raises(ValueError) as info:
        _bad_cases()[index][1]()
    assert str(info.value).startswith(f"{name}:") or f"{name}:" in str(info.value), str(info.value)


def test_read_only_output_is_refused():
    out = np.zeros((3, 4, 4), np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="out"):
        K.preprocess(np.zeros((8, 8, 2), np.uint8), "yuyv", out)


class _FakeDeviceArray:
    """No GPU exists on this machine: this object only carries a __cuda_array_interface__ so the
    device error path can be exercised; its pointer is never dereferenced."""

    def __init__(self, shape, typestr):
        self.shape = shape
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0xDEAD0000, False),
                                         "version": 3, "strides": None}


@pytest.mark.skipif(K.cuda_available(), reason="checks the no-GPU error path")
def test_device_arrays_without_cuda_raise_a_clear_error():
    src, out = _FakeDeviceArray((8, 8, 2), "|u1"), _FakeDeviceArray((3, 4, 4), "<f4")
    with pytest.raises(RuntimeError, match="CUDA unavailable"):
        K.preprocess(src, "yuyv", out)
    with pytest.raises(ValueError, match="out: is in host memory but src is in device memory"):
        K.preprocess(src, "yuyv", np.zeros((3, 4, 4), np.float32))


# ---- CUDA kernel vs CPU twin (GPU machines) -------------------------------------------------------
try:
    import cupy
except ImportError:  # only GPU machines have it
    cupy = None


def to_device(frame: np.ndarray):
    """The frame on the GPU with its row pitch kept. ``cupy.asarray`` packs the rows of a padded view, which
    for I420 is another image: its chroma planes have half the pitch, so packing the (H*3/2, W) rows moves
    them (found on an H200: the twins disagreed on padded I420 only)."""
    pitch = frame.strides[0]
    rows = np.lib.stride_tricks.as_strided(frame, shape=(frame.shape[0], pitch), strides=(pitch, 1))
    dev = cupy.asarray(np.ascontiguousarray(rows)).view(np.uint8)
    if frame.ndim == 2:
        return dev[:, : frame.shape[1]]
    width = frame.shape[1] * frame.shape[2]
    return dev[:, :width].reshape(frame.shape)


@pytest.mark.skipif(cupy is None, reason="CuPy is not installed")
@pytest.mark.skipif(not K.cuda_available(), reason=f"needs a CUDA device: {K.cuda_status()}")
@pytest.mark.parametrize("fmt", ["yuyv", "uyvy", "nv12", "i420", "rgb", "bgr", "gray"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float16])
def test_cuda_matches_cpu_twin(fmt, dtype):
    frame = make_frame(fmt, 136, 240, 32, smooth_frame=False)
    hom = np.array([[1.1, 0.05, 3.0], [-0.04, 1.05, 2.0], [1e-4, 0.0, 1.0]])
    cpu = np.empty((3, 64, 128), dtype)
    K.preprocess(frame, fmt, cpu, mean=(120, 110, 100), std=(60, 60, 60), homography=hom)
    gpu = cupy.empty((3, 64, 128), dtype)
    stream = cupy.cuda.Stream(non_blocking=True)
    K.preprocess(to_device(frame), fmt, gpu, mean=(120, 110, 100), std=(60, 60, 60), homography=hom, stream=stream)
    stream.synchronize()
    got = cupy.asnumpy(gpu)
    if dtype == np.float32:
        np.testing.assert_allclose(got, cpu, atol=1e-4)  # FMA contraction may differ in the last bits
    else:
        assert np.abs(got.astype(np.float32) - cpu.astype(np.float32)).max() <= (1 if dtype == np.uint8 else 1e-2)


def test_dlpack_producers_are_taken_without_a_copy():
    """PyTorch CPU tensors have neither the buffer protocol nor __cuda_array_interface__: DLPack."""
    torch = pytest.importorskip("torch")
    frame = make_frame("yuyv", 48, 64, 0, smooth_frame=False)
    out_t = torch.zeros((3, 24, 32), dtype=torch.float32)
    assert K.preprocess(torch.from_numpy(np.ascontiguousarray(frame)), "yuyv", out_t) is out_t
    ref = np.empty((3, 24, 32), np.float32)
    K.preprocess(frame, "yuyv", ref)
    np.testing.assert_array_equal(out_t.numpy(), ref)  # written in place, through the tensor's memory
