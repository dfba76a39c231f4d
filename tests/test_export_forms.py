"""vla-export: state_dict + --factory and pickled-module forms, where the I/O spec comes from, the spec
checked against the model's real signature, and torch.export failures that name the module at fault.

A tiny model (tinynet.py, written into tmp_path, the working directory) keeps each export to seconds.
"""

from __future__ import annotations

import builtins
import importlib
import json
import re
import sys

import onnx
import pytest
import torch
import yaml
from torch import nn

from conftest import VLA_EXPORT, assert_one_line_error, run_cli
from vla.export.convert import export_onnx
from vla.export.load import LoadedModel, build_from_factory, load_model
from vla.export.signature import check_spec_against_model
from vla.runtime.errors import VlaError
from vla.runtime.inputs.feeds import example_feeds
from vla.runtime.manifest import parse_manifest

TINY = '''
import numpy as np
import torch
from torch import nn

SPEC = {
    "schema_version": 1,
    "model": {"name": "tiny"},
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


class GatedBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return x


class NumpyBlock(nn.Module):
    def forward(self, x):
        return x + torch.from_numpy(np.interp(x.detach().numpy(), [0.0, 1.0], [0.0, 0.5])).float()


class BareNet(nn.Module):
    def __init__(self, block="identity", hidden=16):
        super().__init__()
        last = {"identity": lambda: nn.Identity(), "gated": lambda: GatedBlock(hidden),
                "numpy": lambda: nn.Sequential(nn.Identity(), NumpyBlock())}[block]()
        self.encoder = nn.Sequential(nn.Flatten(1), nn.Linear(24, hidden), nn.ReLU())
        self.blocks = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), last)
        self.head = nn.Linear(hidden, 24)
        self.score = nn.Linear(hidden, 2)

    def forward(self, ego, noise):
        h = self.blocks(self.encoder(ego))
        traj = self.head(h).view(1, 2, 4, 3) + 0.1 * noise
        return traj, torch.softmax(self.score(h), -1)


class TinyNet(BareNet):
    def io_spec(self):
        return SPEC


def build():
    torch.manual_seed(0)
    return TinyNet()


def build_gated():
    torch.manual_seed(0)
    return TinyNet("gated")


def build_numpy():
    torch.manual_seed(0)
    return TinyNet("numpy")


def build_wide():
    return TinyNet(hidden=32)


def build_bare():
    torch.manual_seed(0)
    return BareNet()


def build_attr():
    net = BareNet()
    net.vla_spec = dict(SPEC, model={"name": "from-attribute"})
    return net


def build_bad_attr():
    net = BareNet()
    net.vla_spec = ["not", "a", "dict"]
    return net


def not_a_module():
    return {}


def broken():
    raise RuntimeError("cannot build today")
'''


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """tinynet.py in tmp_path, which is also the working directory; imported fresh for each test."""
    (tmp_path / "tinynet.py").write_text(TINY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # restores all of sys.path afterwards
    sys.modules.pop("tinynet", None)
    yield importlib.import_module("tinynet")
    sys.modules.pop("tinynet", None)


def _raises(needle: str):
    return pytest.raises(VlaError, match=re.escape(needle))


def _export(tmp_path, *args: str):
    return run_cli(VLA_EXPORT, *args, cwd=tmp_path)


def _manifest(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


# ---- model forms through the CLI ----------------------------------------------------------------------
def test_state_dict_with_factory_exports(tiny, tmp_path):
    torch.save(tiny.build().state_dict(), tmp_path / "w.pt")
    proc = _export(tmp_path, "w.pt", "--factory", "tinynet:build", "-o", "out")
    assert proc.returncode == 0, proc.stderr
    assert "w.pt (state_dict), 1114 parameters" in proc.stderr
    manifest = _manifest(tmp_path / "out")
    assert manifest["export"]["form"] == "state_dict"
    assert manifest["model"]["parameters"] == sum(p.numel() for p in tiny.build().parameters())
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["passed"]
    assert [i.name for i in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.input] == ["ego", "noise"]


def test_pickled_module_needs_trust_pickle(tiny, tmp_path):
    torch.save(tiny.build(), tmp_path / "full.pt")
    refused = _export(tmp_path, "full.pt", "-o", "out")
    assert_one_line_error(refused, "pickled", "tinynet.TinyNet", "runs code", "--trust-pickle", "--factory")
    assert not (tmp_path / "out").exists()
    proc = _export(tmp_path, "full.pt", "--trust-pickle", "-o", "out")
    assert proc.returncode == 0, proc.stderr
    assert _manifest(tmp_path / "out")["export"]["form"] == "pickled_module"


def test_state_dict_without_factory(tiny, tmp_path):
    torch.save(tiny.build().state_dict(), tmp_path / "w.pt")
    assert_one_line_error(_export(tmp_path, "w.pt", "-o", "out"), "is a state_dict", "--factory MODULE:FUNCTION")


def test_bad_factory_path(tiny, tmp_path):
    torch.save(tiny.build().state_dict(), tmp_path / "w.pt")
    assert_one_line_error(_export(tmp_path, "w.pt", "--factory", "no_such_mod:build", "-o", "out"),
                          "--factory no_such_mod:build", "no module named 'no_such_mod'", "current directory")


def test_spec_from_yaml_file(tiny, tmp_path):
    torch.save(tiny.build_bare().state_dict(), tmp_path / "w.pt")
    spec = dict(tiny.SPEC, model={"name": "from-yaml"})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    proc = _export(tmp_path, "w.pt", "--factory", "tinynet:build_bare", "--spec", "spec.yaml", "-o", "out")
    assert proc.returncode == 0, proc.stderr
    manifest = _manifest(tmp_path / "out")
    assert manifest["model"]["name"] == "from-yaml"
    assert [t["name"] for t in manifest["outputs"]] == ["trajectory", "score"]


def test_export_failure_names_module_and_reason(tiny, tmp_path):
    torch.save(tiny.build_gated().state_dict(), tmp_path / "g.pt")
    proc = _export(tmp_path, "g.pt", "--factory", "tinynet:build_gated", "-o", "out")
    err = assert_one_line_error(proc, "torch.export cannot trace module blocks.2 (GatedBlock)",
                                "tinynet.py:", "if x.sum() > 0:", "data-dependent control flow", "torch.cond")
    assert "GuardOnDataDependentSymNode" in err
    assert not (tmp_path / "out").exists()
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr  # no partial graphs or torch log lines


def test_spec_that_does_not_fit_is_named_before_export(tiny, tmp_path):
    torch.save(tiny.build().state_dict(), tmp_path / "w.pt")
    spec = json.loads(json.dumps(tiny.SPEC))
    spec["inputs"][0]["shape"] = [1, 5, 6]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = _export(tmp_path, "w.pt", "--factory", "tinynet:build", "--spec", "spec.json", "-o", "out")
    assert_one_line_error(proc, "spec does not fit the model", "mat1 and mat2",
                          "in module encoder.1 (Linear) called at", "tinynet.py:", "self.encoder(ego)",
                          "input 'ego' (spec: float32 [1, 5, 6])")
    assert "exported with" not in proc.stderr


# ---- forms, in process ------------------------------------------------------------------------------
def _archives(tiny, tmp_path) -> dict[str, str]:
    net = tiny.build()
    args = tuple(torch.zeros(t.shape) for t in parse_manifest(tiny.SPEC).inputs)
    spec = json.dumps(tiny.SPEC)
    torch.jit.save(torch.jit.trace(net, args), str(tmp_path / "ts.pt"), _extra_files={"vla_spec.json": spec})
    torch.export.save(torch.export.export(net, args), str(tmp_path / "ep.pt2"), extra_files={"vla_spec.json": spec})
    torch.save(net.state_dict(), tmp_path / "w.pt")
    torch.save(net, tmp_path / "full.pt")
    return {"torchscript": "ts.pt", "exported_program": "ep.pt2", "state_dict": "w.pt", "pickled_module": "full.pt"}


def test_each_form_loads_and_fits_its_spec(tiny, tmp_path):
    """Every form's signature is read (names, count) and its dry run matches the spec."""
    files = _archives(tiny, tmp_path)
    loaded = [load_model(files["torchscript"]), load_model(files["exported_program"]),
              load_model(files["state_dict"], factory="tinynet:build"),
              load_model(files["pickled_module"], trust_pickle=True),
              load_model("reference-v1", config=["vit_depth=1", "fusion_depth=1", "cameras=[\"front\"]"])]
    assert [m.form for m in loaded] == ["torchscript", "exported_program", "state_dict", "pickled_module",
                                        "reference"]
    for m in loaded:
        check_spec_against_model(m, parse_manifest(m.spec))
    # Every form knows the model's size (archives too: the bundle's weights are compared with it).
    want = sum(p.numel() for p in tiny.build().parameters())
    assert [m.spec["model"]["parameters"] for m in loaded[:4]] == [want] * 4
    # A renamed input is caught for each archive form too: their signatures carry real names.
    for m in loaded[:2]:
        spec = json.loads(json.dumps(m.spec))
        spec["inputs"][1]["name"] = "noize"
        with _raises("spec input 2 is named 'noize' but the model's forward() parameter 2 is 'noise'"):
            check_spec_against_model(m, parse_manifest(spec))


def test_exported_program_dry_run_names_the_input(tiny, tmp_path):
    path = _archives(tiny, tmp_path)["exported_program"]
    spec = json.loads(json.dumps(tiny.SPEC))
    spec["inputs"][0]["shape"] = [1, 8, 6]
    m = load_model(path)
    with pytest.raises(VlaError, match=r"spec does not fit the model: .*ego.*; input 'ego' \(spec: float32 \[1, 8, 6"):
        check_spec_against_model(m, parse_manifest(spec))


def test_factory_refused_for_archives_and_reference(tiny, tmp_path):
    files = _archives(tiny, tmp_path)
    with _raises("--factory only applies to a state_dict MODEL; ts.pt is a TorchScript archive"):
        load_model(files["torchscript"], factory="tinynet:build")
    with _raises("--factory only applies to a state_dict MODEL; ep.pt2 is a torch.export archive"):
        load_model(files["exported_program"], factory="tinynet:build")
    with _raises("--factory only applies to a state_dict MODEL, not to 'reference'"):
        load_model("reference", factory="tinynet:build")


@pytest.mark.parametrize(
    ("factory", "needle"),
    [
        ("tinynet", "expected MODULE:FUNCTION"),
        ("no_such_mod:build", "no module named 'no_such_mod'"),
        ("broken_import:build", "importing 'broken_import' failed (ModuleNotFoundError: No module named 'no_such_dep'"),
        ("tinynet:missing", "has no attribute 'missing'"),
        ("tinynet:SPEC", "'SPEC' is a dict, not a function"),
        ("tinynet:not_a_module", "not_a_module() returned a dict, not a torch.nn.Module"),
        ("tinynet:broken", "calling broken() raised RuntimeError: cannot build today"),
    ],
)
def test_bad_factories(tiny, tmp_path, factory, needle):
    (tmp_path / "broken_import.py").write_text("import no_such_dep\n")
    with pytest.raises(VlaError, match=re.escape(f"--factory {factory}: ")) as info:
        build_from_factory(factory)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("saved", "factory", "needle"),
    [
        ("build_gated", "tinynet:build", "unexpected keys: blocks.2.lin.weight, blocks.2.lin.bias"),
        ("build", "tinynet:build_gated", "missing keys: blocks.2.lin.weight, blocks.2.lin.bias"),
        ("build", "tinynet:build_wide", "shape mismatch: encoder.1.weight [16, 24] in the file vs [32, 24] in the "
                                        "module, encoder.1.bias [16] in the file vs [32] in the module, "
                                        "blocks.0.weight [16, 16] in the file vs [32, 32] in the module (+3 more)"),
    ],
)
def test_state_dict_that_does_not_fit(tiny, tmp_path, saved, factory, needle):
    torch.save(getattr(tiny, saved)().state_dict(), tmp_path / "w.pt")
    with _raises(f"MODEL w.pt does not fit the module {factory} builds: ") as info:
        load_model("w.pt", factory=factory)
    assert needle in str(info.value)


def test_safetensors_state_dict(tiny, tmp_path):
    """Optional: with the safetensors package a .safetensors file is a state_dict; without it, how to get it."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        (tmp_path / "w.safetensors").write_bytes(b"{}")
        with _raises("reading .safetensors needs the safetensors package (pip install safetensors)"):
            load_model("w.safetensors", factory="tinynet:build")
        return
    save_file(tiny.build().state_dict(), str(tmp_path / "w.safetensors"))
    assert load_model("w.safetensors", factory="tinynet:build").form == "state_dict"


def test_checkpoint_dict_is_not_a_state_dict(tiny, tmp_path):
    torch.save({"epoch": 3, "model": tiny.build().state_dict()}, tmp_path / "ckpt.pt")
    with pytest.raises(VlaError, match=r"holding a dict that is not a state_dict \(keys: epoch, model\)"):
        load_model("ckpt.pt", factory="tinynet:build")


class _Bomb:
    """Unpickling this creates a file: stands for any code a pickle can run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def test_pickles_never_unpickled_without_trust(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    torch.save(_Bomb(str(marker)), tmp_path / "bomb.pt")
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw.get("weights_only")) or real_load(*a, **kw))
    for factory in (None, "tinynet:build"):
        with pytest.raises(VlaError, match=r"is a pickled Python object \((io|builtins)\.open\).*--trust-pickle"):
            load_model(str(tmp_path / "bomb.pt"), factory=factory)
    assert calls == [True, True]
    assert not marker.exists()
    # The file really runs code when trusted (so the check above can fail), and is then refused as no module.
    with _raises("holds a TextIOWrapper, not a torch.nn.Module"):
        load_model(str(tmp_path / "bomb.pt"), trust_pickle=True)
    assert marker.exists() and calls[-1] is False


