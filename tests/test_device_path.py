"""The GPU data path (runtime/loop/device_path.py, backends/device_io.py): raw frames up, trajectory down.

Everywhere: the pure parts (DeviceArray's view arithmetic, the CUDA-graph decisions) and DeviceTick
with the loop on it, through a host stand-in for the device (HostDeviceIO: no GPU exists on most
machines that run this). On a GPU machine (torch with CUDA, kernels built with CUDA): the path on
the torch backend against the host path, with and without CUDA graphs, and the loop end to end.
"""

from __future__ import annotations

import numpy as np
import pytest

import vla.kernels as K
from vla.runtime.backends.device_io import CapturedGraph, CaptureError, DeviceArray, DeviceIO
from vla.runtime.errors import CameraError
from vla.runtime.inputs.preprocess import RigPreprocessor
from vla.runtime.inputs.sources.base import Frame
from vla.runtime.inputs.sources.scene import frame_shape
from vla.runtime.loop.device_path import (
    MAX_GRAPHS,
    WARM_RUNS,
    DeviceDecoder,
    DeviceTick,
    FrameUploads,
    graph_action,
    graphs_to_drop,
)


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


# ---- the graph decisions (pure) ----------------------------------------------------------------------
def test_graph_action_runs_eagerly_until_warm_then_captures_once_and_replays():
    assert graph_action("k", {}, 0, enabled=True, warm=2) == "eager"
    assert graph_action("k", {}, 1, enabled=True, warm=2) == "eager"
    assert graph_action("k", {}, 2, enabled=True, warm=2) == "capture"
    assert graph_action("k", {"k": object()}, 2, enabled=True, warm=2) == "replay"
    assert graph_action("other", {"k": object()}, 0, enabled=True, warm=2) == "eager"  # a new key starts over
    assert graph_action("k", {"k": object()}, 9, enabled=False) == "eager"  # off (flag, or a failed capture)


def test_graphs_to_drop_keeps_the_most_recently_used():
    assert graphs_to_drop(["a", "b", "c"], limit=4) == []
    assert graphs_to_drop(["a", "b", "c", "d"], limit=4) == ["a"]  # room for the one about to be added
    assert graphs_to_drop(["a", "b", "c", "d", "e"], limit=4) == ["a", "b"]


# ---- DeviceTick through a host stand-in ------------------------------------------------------------
class HostDeviceIO(DeviceIO):
    """A stand-in for a GPU backend's DeviceIO, since no GPU exists on most machines that run this:
    a real ONNX Runtime backend on the CPU, "device" buffers that are host arrays, copies that are
    np.copyto, and a "graph" that records the work and replays it by calling it again. It checks
    DeviceTick's wiring (frames staged, uploaded, preprocessed into the engine's input, run, decoded
    from its outputs, read back) and its graph decisions; CUDA's own capture is for the GPU tests."""

    def __init__(self, backend, fail_capture: str | None = None) -> None:
        self.backend, self.fail_capture = backend, fail_capture
        self.out: dict[str, np.ndarray] = {}
        self.made: list[tuple[int, ...]] = []
        self.uploads = self.runs = self.finished = self.captures = 0

    @property
    def stream(self):
        return None

    def input(self, name):
        return self.backend.feed(name)

    def output(self, name):
        return self.out[name]

    def host_outputs(self, names):
        self.host_names = tuple(names)

    def staging(self, shape, dtype):
        self.made.append(tuple(shape))
        return np.zeros(shape, dtype), np.zeros(shape, dtype)

    def upload(self, device, host):
        self.uploads += 1
        np.copyto(device, host)

    def download(self, host, device):
        np.copyto(host, device)

    def synchronize(self):
        pass

    def enqueue_run(self):
        self.runs += 1
        self.out = self.backend.run()

    def finish_run(self):
        self.finished += 1

    def run_key(self):
        return ("parity", self.backend._parity)  # ONNX Runtime's state buffers swap as TensorRT's do

    def capture(self, work):
        self.captures += 1
        if self.fail_capture:
            raise CaptureError(self.fail_capture)
        return ReplayByCalling(work, self)


