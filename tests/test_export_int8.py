"""INT8 that holds: PyTorch module paths on exported nodes, the search driven by measured trajectory
error (and its time budget, counted in trials), the INT8 graph forms, the one-line refusal and the
slower-than-FP32 line, and re-quantising an FP32 bundle without the PyTorch model."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from conftest import VLA_EXPORT, assert_one_line_error, run_cli
from vla.export import exclusions
from vla.export.module_names import group_by_module, module_paths, read_scopes, stamp
from vla.export.search import Effect, EffectSearch, Trial, search_by_effect

QUICK = ["--heldout", "6", "--calib-samples", "8"]


# ---- module paths: from the exporter's metadata, through the clean-up ------------------------------
class Nested(nn.Module):
    """Conv blocks in a Sequential of named blocks, a Linear head: paths like ``backbone.1.conv1``."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.bn(self.conv1(x)))

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.backbone = nn.Sequential(Nested.Block(), Nested.Block())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.stem(x)).mean(dim=(2, 3)).unsqueeze(1))


def test_module_paths_survive_the_clean_up(tmp_path):
    from vla.export.cleanup import slim
    from vla.export.convert import _quiet

    path = tmp_path / "nested.onnx"
    with _quiet():
        torch.onnx.export(Nested().eval(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=True,
                          external_data=False)
    exported = onnx.load(str(path))
    scopes = read_scopes(exported)
    cleaned, _ = slim(exported)
    assert module_paths(cleaned) == {}  # the clean-up drops the exporter's metadata...
    stamp(cleaned, scopes)  # ...so the map read before it is stamped back
    paths = module_paths(cleaned)
    convs = [paths[n.name] for n in cleaned.graph.node if n.op_type == "Conv"]
    # BatchNorm is folded into the conv before it; the fused node is named after one of the two.
    assert convs[0] == "stem" and [c.rsplit(".", 1)[0] for c in convs[1:]] == ["backbone.0", "backbone.1"], convs
    assert {c.rsplit(".", 1)[1] for c in convs[1:]} <= {"conv1", "bn"}, convs
    head = [paths[n.name] for n in cleaned.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert head == ["head"], head
    # Stamped paths are read back from the node itself (a bundle's model.onnx carries them).
    again = onnx.ModelProto.FromString(cleaned.SerializeToString())
    assert module_paths(again) == paths


def test_no_slim_bundle_keeps_module_paths_but_not_the_exporters_source_paths(tmp_path):
    """Without the clean-up the exporter's node metadata would reach model.onnx, stack traces with absolute
    paths included (another folder, another model hash); only the module path is kept."""
    from test_export_precision import OneSensitiveLayer

    net = OneSensitiveLayer().eval()
    archive = tmp_path / "sensitive.pt2"
    args = (torch.zeros(1, 1, 3, 32, 64, dtype=torch.uint8), torch.zeros(1, 16, 6))
    torch.export.save(torch.export.export(net, args), str(archive),
                      extra_files={"vla_spec.json": json.dumps(net.io_spec())})
    proc = run_cli(VLA_EXPORT, archive, "-o", tmp_path / "b", "--no-slim")
    assert proc.returncode == 0, proc.stderr
    graph = onnx.load(str(tmp_path / "b" / "model.onnx")).graph
    assert {p.key for n in graph.node for p in n.metadata_props} == {"vla.module"}
    assert "sensitive" in module_paths(onnx.load(str(tmp_path / "b" / "model.onnx"))).values()


def test_groups_coarsen_to_fit_the_trial_budget():
    nodes = ["a", "b", "c", "d", "e"]
    paths = {"a": "backbone.layer1.0.conv1", "b": "backbone.layer1.0.conv2", "c": "backbone.layer2.0.conv1",
             "d": "head.fc"}  # e: no path, a group of its own
    assert group_by_module(nodes, paths, 10) == {
        "backbone.layer1.0.conv1": ["a"], "backbone.layer1.0.conv2": ["b"], "backbone.layer2.0.conv1": ["c"],
        "head.fc": ["d"], "e": ["e"]}
    assert group_by_module(nodes, paths, 4) == {"backbone.layer1.0": ["a", "b"], "backbone.layer2.0": ["c"],
                                                "head.fc": ["d"], "e": ["e"]}
    assert group_by_module(nodes, paths, 3)["backbone"] == ["a", "b", "c"]


# ---- the search by measured effect (decisions only: evaluate is arithmetic on known harms) ---------
GROUPS = {f"m{i}": [f"m{i}.n0", f"m{i}.n1"] for i in range(8)}


def _model_of_harm(harm: dict[str, float], limit: float, log: list[list[str]]):
    """evaluate() for a graph whose ADE is the sum of the harms of the modules left converted (what a
    real graph does approximately): the search must find the harmful modules by measuring."""
    def evaluate(excluded):
        log.append(list(excluded))
        kept = {n.split(".")[0] for n in excluded}
        ade = sum(h for g, h in harm.items() if g not in kept)
        return ([] if ade <= limit else [f"ADE {ade}"]), {"trajectory": {"ade_m": ade}}
    return evaluate


def test_search_keeps_the_module_that_measurably_hurts_even_when_guessed_last():
    harm = dict.fromkeys(GROUPS, 0.001) | {"m7": 0.5}
    log: list[list[str]] = []
    order = list(GROUPS)  # the cheap guess ranks m7 last
    result = search_by_effect(GROUPS, order, _model_of_harm(harm, 0.02, log), 16, lambda n: False)
    assert result.passed and result.groups == ["m7"] and result.excluded == GROUPS["m7"]
    assert result.effects["m7"].effect_m == pytest.approx(0.5)
    assert result.harmful(1)[0].group == "m7"
    assert len(log) == 1 + len(GROUPS)  # all converted, then each module alone; the best alone passes


def test_search_finds_the_fewest_harmful_modules_in_effect_order():
    harm = {"m0": 0.001, "m1": 0.2, "m2": 0.001, "m3": 0.1, "m4": 0.05, "m5": 0.001, "m6": 0.001, "m7": 0.001}
    log: list[list[str]] = []
    result = search_by_effect(GROUPS, list(GROUPS), _model_of_harm(harm, 0.01, log), 16, lambda n: False)
    assert result.passed and result.groups == ["m1", "m3", "m4"]
    assert len(log) <= 1 + len(GROUPS) + 4  # doubling then bisection over the ranking, no linear scan
    # max_exclude counts nodes: two modules (4 nodes) are not enough, so it fails, naming what hurts.
    capped = search_by_effect(GROUPS, list(GROUPS), _model_of_harm(harm, 0.01, []), 4, lambda n: False)
    assert not capped.passed and capped.groups == ["m1", "m3"] and len(capped.excluded) == 4
    assert [e.group for e in capped.harmful(3)] == ["m1", "m3", "m4"]


def test_search_keeps_one_module_that_passes_even_when_it_is_not_the_top_of_the_ranking():
    """The gate judges more than ADE: the module that lowers ADE most may still fail (an output mismatch)
    while another passes alone; one module is then the answer, not a longer prefix."""
    harm = dict.fromkeys(GROUPS, 0.0) | {"m1": 0.3, "m2": 0.1}
    log: list[list[str]] = []
    ade_only = _model_of_harm(harm, 0.35, log)

    def evaluate(excluded):
        failures, figures = ade_only(excluded)
        if {n.split(".")[0] for n in excluded} == {"m1"}:  # restoring m1 alone breaks another output
            failures = [*failures, "logits: 3 elements differ"]
        return failures, figures

    result = search_by_effect(GROUPS, list(GROUPS), evaluate, 16, lambda n: False)
    assert result.passed and result.groups == ["m2"] and len(log) == 1 + len(GROUPS)


@pytest.mark.parametrize("budget", [1, 3, 6, 11])
def test_search_stops_when_the_budget_says_so(budget):
    """The budget is asked before each trial after the first; counting trials makes it exact here."""
    harm = {g: 0.01 * (i + 1) for i, g in enumerate(GROUPS)}
    log: list[list[str]] = []
    result = search_by_effect(GROUPS, list(reversed(GROUPS)), _model_of_harm(harm, 0.05, log), 16,
                              lambda trials: trials >= budget)
    assert len(log) == len(result.trials) == max(1, budget)
    assert result.out_of_time or result.passed
    if budget <= 1 + len(GROUPS):  # stopped while measuring: the most likely culprits (order) came first
        assert list(result.effects) == list(reversed(GROUPS))[: budget - 1]


# ---- the words: refusal and speed (pure) ------------------------------------------------------------
def _result(passed: bool, out_of_time: bool = False) -> EffectSearch:
    effects = {"backbone.layer4": Effect("backbone.layer4", ["a", "b"], 0.01, 0.09),
               "head": Effect("head", ["c"], 0.095, 0.005), "neck": Effect("neck", ["d"], 0.11, -0.01)}
    final = Trial(2, [] if passed else ["trajectory ADE 0.100 m is 5.00% of the spread 2.00 m (limit 2%)"],
                  {"trajectory": {"ade_m": 0.1}}, groups=["backbone.layer4"])
    return EffectSearch(["backbone.layer4"], ["a", "b"], passed, final, [final], effects, out_of_time)


def test_refusal_is_one_line_naming_the_modules_that_hurt_most():
    msg = exclusions.refusal("int8", _result(False), candidates=40, max_exclude=2, seconds=300)
    assert "\n" not in msg and msg.startswith("int8 accuracy gate failed (trajectory ADE 0.100 m")
    assert "the modules that hurt most: backbone.layer4 (ADE -0.0900 m when kept in FP32), head" in msg
    assert "neck" not in msg  # restoring it made things worse: not a culprit
    assert "at most 2 of 40 nodes" in msg and "no bundle written" in msg
    assert "300 s search budget ran out" in exclusions.refusal("int8", _result(False, True), 40, 2, 300)


def test_measured_exclusions_name_module_and_effect():
    rec = exclusions.measured(_result(True))
    assert rec == [{"module": "backbone.layer4", "nodes": 2, "ade_m_with_module_fp32": 0.01, "effect_ade_m": 0.09}]
    assert exclusions.summary_lines("int8", _result(True)) == [
        "int8: kept in FP32: backbone.layer4 (2 node(s); restoring it alone: -0.0900 m ADE)"]


@pytest.mark.parametrize(("precision", "form", "fp32", "final", "needle"), [
    ("int8", "tensorrt", 10.0, 12.5, "--int8-form ort"),
    ("int8", "ort", 10.0, 10.4, "x0.96"),
    ("fp16", None, 4.0, 5.0, "FP16 pays off on a GPU"),
])
def test_a_precision_slower_than_fp32_is_said_so(precision, form, fp32, final, needle):
    note = exclusions.speed_note(precision, form, fp32, final)
    assert note is not None and "SLOWER than FP32" in note and needle in note
    assert exclusions.speed_note(precision, form, fp32, fp32 * 0.7) is None


# ---- INT8 forms ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sensitive_fp32(tmp_path_factory):
    """The one-sensitive-layer model of test_export_precision, exported FP32 (a bundle folder)."""
    from test_export_precision import OneSensitiveLayer

    net = OneSensitiveLayer().eval()
    root = tmp_path_factory.mktemp("int8")
    archive = root / "sensitive.pt2"
    args = (torch.zeros(1, 1, 3, 32, 64, dtype=torch.uint8), torch.zeros(1, 16, 6))
    torch.export.save(torch.export.export(net, args), str(archive),
                      extra_files={"vla_spec.json": json.dumps(net.io_spec())})
    out = root / "fp32"
    proc = run_cli(VLA_EXPORT, archive, "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("form", ["tensorrt", "ort", "dynamic"])
def test_int8_forms(sensitive_fp32, form):
    from vla.export.precision import Int8Converter, candidates

    fp32 = onnx.load(str(sensitive_fp32 / "model.onnx"))
    rng = np.random.default_rng(0)
    calib = [{"images": rng.integers(0, 256, (1, 1, 3, 32, 64), dtype=np.uint8),
              "ego": rng.normal(0, 5, (1, 16, 6)).astype(np.float32)} for _ in range(4)]
    conv = Int8Converter(fp32, calib, form=form)
    try:
        graph = conv.build([]).graph
        everything_excluded = conv.build(candidates(fp32, "int8", form))
    finally:
        conv.close()
    # Every candidate excluded is the FP32 model's arithmetic (the dynamic form renames Gemms on the way).
    import onnxruntime as ort

    fp32_out, excl_out = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                          .run(None, calib[0])[0] for m in (fp32, everything_excluded))
    np.testing.assert_allclose(excl_out, fp32_out, rtol=1e-5, atol=1e-6)
    ops = {n.op_type for n in graph.node}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    q_zps = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    if form == "dynamic":
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "Conv" in ops  # convolutions stay FP32
        assert conv.record()["tensorrt"] is False
    else:
        act = np.int8 if form == "tensorrt" else np.uint8
        assert q_zps and {z.dtype for z in q_zps} == {np.dtype(act)}
        assert form != "tensorrt" or not any(z.any() for z in q_zps)  # TensorRT: zero points 0
        assert conv.record()["form"] == form


# ---- the export through the search, and re-quantising the bundle ---------------------------------
def test_requantised_bundle_names_the_sensitive_module_and_its_source(sensitive_fp32, tmp_path):
    out = tmp_path / "int8"
    proc = run_cli(VLA_EXPORT, sensitive_fp32, "-o", out, "--precision", "int8", *QUICK)
    assert proc.returncode == 0, proc.stderr
    assert "reference outputs from the FP32 bundle's ONNX Runtime outputs" in proc.stderr
    assert "kept in FP32: sensitive (1 node(s); restoring it alone: -0." in proc.stderr
    source = json.loads((sensitive_fp32 / "manifest.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["source_bundle"]["model_hash"] == source["model"]["hash"]
    assert manifest["model"]["hash"] != source["model"]["hash"]
    assert manifest["export"]["precision"]["excluded"] == [
        {"node": manifest["export"]["precision"]["excluded"][0]["node"], "op": "Gemm", "module": "sensitive"}]
    (kept,) = manifest["measured"]["accuracy"]["excluded_modules"]
    assert kept["module"] == "sensitive" and kept["effect_ade_m"] > 0.01
    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["passed"] and not accuracy["trials"][0]["passed"]
    assert accuracy["search"]["effects"][0]["module"] == "sensitive"
    assert "speedup_vs_fp32" in manifest["measured"]["accuracy"]
    assert not (out / "program.pt2").exists()  # the FP32 program is not this bundle's model
    # The gate's reference is the FP32 bundle, so the re-quantised bundle is a valid manifest for vla-run.
    from vla.runtime.manifest import parse_manifest

    assert parse_manifest(manifest).precision == "int8"
    # A bundle that is not FP32 is refused in one line.
    refused = run_cli(VLA_EXPORT, out, "-o", tmp_path / "again", "--precision", "fp16", *QUICK)
    assert_one_line_error(refused, "is a bundle at int8", "re-quantise from an FP32 bundle")
    assert not (tmp_path / "again").exists()


def test_requantise_to_fp16_and_refusals(sensitive_fp32, tmp_path):
    out = tmp_path / "fp16"
    proc = run_cli(VLA_EXPORT, sensitive_fp32, "-o", out, "--precision", "fp16", *QUICK)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["precision"]["mode"] == "fp16"
    assert manifest["measured"]["accuracy"]["passed"] is True
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(out / "model.onnx")).graph.initializer)
    assert_one_line_error(run_cli(VLA_EXPORT, sensitive_fp32, "-o", tmp_path / "x"), "FP32 already")
    assert_one_line_error(run_cli(VLA_EXPORT, sensitive_fp32, "-o", tmp_path / "x", "--precision", "int8",
                                  "--config", "dim=8"), "--config does not apply to a bundle")
    assert_one_line_error(run_cli(VLA_EXPORT, sensitive_fp32, "-o", tmp_path / "x", "--precision", "int8",
                                  "--opset", "18"), "--opset does not apply to a bundle MODEL")
    tampered = tmp_path / "tampered"
    shutil.copytree(sensitive_fp32, tampered)
    m = onnx.load(str(tampered / "model.onnx"))
    m.graph.initializer[0].raw_data = bytes(len(m.graph.initializer[0].raw_data))
    onnx.save(m, str(tampered / "model.onnx"))
    assert_one_line_error(run_cli(VLA_EXPORT, tampered, "-o", tmp_path / "x", "--precision", "int8"),
                          "does not match the manifest's model hash")


def test_refusal_names_the_module_when_nothing_may_be_kept(sensitive_fp32, tmp_path):
    proc = run_cli(VLA_EXPORT, sensitive_fp32, "-o", tmp_path / "b", "--precision", "int8", "--max-exclude", "0",
                   *QUICK)
    line = assert_one_line_error(proc, "int8 accuracy gate failed", "no bundle written")
    assert "the modules that hurt most: sensitive (ADE -0." in line
    assert not (tmp_path / "b").exists()


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (a real TTY is not available to a test)."""

    def isatty(self) -> bool:
        return True


def test_progress_is_one_updating_line_on_a_terminal_and_plain_lines_otherwise():
    from vla.export.progress import Progress

    plain, tty = io.StringIO(), _Terminal()
    for stream in (plain, tty):
        bar = Progress(stream)
        bar.step(1, 4, "first")
        bar.step(4, 4, "last")
        bar.close()
    assert plain.getvalue().splitlines() == ["vla-export: [#####---------------] 1/4 first",
                                             "vla-export: [####################] 4/4 last"]
    assert "\r" not in plain.getvalue()
    assert tty.getvalue().count("\n") == 1 and tty.getvalue().count("\r") == 2
    assert tty.getvalue().endswith("4/4 last\n")


@pytest.mark.parametrize(("extra", "needle"), [
    (["--int8-form", "ort"], "--int8-form only applies to --precision int8"),
    (["--precision", "int8", "--int8-form", "dynamic", "--calib", "."],
     "--calib does not apply to --int8-form dynamic"),
    (["--precision", "int8", "--search-seconds", "0"], "--search-seconds must be more than 0"),
])
def test_int8_options_that_cannot_work_are_refused_in_one_line(tmp_path, extra, needle):
    assert_one_line_error(run_cli(VLA_EXPORT, "reference-v1", "-o", tmp_path / "b", *extra), needle)
