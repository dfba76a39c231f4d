"""Precision in the graph: the accuracy gate's arithmetic, the exclusion search, FP16/INT8 exports of
the reference model through their gates, poisoned calibration, a model with one sensitive layer,
reproducible bundles, and the one-line errors of bad calibration input."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from conftest import VLA_EXPORT, assert_one_line_error, run_cli
from vla.export.accuracy import Gate, judge, measure, trajectory_spread
from vla.export.bundle import model_hash
from vla.export.calibration import data_hash
from vla.export.precision import local_errors
from vla.export.search import prefix_lengths
from vla.runtime.errors import VlaError
from vla.runtime.manifest import METADATA_KEY, parse_manifest

SMALL = {"vit_depth": 1, "resampler_depth": 1, "fusion_depth": 1, "world_depth": 1, "action_depth": 1,
         "cameras": ("front",), "euler_steps": 2}
SMALL_ARGS = [f"--config={k}={json.dumps(v)}" for k, v in SMALL.items()]
QUICK = ["--heldout", "6", "--calib-samples", "8"]


# ---- the gate's arithmetic (pure) -----------------------------------------------------------------
def _traj_manifest():
    from vla.export.reference import build_reference

    return parse_manifest(build_reference(**SMALL).io_spec())


def _outputs(manifest, traj: np.ndarray) -> dict[str, np.ndarray]:
    out = {t.name: np.zeros(t.shape, dtype=t.dtype) for t in manifest.outputs}
    out["trajectory"] = traj.astype(np.float32)
    return out


def test_measure_gives_ade_fde_and_spread_in_metres():
    m = _traj_manifest()
    shape = m.output("trajectory").shape
    rng = np.random.default_rng(0)
    refs = [_outputs(m, rng.normal(0, 3.0, shape)) for _ in range(5)]
    shifted = []
    for r in refs:  # every waypoint moved 0.3 m along x: ADE = FDE = 0.3 m exactly
        t = r["trajectory"].copy()
        t[..., 0] += 0.3
        shifted.append(_outputs(m, t))
    fig = measure(m, refs, shifted)
    assert fig["trajectory"]["ade_m"] == pytest.approx(0.3, rel=1e-5)
    assert fig["trajectory"]["fde_m"] == pytest.approx(0.3, rel=1e-5)
    spread = trajectory_spread([r["trajectory"] for r in refs])
    assert fig["trajectory"]["rel_ade"] == pytest.approx(0.3 / spread, rel=1e-5)
    assert judge(measure(m, refs, refs), Gate()) == []
    assert judge(fig, Gate(rel_ade=0.3 / spread * 1.01)) == []
    failures = judge(fig, Gate(rel_ade=0.3 / spread * 0.99))
    assert len(failures) == 1 and "of the spread" in failures[0]
    assert "0.300 m > 0.2 m" in judge(fig, Gate(rel_ade=1.0, ade_m=0.2))[0]


def test_spread_is_distance_from_the_mean_trajectory():
    a = np.zeros((1, 1, 4, 3))
    b = np.zeros((1, 1, 4, 3))
    b[..., 1] = 2.0  # two trajectories 2 m apart laterally: each is 1 m from their mean
    assert trajectory_spread([a, b]) == pytest.approx(1.0)


def test_non_finite_outputs_fail_the_gate():
    m = _traj_manifest()
    ref = _outputs(m, np.ones(m.output("trajectory").shape))
    bad = _outputs(m, np.ones(m.output("trajectory").shape))
    bad["score"][...] = np.nan
    assert any("score: non-finite" in f for f in judge(measure(m, [ref, ref], [bad, bad]), Gate()))


# ---- the exclusion search (pure: decisions only) ---------------------------------------------------
def test_prefix_schedule():
    assert prefix_lengths(0) == []
    assert prefix_lengths(1) == [1]
    assert prefix_lengths(5) == [1, 2, 4, 5]
    assert prefix_lengths(8) == [1, 2, 4, 8]


# ---- local sensitivity ranks the node that loses most --------------------------------------------
class OneSensitiveLayer(nn.Module):
    """A small camera + ego → trajectory model in which one Linear layer is hopeless in per-tensor INT8.

    Like the reference model, the path is a constant-speed prior from the ego speed plus a residual
    from the picture. The layer's input has one channel 1000× larger than the rest (and that
    channel's weights are 1000× smaller, so FP32 is unaffected): a per-tensor activation scale set
    by that channel rounds every other channel to zero. Every other layer quantises well.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 32, kernel_size=8, stride=8)
        self.mlp = nn.Linear(32, 64)
        self.sensitive = nn.Linear(64, 64)
        self.head = nn.Linear(32 * 64, 16 * 2)  # reads every token: the residual follows the picture
        gain = torch.ones(64)
        gain[0] = 1000.0
        self.register_buffer("gain", gain)
        self.register_buffer("times", 0.1 * torch.arange(1, 17, dtype=torch.float32))
        with torch.no_grad():
            self.mlp.bias[0] = 1.0  # channel 0 always on
            self.sensitive.weight[:, 0] /= 1000.0

    def forward(self, images: torch.Tensor, ego: torch.Tensor) -> torch.Tensor:
        x = self.patch(images.flatten(0, 1).float() / 255.0 - 0.5).flatten(2).transpose(1, 2)
        h = torch.relu(self.mlp(x)) * self.gain
        h = torch.relu(self.sensitive(h))
        steps = self.head(h.flatten(1)).view(1, 1, 16, 2)
        residual = torch.cumsum(torch.cumsum(0.1 * steps, dim=2), dim=2)
        prior_x = ego[:, -1, 3, None, None] * self.times[None, None, :]
        xy = residual + torch.stack([prior_x, torch.zeros_like(prior_x)], dim=-1)
        return torch.cat([xy, torch.zeros_like(xy[..., :1])], dim=-1)

    def io_spec(self) -> dict:
        return {
            "schema_version": 1,
            "model": {"name": "one-sensitive-layer"},
            "inputs": [{"name": "images", "dtype": "uint8", "role": "camera", "shape": [1, 1, 3, 32, 64],
                        "camera": {"names": ["front"], "layout": "NCHW", "color": "RGB", "height": 32,
                                   "width": 64, "normalization": {"mean": [127.5] * 3, "std": [255.0] * 3,
                                                                  "in_graph": True}}},
                       {"name": "ego", "dtype": "float32", "role": "ego", "shape": [1, 16, 6],
                        "ego": {"fields": ["x", "y", "yaw", "v", "a", "yaw_rate"], "rate_hz": 10.0,
                                "frame": "ego"}}],
            "outputs": [{"name": "trajectory", "dtype": "float32", "role": "trajectory", "shape": [1, 1, 16, 3],
                         "trajectory": {"dt": 0.1, "horizon_s": 1.6, "frame": "ego", "fields": ["x", "y", "yaw"]}}],
        }