class ReplayByCalling(CapturedGraph):
    """Replays by calling the work again; a real graph replays what capture baked in, so a replay
    under another run key (state parity, copies) than the capture's would be wrong: refused here."""

    def __init__(self, work, io: HostDeviceIO) -> None:
        self.work, self.io, self.key, self.closed = work, io, io.run_key(), False

    def launch(self):
        assert not self.closed, "a dropped graph was launched"
        assert self.io.run_key() == self.key, f"replayed under {self.io.run_key()}, captured under {self.key}"
        self.work()

    def close(self):
        self.closed = True


def _frame(name: str, w: int, h: int, pad: int = 0, seed: int = 0) -> Frame:
    shape = frame_shape("yuyv", w, h)
    rows = np.random.default_rng([w, h, seed]).integers(0, 256, (shape[0], shape[1] * shape[2] + pad), dtype=np.uint8)
    data = rows[:, : shape[1] * shape[2]].reshape(shape)  # padded rows, as some drivers deliver
    return Frame(camera=name, data=data, fmt="yuyv", width=w, height=h, seq=1, capture_time=0.0)


def test_frame_uploads_reuse_one_buffer_per_camera_and_size_and_pack_padded_rows(reference_bundle):
    io = HostDeviceIO(None)
    up = FrameUploads(io)
    a, b = _frame("front", 64, 32, pad=8), _frame("left", 64, 32)
    (dev_a, pin_a), (dev_b, _) = up.stage(a), up.stage(b)
    assert dev_a is not dev_b and np.array_equal(pin_a, a.data) and pin_a.flags.c_contiguous
    again = _frame("front", 64, 32, seed=1)
    dev, pin = up.stage(again)
    assert dev is dev_a and pin is pin_a and np.array_equal(pin_a, again.data)  # same camera, same size: reused
    assert up.stage(_frame("front", 128, 64))[0] is not dev_a  # a new size gets its own buffers
    assert io.made == [(32, 64, 2), (32, 64, 2), (64, 128, 2)]


def _open_pair(bundle):
    from vla.runtime.engine import open_engine

    return (open_engine(str(bundle), threads=1, backend="ort"), open_engine(str(bundle), threads=1, backend="ort"))


def _device_tick(backend, io, **kw) -> DeviceTick:
    m = backend.manifest
    steps = m.outputs_with("trajectory")[0].shape[-2]
    rig = RigPreprocessor.for_backend(backend, threads=1, device=io)
    return DeviceTick(io, rig, DeviceDecoder(io, 0.1, steps), "trajectory", "score", **kw)


def _host_tick(backend, rig, decoder, frames):
    rig(frames)
    out = backend.run()
    decoded = decoder(out["trajectory"], out["score"])
    backend.commit_state()
    return decoded


def _lockstep(host, dev, tick: DeviceTick, ticks: int, w: int, h: int, pad: int = 0):
    """The host path on ``host`` and DeviceTick on ``dev``, tick by tick on the same frames, state
    committed on both; yields (tick index, host result, device result)."""
    rig = RigPreprocessor.for_backend(host, threads=1)
    decoder = K.TrajectoryDecoder(0.1, host.manifest.outputs_with("trajectory")[0].shape[-2])
    for i in range(ticks):
        frames = {n: _frame(n, w, h, pad=pad, seed=i) for n in host.manifest.camera_names}
        want = _host_tick(host, rig, decoder, frames)
        tick.stage(frames)
        tick.run()
        got = tick.decoded()
        dev.commit_state()
        yield i, want, got


def test_device_tick_gives_the_host_path_result_eager_then_replayed(reference_bundle):
    host, dev = _open_pair(reference_bundle)
    io = HostDeviceIO(dev)
    tick = _device_tick(dev, io)
    actions = []
    for i, want, got in _lockstep(host, dev, tick, 8, 320, 240, pad=16):
        actions.append(tick.last_action)
        assert np.array_equal(dev.feed("images"), host.feed("images")), f"tick {i}: the engine input differs"
        assert (got.mode, got.verdict) == (want.mode, want.verdict)
        np.testing.assert_array_equal(got.points, want.points)
    # State parity alternates, so each parity's sequence warms up twice, is captured, then replayed.
    assert actions == ["eager"] * 4 + ["replay"] * 4
    assert io.captures == 2 and io.runs == 8 and io.finished == 8 and io.uploads == 8 * 3
    assert tick.graph_note == "on (2 captured)"
    tick.close()


