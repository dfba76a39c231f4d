"""vla-export for a model declared in stages: a user's two-stage model and a flow-matching repeat stage from a
YAML spec, the dataflow check before any tracing, per-stage precision and its gate, and the reference models
(``reference``: model 2 in three stages; ``reference-v1``: model 1, one graph).

Tiny models (stagenet.py, written into tmp_path, the working directory) keep each export to seconds; the CLI
runs in-process (``vla.export.cli.main``) so torch is imported once.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import yaml

from conftest import TINY_REFERENCE, TINY_V2
from vla.export.cli import main
from vla.export.load import build_from_factory
from vla.export.staged import Declared, compose_torch
from vla.runtime.engine import open_engine
from vla.runtime.errors import VlaError
from vla.runtime.inputs.feeds import example_feeds
from vla.runtime.manifest import parse_manifest
from vla.runtime.stages import Stage

STAGENET = '''
import torch
from torch import nn


class Encoder(nn.Module):
    """The slow stage: ego history -> a feature vector."""

    output_names = ("feat",)

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(1), nn.Linear(24, 16), nn.Tanh())

    def forward(self, ego):
        return self.net(ego / 10.0)


class Head(nn.Module):
    """The tick-rate stage (no output_names: the spec declares its outputs)."""

    def __init__(self):
        super().__init__()
        self.traj = nn.Linear(16, 24)
        self.score = nn.Linear(16, 2)

    def forward(self, feat, noise):
        return self.traj(feat).view(1, 2, 4, 3) + 0.1 * noise, torch.softmax(self.score(feat), -1)


class TwoStage(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.head = Head()

    def forward(self, ego, noise):
        return self.head(self.encoder(ego), noise)


class Step(nn.Module):
    """One Euler step of a flow: sample -> next_sample, and the trajectory and score read off it."""

    output_names = ("next_sample", "trajectory", "score")

    def __init__(self):
        super().__init__()
        self.velocity = nn.Linear(24 + 16 + 1, 24)
        self.score = nn.Linear(24, 2)

    def forward(self, sample, t, feat):
        x = torch.cat([sample.reshape(1, 24), feat, t[:, None]], dim=-1)
        next_sample = sample + 0.25 * torch.tanh(self.velocity(x)).view(1, 2, 4, 3)
        return next_sample, 3.0 * next_sample, torch.softmax(self.score(next_sample.reshape(2, 12).sum(-1)[None]
                                                                         .repeat(1, 12)), -1)


class Flow(nn.Module):
    def __init__(self, steps=4):
        super().__init__()
        self.steps = steps
        self.encoder = Encoder()
        self.expert = Step()

    def forward(self, ego, noise):
        feat = self.encoder(ego)
        sample = noise
        for i in range(self.steps):
            t = torch.full((1,), i / self.steps)
            sample, traj, score = self.expert(sample, t, feat)
        return traj, score


def two_stage():
    torch.manual_seed(0)
    return TwoStage()


def flow():
    torch.manual_seed(1)
    return Flow()
'''

IO = {
    "schema_version": 1,
    "model": {"name": "stagenet"},
    "inputs": [
        {"name": "ego", "dtype": "float32", "role": "ego", "shape": [1, 4, 6],
         "ego": {"fields": ["x", "y", "yaw", "v", "a", "yaw_rate"], "rate_hz": 10.0, "frame": "ego"}},
        {"name": "noise", "dtype": "float32", "role": "noise", "shape": [1, 2, 4, 3],
         "noise": {"distribution": "normal", "std": 1.0}},
    ],
    "outputs": [
        {"name": "trajectory", "dtype": "float32", "role": "trajectory", "shape": [1, 2, 4, 3],
         "trajectory": {"dt": 0.1, "horizon_s": 0.4, "frame": "ego", "fields": ["x", "y", "yaw"]}},
        {"name": "score", "dtype": "float32", "role": "score", "shape": [1, 2]},
    ],
}
TWO_STAGES = {"encoder": {"module": "encoder", "rate": "async", "max_age_ms": 200},
              "head": {"module": "head", "outputs": ["trajectory", "score"]}}
FLOW_STAGES = {"encoder": "encoder",
               "action": {"module": "expert", "repeat": 4, "sample": {"input": "sample", "output": "next_sample"},
                          "time": "t"}}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "stagenet.py").write_text(STAGENET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _model(workdir, factory: str, stages: dict) -> list[str]:
    """Weights and a YAML spec declaring ``stages`` for stagenet's ``factory``: the CLI's MODEL arguments."""
    net = build_from_factory(f"stagenet:{factory}")
    torch.save(net.state_dict(), workdir / f"{factory}.pt")
    (workdir / f"{factory}.yaml").write_text(yaml.safe_dump({**IO, "stages": stages}, sort_keys=False))
    return [str(workdir / f"{factory}.pt"), "--factory", f"stagenet:{factory}",
            "--spec", str(workdir / f"{factory}.yaml")]


def _decide(out, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    backend = open_engine(str(out), backend="ort", threads=1)
    try:
        for name, value in feeds.items():
            np.copyto(backend.feed(name), value)
        return {k: np.array(v) for k, v in backend.run().items()}
    finally:
        backend.close()


def _torch(net, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        traj, score = net(*(torch.from_numpy(feeds[n]) for n in ("ego", "noise")))
    return {"trajectory": traj.numpy(), "score": score.numpy()}


def test_two_stage_model_exports_from_a_yaml_declaration(workdir):
    out = workdir / "bundle"
    assert main([*_model(workdir, "two_stage", TWO_STAGES), "-o", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"encoder.onnx", "head.onnx", "encoder.pt2", "head.pt2",
                                               "manifest.json", "parity.json"}
    manifest = json.loads((out / "manifest.json").read_text())
    parse_manifest(manifest)
    assert [(s["name"], s["module"], s["inputs"], s["outputs"], s["rate"]) for s in manifest["stages"]] == [
        ("encoder", "encoder", ["ego"], ["feat"], "async"),
        ("head", "head", ["feat", "noise"], ["trajectory", "score"], "tick")]
    assert manifest["stages"][0]["max_age_ms"] == 200
    assert manifest["intermediates"] == [{"name": "feat", "dtype": "float32", "shape": [1, 16]}]
    assert all(s["precision"] == "fp32" and s["hash"].startswith("sha256:") for s in manifest["stages"])
    net = build_from_factory("stagenet:two_stage")
    feeds = example_feeds(parse_manifest(IO), seed=7)
    got, want = _decide(out, feeds), _torch(net, feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_repeat_stage_composes_like_the_eager_loop(workdir):
    out = workdir / "bundle"
    assert main([*_model(workdir, "flow", FLOW_STAGES), "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    action = manifest["stages"][1]
    assert action["repeat"] == {"steps": 4, "sample": {"input": "sample", "output": "next_sample", "init": "noise"},
                                "time": "t"}
    assert action["inputs"] == ["sample", "t", "feat"]
    assert [t["name"] for t in manifest["intermediates"]] == ["feat"]  # the running sample stays in its stage
    net = build_from_factory("stagenet:flow")
    feeds = example_feeds(parse_manifest(IO), seed=3)
    got, want = _decide(out, feeds), _torch(net, feeds)
    np.testing.assert_allclose(got["trajectory"], want["trajectory"], rtol=1e-5, atol=1e-5)
    # One step alone is not the decision: the bundle really loops it K times.
    one = net.expert(torch.from_numpy(feeds["noise"]), torch.zeros(1), net.encoder(torch.from_numpy(feeds["ego"])))
    assert not np.allclose(got["trajectory"], one[1].detach().numpy(), atol=1e-3)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and set(parity["stages"]) == {"encoder", "action"}
    assert parity["stages"]["action"]["calls"] == 4 * parity["inputs"]
    assert parity["stages"]["action"]["outputs"]["next_sample"]["max_rel"] < 1e-4
    assert parity["composed"]["trajectory"]["ade_m"] < 1e-4
    assert manifest["measured"]["parity"]["stages"]["action"]["passed"]


def test_broken_declaration_is_one_line_naming_the_missing_edge(workdir, capsys):
    broken = {"encoder": {"module": "encoder", "rate": "async"},
              "head": {"module": "head", "inputs": ["ctx", "noise"], "outputs": ["trajectory", "score"]}}
    out = workdir / "bundle"
    code = main([*_model(workdir, "two_stage", broken), "-o", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert len(lines) == 1, err
    assert "stage 'head' reads 'ctx'" in lines[0] and "missing edge -> head.ctx" in lines[0], lines[0]
    assert "exported with" not in err  # refused before anything was traced
    assert not out.exists()


def test_unknown_submodule_and_wrong_output_count_are_one_line(workdir, capsys):
    out = workdir / "bundle"
    code = main([*_model(workdir, "two_stage", {**TWO_STAGES, "head": "heads"}), "-o", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "has no submodule 'heads'" in err and "Traceback" not in err, err
    assert not out.exists()
    # A submodule returning more tensors than it declares (the dataflow was fine: found on the PyTorch run).
    net = build_from_factory("stagenet:two_stage")
    stage = Stage("head", "head.onnx", ("feat", "noise"), ("trajectory",))
    with pytest.raises(VlaError, match=r"stage 'head' \(module 'head'\) returns 2 output\(s\) but declares 1"):
        compose_torch([Declared(stage, "head", net.head, False)],
                      {"feat": np.zeros((1, 16), np.float32), "noise": np.zeros((1, 2, 4, 3), np.float32)})


def test_stage_precision_fp16_head(workdir):
    out = workdir / "bundle"
    assert main([*_model(workdir, "two_stage", TWO_STAGES), "-o", str(out), "--stage-precision", "head=fp16",
                 "--heldout", "4", "--gate-ade-m", "0.05"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["name"]: s["precision"] for s in manifest["stages"]} == {"encoder": "fp32", "head": "fp16"}
    head = onnx.load(str(out / "head.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in head.graph.initializer)
    encoder = onnx.load(str(out / "encoder.onnx"))
    assert not any(i.data_type == onnx.TensorProto.FLOAT16 for i in encoder.graph.initializer)
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["passed"] and accuracy["stage_precisions"] == {"encoder": "fp32", "head": "fp16"}
    assert manifest["measured"]["accuracy"]["passed"]
    assert manifest["export"]["precision"]["mode"] == "mixed"
    assert not (out / "head.pt2").exists() and (out / "encoder.pt2").exists()  # programs are FP32 only
    # An unknown stage name is refused before the export.
    assert main([*_model(workdir, "two_stage", TWO_STAGES), "-o", str(workdir / "b2"),
                 "--stage-precision", "heads=fp16"]) != 0


def test_reference_v1_is_still_one_graph(tmp_path):
    out = tmp_path / "v1"
    assert main(["reference-v1", "-o", str(out), *(a for kv in TINY_REFERENCE for a in ("--config", kv))]) == 0
    assert (out / "model.onnx").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "stages" not in manifest and manifest["model"]["name"] != "vla-reference-2"


def test_reference_is_model_2_in_three_stages(tmp_path):
    out = tmp_path / "v2"
    assert main(["reference", "-o", str(out), *(a for kv in TINY_V2 for a in ("--config", kv))]) == 0
    assert not (out / "model.onnx").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert list(stages) == ["vision", "context", "action"]
    assert stages["action"]["repeat"]["steps"] == 10 and stages["action"]["repeat"]["time"] == "t"
    assert stages["context"]["rate"] == "async" and stages["action"]["rate"] == "tick"
    assert stages["vision"]["rate"] == "async"  # it feeds only the async context stage
    assert {t["name"] for t in manifest["intermediates"]} == {"vision_tokens", "context"}
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["composed"]["trajectory"]["in_metres"] == "integrated controls"
