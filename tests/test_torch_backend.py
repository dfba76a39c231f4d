"""The torch backend (``program.pt2``) against ONNX Runtime, backend selection, and their one-line errors.

Everything runs the real reference bundle (conftest's export) through real PyTorch and ONNX Runtime;
the CUDA tests need a GPU and are skipped, with the reason, where there is none.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import VLA_RUN, assert_one_line_error, run_cli
from vla.runtime.backends.select import choose_backend, probe_available
from vla.runtime.backends.torch_backend import PROGRAM_FILE, TorchBackend, find_program
from vla.runtime.engine import open_engine
from vla.runtime.errors import VlaError
from vla.runtime.inputs.feeds import example_feeds
from vla.runtime.manifest import METADATA_KEY, parse_manifest

SMALL_CAM = "synthetic://?size=640x360&fps=30"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
TRT_INSTALLED = probe_available(check_cuda=False)["tensorrt"] is not None


@pytest.fixture(scope="module")
def torch_cpu(reference_bundle):
    backend = open_engine(str(reference_bundle), threads=1, backend="torch")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def ort_cpu(reference_bundle):
    backend = open_engine(str(reference_bundle), threads=1, backend="ort")
    yield backend
    backend.close()


def _fill(backend, feeds: dict[str, np.ndarray], skip: tuple[str, ...] = ()) -> None:
    for name, value in feeds.items():
        if name not in skip:
            np.copyto(backend.feed(name), value)


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Two FP32 implementations of one model: equal up to float32 reassociation (about 1e-6 of scale)."""
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        if a[name].dtype == np.bool_:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            scale = max(1.0, float(np.abs(b[name]).max()))
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-4 * scale, err_msg=name)


# ---- the bundle ---------------------------------------------------------------------------------------
def test_bundle_carries_the_program_and_names_it_in_the_manifest(reference_bundle, reference_manifest):
    assert (reference_bundle / PROGRAM_FILE).stat().st_size > 10_000_000  # 12 M FP32 parameters
    assert reference_manifest["export"]["program"] == PROGRAM_FILE
    # Decided, not measured: it is in the manifest embedded in model.onnx too.
    meta = {p.key: p.value for p in onnx.load(str(reference_bundle / "model.onnx"), load_external_data=False)
            .metadata_props}
    assert json.loads(meta[METADATA_KEY])["export"]["program"] == PROGRAM_FILE
    program = torch.export.load(str(reference_bundle / PROGRAM_FILE))
    assert list(program.graph_signature.user_inputs) == [t["name"] for t in reference_manifest["inputs"]]


def test_a_model_torch_export_cannot_take_costs_only_the_program(reference_manifest, tmp_path, monkeypatch, capsys):
    from argparse import Namespace

    from vla.export.load import LoadedModel
    from vla.export.pipeline import save_program

    def refuse(*_args, **_kwargs):
        raise RuntimeError("data-dependent control flow\nat line 3")

    monkeypatch.setattr(torch.export, "export", refuse)
    spec = parse_manifest(reference_manifest)
    loaded = LoadedModel(torch.nn.Identity(), None, reference_manifest, "reference", "test")
    seconds: dict[str, float] = {}
    assert save_program(Namespace(precision="fp32", seed=0), loaded, spec, tmp_path, seconds) is None
    err = capsys.readouterr().err.splitlines()
    assert err == [f"vla-export: warning: no {PROGRAM_FILE} in the bundle (--backend torch will not run it): "
                   "torch.export failed: RuntimeError: data-dependent control flow at line 3"]
    assert not list(tmp_path.iterdir()) and "torch_program" not in seconds
    # Precision bundles and TorchScript archives carry no program, and do not try.
    assert save_program(Namespace(precision="int8", seed=0), loaded, spec, tmp_path, seconds) is None
    ts = LoadedModel(torch.nn.Identity(), None, reference_manifest, "torchscript", "test")
    assert save_program(Namespace(precision="fp32", seed=0), ts, spec, tmp_path, seconds) is None
    assert capsys.readouterr().err == ""