def test_a_failed_capture_turns_graphs_off_once_and_plain_launches_go_on(reference_bundle):
    host, dev = _open_pair(reference_bundle)
    io = HostDeviceIO(dev, fail_capture="stand-in: the engine cannot be captured")
    lines: list[str] = []
    tick = _device_tick(dev, io, log=lines.append)
    for _, want, got in _lockstep(host, dev, tick, 6, 320, 240):
        assert got.verdict == want.verdict and np.array_equal(got.points, want.points)
    assert io.captures == 1 and io.runs == 6  # one failed attempt, then every tick launched plainly
    assert tick.last_action == "eager" and "off (capture failed: stand-in: the engine cannot" in tick.graph_note
    assert len(lines) == 1 and "CUDA graph of the tick off" in lines[0]


def test_a_graph_whose_replay_fails_is_dropped_and_its_key_runs_plainly_after(reference_bundle):
    _, dev = _open_pair(reference_bundle)
    io = HostDeviceIO(dev)
    tick = _device_tick(dev, io)
    frames = {n: _frame(n, 320, 240) for n in dev.manifest.camera_names}
    tick.stage(frames)  # no commit_state: one state parity, so one key throughout
    for _ in range(WARM_RUNS + 1):
        tick.run()
    assert tick.last_action == "replay" and io.captures == 1
    (graph,) = tick._graphs.values()

    def fail():
        raise RuntimeError("stand-in: cudaGraphLaunch failed")

    graph.launch = fail
    with pytest.raises(RuntimeError, match="cudaGraphLaunch failed"):
        tick.run()
    assert graph.closed and not tick._graphs
    for _ in range(2 * WARM_RUNS):
        tick.run()
        assert tick.last_action == "eager"
    assert io.captures == 1  # never captured again for this key
    tick.close()


def test_a_new_frame_size_or_state_parity_gets_its_own_graph_and_old_ones_are_dropped(reference_bundle):
    _, dev = _open_pair(reference_bundle)
    io = HostDeviceIO(dev)
    tick = _device_tick(dev, io)
    names = dev.manifest.camera_names
    sizes = [(320, 240), (640, 480), (160, 120)]  # 3 sizes x 2 parities: more keys than MAX_GRAPHS
    for w, h in sizes:
        for _ in range(2 * (WARM_RUNS + 1)):
            tick.stage({n: _frame(n, w, h) for n in names})
            tick.run()
            dev.commit_state()
        assert tick.last_action == "replay"
    assert io.captures == 6
    assert len(tick._graphs) == MAX_GRAPHS  # the least recently used were closed and dropped
    tick.close()
    assert not tick._graphs


def test_a_bad_frame_is_refused_before_anything_is_staged(reference_bundle):
    _, dev = _open_pair(reference_bundle)
    io = HostDeviceIO(dev)
    tick = _device_tick(dev, io)
    names = dev.manifest.camera_names
    frames = {n: _frame(n, 320, 240) for n in names}
    frames[names[1]] = Frame(camera=names[1], data=np.zeros((240, 100, 2), np.uint8), fmt="yuyv", width=320,
                             height=240, seq=1, capture_time=0.0)
    with pytest.raises(CameraError, match=f"camera '{names[1]}': bad frame"):
        tick.stage(frames)
    assert io.made == [(64, 6), (20,)]  # the decoder's two, made at start: no frame staging


