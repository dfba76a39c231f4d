"""The procedural scene and the ``synthetic://`` rig: real processes, real shared memory, no mocks.

Process tests use small frames so that the whole file stays well under 20 s on two cores.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from vla.runtime.errors import CameraError
from vla.runtime.inputs.sources import scene, synthetic
from vla.runtime.inputs.sources.base import PIXEL_FORMATS, CameraSource, Frame

TO_RGB = {
    "yuyv": cv2.COLOR_YUV2RGB_YUYV,
    "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "nv12": cv2.COLOR_YUV2RGB_NV12,
    "i420": cv2.COLOR_YUV2RGB_I420,
    "bgr": cv2.COLOR_BGR2RGB,
}


def render(fmt: str, seed: int = 3, t: float = 5.0, size: tuple[int, int] = (320, 240)) -> dict:
    renderer = scene.SceneRenderer(scene.Road(seed), scene.Rig(["front", "rear"], *size), fmt)
    out = renderer.new_outputs()
    for a in out.values():
        a.fill(7)  # a value the renderer never leaves everywhere: proves it wrote in place
    renderer.render(t, out)
    return out


def collect(src: CameraSource, seconds: float) -> list[tuple[float, Frame]]:
    """(arrival time, frame) for every new frame seen while polling every 2 ms."""
    seen: list[tuple[float, Frame]] = []
    last = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        f = src.newest()
        if f is not None and f.seq != last:
            last = f.seq
            # newest() reuses its buffers: keep copies
            seen.append((time.monotonic(), Frame(**{**f.__dict__, "truth": f.truth.copy()})))
        time.sleep(0.002)
    return seen


def close_all(sources: list) -> None:
    for s in sources:
        s.close()


# ---------------------------------------------------------------------------------------------------
# Scene (in process)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(PIXEL_FORMATS))
def test_every_format_has_the_documented_shape(fmt):
    out = render(fmt, size=(160, 120))
    for a in out.values():
        assert a.dtype == np.uint8
        assert a.shape == scene.frame_shape(fmt, 160, 120)
        assert (a != 7).mean() > 0.5
    expected = {"yuyv": (120, 160, 2), "uyvy": (120, 160, 2), "nv12": (180, 160), "i420": (180, 160)}
    expected |= {"rgb": (120, 160, 3), "bgr": (120, 160, 3), "gray": (120, 160)}
    assert out["front"].shape == expected[fmt]


@pytest.mark.parametrize(("fmt", "size"), [("yuyv", (641, 480)), ("rgb", (99, 10)), ("nv12", (640, 481))])
def test_unsuitable_sizes_are_refused(fmt, size):
    with pytest.raises(CameraError, match=f"{size[0]}x{size[1]}"):
        scene.frame_shape(fmt, *size)


def test_yuv_is_bt601_limited_range_and_matches_rgb():
    rgb = render("rgb")
    for fmt in ("yuyv", "uyvy", "nv12", "i420", "bgr"):
        for name, frame in render(fmt).items():
            back = cv2.cvtColor(frame, TO_RGB[fmt]).astype(np.int16)
            diff = np.abs(back - rgb[name])
            # Chroma subsampling only shows at edges; OpenCV assumes BT.601 limited range.
            assert diff.mean() < 1.5, (fmt, diff.mean())
            assert np.percentile(diff, 99) <= 8, fmt
    yuyv = render("yuyv")["front"]
    y, c = yuyv[..., 0], yuyv[..., 1]
    assert y.min() >= 16 and y.max() <= 235  # TV range
    assert c.min() >= 16 and c.max() <= 240
    gray = render("gray")["front"]
    assert np.abs(gray.astype(int) - cv2.cvtColor(rgb["front"], cv2.COLOR_RGB2GRAY)).max() <= 2


def test_sky_above_the_horizon_road_below():
    img = render("rgb", size=(320, 240))["front"].astype(float)
    sky = img[:100].reshape(-1, 3).mean(0)
    road = img[220:, 140:180].reshape(-1, 3).mean(0)  # just ahead of the bonnet: the ego's lane
    assert sky[2] > sky[0] + 20 and sky.mean() > 140  # bright and blue
    assert np.ptp(road) < 10 and 50 < road.mean() < 130  # grey asphalt


def test_sky_is_fixed_in_the_world():
    # Turning the ego left by 0.3 rad shows the front camera the sky a camera yawed 0.3 rad saw.
    road = scene.Road(0)
    rig = scene.Rig(["front", "turned"], 160, 120)
    rig.cameras = (rig.cameras[0], dataclasses.replace(rig.cameras[0], name="turned", yaw=0.3))
    renderer = scene.SceneRenderer(road, rig, "rgb")
    pose = road.ego_at(0.0)
    turned, straight = renderer.new_outputs(), renderer.new_outputs()
    for p, out in ((dataclasses.replace(pose, yaw=pose.yaw + 0.3), turned), (pose, straight)):
        renderer._render_bev(p)
        for name, a in out.items():
            renderer._render_camera(name, a)
    sky = slice(0, 50)
    same = np.abs(turned["front"][sky].astype(int) - straight["turned"][sky]).mean()
    other = np.abs(turned["front"][sky].astype(int) - straight["front"][sky]).mean()
    assert same < 0.5 < 3 < other


def test_future_path_is_the_ego_motion_seen_from_the_ego():
    road = scene.Road(7)
    t = 12.3
    p0, p1 = road.ego_at(t), road.ego_at(t + 1.0)
    c, s = math.cos(p0.yaw), math.sin(p0.yaw)
    dx, dy = p1.x - p0.x, p1.y - p0.y
    expect = [c * dx + s * dy, -s * dx + c * dy, p1.yaw - p0.yaw]
    path = road.future_path(t)
    assert path.shape == (64, 3) and path.dtype == np.float32
    np.testing.assert_allclose(path[9], expect, atol=1e-4)
    # The reported speed and yaw rate are the derivatives of the pose.
    h = 0.01
    a, b = road.ego_at(t - h), road.ego_at(t + h)
    assert math.hypot(b.x - a.x, b.y - a.y) / (2 * h) == pytest.approx(p0.speed, rel=1e-3)
    assert (b.yaw - a.yaw) / (2 * h) == pytest.approx(p0.yaw_rate, abs=1e-4)
    assert (b.speed - a.speed) / (2 * h) == pytest.approx(p0.accel, abs=1e-4)


def test_road_is_seeded_bounded_and_endless():
    a, b = scene.Road(5), scene.Road(5)
    far = a.ego_at(1500.0)  # extends a's centreline by ~18 km first
    assert a.ego_at(10.0) == b.ego_at(10.0)
    assert far.s > 15000
    s = np.arange(0.0, 20000.0, 5.0)
    assert np.abs(a.curvature(s)).max() <= 1 / 150
    assert (np.abs(a.curvature(s)) < 1e-4).mean() > 0.05  # some straights
    v = a.speed(np.arange(0.0, 600.0, 0.5))
    assert v.min() >= 8.0 and v.max() <= 16.0
    assert scene.Road(6).ego_at(10.0) != b.ego_at(10.0)
    assert 3 <= a.n_lanes <= 4


# ---------------------------------------------------------------------------------------------------
# synthetic:// rig (child process)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("synthetic://?bogus=1", "bogus"),
        ("synthetic://?size=big", "size"),
        ("synthetic://?size=641x480", "641x480"),
        ("synthetic://?fps=0", "fps"),
        ("synthetic://?format=mjpeg", "yuyv, uyvy"),
        ("synthetic://?seed=-1", "seed"),
        ("synthetic://?drop_every=1", "drop_every"),
        ("synthetic://?stall_ms=100", "stall_after"),
        ("synthetic://?hfov=200", "hfov"),
        ("synthetic://?fps=30&fps=60", "fps"),
        ("synthetic://front", "query parameters"),
    ],
)
def test_bad_uris_are_one_line_camera_errors(uri, needle):
    with pytest.raises(CameraError, match=needle) as info:
        synthetic.open_synthetic(uri, ["front"])
    assert "\n" not in str(info.value)


def test_rig_delivers_synchronised_frames_in_real_time():
    names = ["front", "front_left", "front_right"]
    srcs = synthetic.open_synthetic("synthetic://?size=320x240&fps=30&seed=4&format=nv12", names)
    try:
        assert [s.name for s in srcs] == names and all(isinstance(s, CameraSource) for s in srcs)
        first = srcs[0].newest()
        assert first is not None and srcs[0].newest() is first  # nothing new: same frame, no copy
        got = collect(srcs[0], 1.0)
        arrivals = np.array([a for a, _ in got])
        frames = [f for _, f in got]
        seqs = np.array([f.seq for f in frames])
        times = np.array([f.capture_time for f in frames])
        assert 25 <= len(frames) <= 33
        assert np.all(np.diff(seqs) == 1)
        np.testing.assert_allclose(np.diff(times), 1 / 30, atol=1e-6)  # nominal exposure clock
        assert np.median(np.diff(arrivals)) == pytest.approx(1 / 30, rel=0.2)
        assert np.all(arrivals - times >= 0) and np.median(arrivals - times) < 0.05

        # Every camera of a rig frame shares seq and capture time, and the data is a real render.
        road = scene.Road(4)
        renderer = scene.SceneRenderer(road, scene.Rig(names, 320, 240), "nv12")
        for _ in range(10):
            fs = [s.newest() for s in srcs]
            if len({f.seq for f in fs}) == 1:
                break
        assert len({f.seq for f in fs}) == 1 and len({f.capture_time for f in fs}) == 1
        scene_t = (fs[0].seq - 1) / 30
        expect = renderer.new_outputs()
        pose = renderer.render(scene_t, expect)
        for f in fs:
            assert (f.fmt, f.width, f.height, f.data.shape) == ("nv12", 320, 240, (360, 320))
            assert np.abs(f.data.astype(int) - expect[f.camera]).max() <= 1
            np.testing.assert_allclose(f.truth, road.future_path(scene_t), atol=1e-5)
            assert f.ego.speed == pytest.approx(pose.speed) and f.ego.yaw_rate == pytest.approx(pose.yaw_rate)
        assert srcs[0].newest().data is fs[0].data  # one preallocated buffer per source
        assert all(s.ended() is None for s in srcs)
    finally:
        close_all(srcs)


def test_drop_every_loses_every_kth_frame():
    srcs = synthetic.open_synthetic("synthetic://?size=160x120&fps=30&drop_every=3", ["front"])
    try:
        seqs = np.array([f.seq for _, f in collect(srcs[0], 0.8)])
    finally:
        close_all(srcs)
    assert len(seqs) >= 12
    assert np.all(seqs % 3 != 0)
    gaps = np.diff(seqs)
    assert set(gaps.tolist()) == {1, 2}
    assert np.all(gaps[seqs[:-1] % 3 == 2] == 2) and np.all(gaps[seqs[:-1] % 3 == 1] == 1)


def test_stall_then_resume():
    uri = "synthetic://?size=160x120&fps=30&stall_after=5&stall_ms=400"
    srcs = synthetic.open_synthetic(uri, ["front"])
    try:
        got = collect(srcs[0], 1.0)
    finally:
        close_all(srcs)
    seqs = [f.seq for _, f in got]
    assert seqs[: seqs.index(5) + 1] == list(range(seqs[0], 6))
    before, after = got[seqs.index(5)], got[seqs.index(5) + 1]
    # Nothing for 400 ms of camera time, then frames resume on the same clock (seq 17 = 5 + 12).
    assert after[1].seq == 17
    assert after[1].capture_time - before[1].capture_time == pytest.approx(0.4, abs=1e-6)
    assert after[0] - before[0] > 0.3
    assert np.all(np.diff(seqs[seqs.index(17) :]) == 1) and len(seqs) > seqs.index(17) + 5


def test_stall_for_good_keeps_the_camera_alive():
    srcs = synthetic.open_synthetic("synthetic://?size=160x120&fps=30&stall_after=2", ["front"])
    try:
        time.sleep(0.3)
        assert srcs[0].newest().seq == 2
        assert srcs[0].ended() is None
    finally:
        close_all(srcs)


def test_close_stops_the_process_and_is_idempotent():
    srcs = synthetic.open_synthetic("synthetic://?size=160x120&format=gray", ["a", "b"])
    pid = srcs[0].pid
    shm = Path("/dev/shm") / srcs[0]._rig.res.shm.name
    assert shm.exists()
    srcs[0].close()
    srcs[0].close()
    assert srcs[1].ended() is None and srcs[1].newest() is not None  # the rig lives on for "b"
    start = time.monotonic()
    srcs[1].close()
    assert time.monotonic() - start < 1.0
    srcs[1].close()
    assert not Path(f"/proc/{pid}").exists()
    assert not shm.exists()
    assert "closed" in srcs[1].ended().reason
    assert srcs[1].newest() is not None  # the last frame stays readable


def test_ended_reports_a_killed_child():
    srcs = synthetic.open_synthetic("synthetic://?size=160x120", ["front"])
    try:
        os.kill(srcs[0].pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while srcs[0].ended() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "signal 9" in srcs[0].ended().reason
        assert srcs[0].newest() is not None
    finally:
        start = time.monotonic()
        close_all(srcs)
        assert time.monotonic() - start < 1.0


def test_child_failure_reaches_the_caller_as_one_line():
    # Bypass URI validation so the child itself fails while building its rig.
    rig = synthetic._SyntheticRig("synthetic://", synthetic.SyntheticParams(hfov=5.0), ["front"])
    with pytest.raises(CameraError, match=r"synthetic camera process failed: .*field of view") as info:
        rig.wait_first_frame(20.0)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_no_shared_memory_leak_warnings_at_exit(tmp_path):
    script = tmp_path / "rig.py"
    script.write_text(
        textwrap.dedent(
            """
            from vla.runtime.inputs.sources.synthetic import open_synthetic

            if __name__ == "__main__":
                a = open_synthetic("synthetic://?size=160x120", ["front"])
                a[0].close()
                b = open_synthetic("synthetic://?size=160x120&format=rgb", ["front", "rear"])
                print(b[1].newest().seq)  # left open: the interpreter's exit must clean up
            """
        )
    )
    # The directory holding the `vla` package this test imported, for the fresh interpreter.
    root = str(Path(synthetic.__file__).parents[3])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


def test_opens_from_an_unguarded_script_and_from_stdin(tmp_path):
    """Embedding users need no ``if __name__ == "__main__":`` guard: spawn must not re-run their script."""
    import subprocess
    import sys

    code = (
        "from vla.runtime.inputs.sources import open_cameras\n"
        "cams = open_cameras(['synthetic://?size=64x32'], ['front'])\n"
        "print('frame', cams['front'].newest().seq)\n"
        "cams['front'].close()\n"
    )
    script = tmp_path / "unguarded.py"
    script.write_text(code)
    for args, stdin in (([str(script)], None), (["-"], code)):
        proc = subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("frame 1") == 1, proc.stdout  # opened once, not once more per child


def test_rig_yields_the_cpu_by_default_and_nice_0_competes():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    for uri, added in (("synthetic://?size=160x120", 10), ("synthetic://?size=160x120&nice=0", 0)):
        srcs = synthetic.open_synthetic(uri, ["front"])
        try:
            assert os.getpriority(os.PRIO_PROCESS, srcs[0].pid) == min(19, base + added)
        finally:
            close_all(srcs)
    with pytest.raises(CameraError, match="nice='20'"):
        synthetic.parse_uri("synthetic://?nice=20")


def test_rig_does_not_inherit_real_time_scheduling():
    """Under vla-run --rt-priority the parent is SCHED_FIFO; its camera process must stay an
    ordinary, niced process, or it renders as the engine's real-time equal."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except PermissionError:
        pytest.skip("this machine does not permit SCHED_FIFO")
    try:
        sources = synthetic.open_synthetic("synthetic://?size=64x48&fps=30", ["front"])
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    try:
        pid = sources[0].pid
        assert os.sched_getscheduler(pid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, pid) >= 10  # the default nice=10 still applies
    finally:
        for s in sources:
            s.close()