# ---- CPU: the same model as ONNX Runtime -------------------------------------------------------------
def test_torch_on_cpu_gives_the_onnx_runtime_outputs(torch_cpu, ort_cpu):
    assert torch_cpu.name == "torch"
    assert re.fullmatch(r"torch \d+\.\d+\.\d+ \(cpu, 1 threads\)", torch_cpu.describe()), torch_cpu.describe()
    assert torch_cpu.selection == f"--backend torch: PyTorch {torch.__version__.split('+')[0]} on CPU"
    for seed in (1, 2):
        feeds = example_feeds(torch_cpu.manifest, seed)
        _fill(torch_cpu, feeds)
        _fill(ort_cpu, feeds)
        got, want = torch_cpu.run(), ort_cpu.run()
        _assert_same(got, want)
        assert np.abs(want["trajectory"]).max() > 0.1  # a real trajectory, not zeros on both sides
    assert torch_cpu.last_timings_ms()["compute"] > 1.0


def test_cpu_feeds_and_outputs_are_the_tensors_memory(torch_cpu):
    feed = torch_cpu.feed("ego")
    tensor = torch_cpu.device_input("ego")
    assert np.shares_memory(feed, tensor.numpy())
    feed[0, 0, 0] = 123.5
    assert tensor[0, 0, 0].item() == 123.5  # the loop's write is what the model reads, no copy
    out = torch_cpu.run()
    assert np.shares_memory(out["trajectory"], torch_cpu.device_output("trajectory").numpy())
    assert torch_cpu.run() is out  # the same buffers every run: nothing allocated for the caller


def _state_sequence(backend, ticks: int, commit) -> list[dict[str, np.ndarray]]:
    """``ticks`` runs from the manifest's initial state, fresh non-state inputs each tick, state committed
    after each run by ``commit(backend, outputs)``; a copy of every tick's outputs."""
    m = backend.manifest
    states = m.inputs_with("state")
    for t in states:
        backend.feed(t.name)[...] = t.detail["initial"]
    seen = []
    for tick in range(ticks):
        _fill(backend, example_feeds(m, 100 + tick), skip=tuple(t.name for t in states))
        out = backend.run()
        seen.append({k: v.copy() for k, v in out.items()})
        commit(backend, out)
    return seen


def _loop_commit(backend, out) -> None:
    """runtime/loop/runner.py's own rule, verbatim: np.copyto(self.backend.feed(dst), out[src])."""
    for t in backend.manifest.inputs_with("state"):
        np.copyto(backend.feed(t.name), out[t.detail["from_output"]])


def test_state_carried_by_the_loop_rule_and_by_commit_state_matches_onnx_runtime(torch_cpu, ort_cpu):
    want = _state_sequence(ort_cpu, 3, _loop_commit)
    by_loop = _state_sequence(torch_cpu, 3, _loop_commit)
    by_commit = _state_sequence(torch_cpu, 3, lambda b, _out: b.commit_state())
    for tick in range(3):
        _assert_same(by_loop[tick], want[tick])
        _assert_same(by_commit[tick], want[tick])
    # The state really moved: each committed run adds a valid memory slot, and the memory differs.
    assert [int(o["new_memory_valid"].sum()) for o in want] == [1, 2, 3]
    assert not np.allclose(want[2]["new_memory"], want[1]["new_memory"])
    # commit_state wrote the inputs themselves (on the CPU, feed()'s memory is the input tensor).
    np.testing.assert_array_equal(torch_cpu.feed("memory"), by_commit[2]["new_memory"])
    np.testing.assert_array_equal(torch_cpu.feed("memory_valid"), by_commit[2]["new_memory_valid"])


def test_vla_run_with_the_torch_backend_end_to_end(reference_bundle, tmp_path):
    out = tmp_path / "run.jsonl"
    proc = run_cli(VLA_RUN, "--engine", reference_bundle, "--backend", "torch", "--camera", SMALL_CAM,
                   "--frames", "5", "--rate", "5", "--budget-ms", "1000", "--threads", "1", "--output", out)
    assert proc.returncode == 0, proc.stderr
    version = torch.__version__.split("+")[0]
    first = proc.stderr.splitlines()[0]
    assert first == (f"vla-run: vla-reference on torch {version} (cpu, 1 threads); "
                     f"backend torch (--backend torch: PyTorch {version} on CPU)"), proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tick"] for r in records] == list(range(5))
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) >= 3, [r["reason"] for r in records]
    assert all(np.isfinite(np.asarray(r["trajectory"])).all() and 0 <= r["mode"] < 3 for r in ok)