# ---- where the spec comes from ------------------------------------------------------------------------
def test_spec_from_attribute_method_or_file(tiny, tmp_path):
    torch.save(tiny.build_bare().state_dict(), tmp_path / "w.pt")
    assert load_model("w.pt", factory="tinynet:build_attr").spec["model"]["name"] == "from-attribute"
    assert load_model("w.pt", factory="tinynet:build").spec["model"]["name"] == "tiny"
    (tmp_path / "spec.yml").write_text(yaml.safe_dump(dict(tiny.SPEC, model={"name": "yml"})))
    assert load_model("w.pt", "spec.yml", factory="tinynet:build").spec["model"]["name"] == "yml"
    with pytest.raises(VlaError, match=r"no I/O spec; pass --spec FILE \(JSON or YAML\), give the model a "
                                       r"`vla_spec` dict attribute, or an `io_spec\(\)` method"):
        load_model("w.pt", factory="tinynet:build_bare")
    with pytest.raises(VlaError, match="its vla_spec attribute is a list, not a dict"):
        load_model("w.pt", factory="tinynet:build_bad_attr")


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.yaml", "inputs: [a, b\nmodel: x\n", "not valid YAML (line 2, column"),
        ("list.yml", "- a\n- b\n", "expected a mapping (inputs, outputs, ...) at the top level, got list"),
        ("bad.json", "{nope", "not valid JSON (Expecting property name"),
    ],
)
def test_bad_spec_files(tiny, tmp_path, name, text, needle):
    torch.save(tiny.build().state_dict(), tmp_path / "w.pt")
    (tmp_path / name).write_text(text)
    with pytest.raises(VlaError) as info:
        load_model("w.pt", name, factory="tinynet:build")
    assert needle in str(info.value) and "\n" not in str(info.value)