def test_without_a_size_the_rig_renders_what_the_model_takes():
    # parse_uri: the default size applies only when the URI gives none, made renderable (even, >= 16).
    assert (synthetic.parse_uri("synthetic://").width, synthetic.parse_uri("synthetic://").height) == (1280, 720)
    p = synthetic.parse_uri("synthetic://?fps=10", (256, 128))
    assert (p.width, p.height, p.fps) == (256, 128, 10.0)
    p = synthetic.parse_uri("synthetic://?size=640x360", (256, 128))
    assert (p.width, p.height) == (640, 360)
    assert synthetic.renderable_size(255, 9) == (256, 16)
    # open_cameras passes the model's sizes (Manifest.camera_sizes) through to the rig process.
    from vla.runtime.inputs.sources import open_cameras

    sizes = {"front": (96, 48), "rear": (96, 48)}
    cams = open_cameras(["synthetic://"], ["front", "rear"], sizes)
    try:
        assert {n: c.newest().data.shape for n, c in cams.items()} == {"front": (48, 96, 2), "rear": (48, 96, 2)}
    finally:
        close_all(list(cams.values()))
    cams = open_cameras(["synthetic://?size=160x120"], ["front", "rear"], sizes)  # asked for: honoured
    try:
        assert cams["front"].newest().data.shape == (120, 160, 2)
    finally:
        close_all(list(cams.values()))


def test_manifest_camera_sizes(reference_manifest):
    from vla.runtime.manifest import parse_manifest

    m = parse_manifest(reference_manifest)
    assert m.camera_sizes == {"front": (256, 128), "left": (256, 128), "right": (256, 128)}
