"""The world renderer's geometry against the pinhole model, its formats, determinism; the plots.

Scenes are built here from hand-made ground rasters and boxes (the world module is not needed), so
every expected pixel position comes from the pinhole equations, not from the renderer.
"""

from __future__ import annotations

import math
import sys

import cv2
import numpy as np
import pytest
from test_synthetic import TO_RGB  # the same conversions back to RGB as the synthetic camera's tests

from vla.runtime.errors import VlaError
from vla.runtime.inputs.sources.base import PIXEL_FORMATS
from vla.runtime.inputs.sources.scene import Rig
from vla.sim.render import WorldRenderer
from vla.sim.world import GroundMap

W, H = 256, 128
MOUNT = 1.5
RED = (220, 20, 20)




def ground_grid(x0: float, y0: float, width_m: float, height_m: float | None = None, res: float = 0.1):
    """World coordinates (X, Y) of every texel of a raster, and its (x0, y0, res)."""
    xs = x0 + res * np.arange(int(width_m / res))
    ys = y0 + res * np.arange(int((height_m or width_m) / res))
    return *np.meshgrid(xs, ys), (x0, y0, res)


def plain_ground(rgb=(50, 50, 50)) -> GroundMap:
    image = np.empty((600, 600, 3), np.uint8)
    image[:] = rgb
    return GroundMap(image, -150.0, -150.0, 0.5)


def stripe_ground(pose, offset: float, width: float = 0.2) -> GroundMap:
    """Dark ground (120 m around the pose) with a white stripe parallel to the ego's x axis, ``offset`` m
    to its left; anti-aliased (texel value = the share of the texel the stripe covers) so that the
    stripe's centre in the raster is exact, not quantised to texels."""
    px, py, yaw = pose
    X, Y, (x0, y0, res) = ground_grid(px - 60.0, py - 60.0, 120.0)
    lateral = -(X - px) * math.sin(yaw) + (Y - py) * math.cos(yaw)  # ego-frame y of each texel
    cover = np.clip((width / 2 - np.abs(lateral - offset)) / res + 0.5, 0.0, 1.0)
    image = np.repeat(np.rint(40.0 + 215.0 * cover)[..., None], 3, axis=2).astype(np.uint8)
    return GroundMap(image, x0, y0, res)


def to_world(pose, ex: float, ey: float) -> tuple[float, float]:
    px, py, yaw = pose
    c, s = math.cos(yaw), math.sin(yaw)
    return px + c * ex - s * ey, py + s * ex + c * ey


def box_at(pose, ex: float, ey: float, rel_yaw: float = 0.0, length=4.0, width=2.0, height=2.5) -> np.ndarray:
    """One box [1, 6] whose centre is at (ex, ey) in the ego frame."""
    x, y = to_world(pose, ex, ey)
    return np.array([[x, y, pose[2] + rel_yaw, length, width, height]], dtype=np.float32)


def render(ground, pose, boxes=None, fmt="rgb", names=("left", "front", "right"), size=(W, H), **rig_kw):
    rig = Rig(list(names), *size, **rig_kw)
    r = WorldRenderer(rig, ground, fmt)
    out = r.new_outputs()
    for a in out.values():
        a.fill(7)  # a value the renderer never leaves everywhere: proves it wrote in place
    if boxes is None:
        boxes = np.zeros((0, 6), np.float32)
    colors = np.tile(np.array(RED, np.uint8), (len(boxes), 1))
    r.render(pose, boxes, colors, out)
    return out, rig


def red_mask(img: np.ndarray) -> np.ndarray:
    """Pixels of a shaded red box face (any Lambert shade), not the sky, the ground or the windows."""
    i = img.astype(int)
    return (i[..., 0] > 100) & (i[..., 1] < 60) & (i[..., 2] < 60)


def focal(rig: Rig) -> float:
    return rig.cameras[0].focal


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [8.0, 15.0, 30.0])
def test_box_ahead_is_centred_with_the_pinhole_size(d):
    pose = (12.0, -7.0, 0.6)
    length, width, height = 4.0, 2.0, 2.5
    out, rig = render(plain_ground(), pose, box_at(pose, d + length / 2, 0.0, 0.0, length, width, height))
    f = focal(rig)
    rows, cols = np.nonzero(red_mask(out["front"]))
    assert rows.size > 20
    # Pixel i covers [i, i+1): the face spans u = W/2 +- f (width/2) / d, v from the top edge
    # (height - mount above the optical axis) down to the ground (mount below it).
    left, right = cols.min(), cols.max() + 1
    top, bottom = rows.min(), rows.max() + 1
    assert left == pytest.approx(W / 2 - f * width / 2 / d, abs=1.0)
    assert right == pytest.approx(W / 2 + f * width / 2 / d, abs=1.0)
    assert top == pytest.approx(H / 2 - f * (height - MOUNT) / d, abs=1.0)
    assert bottom == pytest.approx(H / 2 + f * MOUNT / d, abs=1.0)
    assert (left + right) / 2 == pytest.approx(W / 2, abs=0.5)