# ---- the spec against the model's real signature ---------------------------------------------------------
def _drop_input(s):
    s["inputs"].pop()


def _rename_input(s):
    s["inputs"][0]["name"] = "egos"


def _swap_inputs(s):
    s["inputs"].reverse()


def _wide_noise(s):
    s["inputs"][1]["shape"] = [1, 2, 4, 4]


def _drop_output(s):
    s["outputs"].pop()


def _half_score(s):
    s["outputs"][1]["dtype"] = "float16"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (_drop_input, "spec has 1 input(s) ['ego'] but the model's forward() takes 2 ['ego', 'noise']"),
        (_rename_input, "spec input 1 is named 'egos' but the model's forward() parameter 1 is 'ego'"),
        (_swap_inputs, "spec input 1 is named 'noise' but the model's forward() parameter 1 is 'ego'"),
        (_wide_noise, "must match the size of tensor b (4) at non-singleton dimension 3; in the top-level module "
                      "(TinyNet) at "),
        (_wide_noise, "+ 0.1 * noise`); input 'noise' (spec: float32 [1, 2, 4, 4])"),
        (_drop_output, "the model returns 2 output(s) but the spec lists 1 ['trajectory']"),
        (_half_score, "spec output 2 'score' is float16 [1, 2] but the model returns float32 [1, 2] there"),
    ],
)
def test_spec_mismatches(tiny, mutate, needle):
    net = tiny.build()
    spec = json.loads(json.dumps(tiny.SPEC))
    mutate(spec)
    with pytest.raises(VlaError) as info:
        check_spec_against_model(LoadedModel(net, net, spec, "state_dict", "tiny"), parse_manifest(spec))
    assert needle in str(info.value)


