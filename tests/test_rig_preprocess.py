"""The loop's preprocessing of a camera rig (runtime/inputs/preprocess.py): one native call per tick,
set up once per camera and frame size, and a bad frame named by its camera."""

from __future__ import annotations

import numpy as np
import pytest

import vla.kernels as K
from vla.kernels.preprocess import centre_crop
from vla.runtime.errors import CameraError
from vla.runtime.inputs.preprocess import CameraPreprocessing, RigPreprocessor
from vla.runtime.inputs.sources.base import Frame
from vla.runtime.inputs.sources.scene import frame_shape

CAMERA = {"color": "RGB", "layout": "NCHW", "normalization": {"mean": [120.0, 115.0, 110.0],
                                                            "std": [58.0, 57.0, 57.5], "in_graph": False}}
RNG = np.random.default_rng(7)


def frame(name: str, w: int = 320, h: int = 180, fmt: str = "yuyv") -> Frame:
    data = RNG.integers(16, 236, size=frame_shape(fmt, w, h), dtype=np.uint8)
    return Frame(camera=name, data=data, fmt=fmt, width=w, height=h, seq=1, capture_time=0.0)


def rig(names: list[str], dtype=np.float32) -> tuple[RigPreprocessor, np.ndarray]:
    buf = np.zeros((1, len(names), 3, 64, 128), dtype)
    cams = [CameraPreprocessing(n, CAMERA, buf[0, i]) for i, n in enumerate(names)]
    return RigPreprocessor(cams, threads=2), buf


def test_rig_writes_what_the_kernel_writes_for_each_camera():
    pre, buf = rig(["front", "left", "right"])
    frames = {"front": frame("front"), "left": frame("left", 640, 480, "nv12"), "right": frame("right", 160, 90)}
    pre(frames)
    norm = CAMERA["normalization"]
    for i, name in enumerate(("front", "left", "right")):
        f = frames[name]
        want = np.zeros((3, 64, 128), np.float32)
        K.preprocess(f.data, f.fmt, want, roi=centre_crop(f.width, f.height, 128, 64), mean=norm["mean"],
                     std=norm["std"], threads=1)
        assert np.array_equal(buf[0, i], want), name


def test_a_camera_that_changes_size_or_format_is_set_up_again():
    pre, buf = rig(["front"])
    pre({"front": frame("front")})
    first = buf.copy()
    small = frame("front", 160, 90, "uyvy")
    pre({"front": small})
    assert not np.array_equal(buf, first)
    assert len(pre.cameras[0]._prepared) == 2  # both set-ups kept for the next change back


def test_a_bad_frame_names_its_camera():
    pre, buf = rig(["front", "left"])
    truncated = frame("left")
    truncated.data = truncated.data[:, :-1]  # a row one byte short of 320 YUYV pixels
    with pytest.raises(CameraError, match=r"^camera 'left': "):
        pre({"front": frame("front"), "left": truncated})
    odd = frame("left")
    odd.fmt = "mjpeg"
    with pytest.raises(CameraError, match=r"camera 'left': pixel format 'mjpeg' is not supported"):
        pre({"front": frame("front"), "left": odd})
    assert not buf.any()  # nothing written when one camera's frame is bad