def test_box_to_the_left_shows_in_the_left_camera_only():
    pose = (-20.0, 30.0, -2.0)
    out, rig = render(plain_ground(), pose, box_at(pose, 5.0, 7.0, 0.3))
    assert red_mask(out["left"]).sum() > 200
    assert red_mask(out["right"]).sum() == 0
    # The left camera looks 55 deg left: the box centre's bearing (54.5 deg) is near its middle.
    cols = np.nonzero(red_mask(out["left"]))[1]
    bearing = math.atan2(7.0, 5.0) - math.radians(55.0)
    assert np.median(cols) == pytest.approx(W / 2 - focal(rig) * math.tan(bearing), abs=15)


def test_boxes_behind_the_cameras_are_not_drawn():
    pose = (0.0, 0.0, 1.0)
    boxes = np.concatenate([box_at(pose, -10.0, 0.0), box_at(pose, -6.0, -1.0, 1.0)])
    out, _ = render(plain_ground(), pose, boxes)
    for name, img in out.items():
        assert red_mask(img).sum() == 0, name


def test_a_box_through_the_near_plane_is_clipped_not_lost():
    # A long box beside the ego, from 5 m behind to 5 m ahead, its right face 2.05 m to the left:
    # in the front camera that face runs from the image's left edge to the corner 5 m ahead.
    pose = (3.0, 4.0, 0.25)
    out, rig = render(plain_ground(), pose, box_at(pose, 0.0, 3.0, 0.0, length=10.0, width=1.9, height=1.4))
    cols = np.nonzero(red_mask(out["front"]))[1]
    assert cols.min() == 0
    corner_u = W / 2 - focal(rig) * 2.05 / 5.0
    assert cols.max() + 1 == pytest.approx(corner_u, abs=1.0)