# ---- torch.export / ONNX conversion failures name the module -----------------------------------------------
@torch.library.custom_op("vla_test::wiggle", mutates_args=())
def _wiggle(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_wiggle.register_fake
def _(x):
    return torch.empty_like(x)


class Wiggle(nn.Module):
    """An op the exporter traces fine but no ONNX translation exists for."""

    def forward(self, x):
        return _wiggle(x)


def _export_error(net: nn.Module, spec: dict, tmp_path) -> str:
    manifest = parse_manifest(spec)
    loaded = LoadedModel(net, net, spec, "state_dict", "tiny")
    check_spec_against_model(loaded, manifest)  # runs eagerly: only the exporter objects
    with pytest.raises(VlaError) as info:
        export_onnx(loaded, manifest, example_feeds(manifest, 0), tmp_path / "m.onnx")
    return str(info.value)


def test_numpy_in_a_deep_module_is_named(tiny, tmp_path):
    err = _export_error(tiny.build_numpy().eval(), tiny.SPEC, tmp_path)
    assert "torch.export cannot trace module blocks.2.1 (NumpyBlock) at " in err
    assert "tinynet.py:" in err and "np.interp(x.detach().numpy()" in err
    assert "converts a tensor to NumPy/Python data" in err
    assert "[RuntimeError: .numpy() is not supported for tensor subclasses.]" in err


def test_op_without_onnx_translation_is_named(tiny, tmp_path):
    net = tiny.build().eval()
    net.blocks[2] = Wiggle()
    err = _export_error(net, tiny.SPEC, tmp_path)
    assert "ONNX conversion fails in module blocks.2 (Wiggle) at " in err
    assert "test_export_forms.py:" in err and "return _wiggle(x)" in err
    assert "op vla_test.wiggle has no ONNX translation" in err



def test_the_module_is_traced_once_for_the_graph_and_the_program(tiny, tmp_path, monkeypatch):
    """torch.export runs once: the ONNX graph is exported from the program that program.pt2 then saves."""
    from argparse import Namespace

    from vla.export.pipeline import save_program

    traced = []
    real = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: traced.append(1) or real(*a, **k))
    manifest = parse_manifest(tiny.SPEC)
    net = tiny.build().eval()
    loaded = LoadedModel(net, net, tiny.SPEC, "state_dict", "tiny")
    feeds = example_feeds(manifest, 0)
    how, program = export_onnx(loaded, manifest, feeds, tmp_path / "m.onnx")
    assert how["exporter"] == "torch.export" and isinstance(program, torch.export.ExportedProgram)
    saved = save_program(Namespace(precision="fp32", seed=0), loaded, manifest, tmp_path, {}, program)
    assert traced == [1] and saved is not None
    args = tuple(torch.from_numpy(feeds[t.name]) for t in manifest.inputs)
    want = net(*args)
    got = torch.export.load(str(saved)).module()(*args)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