# ---- what open_engine checks ----------------------------------------------------------------------------
def _linked_bundle(reference_bundle: Path, dst: Path, skip: str) -> Path:
    """A bundle folder of links to the reference one's files (no 100 MB copy), less ``skip``."""
    dst.mkdir()
    for f in reference_bundle.iterdir():
        if f.name != skip:
            (dst / f.name).symlink_to(f)
    return dst


def test_bundle_without_program_is_one_line_saying_to_re_export(reference_bundle, tmp_path):
    bundle = _linked_bundle(reference_bundle, tmp_path / "old", skip=PROGRAM_FILE)
    assert_one_line_error(run_cli(VLA_RUN, "--engine", bundle, "--backend", "torch", "--frames", "1"),
                          f"no {PROGRAM_FILE}", "re-export", "vla-export")


def test_precision_bundle_without_program_points_to_onnx_runtime(reference_manifest, tmp_path):
    raw = json.loads(json.dumps(reference_manifest))
    raw["export"]["precision"] = {"mode": "int8"}
    del raw["export"]["program"]
    with pytest.raises(VlaError, match=r"int8 bundles hold their model only as ONNX .*; use --backend ort") as info:
        find_program(str(tmp_path), parse_manifest(raw))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("kind", "index", "field", "value", "message"), [
    ("outputs", 1, "dtype", "float16", "output 'score' is float32 in the graph but float16 in the manifest"),
    ("outputs", 2, "shape", [1, 32, 256], "output 'next_latent' has shape [1, 64, 256] in the graph but "
                                          "[1, 32, 256] in the manifest"),
    ("inputs", 3, "shape", [1, 8, 6], "input 'ego' has shape [1, 16, 6] in the graph but [1, 8, 6] in the manifest"),
])
def test_program_disagreeing_with_the_manifest_is_named(reference_bundle, reference_manifest, kind, index, field,
                                                        value, message):
    raw = json.loads(json.dumps(reference_manifest))
    assert raw[kind][index]["name"] in message
    raw[kind][index][field] = value
    with pytest.raises(VlaError) as info:
        TorchBackend(reference_bundle / PROGRAM_FILE, parse_manifest(raw), threads=1)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(TRT_INSTALLED, reason="TensorRT is installed here")
def test_backend_trt_without_tensorrt_is_one_line(reference_bundle):
    assert_one_line_error(run_cli(VLA_RUN, "--engine", reference_bundle, "--backend", "trt", "--frames", "1"),
                          "--backend trt: TensorRT is not installed")


def test_trt_chosen_but_no_trt_backend_module_is_one_line(reference_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "vla.runtime.backends.trt", None)  # import fails
    with pytest.raises(VlaError, match="TensorRT backend not available in this build") as info:
        open_engine(str(reference_bundle), backend="trt", available={"tensorrt": "10.3.0"})
    assert "\n" not in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize(("flags", "needle"), [
    (("--device", "cuda"), "--device cuda: no backend here can use CUDA"),
    (("--backend", "torch", "--device", "cuda"), "--backend torch --device cuda: PyTorch"),
    (("--backend", "ort", "--device", "cuda"), "only the CPU execution provider"),
])
def test_device_cuda_without_cuda_is_one_line(reference_bundle, flags, needle):
    if TRT_INSTALLED and flags == ("--device", "cuda"):
        pytest.skip("TensorRT is installed here: auto would pick it")
    assert_one_line_error(run_cli(VLA_RUN, "--engine", reference_bundle, *flags, "--frames", "1"), needle)


@pytest.mark.skipif(TRT_INSTALLED, reason="TensorRT is installed here")
def test_default_is_onnx_runtime_and_says_why(reference_bundle):
    backend = open_engine(str(reference_bundle), threads=1)
    try:
        assert backend.name == "onnxruntime"
        version = probe_available(check_cuda=False)["onnxruntime"]
        assert backend.selection == f"auto: TensorRT not installed; ONNX Runtime {version} on CPU"
    finally:
        backend.close()


def test_probe_reports_what_is_installed():
    import onnxruntime

    found = probe_available()
    assert found["onnxruntime"] == onnxruntime.__version__
    assert found["torch"] == torch.__version__.split("+")[0]
    assert (found["cuda"] is None) == (not torch.cuda.is_available())
    assert probe_available(check_cuda=False)["cuda"] is None  # no torch import, no answer