@pytest.fixture(scope="module")
def sensitive_archive(tmp_path_factory):
    net = OneSensitiveLayer().eval()
    path = tmp_path_factory.mktemp("sensitive") / "sensitive.pt2"
    args = (torch.zeros(1, 1, 3, 32, 64, dtype=torch.uint8), torch.zeros(1, 16, 6))
    torch.export.save(torch.export.export(net, args), str(path),
                      extra_files={"vla_spec.json": json.dumps(net.io_spec())})
    return path


def test_search_restores_accuracy_by_excluding_the_sensitive_layer(sensitive_archive, tmp_path):
    # Without the search the gate must fail (so the layer really is sensitive)...
    plain = run_cli(VLA_EXPORT, sensitive_archive, "-o", tmp_path / "plain", "--precision", "int8",
                    "--max-exclude", "0", *QUICK)
    assert_one_line_error(plain, "int8 accuracy gate failed", "no bundle written")
    # ...and with it, exactly that layer is kept in FP32 and the gate passes.
    out = tmp_path / "searched"
    proc = run_cli(VLA_EXPORT, sensitive_archive, "-o", out, "--precision", "int8", *QUICK)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    excluded = manifest["export"]["precision"]["excluded"]
    graph = onnx.load(str(out / "model.onnx")).graph
    assert len(excluded) == 1 and excluded[0]["op"] in ("MatMul", "Gemm")
    # Named by its PyTorch module, with its measured effect on the trajectory, in the bundle and the output.
    assert excluded[0]["module"] == "sensitive"
    (kept,) = manifest["measured"]["accuracy"]["excluded_modules"]
    assert kept["module"] == "sensitive" and kept["effect_ade_m"] > 0
    assert "int8: kept in FP32: sensitive (1 node(s); restoring it alone: -" in proc.stderr
    # The excluded node is the one fed by the outlier channel: its input is not quantised.
    node = next(n for n in graph.node if n.name == excluded[0]["node"])
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert producers.get(node.input[0]) != "DequantizeLinear"
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["passed"] and not accuracy["trials"][0]["passed"]
    assert accuracy["figures"]["trajectory"]["rel_ade"] <= 0.02 < accuracy["trials"][0]["trajectory"]["rel_ade"]
    assert manifest["measured"]["accuracy"]["passed"] is True
    assert "speed_ms" in accuracy and "exclusion_cost" in accuracy["speed_ms"]


