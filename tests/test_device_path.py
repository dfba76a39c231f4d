"""The GPU data path (runtime/device_path.py, backends/device_io.py): raw frames up, trajectory down.

Everywhere: the pure parts (DeviceArray's view arithmetic; FrameUploads' buffer reuse, through a
host stand-in for the device, since no GPU exists on most machines that run this). On a GPU
machine (torch with CUDA, kernels built with CUDA): the path on the torch backend against the host
path, and the loop end to end on it.
"""

from __future__ import annotations

import numpy as np
import pytest

import vla.kernels as K
from vla.runtime.backends.device_io import DeviceArray, DeviceIO
from vla.runtime.device_path import FrameUploads
from vla.runtime.sources.base import Frame
from vla.runtime.sources.scene import frame_shape


# ---- DeviceArray: the view arithmetic, checked against NumPy's own ----------------------------------
@pytest.mark.parametrize("index", [0, 2, -1, (1, 2), (0, -1, 3)])
def test_device_array_views_land_where_numpy_views_do(index):
    host = np.zeros((3, 4, 5, 6), np.float32)
    view = DeviceArray(host.ctypes.data, host.shape, host.dtype)[index]
    want = host[index]
    assert view.shape == want.shape and view.dtype == want.dtype
    assert view.ptr == want.ctypes.data
    cai = view.__cuda_array_interface__
    assert cai["data"] == (want.ctypes.data, False) and cai["shape"] == want.shape and cai["typestr"] == "<f4"
    assert cai["strides"] is None and view.nbytes == want.nbytes


def test_device_array_rejects_what_it_cannot_view():
    arr = DeviceArray(0x1000, (2, 3), np.uint8)
    with pytest.raises(IndexError, match="out of range for axis 0"):
        arr[2]
    with pytest.raises(IndexError, match="integer indices"):
        arr[0:1]
    with pytest.raises(IndexError, match="integer indices"):
        arr[0, 0, 0]


# ---- FrameUploads through a host stand-in ----------------------------------------------------------
class HostStandIn(DeviceIO):
    """No GPU here: "device" buffers are host arrays and copies are np.copyto, so what FrameUploads
    decides (which buffers, reused when, what is copied) is checked; the copies' speed is not."""

    def __init__(self) -> None:
        self.made: list[tuple[int, ...]] = []
        self.uploads = 0

    @property
    def stream(self):
        return None

    def input(self, name):
        raise AssertionError("not used here")

    def output(self, name):
        raise AssertionError("not used here")

    def host_outputs(self, names):
        raise AssertionError("not used here")

    def staging(self, shape, dtype):
        self.made.append(shape)
        return np.zeros(shape, dtype), np.zeros(shape, dtype)

    def upload(self, device, host):
        self.uploads += 1
        np.copyto(device, host)

    def download(self, host, device):
        np.copyto(host, device)

    def synchronize(self):
        pass


def _frame(name: str, w: int, h: int, pad: int = 0) -> Frame:
    shape = frame_shape("yuyv", w, h)
    rows = np.random.default_rng(w + h).integers(0, 256, (shape[0], shape[1] * shape[2] + pad), dtype=np.uint8)
    data = rows[:, : shape[1] * shape[2]].reshape(shape)  # padded rows, as some drivers deliver
    return Frame(camera=name, data=data, fmt="yuyv", width=w, height=h, seq=1, capture_time=0.0)


def test_frame_uploads_reuse_one_buffer_per_camera_and_size_and_pack_padded_rows():
    io = HostStandIn()
    up = FrameUploads(io)
    a, b = _frame("front", 64, 32, pad=8), _frame("left", 64, 32)
    dev_a, dev_b = up(a), up(b)
    assert dev_a is not dev_b and np.array_equal(dev_a, a.data) and dev_a.flags.c_contiguous
    again = _frame("front", 64, 32)
    assert up(again) is dev_a and np.array_equal(dev_a, again.data)  # same camera, same size: reused
    bigger = _frame("front", 128, 64)
    assert up(bigger) is not dev_a  # a new size gets its own buffers
    assert io.made == [(32, 64, 2), (32, 64, 2), (64, 128, 2)] and io.uploads == 4


# ---- on a GPU machine ------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
needs_gpu_path = pytest.mark.skipif(
    not (torch.cuda.is_available() and K.cuda_available()),
    reason=f"needs torch with CUDA and kernels built with CUDA ({K.cuda_status()})")


@needs_gpu_path
def test_gpu_path_writes_the_engine_input_and_decodes_as_the_host_path(reference_bundle):
    from vla.runtime.engine import open_engine
    from vla.runtime.preprocess import RigPreprocessor

    host = open_engine(str(reference_bundle), backend="torch", device="cpu", threads=1)
    gpu = open_engine(str(reference_bundle), backend="torch", device="cuda")
    try:
        io = gpu.device_io()
        assert io is not None
        names = host.manifest.camera_names
        frames = {n: _frame(n, 1920, 1080, pad=64) for n in names}
        RigPreprocessor.for_backend(host)(frames)
        RigPreprocessor.for_backend(gpu, device=io)(frames)
        io.synchronize()
        images = gpu.device_input("images").cpu().numpy()
        assert np.abs(images.astype(np.int16) - host.feed("images").astype(np.int16)).max() <= 1  # FMA rounding
        from vla.runtime.device_path import DeviceDecoder

        gpu.host_outputs(("trajectory", "score"))
        out = gpu.run()
        dec = DeviceDecoder(io, 0.1, out["trajectory"].shape[-2])(io.output("trajectory"), io.output("score"))
        want = K.decode_trajectory(out["trajectory"], out["score"], 0.1)
        assert (dec.mode, dec.verdict) == (want.mode, want.verdict)
        np.testing.assert_allclose(dec.points, want.points, rtol=0, atol=1e-4)
    finally:
        host.close()
        gpu.close()


@needs_gpu_path
def test_loop_runs_on_the_gpu_path(reference_bundle):
    from vla.runtime.engine import open_engine
    from vla.runtime.loop import RunConfig, Runner
    from vla.runtime.sources import open_cameras

    backend = open_engine(str(reference_bundle), backend="torch", device="cuda")
    cameras = open_cameras(["synthetic://?size=1920x1080&fps=30"], backend.manifest.camera_names)
    runner = Runner(backend, cameras, RunConfig(max_ticks=20))
    try:
        assert runner.data_path.startswith("GPU")
        records = list(runner)
    finally:
        runner.close()
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) >= 15, [r["reason"] for r in records if r["status"] != "ok"]
    assert all(np.isfinite(r["trajectory"]).all() for r in ok)
    assert backend.device_input("memory_valid").cpu().numpy().all()  # state committed on the device