def test_probe_imports_tensorrt_only_when_asked(monkeypatch):
    # TensorRT cannot be installed here: a module object named tensorrt stands in for it.
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    assert probe_available(check_cuda=False)["tensorrt"] == "10.3.0"
    assert probe_available(check_cuda=False, tensorrt=False)["tensorrt"] is None  # --backend ort|torch


# ---- the decision table (pure) -------------------------------------------------------------------------
ALL = {"tensorrt": "10.3.0", "onnxruntime": "1.32.0", "torch": "2.13.0", "cuda": "NVIDIA H100, CUDA 12.8"}
CPU_BOX = {"tensorrt": None, "onnxruntime": "1.32.0", "torch": "2.13.0", "cuda": None}
GPU_NO_TRT = {**ALL, "tensorrt": None}


@pytest.mark.parametrize(("requested", "device", "engine", "available", "name", "reason"), [
    ("auto", "cpu", "b", CPU_BOX, "onnxruntime", "auto: TensorRT not installed; ONNX Runtime 1.32.0 on CPU"),
    ("auto", "cpu", "b", ALL, "onnxruntime", "auto: TensorRT 10.3.0 needs --device cuda; ONNX Runtime 1.32.0 on CPU"),
    ("auto", "cuda", "b", ALL, "tensorrt", "auto: --device cuda; TensorRT 10.3.0"),
    ("auto", "cpu", "m.plan", ALL, "tensorrt", "auto: a TensorRT plan; TensorRT 10.3.0"),
    ("auto", "cuda", "b", GPU_NO_TRT, "torch",
     "auto: TensorRT not installed; PyTorch 2.13.0 on CUDA (NVIDIA H100, CUDA 12.8) (ONNX Runtime here is CPU-only)"),
    ("auto", "cpu", "b", {"torch": "2.13.0"}, "torch",
     "auto: TensorRT not installed, ONNX Runtime not installed; PyTorch 2.13.0 on CPU"),
    ("trt", "cuda", "b", ALL, "tensorrt", "--backend trt: TensorRT 10.3.0"),
    ("trt", "cpu", "m.plan", ALL, "tensorrt", "--backend trt: TensorRT 10.3.0 (TensorRT runs on CUDA; --device cpu "
                                              "does not apply)"),
    ("ort", "cpu", "b", ALL, "onnxruntime", "--backend ort: ONNX Runtime 1.32.0 on CPU"),
    ("torch", "cpu", "b", CPU_BOX, "torch", "--backend torch: PyTorch 2.13.0 on CPU"),
    ("torch", "cuda", "b", ALL, "torch", "--backend torch: PyTorch 2.13.0 on CUDA (NVIDIA H100, CUDA 12.8)"),
])
def test_choose_backend(requested, device, engine, available, name, reason):
    before = dict(available)
    assert choose_backend(requested, device, engine, available) == (name, reason)
    assert available == before  # pure


@pytest.mark.parametrize(("requested", "device", "engine", "available", "needle"), [
    ("trt", "cuda", "b", CPU_BOX, "--backend trt: TensorRT is not installed (import tensorrt failed)"),
    ("ort", "cuda", "b", ALL, "--backend ort --device cuda: this onnxruntime has only the CPU execution provider"),
    ("ort", "cpu", "b", {"torch": "2.13.0"}, "--backend ort: ONNX Runtime is not installed"),
    ("torch", "cuda", "b", CPU_BOX, "--backend torch --device cuda: PyTorch 2.13.0 sees no CUDA device"),
    ("torch", "cpu", "b", {"onnxruntime": "1.32.0"}, "--backend torch: PyTorch is not installed"),
    ("ort", "cpu", "m.plan", ALL, "--engine m.plan: a TensorRT plan runs only with --backend trt (not --backend ort)"),
    ("torch", "cuda", "m.plan", ALL, "a TensorRT plan runs only with --backend trt (not --backend torch)"),
    ("auto", "cpu", "m.plan", CPU_BOX, "--engine m.plan: a TensorRT plan needs TensorRT, which is not installed "
                                       "here; run it where it was built (vla-build), or run the bundle with "
                                       "--backend ort"),
    ("auto", "cuda", "b", CPU_BOX, "--device cuda: no backend here can use CUDA (TensorRT not installed, PyTorch "
                                   "2.13.0 sees no CUDA device, ONNX Runtime is CPU-only)"),
    ("auto", "cuda", "b", {"onnxruntime": "1.32.0"}, "PyTorch is not installed, ONNX Runtime is CPU-only"),
    ("auto", "cpu", "b", {}, "no backend installed"),
    ("fast", "cpu", "b", ALL, "--backend fast: expected one of auto, trt, ort, torch"),
    ("auto", "tpu", "b", ALL, "--device tpu: expected one of cpu, cuda"),
])
def test_choose_backend_refuses_with_one_line(requested, device, engine, available, needle):
    with pytest.raises(VlaError) as info:
        choose_backend(requested, device, engine, available)
    assert needle in str(info.value) and "\n" not in str(info.value)