def test_local_errors_rank_the_sensitive_layer_first(sensitive_archive, tmp_path):
    out = tmp_path / "fp32"
    assert run_cli(VLA_EXPORT, sensitive_archive, "-o", out).returncode == 0
    model = onnx.load(str(out / "model.onnx"))
    rng = np.random.default_rng(0)
    feeds = [{"images": rng.integers(0, 256, (1, 1, 3, 32, 64), dtype=np.uint8),
              "ego": rng.normal(0, 5, (1, 16, 6)).astype(np.float32)} for _ in range(2)]
    nodes = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    errors = local_errors(model, feeds, nodes, "int8")
    worst = max(errors, key=errors.get)
    assert errors[worst] > 0.3 and sorted(errors.values())[-2] < 0.05, errors


# ---- the reference model through both gates --------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reference_model_passes_its_gate(tmp_path, precision):
    out = tmp_path / precision
    proc = run_cli(VLA_EXPORT, "reference-v1", "-o", out, "--precision", precision, *QUICK)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["passed"] and accuracy["figures"]["trajectory"]["rel_ade"] <= 0.02
    assert manifest["export"]["precision"]["mode"] == precision
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    if precision == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        # Symmetric INT8: every activation/weight zero point is an int8 zero (what TensorRT requires);
        # biases are int32 with zero point 0.
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
        zps = [inits[n.input[2]] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
               and len(n.input) > 2]
        assert zps and not any(z.any() for z in zps)
        assert {z.dtype for z in zps} <= {np.dtype(np.int8), np.dtype(np.int32)}
        q_zps = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
        assert q_zps and all(z.dtype == np.int8 for z in q_zps)
        assert manifest["export"]["precision"]["calibration"]["hash"].startswith("sha256:")
    else:
        fp16 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
        assert len(fp16) > 10
        # FP32 inputs and outputs, and the trajectory integration (CumSum) kept in FP32.
        assert all(i.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for i in graph.input)
        assert all(o.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for o in graph.output)
    assert "precision" in manifest["export"] and "accuracy" in manifest["measured"]
    embedded = json.loads({p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}[METADATA_KEY])
    assert "measured" not in embedded and embedded["export"] == manifest["export"]


def test_poisoned_calibration_is_caught_by_the_gate(tmp_path):
    poison = tmp_path / "constant"
    poison.mkdir()
    for i in range(8):  # one grey picture, eight times: ranges that cover no real scene
        cv2.imwrite(str(poison / f"{i:03d}.png"), np.full((128, 256, 3), 128, np.uint8))
    proc = run_cli(VLA_EXPORT, "reference-v1", "-o", tmp_path / "b", "--precision", "int8", "--calib", poison,
                   "--max-exclude", "0", *SMALL_ARGS, *QUICK)  # one camera: 8.7 % of the spread, limit 2 %
    assert_one_line_error(proc, "int8 accuracy gate failed", "of the spread")
    assert not (tmp_path / "b").exists()


# ---- reproducible bundles, calibration methods -----------------------------------------------------
@pytest.fixture(scope="module")
def small_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "minmax"
    proc = run_cli(VLA_EXPORT, "reference-v1", "-o", out, "--precision", "int8", *SMALL_ARGS, *QUICK)
    assert proc.returncode == 0, proc.stderr
    return out


def test_same_model_and_options_give_a_byte_identical_model(small_int8, tmp_path):
    again = tmp_path / "again"
    proc = run_cli(VLA_EXPORT, "reference-v1", "-o", again, "--precision", "int8", *SMALL_ARGS, *QUICK)
    assert proc.returncode == 0, proc.stderr
    outs = [small_int8, again]
    a, b = ((o / "model.onnx").read_bytes() for o in outs)
    assert a == b
    ma, mb = (json.loads((o / "manifest.json").read_text()) for o in outs)
    assert ma["model"]["hash"] == mb["model"]["hash"] == model_hash(onnx.load(str(outs[0] / "model.onnx")))
    assert ma["export"] == mb["export"]
    assert ma["export"]["precision"]["calibration"]["hash"] == mb["export"]["precision"]["calibration"]["hash"]
    assert {"torch", "onnx", "onnxruntime", "onnxslim"} <= ma["tools"].keys()
    assert ma["export"]["options"]["calib_method"] == "minmax"