def test_nearer_boxes_hide_farther_ones():
    pose = (0.0, 0.0, 0.0)
    rig = Rig(["front"], W, H)
    r = WorldRenderer(rig, plain_ground(), "rgb")
    boxes = np.concatenate([box_at(pose, 10.0, 0.0), box_at(pose, 25.0, 0.0, length=4.0, width=6.0, height=6.0)])
    out = r.new_outputs()
    # Near box red, far (bigger) box blue, given far-first or near-first: the near one wins.
    for order in ([0, 1], [1, 0]):
        colours = np.array([RED, (20, 20, 220)], np.uint8)
        r.render(pose, boxes[order], colours[order], out)
        centre = out["front"][H // 2 + 3, W // 2].astype(int)
        assert centre[0] > 100 and centre[2] < 60, order


def test_stripe_on_the_ground_projects_where_the_pinhole_model_says():
    pose = (30.0, 20.0, 0.7)
    out, rig = render(stripe_ground(pose, 1.75), pose, names=("front",))
    img = out["front"].astype(float).mean(axis=2)
    f = focal(rig)
    checked = 0
    for v in range(H // 2 + 6, H):  # ground rows from ~27 m to the bottom
        x = f * MOUNT / (v + 0.5 - H / 2)  # ego-frame distance of this row's ground
        expected = W / 2 - f * 1.75 / x - 0.5  # column index of the stripe centre
        left = img[v, : W // 2] - 40.0
        centroid = float((left * np.arange(W // 2)).sum() / left.sum())
        assert centroid == pytest.approx(expected, abs=0.5), v
        assert img[v, W // 2 + 2 :].max() < 45  # and nothing on the right
        checked += 1
    assert checked > 40


@pytest.mark.parametrize("pitch", [0.0, 4.0])
def test_horizon_row(pitch):
    # Rows the ground cannot reach are identical over black and white ground; rows below differ.
    pose = (5.0, 5.0, 2.0)
    black, rig = render(plain_ground((0, 0, 0)), pose, names=("front",), pitch_deg=pitch)
    white, _ = render(plain_ground((255, 255, 255)), pose, names=("front",), pitch_deg=pitch)
    differs = np.abs(black["front"].astype(int) - white["front"]).max(axis=(1, 2)) > 0
    first = int(np.argmax(differs))
    horizon = H / 2 - focal(rig) * math.tan(math.radians(pitch))
    assert first == pytest.approx(horizon, abs=1.0)
    assert not differs[:first].any() and differs[first:].all()
    sky = black["front"][: first - 1].reshape(-1, 3).astype(float).mean(0)
    assert sky[2] > sky[0] + 20 and sky.mean() > 140  # bright and blue
    near = black["front"][-H // 4 :]
    assert near.max() == 0  # close ground: the raster's own colour, no haze


def test_near_ground_shows_the_raster_texel_under_it():
    # A raster of random colour squares (1 m): the pixel looking at a square's middle shows it.
    rng = np.random.default_rng(5)
    X, Y, (x0, y0, res) = ground_grid(-50.0, -50.0, 100.0)
    palette = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    image = palette[np.floor(Y - y0).astype(int), np.floor(X - x0).astype(int)]
    pose = (0.3, -0.2, 0.4)
    out, rig = render(GroundMap(image, x0, y0, res), pose, names=("front",))
    f = focal(rig)
    checked = 0
    for v in range(H - 30, H, 3):  # ground 2.5 to 5 m ahead
        for u in range(8, W, 16):
            d = f * MOUNT / (v + 0.5 - H / 2)
            ey = -(u + 0.5 - W / 2) / f * d
            wx, wy = to_world(pose, d, ey)
            fx, fy = wx - x0 - math.floor(wx - x0), wy - y0 - math.floor(wy - y0)
            if min(fx, fy, 1 - fx, 1 - fy) < 0.25:
                continue  # too near a square's edge to be sure of its colour
            want = palette[math.floor(wy - y0), math.floor(wx - x0)].astype(int)
            assert np.abs(out["front"][v, u].astype(int) - want).max() <= 3, (v, u)
            checked += 1
    assert checked > 20


def test_renders_the_worlds_own_ground_and_boxes():
    world_mod = pytest.importorskip("vla.sim.world")
    if not hasattr(world_mod, "make_scenario"):
        pytest.skip("vla.sim.world is not complete yet")
    world = world_mod.World(world_mod.make_scenario(0))
    ground = world.ground()
    boxes, colors = world.boxes()
    rig = Rig(["left", "front", "right"], W, H)
    r = WorldRenderer(rig, ground, "rgb24")
    out = r.new_outputs()
    pose = (world.ego.x, world.ego.y, world.ego.yaw)
    r.render(pose, boxes, colors, out)
    # Near ground pixels show the raster under them where the raster is locally uniform.
    f, img = focal(rig), ground.image
    checked = 0
    for v in range(H - 24, H, 4):
        for u in range(16, W, 32):
            d = f * MOUNT / (v + 0.5 - H / 2)
            wx, wy = to_world(pose, d, -(u + 0.5 - W / 2) / f * d)
            c, rr = round((wx - ground.x0) / ground.res), round((wy - ground.y0) / ground.res)
            patch = img[rr - 3 : rr + 4, c - 3 : c + 4].reshape(-1, 3).astype(int)
            if len(patch) < 49 or np.ptp(patch, axis=0).max() > 2:
                continue
            assert np.abs(out["front"][v, u].astype(int) - patch[0]).max() <= 3, (v, u)
            checked += 1
    assert checked > 5


def test_far_lane_markings_do_not_alias():
    # Dashed thin markings seen far away: each frame close to an 8x supersampled render of it.
    X, Y, (x0, y0, res) = ground_grid(-20.0, -12.0, 250.0, 24.0)
    image = np.full((*X.shape, 3), 90, np.uint8)
    for lane in (-5.25, -1.75, 1.75, 5.25):
        image[(np.abs(Y - lane) < 0.075) & ((X % 9.0) < 3.0)] = 235
    ground = GroundMap(image, x0, y0, res)
    w, h = 128, 64
    ours = WorldRenderer(Rig(["front"], w, h), ground, "gray")
    fine = WorldRenderer(Rig(["front"], 8 * w, 8 * h), ground, "gray")
    a, b = ours.new_outputs(), fine.new_outputs()
    errs = []
    for i in range(4):
        pose = (0.83 * i, 0.0, 0.01)
        ours.render(pose, np.zeros((0, 6)), np.zeros((0, 3)), a)
        fine.render(pose, np.zeros((0, 6)), np.zeros((0, 3)), b)
        ref = cv2.resize(b["front"], (w, h), interpolation=cv2.INTER_AREA)
        errs.append(np.abs(a["front"].astype(int) - ref)[h // 2 + 1 : h // 2 + 9])  # 10..80 m
    err = np.concatenate(errs)
    assert np.percentile(err, 99) <= 12  # sampling the raster once per pixel: ~30 grey levels
    assert err.mean() < 2.0


# --------------------------------------------------------------------------------------------------
# Formats, determinism, errors
# --------------------------------------------------------------------------------------------------


def scene_frames(fmt: str) -> dict[str, np.ndarray]:
    pose = (30.0, 20.0, 0.7)
    boxes = np.concatenate([box_at(pose, 12.0, 1.0, 0.4), box_at(pose, 6.0, 6.0, 1.2, height=1.4)])
    return render(stripe_ground(pose, 1.75), pose, boxes, fmt=fmt)[0]


@pytest.mark.parametrize("fmt", sorted(PIXEL_FORMATS))
def test_every_format_agrees_with_rgb(fmt):
    rgb = scene_frames("rgb")
    frames = scene_frames(fmt)
    for name, frame in frames.items():
        assert frame.shape == WorldRenderer(Rig([name], W, H), plain_ground(), fmt).shape
        if fmt == "rgb":
            continue
        if fmt == "gray":
            want = cv2.cvtColor(rgb[name], cv2.COLOR_RGB2GRAY).astype(int)
            assert np.abs(frame.astype(int) - want).max() <= 2
            continue
        back = cv2.cvtColor(frame, TO_RGB[fmt]).astype(int)
        diff = np.abs(back - rgb[name])
        if fmt == "bgr":
            assert diff.max() == 0
            continue
        # BT.601 limited range, as OpenCV's conversions assume; chroma subsampling shows at edges only.
        assert diff.mean() < 1.5, (fmt, diff.mean())
        assert np.percentile(diff, 95) <= 4, fmt
        # Exactly: Y per pixel, U from the even and V from the odd pixel of a pair (top row for 4:2:0).
        y, u, v = yuv_planes(frame, fmt)
        want = bt601_limited(rgb[name])
        rows = slice(None) if fmt in ("yuyv", "uyvy") else slice(0, None, 2)
        assert np.abs(y - want[..., 0]).max() <= 2
        assert np.abs(u - want[rows, 0::2, 1]).max() <= 2
        assert np.abs(v - want[rows, 1::2, 2]).max() <= 2
        assert y.min() >= 16 and y.max() <= 235 and u.min() >= 16 and v.max() <= 240


def bt601_limited(rgb: np.ndarray) -> np.ndarray:
    """Y, U, V (TV range) of RGB pixels, from the BT.601 definition."""
    r, g, b = (rgb[..., k].astype(float) for k in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return np.stack([y, u, v], axis=-1)


def yuv_planes(frame: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y plane and the U, V samples of a raw YUV frame, as ints."""
    f = frame.astype(int)
    if fmt == "yuyv":
        return f[..., 0], f[:, 0::2, 1], f[:, 1::2, 1]
    if fmt == "uyvy":
        return f[..., 1], f[:, 0::2, 0], f[:, 1::2, 0]
    y = f[:H]
    if fmt == "nv12":
        uv = f[H:].reshape(H // 2, W // 2, 2)
        return y, uv[..., 0], uv[..., 1]
    q = (H // 2) * (W // 2)
    flat = f.reshape(-1)
    return y, flat[H * W : H * W + q].reshape(H // 2, W // 2), flat[H * W + q :].reshape(H // 2, W // 2)


def test_rgb24_is_rgb():
    assert all(
        np.array_equal(a, b) for a, b in zip(scene_frames("rgb24").values(), scene_frames("rgb").values(), strict=True)
    )


def test_deterministic_and_stateless():
    pose = (30.0, 20.0, 0.7)
    ground = stripe_ground(pose, 1.75)
    boxes = box_at(pose, 12.0, 1.0, 0.4)
    colors = np.array([RED], np.uint8)
    r1 = WorldRenderer(Rig(["front", "left"], W, H), ground, "yuyv")
    r2 = WorldRenderer(Rig(["front", "left"], W, H), ground, "yuyv")
    a, b = r1.new_outputs(), r2.new_outputs()
    r1.render(pose, boxes, colors, a)
    r2.render((0.0, 0.0, 0.0), np.zeros((0, 6)), np.zeros((0, 3)), b)  # another frame first
    r2.render(pose, boxes, colors, b)
    for name in a:
        assert np.array_equal(a[name], b[name])
    c = r1.new_outputs()
    r1.render((pose[0] + 0.5, pose[1], pose[2]), boxes, colors, c)
    assert not np.array_equal(a["front"], c["front"])  # and the pose matters


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda r, o: r.render((0, 0, 0), np.zeros((2, 5)), np.zeros((2, 3)), o), "boxes must be"),
        (lambda r, o: r.render((0, 0, 0), np.ones((2, 6)), np.zeros((1, 3)), o), "colors must be"),
        (lambda r, o: r.render((0, 0, float("nan")), np.zeros((0, 6)), np.zeros((0, 3)), o), "pose must be finite"),
        (lambda r, o: r.render((0, 0), np.zeros((0, 6)), np.zeros((0, 3)), o), "pose must be"),
        (lambda r, o: r.render((0, 0, 0), np.zeros((0, 6)), np.zeros((0, 3)), {"rear": o["front"]}), "no camera"),
        (lambda r, o: r.render((0, 0, 0), np.zeros((0, 6)), np.zeros((0, 3)), {"front": o["front"][1:]}), "uint8"),
    ],
)
def test_bad_input_is_a_one_line_error(call, needle):
    r = WorldRenderer(Rig(["front"], W, H), plain_ground())
    with pytest.raises(VlaError, match=needle) as e:
        call(r, r.new_outputs())
    assert "\n" not in str(e.value)


def test_bad_construction_is_a_one_line_error():
    with pytest.raises(VlaError, match="unknown pixel format"):
        WorldRenderer(Rig(["front"], W, H), plain_ground(), "mjpeg")
    with pytest.raises(VlaError, match="ground image must be uint8"):
        WorldRenderer(Rig(["front"], W, H), GroundMap(np.zeros((4, 4)), 0.0, 0.0, 1.0))
    with pytest.raises(VlaError, match="ground must be a GroundMap"):
        WorldRenderer(Rig(["front"], W, H), object())
    with pytest.raises(VlaError, match="width must be even"):
        WorldRenderer(Rig(["front"], 255, H), plain_ground())


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def test_topdown_png(tmp_path):
    pytest.importorskip("matplotlib")
    from vla.sim.plots import topdown_png

    X, Y, (x0, y0, res) = ground_grid(-50.0, -100.0, 200.0, res=0.2)
    image = np.full((*X.shape, 3), (76, 114, 52), np.uint8)
    image[np.abs(Y) < 7.0] = (98, 98, 102)
    t = np.linspace(0.0, 1.0, 100)
    trace = np.stack([100 * t, -1.75 + np.sin(5 * t), np.zeros_like(t)], axis=1)
    route = np.stack([np.linspace(0, 120, 30), np.full(30, -1.75)], axis=1)
    boxes = np.array([[40.0, 1.75, 0.0, 4.6, 1.9, 1.5], [80.0, -5.25, 0.3, 4.6, 1.9, 1.5]])
    path = topdown_png(
        tmp_path / "sub" / "td.png",
        GroundMap(image, x0, y0, res),
        route,
        trace,
        boxes,
        "seed 3",
        [(80.0, -3.0, "collision")],
    )
    img = cv2.imread(str(path))
    assert img is not None and abs(img.shape[1] - 800) <= 20
    assert img.std() > 20
    # The raster is drawn: grass-green pixels (BGR) take a good share of the picture.
    green = (img[..., 1] > img[..., 2] + 25) & (img[..., 1] > img[..., 0] + 25)
    assert green.mean() > 0.2
    # The collision mark: pure-ish red pixels.
    assert ((img[..., 2] > 200) & (img[..., 1] < 60) & (img[..., 0] < 60)).sum() > 20


def test_sweep_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from vla.sim.plots import sweep_plot

    rows = [
        {"latency_ms": ms, "score": s, "precision": p}
        for p, pts in {"fp32": [(12, 0.9), (20, 0.93)], "int8": [(6, 0.88), (9, 0.9)]}.items()
        for ms, s in pts
    ]
    path = sweep_plot(tmp_path / "sweep.png", rows)
    img = cv2.imread(str(path))
    assert img is not None and img.shape[1] == 800 and img.std() > 10
    with pytest.raises(VlaError, match="no 'score'"):
        sweep_plot(tmp_path / "bad.png", [{"latency_ms": 1.0}])


def test_plots_without_matplotlib_say_which_extra(tmp_path, monkeypatch):
    from vla.sim.plots import sweep_plot

    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # makes the import fail
    with pytest.raises(VlaError, match=r"needs matplotlib.*vla-runtime\[sim\]"):
        sweep_plot(tmp_path / "s.png", [{"latency_ms": 1.0, "score": 0.5, "precision": "fp32"}])
