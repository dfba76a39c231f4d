"""Third-party models through vla-export (issue 16): install hints for missing optional dependencies,
the project's folders never shadowing a user's imports, shared weights stored once, spec skeletons,
and iterative samplers (what torch.export cannot trace, and the pattern that exports).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from conftest import VLA_EXPORT, VLA_RUN, assert_one_line_error, run_cli
from vla.runtime.cli_support import OPTIONAL_MODULES, install_hint, missing_module

ROOT = Path(__file__).resolve().parents[1]  # the checkout: its runtime/, export/, kernels/ folders

# A stand-in for "this package is not installed": a meta-path finder, first in line, that refuses the
# named top-level modules. Uninstalling onnx or torch from the test environment is not an option (the
# rest of the suite needs them), and the import system reports a missing package through exactly this
# exception, so the CLI sees what it would see on a machine without them.
HIDE = textwrap.dedent('''
    import runpy, sys

    class Hide:
        def __init__(self, names):
            self.names = names

        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in self.names:
                raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
            return None

    sys.meta_path.insert(0, Hide(set(sys.argv[1].split(","))))
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
''')


def _hidden(tmp_path: Path, modules: str, cli: str, *args: str, **kw) -> subprocess.CompletedProcess:
    script = tmp_path / "hide.py"
    script.write_text(HIDE)
    return run_cli([sys.executable, str(script), modules, cli], *args, **kw)


# ---- install hints ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("modules", ["onnx", "torch", "onnxscript", "onnxslim"])
def test_export_without_the_export_extra_says_what_to_install(tmp_path, modules):
    proc = _hidden(tmp_path, modules, "vla.export.cli", "reference-v1", "-o", str(tmp_path / "b"))
    line = assert_one_line_error(proc, f"needs {modules}, from the export extra",
                                 "pip install 'vla-runtime[export]'")
    assert "internal error" not in proc.stderr and line.startswith("vla-export: error: ")
    assert "exported with" not in proc.stderr  # refused before minutes of export, not after
    assert not (tmp_path / "b").exists()


def test_no_slim_does_not_need_onnxslim(tmp_path):
    """The preflight asks only for what the options will use: --no-slim runs without onnxslim."""
    proc = _hidden(tmp_path, "onnxslim", "vla.export.cli", "reference-v1", "-o", str(tmp_path / "b"), "--no-slim",
                   "--config", "nonsense=1")
    assert_one_line_error(proc, "bad --config")  # got past the preflight to the model


def test_run_torch_backend_without_torch(tmp_path, tiny_bundle):
    proc = _hidden(tmp_path, "torch", "vla.runtime.cli", "--engine", str(tiny_bundle), "--backend", "torch",
                   "--duration", "1")
    assert_one_line_error(proc, "needs torch, from the export extra")


def test_missing_dependency_inside_the_exporter_is_named(tmp_path, monkeypatch):
    """A module missing deep in a library (after the preflight) still names the extra, not the model."""
    from vla.export.trace_errors import explain_export_failure

    try:
        raise ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")
    except ModuleNotFoundError as exc:
        line = explain_export_failure(exc, None)
    assert "needs onnxscript, from the export extra: pip install 'vla-runtime[export]'" in line


def test_install_hints_are_pure():
    assert install_hint("onnx.helper").startswith("onnx, from the export extra: pip install 'vla-runtime[export]'")
    assert install_hint("yaml").startswith("pyyaml (module yaml), from the export extra")
    assert install_hint("matplotlib.figure").startswith("matplotlib, from the bench extra")
    assert install_hint("cuda.bindings").startswith("cuda-bindings (module cuda), from the trt extra")
    assert "which vla-runtime requires" in install_hint("cv2")
    assert install_hint("somethingelse.sub") == "somethingelse.sub (pip install somethingelse)"
    assert missing_module(ModuleNotFoundError("x", name="tokenizers")) == "tokenizers"
    assert missing_module(ImportError("cannot import name 'x' from 'onnx'", name="onnx")) == "onnx"
    assert missing_module(ImportError("cannot import name 'x' from 'mine'", name="mine")) is None
    assert missing_module(ModuleNotFoundError("x", name="vla.kernels._ext")) is None  # ours: a bug
    assert missing_module(ValueError("onnx")) is None


def test_the_table_matches_pyproject():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]

    def names(reqs):
        return {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in reqs}

    for module, (dist, extra) in OPTIONAL_MODULES.items():
        where = names(required) if extra is None else names(extras[extra])
        assert dist.lower() in where, (module, dist, extra)


# ---- no shadowing -----------------------------------------------------------------------------------------
USER_MODULE = '''
import importlib.util

import torch
from torch import nn

import export
import kernels
import runtime

# What transformers does before it uses Hugging Face's `kernels`: look it up by name.
FOUND = importlib.util.find_spec("kernels")
assert {m.__name__: m.ORIGIN for m in (kernels, runtime, export)} == dict.fromkeys(
    ("kernels", "runtime", "export"), "stand-in"), [m.__file__ for m in (kernels, runtime, export)]
assert FOUND.origin == kernels.__file__, FOUND

SPEC = {
    "schema_version": 1,
    "model": {"name": "user"},
    "inputs": [{"name": "ego", "dtype": "float32", "role": "ego", "shape": [1, 4, 3],
                "ego": {"fields": ["x", "y", "v"], "rate_hz": 10.0, "frame": "ego"}}],
    "outputs": [{"name": "trajectory", "dtype": "float32", "role": "trajectory", "shape": [1, 1, 4, 2],
                 "trajectory": {"dt": 0.5, "horizon_s": 2.0, "frame": "ego", "fields": ["x", "y"]}}],
}


class User(nn.Module):
    vla_spec = SPEC

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(12, 8)

    def forward(self, ego):
        return self.head(ego.flatten(1)).view(1, 1, 4, 2)


def build():
    torch.manual_seed(0)
    return User()
'''


@pytest.fixture
def user_env(tmp_path):
    """Installed packages named like our folders (stand-ins on PYTHONPATH: transformers 5 and Hugging
    Face's `kernels` are not in the test environment), a user module importing them, its weights."""
    site = tmp_path / "site"
    for name in ("kernels", "runtime", "export"):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text('ORIGIN = "stand-in"\n')
    (site / "usermod.py").write_text(USER_MODULE)
    sys.path.insert(0, str(site))
    try:
        sys.modules.pop("usermod", None)
        import usermod

        torch.save(usermod.build().state_dict(), tmp_path / "w.pt")
    finally:
        sys.path.remove(str(site))
        for name in ("usermod", "kernels", "runtime", "export"):
            sys.modules.pop(name, None)
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    return tmp_path, env


def test_factory_from_the_checkout_root_gets_the_users_packages(user_env):
    """`vla-export` as a console script (sys.path[0] is the script's folder) run in the checkout root."""
    tmp_path, env = user_env
    script = tmp_path / "bin" / "vla-export"
    script.parent.mkdir()
    script.write_text("import sys\nfrom vla.export.cli import main\nsys.exit(main())\n")
    proc = run_cli([sys.executable, str(script)], tmp_path / "w.pt", "--factory", "usermod:build",
                   "-o", tmp_path / "b", cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["model"]["name"] == "user"


def test_python_m_from_the_checkout_root_gets_the_users_packages(user_env):
    """`python -m vla.export.cli` puts the checkout root itself first on sys.path."""
    tmp_path, env = user_env
    proc = run_cli(VLA_EXPORT, tmp_path / "w.pt", "--factory", "usermod:build", "-o", tmp_path / "b",
                   cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr


def test_a_missing_package_is_blamed_on_the_import_not_on_us(user_env):
    """Without the stand-ins, `import kernels` from the checkout root finds nothing (not our folder),
    and the error names the user's line and the missing package."""
    tmp_path, env = user_env
    site = Path(env["PYTHONPATH"])
    for name in ("kernels", "runtime", "export"):
        (site / name / "__init__.py").unlink()
        (site / name).rmdir()
    proc = run_cli(VLA_EXPORT, tmp_path / "w.pt", "--factory", "usermod:build", "-o", tmp_path / "b",
                   cwd=ROOT, env=env)
    line = assert_one_line_error(proc, "importing 'usermod' failed (ModuleNotFoundError: No module named 'export')",
                                 "usermod.py:7 imports 'export', which is not installed here")
    assert str(ROOT / "export") not in line


def test_a_users_module_beside_the_project_folders_still_imports(tmp_path, monkeypatch):
    """Only our three folders are hidden: other modules in a checkout-like folder import as before."""
    from vla.export.load import build_from_factory, is_checkout

    for name in ("runtime", "export", "kernels"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise RuntimeError('our folder was imported')\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "vla-runtime"\n')
    (tmp_path / "beside.py").write_text(
        "import importlib.util\nimport torch\nFOUND = importlib.util.find_spec('kernels')\n"
        "def build():\n    return torch.nn.Linear(1, 1)\n")
    assert is_checkout(tmp_path) and is_checkout(ROOT) and not is_checkout(tmp_path / "runtime")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setattr(sys, "path_importer_cache", dict(sys.path_importer_cache))
    sys.modules.pop("beside", None)
    try:
        assert isinstance(build_from_factory("beside:build"), nn.Linear)
        found = sys.modules["beside"].FOUND
        assert found is None or not str(found.origin).startswith(str(tmp_path)), found
    finally:
        sys.modules.pop("beside", None)


# ---- shared weights stored once ---------------------------------------------------------------------------
SHARED_MODULE = '''
import torch
from torch import nn

SPEC = {
    "schema_version": 1,
    "model": {"name": "shared"},
    "inputs": [{"name": "images", "dtype": "float32", "role": "camera", "shape": [1, 3, 3, 16, 16],
                "camera": {"names": ["front", "left", "right"], "layout": "NCHW", "color": "RGB",
                           "height": 16, "width": 16}}],
    "outputs": [{"name": "trajectory", "dtype": "float32", "role": "trajectory", "shape": [1, 3, 4, 3],
                 "trajectory": {"dt": 0.5, "horizon_s": 2.0, "frame": "ego", "fields": ["x", "y", "yaw"]}},
                {"name": "score", "dtype": "float32", "role": "score", "shape": [1, 3]}],
}


class Backbone(nn.Module):
    """Patch tokens through two linear layers: on [B, tokens, dim] the exporter writes each linear as a
    MatMul with the weight transposed, and constant folding makes one transposed copy per call."""

    def __init__(self, dim=48):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.fc1 = nn.Linear(8, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.fc2(torch.relu(self.fc1(tokens))).mean(1)


class SharedBackbone(nn.Module):
    vla_spec = SPEC

    def __init__(self):
        super().__init__()
        backbone = Backbone()
        self.branches = nn.ModuleList([nn.Sequential(backbone, nn.LayerNorm(48)) for _ in range(3)])
        self.head = nn.Linear(3 * 48, 3 * 4 * 3)
        self.score = nn.Linear(3 * 48, 3)

    def forward(self, images):
        feats = torch.cat([b(images[:, i]) for i, b in enumerate(self.branches)], -1)
        return self.head(feats).view(1, 3, 4, 3), torch.softmax(self.score(feats), -1)


def build():
    torch.manual_seed(0)
    return SharedBackbone()
'''


def test_a_backbone_shared_by_three_branches_is_stored_once(tmp_path, monkeypatch):
    (tmp_path / "sharedmod.py").write_text(SHARED_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("sharedmod", None)
    import sharedmod

    model = sharedmod.build()
    params = sum(p.numel() for p in model.parameters())  # the shared backbone counted once
    torch.save(model.state_dict(), tmp_path / "w.pt")
    proc = run_cli(VLA_EXPORT, "w.pt", "--factory", "sharedmod:build", "-o", "b", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    cleanup = manifest["export"]["cleanup"]
    assert cleanup["before"]["parameters"] > params  # the copies this is about were there
    assert cleanup["after"]["parameters"] <= params == manifest["model"]["parameters"]
    assert cleanup["deduplicated"]["initializers"] >= 2 and cleanup["deduplicated"]["parameters"] > 0
    assert f"-> {cleanup['after']['parameters']:,}," in proc.stderr and "stored once" in proc.stderr
    assert manifest["measured"]["parity"]["passed"]
    graph = onnx.load(str(tmp_path / "b" / "model.onnx"))
    from vla.export.cleanup import graph_figures

    assert graph_figures(graph)["parameters"] == cleanup["after"]["parameters"]
    sys.modules.pop("sharedmod", None)


def _graph_with_copies() -> onnx.ModelProto:
    """y = x @ W1 + x @ W2 (W2 a copy of W1) + If(cond: x @ W3 (a copy) else x @ Z), Z = 0.0 and -0.0."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    zeros, negzeros = np.zeros((2, 3), np.float32), np.full((2, 3), -0.0, np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w, "W1"), (w.copy(), "W2"), (w.copy(), "W3"), (zeros, "Z"), (negzeros, "NZ"), (w.copy(), "OUTW"))]
    then = helper.make_graph([helper.make_node("MatMul", ["x", "W3"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 3])])
    other = helper.make_graph([helper.make_node("MatMul", ["x", "NZ"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 3])])
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("MatMul", ["x", "W2"], ["b"]),
             helper.make_node("MatMul", ["x", "Z"], ["z"]),
             helper.make_node("If", ["cond"], ["c"], then_branch=then, else_branch=other),
             helper.make_node("Sum", ["a", "b", "c", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]),
                               helper.make_tensor_value_info("OUTW", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_dedupe_merges_by_content_and_keeps_the_results():
    import onnxruntime as ort

    from vla.export.cleanup import dedupe_initializers

    def run(model, cond):
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": np.array([[1.0, -2.0]], np.float32), "cond": np.array(cond)})

    original = _graph_with_copies()
    merged, report = dedupe_initializers(_graph_with_copies())
    onnx.checker.check_model(merged, full_check=True)
    names = [i.name for i in merged.graph.initializer]
    assert names == ["W1", "Z", "NZ", "OUTW"]  # W2, W3 (read inside If) merged; -0.0 kept apart; output kept
    assert report == {"initializers": 2, "parameters": 12}
    for cond in (True, False):
        for a, b in zip(run(original, cond), run(merged, cond), strict=True):
            np.testing.assert_array_equal(a, b)
    again, _ = dedupe_initializers(_graph_with_copies())
    assert again.SerializeToString() == merged.SerializeToString()  # deterministic: same graph, same bytes


def test_dedupe_never_points_a_weight_at_an_overridable_input_default():
    """An initializer that is also a graph input is a default the caller may override: a copy of it
    elsewhere must stay a constant of its own, not read the (overridden) input."""
    from onnx import TensorProto, helper, numpy_helper

    from vla.export.cleanup import dedupe_initializers

    w = np.ones((2, 3), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "D"], ["a"]), helper.make_node("MatMul", ["x", "W"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("D", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(w, "D"), numpy_helper.from_array(w.copy(), "W")])
    merged, report = dedupe_initializers(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    assert [i.name for i in merged.graph.initializer] == ["D", "W"] and report["initializers"] == 0
    assert [n.input[1] for n in merged.graph.node[:2]] == ["D", "W"]


def test_parameter_note_only_when_the_graph_holds_more():
    from vla.export.cleanup import graph_figures, parameter_note

    model = _graph_with_copies()
    held = graph_figures(model)["parameters"]
    assert held == 36  # six [2, 3] float initializers; no scalars or shapes here
    assert parameter_note(model, held) is None and parameter_note(model, None) is None
    assert "36 weight elements, 6 more than the model's 30 parameters" in parameter_note(model, 30)


# ---- iterative samplers -----------------------------------------------------------------------------------
EXAMPLES = ROOT / "examples"  # the worked example the README's "Iterative samplers" section walks through


@pytest.mark.parametrize("factory", ["flow_matching", "ddim"])
def test_the_sampler_examples_export_and_run(tmp_path, factory):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import samplers

        torch.save(getattr(samplers, factory)().state_dict(), tmp_path / "w.pt")
    finally:
        sys.path.remove(str(EXAMPLES))
    spec: list[str] = []
    if factory == "flow_matching":  # from a drafted spec, with its marked fields filled in as a user would
        skeleton = tmp_path / "spec.yaml"
        proc = run_cli(VLA_EXPORT, tmp_path / "w.pt", "--factory", f"samplers:{factory}", "--spec-skeleton", skeleton,
                       "--example", "images=1x1x3x32x64:uint8", "--example", "ego=1x8x6", "--example", "noise=1x3x2",
                       cwd=EXAMPLES)
        assert proc.returncode == 0 and "the draft loads as it is" in proc.stderr, proc.stderr
        text = skeleton.read_text()
        assert text.count("# REVIEW") >= 10 and '["cam0"]' in text
        skeleton.write_text(text.replace('["cam0"]', '["front"]').replace('"flow_matching"', '"my-flow"'))
        spec = ["--spec", str(skeleton)]
    proc = run_cli(VLA_EXPORT, tmp_path / "w.pt", "--factory", f"samplers:{factory}", "-o", tmp_path / "b", *spec,
                   cwd=EXAMPLES)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["measured"]["parity"]["passed"]
    if spec:
        assert manifest["model"]["name"] == "my-flow" and manifest["inputs"][0]["camera"]["names"] == ["front"]
    else:
        assert manifest["model"]["config"]["steps"] == 5
    assert manifest["export"]["cleanup"]["deduplicated"]["initializers"] > 0  # the K steps share one denoiser
    run = run_cli(VLA_RUN, "--engine", tmp_path / "b", "--camera", "synthetic://", "--duration", "2",
                  "--output", tmp_path / "ticks.jsonl")
    assert run.returncode == 0, run.stderr
    ticks = [json.loads(line) for line in (tmp_path / "ticks.jsonl").read_text().splitlines()]
    assert len(ticks) >= 5 and "fault" not in {t["status"] for t in ticks}, run.stderr
    ok = [t for t in ticks if t["status"] == "ok"]
    assert ok and all(np.isfinite(np.asarray(t["trajectory"], float)).all() for t in ok)


class ToyScheduler:
    """Written for this test in the style of a diffusers scheduler: a plain object whose timesteps are set
    per call and whose step() finds its place by looking the timestep up (a data-dependent index)."""

    def __init__(self, train_steps: int = 1000) -> None:
        self.alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, train_steps), 0)
        self.train_steps, self.timesteps, self.index = train_steps, None, None

    def set_timesteps(self, n: int) -> None:
        self.timesteps = torch.from_numpy((np.arange(n) * (self.train_steps // n))[::-1].copy())
        self.index = None

    def step(self, eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            self.index = int((self.timesteps == t).nonzero()[0])
        i, self.index = self.index, self.index + 1
        a = self.alphas_cumprod[t]
        a_next = self.alphas_cumprod[self.timesteps[i + 1]] if i + 1 < len(self.timesteps) else torch.tensor(1.0)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps


class SchedulerPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(24, 24)
        self.scheduler = ToyScheduler()

    def forward(self, ego, noise):
        self.scheduler.set_timesteps(4)
        x = noise.flatten(1)
        for t in self.scheduler.timesteps:
            x = self.scheduler.step(self.net(x), t, x)
        return x.view(1, 2, 4, 3), torch.softmax(ego[:, -1, :2], -1)


class DataDependentLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(24, 24)

    def forward(self, ego, noise):
        x = noise.flatten(1)
        for _ in range(int(ego.abs().sum()) % 3 + 1):
            x = self.net(x)
        return x.view(1, 2, 4, 3), torch.softmax(ego[:, -1, :2], -1)


class NumpyTimes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(24, 24)

    def forward(self, ego, noise):
        x = noise.flatten(1)
        # np.interp has no torch twin (dynamo turns simple NumPy calls such as np.cos into torch ops).
        x = x + torch.from_numpy(np.interp(x.detach().numpy(), [0.0, 1.0], [0.0, 0.5])).float()
        return self.net(x).view(1, 2, 4, 3), torch.softmax(ego[:, -1, :2], -1)


SAMPLER_SPEC = {
    "schema_version": 1,
    "model": {"name": "sampler"},
    "inputs": [
        {"name": "ego", "dtype": "float32", "role": "ego", "shape": [1, 4, 6],
         "ego": {"fields": ["x", "y", "yaw", "v", "a", "yaw_rate"], "rate_hz": 10.0, "frame": "ego"}},
        {"name": "noise", "dtype": "float32", "role": "noise", "shape": [1, 2, 4, 3],
         "noise": {"distribution": "normal", "std": 1.0}}],
    "outputs": [
        {"name": "trajectory", "dtype": "float32", "role": "trajectory", "shape": [1, 2, 4, 3],
         "trajectory": {"dt": 0.1, "horizon_s": 0.4, "frame": "ego", "fields": ["x", "y", "yaw"]}},
        {"name": "score", "dtype": "float32", "role": "score", "shape": [1, 2]}],
}


@pytest.mark.parametrize(("net", "needles"), [
    (SchedulerPolicy, ["diffusers-style scheduler (ToyScheduler) runs inside forward", "set_timesteps()",
                       "int((self.timesteps == t).nonzero()[0])"]),
    (DataDependentLoop, ["a Python loop whose number of steps depends on tensor values",
                         "`for _ in range(int(ego.abs().sum()) % 3 + 1):`"]),
    (NumpyTimes, ["converts a tensor to NumPy/Python data", "registered buffers"]),
])
def test_sampler_breakers_name_the_pattern_that_exports(tmp_path, net, needles):
    from vla.export.convert import export_onnx
    from vla.export.load import LoadedModel
    from vla.export.signature import check_spec_against_model
    from vla.runtime.errors import VlaError
    from vla.runtime.inputs.feeds import example_feeds
    from vla.runtime.manifest import parse_manifest

    manifest = parse_manifest(SAMPLER_SPEC)
    model = net().eval()
    loaded = LoadedModel(model, model, SAMPLER_SPEC, "state_dict", "sampler")
    check_spec_against_model(loaded, manifest)  # eager runs are fine: only tracing objects
    with pytest.raises(VlaError) as info:
        export_onnx(loaded, manifest, example_feeds(manifest, 0), tmp_path / "m.onnx")
    line = str(info.value)
    assert "\n" not in line and "test_export_robust.py:" in line
    for needle in [*needles, "registered buffers"]:
        assert needle in line, line
    if net is not NumpyTimes:
        assert "unroll the steps with `for k in range(K)`" in line


# ---- spec skeletons ---------------------------------------------------------------------------------------
def test_a_skeleton_of_the_reference_model_loads_as_it_is(tmp_path):
    from conftest import TINY_REFERENCE

    shapes = {"images": "1x3x3x32x64:uint8", "memory": "1x4x8x32", "memory_valid": "1x4:bool", "ego": "1x16x6",
              "nav_cmd": "1:int64", "text_ids": "1x16:int64", "text_mask": "1x16:bool", "noise": "1x3x64x3"}
    out = tmp_path / "draft" / "spec.yaml"
    proc = run_cli(VLA_EXPORT, "reference-v1", *(a for kv in TINY_REFERENCE for a in ("--config", kv)),
                   "--spec-skeleton", out, *(a for n, v in shapes.items() for a in ("--example", f"{n}={v}")))
    assert proc.returncode == 0, proc.stderr
    assert "the draft loads as it is" in proc.stderr and "marked REVIEW" in proc.stderr
    import yaml

    spec = yaml.safe_load(out.read_text())
    roles = {t["name"]: t["role"] for t in spec["inputs"]}
    assert roles == {"images": "camera", "memory": "state", "memory_valid": "state", "ego": "ego",
                     "nav_cmd": "command", "text_ids": "text", "text_mask": "text", "noise": "noise"}
    outs = {t["name"]: t for t in spec["outputs"]}
    assert [t["role"] for t in spec["outputs"]] == ["trajectory", "score", "aux", "state", "state"]
    assert outs["new_memory"]["state"] == {"to_input": "memory"} and outs["trajectory"]["shape"] == [1, 3, 64, 3]
    assert spec["inputs"][2]["state"]["from_output"] == "new_memory_valid"
    assert spec["inputs"][0]["camera"]["height"] == 32 and "vocabulary" in spec
    for line in out.read_text().splitlines():
        if re.search(r"^\s*-?\s*role:", line):
            assert "# REVIEW:" in line, line  # every role is a guess, and says so
    assert not list(tmp_path.glob("**/model.onnx"))  # no export ran


def test_skeleton_guesses():
    from vla.export.skeleton import Tensor, draft

    inputs = [Tensor("pixels", "float32", [1, 2, 64, 96, 3]), Tensor("flat_image", "float32", [1, 3, 64, 64]),
              Tensor("ids", "int64", [1, 12]), Tensor("attention", "int64", [1, 12]),
              Tensor("hist", "float32", [1, 10, 3]), Tensor("h", "float32", [1, 256])]
    outputs = [Tensor("o1", "float32", [1, 256]), Tensor("o2", "float32", [1, 5], torch.tensor([[3.0, -1, 0, 2, 1]])),
               Tensor("o3", "float32", [1, 5, 30, 2])]
    spec, ins, outs = draft("m", inputs, outputs)
    by_name = {t["name"]: t for t in spec["inputs"]}
    camera = by_name["pixels"]["camera"]
    assert camera["layout"] == "NHWC" and (camera["height"], camera["width"]) == (64, 96)
    assert camera["names"] == ["cam0", "cam1"] and camera["normalization"]["std"] == [255.0] * 3
    assert by_name["flat_image"]["role"] == "aux"  # 4-D: the runtime feeds cameras as [batch, cameras, ...]
    assert by_name["ids"]["text"] == {"kind": "ids"} and by_name["attention"]["text"] == {"kind": "mask"}
    assert by_name["hist"]["ego"]["fields"] == ["x", "y", "yaw"]
    assert by_name["h"]["role"] == "state" and by_name["h"]["state"]["from_output"] == "new_h"
    assert [(t["name"], t["role"]) for t in spec["outputs"]] == [("new_h", "state"), ("score", "score"),
                                                                ("trajectory", "trajectory")]
    assert spec["outputs"][1]["score"]["kind"] == "logit" and spec["outputs"][2]["trajectory"]["fields"] == ["x", "y"]
    assert all(e.notes.get("role", "").startswith("REVIEW") for e in ins + outs)

    _, _, outs = draft("m", [Tensor("x", "float32", [1, 4])], [Tensor("y", "float32", [1, 20, 2])])
    assert "no output looks like a trajectory" in outs[0].notes["role"]


def test_skeleton_errors_are_one_line(tiny_factory, monkeypatch, capsys):
    """In-process (the CLI's main, as the console script calls it): each case is one error line."""
    from vla.export.cli import main

    tmp_path, _ = tiny_factory
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # --factory puts the working directory on it
    monkeypatch.setattr(sys, "path_importer_cache", dict(sys.path_importer_cache))  # and wraps checkout entries

    def run(*args: str) -> subprocess.CompletedProcess:
        code = main(["w.pt", "--factory", "nospec:build", *args])
        return subprocess.CompletedProcess(args, code, "", capsys.readouterr().err)

    line = assert_one_line_error(run("--spec-skeleton", "s.yaml"), "needs the shape of forward()'s input(s)",
                                 "['ego', 'noise']", "--example ego=")
    assert "--example" in line
    assert_one_line_error(run("--spec-skeleton", "s.yaml", "--example", "ego=1x4x6", "--example", "nois=1"),
                          "--example nois: forward() has no parameter of that name")
    assert_one_line_error(run("--spec-skeleton", "s.yaml", "--example", "ego=1x4x6", "--example", "noise=1x2x4"),
                          "does not run on the example inputs", "fix the --example shapes")
    assert_one_line_error(run("--spec-skeleton", "s.yaml", "--example", "ego=1xAx6"), "expected NAME=SHAPE[:DTYPE]")
    assert not (tmp_path / "s.yaml").exists()
    sys.modules.pop("nospec", None)


@pytest.fixture
def tiny_factory(tmp_path):
    """A state_dict + factory whose forward(ego, noise) has no spec of its own: what a new user has."""
    (tmp_path / "nospec.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn


        class NoSpec(nn.Module):
            def __init__(self):
                super().__init__()
                self.head = nn.Linear(24, 24)
                self.score = nn.Linear(24, 2)

            def forward(self, ego, noise):
                h = ego.flatten(1)
                return self.head(h).view(1, 2, 4, 3) + noise, torch.softmax(self.score(h), -1)


        def build():
            torch.manual_seed(0)
            return NoSpec()
    '''))
    sys.path.insert(0, str(tmp_path))
    try:
        sys.modules.pop("nospec", None)
        import nospec

        torch.save(nospec.build().state_dict(), tmp_path / "w.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("nospec", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return run_cli(VLA_EXPORT, "w.pt", "--factory", "nospec:build", *args, cwd=tmp_path)

    return tmp_path, run


def test_a_skeleton_for_a_model_without_a_spec_exports(tiny_factory):
    tmp_path, run = tiny_factory
    proc = run("--spec-skeleton", "s.yaml", "--example", "ego=1x4x6", "--example", "noise=1x2x4x3")
    assert proc.returncode == 0 and "the draft loads as it is" in proc.stderr, proc.stderr
    proc = run("--spec", "s.yaml", "-o", "b")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert [t["role"] for t in manifest["inputs"]] == ["ego", "noise"]
    assert [t["role"] for t in manifest["outputs"]] == ["trajectory", "score"]