def _activation_scales(bundle) -> dict[str, float]:
    graph = onnx.load(str(bundle / "model.onnx")).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_calibration_methods_clip_outliers_that_minmax_keeps(small_int8, tmp_path, method):
    out = tmp_path / method
    proc = run_cli(VLA_EXPORT, "reference-v1", "-o", out, "--precision", "int8", "--calib-method", method,
                   *SMALL_ARGS, *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "manifest.json").read_text())["export"]["precision"]["calibration"]["method"] == method
    minmax, other = _activation_scales(small_int8), _activation_scales(out)
    shared = minmax.keys() & other.keys()
    assert len(shared) > 10
    # Same data, same tensors: a histogram method never widens MinMax's range, and narrows many.
    assert all(other[t] <= minmax[t] * 1.0001 for t in shared)
    assert sum(other[t] < 0.99 * minmax[t] for t in shared) > len(shared) // 5


def test_data_hash_tells_calibration_sets_apart():
    a = [{"x": np.zeros(4, np.float32)}]
    b = [{"x": np.ones(4, np.float32)}]
    assert data_hash(a) == data_hash([{"x": np.zeros(4, np.float32)}]) != data_hash(b)


# ---- bad calibration input: one line, non-zero exit -----------------------------------------------
def _bad_npz(d):
    np.savez(d / "rec.npz", images=np.zeros((1, 1, 3, 64, 64), np.uint8))
    return d


def _junk_npz(d):
    (d / "x.npz").write_bytes(b"junk")
    return d


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing", "no such folder"),
        (lambda d: d, "no .npz recordings and no images"),
        (_bad_npz, "'images' is uint8[1, 1, 3, 64, 64]"),
        (_junk_npz, "not a readable .npz"),
    ],
)
def test_bad_calibration_folder(tmp_path, make, needle):
    calib = tmp_path / "calib"
    calib.mkdir()
    proc = run_cli(VLA_EXPORT, "reference-v1", "-o", tmp_path / "b", "--precision", "int8", "--calib", make(calib),
                   *SMALL_ARGS, *QUICK)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "b").exists()


def test_calib_without_int8_is_refused(tmp_path):
    assert_one_line_error(run_cli(VLA_EXPORT, "reference-v1", "-o", tmp_path / "b", "--calib", tmp_path),
                          "--calib only applies to --precision int8")


def test_calibration_pictures_reach_the_camera_input_as_the_runtime_feeds_them():
    """Scene and calibration pictures go through the runtime's own preprocessing: with the
    normalisation outside the graph, the input holds (v - mean) / std, not raw pixels."""
    from vla.export.scenes import _camera_writer
    from vla.runtime.manifest import TensorSpec

    norm = {"mean": [120.0, 110.0, 100.0], "std": [60.0, 50.0, 40.0], "in_graph": False}
    detail = {"names": ["front", "left"], "layout": "NCHW", "color": "RGB", "height": 8, "width": 16,
              "normalization": norm}
    spec = TensorSpec(name="images", dtype="float32", shape=(1, 2, 3, 8, 16), role="camera", detail=detail)
    out = np.zeros(spec.shape, np.float32)
    pictures = {"front": np.full((8, 16, 3), 200, np.uint8), "left": np.full((8, 16, 3), 20, np.uint8)}
    _camera_writer(spec, out)(pictures)
    for i, v in enumerate((200.0, 20.0)):
        want = (v - np.array(norm["mean"])) / np.array(norm["std"])
        np.testing.assert_allclose(out[0, i, :, 0, 0], want, rtol=1e-6)
        np.testing.assert_allclose(out[0, i], np.broadcast_to(want[:, None, None], (3, 8, 16)), rtol=1e-6)


def test_image_calibration_gives_each_set_an_image_of_its_own(reference_manifest, tmp_path):
    """N images -> N calibration sets, each showing its own picture (the ticks that only carry the
    state forward show the current still instead of using images up)."""
    import cv2

    from vla.export.calibration import calibration_sets
    from vla.runtime.manifest import parse_manifest

    manifest = parse_manifest(reference_manifest)
    levels = [30, 70, 110, 150, 190]
    for i, v in enumerate(levels):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((90, 160, 3), v, np.uint8))

    def step(feeds):  # a stand-in for the model: zero state outputs (only the camera input is looked at)
        return {t.detail["from_output"]: np.zeros(t.shape, t.dtype) for t in manifest.inputs_with("state")}

    sets, info = calibration_sets(str(tmp_path), manifest, step, count=8, seed=0)
    assert info["kind"] == "images" and len(sets) == len(levels)  # no more sets than images
    cam = manifest.inputs_with("camera")[0].name
    shown = [int(np.median(s[cam])) for s in sets]
    assert len(set(shown)) == len(levels), shown  # every image once
    assert np.all(np.diff(shown) > 0), shown  # in the folder's order