# ---- CUDA (needs a GPU) -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_cuda(reference_bundle):
    backend = open_engine(str(reference_bundle), backend="torch", device="cuda")
    yield backend
    backend.close()


@needs_cuda
def test_cuda_feeds_are_pinned_staging_and_outputs_match_cpu(torch_cuda, torch_cpu):
    assert torch_cuda.describe().startswith(f"torch {torch.__version__.split('+')[0]} (cuda: ")
    assert torch.cuda.get_device_name() in torch_cuda.describe()
    feed = torch_cuda.feed("images")
    assert torch.from_numpy(feed).is_pinned()  # a pinned host buffer: the H2D copy can be asynchronous
    assert torch_cuda.device_input("images").is_cuda and torch_cuda.device_output("trajectory").is_cuda
    assert torch_cuda.stream is not None
    feeds = example_feeds(torch_cuda.manifest, 5)
    _fill(torch_cuda, feeds)
    _fill(torch_cpu, feeds)
    got, want = torch_cuda.run(), torch_cpu.run()
    assert torch.from_numpy(got["trajectory"]).is_pinned()  # outputs come back into pinned buffers
    for name in want:  # TF32 convolutions (cuDNN's default) bound the agreement, not float32 rounding
        if want[name].dtype == np.bool_:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2e-2 * max(1.0, np.abs(want[name]).max()),
                                       err_msg=name)
    np.testing.assert_array_equal(got["trajectory"], torch_cuda.device_output("trajectory").cpu().numpy())
    timings = torch_cuda.last_timings_ms()
    assert set(timings) == {"h2d", "compute", "d2h"}
    assert timings["compute"] > 0 and timings["h2d"] > 0 and timings["d2h"] > 0


@needs_cuda
def test_cuda_state_stays_on_the_device_and_matches_the_loop_rule(torch_cuda, torch_cpu):
    want = _state_sequence(torch_cpu, 3, _loop_commit)
    by_commit = _state_sequence(torch_cuda, 3, lambda b, _out: b.commit_state())
    by_loop = _state_sequence(torch_cuda, 3, _loop_commit)  # staging buffer uploaded each run
    for tick in range(3):
        for got in (by_commit[tick], by_loop[tick]):
            np.testing.assert_array_equal(got["new_memory_valid"], want[tick]["new_memory_valid"])
            np.testing.assert_allclose(got["new_memory"], want[tick]["new_memory"], rtol=0,
                                       atol=2e-2 * max(1.0, np.abs(want[tick]["new_memory"]).max()))
    torch_cuda.commit_state()  # enqueued on the backend's stream: the device input now holds the last output
    torch_cuda.stream.synchronize()
    assert torch.equal(torch_cuda.device_input("memory_valid"), torch_cuda.device_output("new_memory_valid"))


@needs_cuda
def test_cuda_device_fed_input_is_not_overwritten_by_the_staging_buffer(torch_cuda):
    feeds = example_feeds(torch_cuda.manifest, 7)
    _fill(torch_cuda, feeds)
    want = {k: v.copy() for k, v in torch_cuda.run().items()}
    torch_cuda.feed("ego")[...] = 0.0  # stale host values that must not reach the model
    dev = torch_cuda.device_input("ego", writable=True)
    with torch.cuda.stream(torch_cuda.stream):
        dev.copy_(torch.from_numpy(feeds["ego"]).to(dev.device, non_blocking=False))
    got = torch_cuda.run()
    scale = max(1.0, float(np.abs(want["trajectory"]).max()))
    np.testing.assert_allclose(got["trajectory"], want["trajectory"], rtol=0, atol=1e-5 * scale)
    torch_cuda.feed("ego")  # the host buffer (zeros) is the source again
    assert np.abs(torch_cuda.run()["trajectory"] - want["trajectory"]).max() > 1e-3 * scale
