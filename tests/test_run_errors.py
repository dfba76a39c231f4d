"""vla-run refuses bad input with one line and a non-zero exit, before any tick runs."""

from __future__ import annotations

import json

import onnx
from onnx import TensorProto, helper

from conftest import VLA_RUN, assert_one_line_error, run_cli


def test_missing_engine(tmp_path):
    assert_one_line_error(run_cli(VLA_RUN, "--engine", tmp_path / "nope", "--frames", "1"), "no such file")


def test_corrupt_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    assert_one_line_error(run_cli(VLA_RUN, "--engine", bad, "--frames", "1"), "ONNX Runtime cannot load")


def test_onnx_without_manifest(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert_one_line_error(run_cli(VLA_RUN, "--engine", path, "--frames", "1"), "no vla manifest")


def test_bare_onnx_runs_from_embedded_manifest(reference_bundle, tmp_path):
    onnx_only = tmp_path / "model.onnx"
    onnx_only.write_bytes((reference_bundle / "model.onnx").read_bytes())
    proc = run_cli(VLA_RUN, "--engine", onnx_only, "--frames", "2", "--camera", "synthetic://?size=320x180")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


def test_manifest_disagreeing_with_graph(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["inputs"][3]["shape"] = [1, 8, 6]  # ego history is [1, 16, 6] in the graph
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_cli(VLA_RUN, "--engine", bundle_copy, "--frames", "1"),
                          "'ego' has shape [1, 16, 6] in the graph but [1, 8, 6] in the manifest")


def test_malformed_manifest(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    assert_one_line_error(run_cli(VLA_RUN, "--engine", bundle_copy, "--frames", "1"), "not valid JSON")


def test_unknown_camera_uri(reference_bundle):
    assert_one_line_error(run_cli(VLA_RUN, "--engine", reference_bundle, "--camera", "bogus://cam0", "--frames", "1"),
                          "unknown scheme 'bogus://'")


def test_camera_name_the_model_lacks(reference_bundle):
    assert_one_line_error(run_cli(VLA_RUN, "--engine", reference_bundle, "--camera", "rear=synthetic://",
                                  "--frames", "1"), "no camera 'rear'", "front, left, right")


def test_missing_camera_for_a_model_camera(reference_bundle):
    assert_one_line_error(run_cli(VLA_RUN, "--engine", reference_bundle, "--camera", "front=synthetic://",
                                  "--frames", "1"), "no source for camera(s) left, right")


def test_missing_video_file(reference_bundle, tmp_path):
    assert_one_line_error(run_cli(VLA_RUN, "--engine", reference_bundle, "--camera", tmp_path / "none.mp4",
                                  "--frames", "1"), "no such video file")


def test_command_not_in_vocabulary(reference_bundle):
    assert_one_line_error(run_cli(VLA_RUN, "--engine", reference_bundle, "--command", "drift sideways",
                                  "--frames", "1"), "'drift'", "not in the model's vocabulary")


def test_bad_rate(reference_bundle):
    assert_one_line_error(run_cli(VLA_RUN, "--engine", reference_bundle, "--rate", "0", "--frames", "1"),
                          "--rate must be > 0")


def test_bad_counts(reference_bundle):
    for args in (["--frames", "0"], ["--duration", "-1"], ["--threads", "-2", "--frames", "1"]):
        assert_one_line_error(run_cli(VLA_RUN, "--engine", reference_bundle, *args), f"{args[0]} must be > 0")


def test_list_cameras_needs_no_engine_and_names_every_library():
    proc = run_cli(VLA_RUN, "--list-cameras")
    assert proc.returncode == 0, proc.stderr
    for needle in ("V4L2 devices:", "linuxpy", "GStreamer via PyGObject", "PyAV", "OpenCV", "synthetic://"):
        assert needle in proc.stdout, proc.stdout


def test_engine_is_required_to_run():
    assert_one_line_error(run_cli(VLA_RUN, "--camera", "synthetic://"), "--engine BUNDLE is required")