@pytest.mark.parametrize(("x_shape", "w_shape", "attrs"), [
    ((1, 4, 20), (6, 4, 3), {"pads": [1, 2], "strides": [2]}),  # Conv1d
    ((1, 4, 9, 11), (6, 2, 3, 3), {"pads": [1, 0, 2, 1], "dilations": [2, 1], "group": 2}),
    ((1, 2, 5, 6, 7), (3, 2, 3, 2, 3), {"pads": [1, 0, 1, 1, 1, 0], "strides": [1, 2, 2]}),  # Conv3d
    ((1, 3, 10, 7), (4, 3, 3, 4), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 3, 10, 7), (4, 3, 3, 4), {"auto_pad": "SAME_LOWER", "strides": [3, 2]}),
    ((1, 3, 10, 7), (4, 3, 3, 4), {"auto_pad": "VALID"}),
])
def test_local_sensitivity_recomputes_conv_as_onnx_runtime_does(x_shape, w_shape, attrs):
    """``local_errors`` recomputes each candidate node; its Conv must be ONNX's for 1-D, 2-D and 3-D
    convolutions, explicit pads and auto_pad alike (checked against ONNX Runtime on the node alone)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from vla.export.precision import _apply

    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
                                               helper.make_tensor_value_info("w", TensorProto.FLOAT, w_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(x_shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "w": w})[0]
    got = _apply(node, torch.from_numpy(x), torch.from_numpy(w)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_calibration_check_reads_what_calibration_will_read(reference_manifest, tmp_path):
    """The fail-fast check before the export loads the files the calibration will use (the first
    --calib-samples), not a whole folder of recordings."""
    from vla.export.calibration import check_source

    manifest = parse_manifest(reference_manifest)
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((90, 160, 3), 50 * i, np.uint8))
    (tmp_path / "02.png").write_bytes(b"not a picture")  # sorted last: read only when 3+ sets are asked for
    check_source(str(tmp_path), manifest, 2)
    for count in (3, None):
        with pytest.raises(VlaError, match=r"02\.png"):
            check_source(str(tmp_path), manifest, count)


def _histogram(counts: np.ndarray, lo: float = -4.0, hi: float = 4.0) -> tuple:
    """A histogram in ONNX Runtime's per-tensor form: (counts, edges, min, max)."""
    edges = np.linspace(lo, hi, counts.size + 1, dtype=np.float32)
    return counts.astype(np.int64), edges, np.float32(lo * 0.97), np.float32(hi * 0.99)  # (-3.88, 3.96)


@pytest.mark.parametrize("case", ["laplace", "outliers", "sparse", "one_sided", "few_counts"])
def test_entropy_threshold_is_onnxruntimes(case):
    """The array version of the entropy search returns exactly what ONNX Runtime's loops return."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from vla.export.entropy import entropy_threshold

    rng = np.random.default_rng(7)
    bins = 512  # 2048 in exports; fewer keeps ONNX Runtime's own search quick here
    if case == "laplace":
        counts = np.histogram(rng.laplace(0, 0.4, 200_000), bins=bins, range=(-4, 4))[0]
    elif case == "outliers":
        counts = np.histogram(np.concatenate([rng.normal(0, 0.3, 100_000), rng.uniform(-4, 4, 50)]),
                              bins=bins, range=(-4, 4))[0]
    elif case == "few_counts":  # merged bins average to fractions: ONNX Runtime truncates them
        counts = np.histogram(np.random.default_rng(1).normal(0, 0.5, 3000), bins=bins, range=(-4, 4))[0]
    elif case == "sparse":
        counts = np.zeros(bins, np.int64)
        counts[rng.choice(bins, 40, replace=False)] = rng.integers(1, 1000, 40)
    else:
        counts = np.histogram(np.abs(rng.normal(0, 1.0, 100_000)), bins=bins, range=(-4, 4))[0]
    hist = _histogram(counts)
    want = HistogramCollector.get_entropy_threshold(None, hist, 128)  # uses nothing of its instance
    got = entropy_threshold(hist, 128)
    assert (float(got[0]), float(got[1])) == (float(want[0]), float(want[1]))
    assert got[0].dtype == want[0].dtype == np.float32
