"""vla-export: the reference bundle, parity, the manifest embedded in the graph, each model form."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from conftest import VLA_EXPORT, assert_one_line_error, run_cli
from vla.export.bundle import model_hash
from vla.export.reference import build_reference
from vla.runtime.manifest import METADATA_KEY, parse_manifest

SMALL = {"vit_depth": 1, "resampler_depth": 1, "fusion_depth": 1, "world_depth": 1, "action_depth": 1,
         "cameras": ("front",), "euler_steps": 2}


def test_reference_model_shape():
    m = build_reference()
    n = sum(p.numel() for p in m.parameters())
    assert 10e6 <= n <= 20e6
    spec = parse_manifest(m.io_spec())
    out = m(*[torch.zeros(t.shape, dtype=getattr(torch, t.dtype)) for t in spec.inputs])
    assert [tuple(o.shape) for o in out] == [tuple(t.shape) for t in spec.outputs]
    # Seeded: two builds have the same weights.
    a, b = build_reference().state_dict(), build_reference().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(build_reference(seed=1).state_dict()["queries"], a["queries"])


def test_reference_bundle(reference_bundle, reference_manifest):
    assert {p.name for p in reference_bundle.iterdir()} == {"model.onnx", "manifest.json", "parity.json", "program.pt2"}
    parity = json.loads((reference_bundle / "parity.json").read_text())
    assert parity["passed"] and parity["inputs"] == 3
    assert parity["trajectory"]["ade_m"] < 1e-3
    assert all(o.get("max_rel", 0) < 1e-4 for o in parity["outputs"].values())
    assert parity["outputs"]["new_memory_valid"]["mismatches"] == 0
    model = onnx.load(str(reference_bundle / "model.onnx"))
    embedded = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    # The embedded copy is the manifest without what was measured (so model.onnx is reproducible).
    assert embedded == {k: v for k, v in reference_manifest.items() if k != "measured"}
    assert reference_manifest["measured"]["parity"]["passed"]
    assert reference_manifest["model"]["hash"] == model_hash(model)
    assert reference_manifest["export"]["exporter"] == "torch.export"
    assert {"torch", "onnx", "onnxruntime"} <= reference_manifest["tools"].keys()
    parse_manifest(reference_manifest)


def test_parity_failure_writes_no_bundle(tmp_path):
    out = tmp_path / "b"
    proc = run_cli(VLA_EXPORT, "reference-v1", "-o", out, "--rtol", "1e-12", "--ade-tol", "1e-12",
                   *[f"--config={k}={json.dumps(v)}" for k, v in SMALL.items()])
    assert_one_line_error(proc, "FAILED", "no bundle written")
    assert not out.exists()
    forced = run_cli(VLA_EXPORT, "reference-v1", "-o", out, "--rtol", "1e-12", "--force",
                     *[f"--config={k}={json.dumps(v)}" for k, v in SMALL.items()])
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "parity.json").read_text())["passed"] is False


def _save_forms(tmp_path):
    net = build_reference(**SMALL)
    spec = parse_manifest(net.io_spec())
    args = tuple(torch.zeros(t.shape, dtype=getattr(torch, t.dtype)) for t in spec.inputs)
    spec_json = json.dumps(net.io_spec())
    pt2 = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(net, args), str(pt2), extra_files={"vla_spec.json": spec_json})
    pt = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(net, args), str(pt), _extra_files={"vla_spec.json": spec_json})
    return {"pt2": pt2, "pt": pt}


@pytest.mark.parametrize("form", ["pt2", "pt"])
def test_archive_forms_export(tmp_path, form):
    path = _save_forms(tmp_path)[form]
    out = tmp_path / f"bundle-{form}"
    proc = run_cli(VLA_EXPORT, path, "-o", out)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["form"] == {"pt2": "exported_program", "pt": "torchscript"}[form]
    assert json.loads((out / "parity.json").read_text())["passed"]
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [i.name for i in graph.input] == [t["name"] for t in manifest["inputs"]]


def test_archive_without_spec_is_refused(tmp_path):
    net = build_reference(**SMALL)
    spec = parse_manifest(net.io_spec())
    args = tuple(torch.zeros(t.shape, dtype=getattr(torch, t.dtype)) for t in spec.inputs)
    path = tmp_path / "nospec.pt2"
    torch.export.save(torch.export.export(net, args), str(path))
    assert_one_line_error(run_cli(VLA_EXPORT, path, "-o", tmp_path / "b"), "no I/O spec", "--spec")
    # ...and the same archive with --spec works from a file; a spec that disagrees is named.
    bad = net.io_spec()
    bad["inputs"][3]["shape"] = [1, 8, 6]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert_one_line_error(run_cli(VLA_EXPORT, path, "-o", tmp_path / "b", "--spec", tmp_path / "bad.json"), "ego")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing.pt", "no such file"),
        (lambda d: (d / "junk.pt").write_bytes(b"not a zip at all" * 10) and d / "junk.pt", "not a TorchScript"),
        (lambda d: (d / "junk.pt2").write_bytes(np.zeros(64, np.uint8).tobytes()) and d / "junk.pt2", "archive"),
        (lambda d: (d / "folder").mkdir() or d / "folder", "a folder, but not a bundle"),
    ],
)
def test_bad_model_arguments(tmp_path, make, needle):
    assert_one_line_error(run_cli(VLA_EXPORT, make(tmp_path), "-o", tmp_path / "b"), needle)


def test_corrupt_zip_archive(tmp_path):
    import zipfile

    path = tmp_path / "broken.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("broken/data.pkl", b"garbage")
    assert_one_line_error(run_cli(VLA_EXPORT, path, "-o", tmp_path / "b"), "cannot read the TorchScript archive")


@pytest.mark.parametrize("model", ["reference", "reference-v1"])
def test_bad_reference_config(tmp_path, model):
    assert_one_line_error(run_cli(VLA_EXPORT, model, "-o", tmp_path / "b", "--config", "no_such=1"),
                          "bad --config")