class StandInGpuBackend:
    """The ONNX Runtime backend, answering ``device_io()`` with the host stand-in (see HostDeviceIO)."""

    def __init__(self, backend, io) -> None:
        self._backend, self._io = backend, io

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def device_io(self):
        return self._io


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_the_loop_runs_its_gpu_path_through_device_tick(reference_bundle, cuda_graph):
    from vla.runtime.inputs.sources import open_cameras
    from vla.runtime.loop.runner import RunConfig, Runner

    _, dev = _open_pair(reference_bundle)
    io = HostDeviceIO(dev)
    backend = StandInGpuBackend(dev, io)
    cameras = open_cameras(["synthetic://?size=320x240&fps=30"], dev.manifest.camera_names)
    runner = Runner(backend, cameras, RunConfig(max_ticks=12, budget_ms=1000.0, cuda_graph=cuda_graph))
    try:
        assert runner.data_path.startswith("GPU") and "CUDA graph of the tick" in runner.data_path
        records = list(runner)
    finally:
        runner.close()
    ok = [r for r in records if r["status"] == "ok"]
    # The full reference model under a budget ten times its run on a 2-core machine.
    assert len(ok) >= 10, [r["reason"] for r in records if r["status"] != "ok"]
    assert all(np.isfinite(r["trajectory"]).all() for r in ok)
    assert io.captures == (2 if cuda_graph else 0)  # one per state parity (the warm-up's runs count for none)
    assert runner._device_tick.last_action == ("replay" if cuda_graph else "eager")
    # The warm-up's plain runs (DeviceTick.warm_up, then the timed plain_run ones), then every tick
    # that ran the engine through DeviceTick.
    ran = [r for r in records if "engine" in r["latency_ms"]]
    assert runner.warmup_engine_ms and io.finished == WARM_RUNS + len(runner.warmup_engine_ms) + len(ran)


# ---- on a GPU machine ------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
needs_gpu_path = pytest.mark.skipif(
    not (torch.cuda.is_available() and K.cuda_available()),
    reason=f"needs torch with CUDA and kernels built with CUDA ({K.cuda_status()})")


@needs_gpu_path
@pytest.mark.parametrize("cuda_graph", [True, False])
def test_gpu_path_writes_the_engine_input_and_decodes_as_the_host_path(reference_bundle, cuda_graph):
    """torch on CUDA through DeviceTick (CUDA graphs captured and replayed, or plain launches) against
    torch on the CPU through the host path, tick by tick, state committed on both."""
    from vla.runtime.engine import open_engine

    host = open_engine(str(reference_bundle), backend="torch", device="cpu", threads=1)
    gpu = open_engine(str(reference_bundle), backend="torch", device="cuda")
    try:
        io = gpu.device_io()
        assert io is not None
        tick = _device_tick(gpu, io, cuda_graph=cuda_graph)
        actions = []
        for i, want, got in _lockstep(host, gpu, tick, 6, 1920, 1080, pad=64):
            actions.append(tick.last_action)
            images = gpu.device_input("images").cpu().numpy()
            # FMA rounding on the device may move a pixel by one level; the models then differ as CPU
            # and CUDA kernels do, well inside the export's 1e-2 parity gate.
            assert np.abs(images.astype(np.float32) - host.feed("images").astype(np.float32)).max() <= 1
            assert (got.mode, got.verdict) == (want.mode, want.verdict), f"tick {i}"
            np.testing.assert_allclose(got.points, want.points, rtol=0, atol=1e-2)
        assert actions[-1] == ("replay" if cuda_graph else "eager"), (actions, tick.graph_note)
        tick.close()
    finally:
        host.close()
        gpu.close()


@needs_gpu_path
def test_loop_runs_on_the_gpu_path(reference_bundle):
    from vla.runtime.engine import open_engine
    from vla.runtime.inputs.sources import open_cameras
    from vla.runtime.loop.runner import RunConfig, Runner

    backend = open_engine(str(reference_bundle), backend="torch", device="cuda")
    cameras = open_cameras(["synthetic://?size=1920x1080&fps=30"], backend.manifest.camera_names)
    runner = Runner(backend, cameras, RunConfig(max_ticks=20))
    try:
        assert runner.data_path.startswith("GPU")
        records = list(runner)
        assert runner._device_tick.last_action == "replay", runner._device_tick.graph_note
    finally:
        runner.close()
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) >= 15, [r["reason"] for r in records if r["status"] != "ok"]
    assert all(np.isfinite(r["trajectory"]).all() for r in ok)
    assert backend.device_input("memory_valid").cpu().numpy().all()  # state committed on the device
