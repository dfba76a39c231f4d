"""TensorRT: the plan cache and its sidecar, vla-build's one-line errors, the runner's buffer plan, and the
API rules TensorRT 11 imposes.

TensorRT cannot be installed here (the registry's wheels are download stubs), so what runs everywhere
is the pure logic (cache keys, stale reasons, decisions, workspace sizing, parser-error lines, the
state double-buffer schedule), the command line without TensorRT, and a scan of the sources for
APIs TensorRT 11 removed.

The tests that build and run the reference bundle run twice: on real TensorRT with a GPU (skipped,
with the reason, where either is missing), and everywhere on ``trt_standin``, a stand-in that
emulates TensorRT's and cuda-bindings' documented APIs in host memory with CUDA's stream, capture
and address rules, so that vla-build, the cache, the runner's device state and its CUDA graphs run
here too. The stand-in proves the calls and their order, never TensorRT's numerics or speed.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from trt_standin import Gpu, install, write_shims

from conftest import TINY_REFERENCE, VLA_EXPORT, VLA_RUN, assert_one_line_error, run_cli
from vla.runtime.backends.trt import parse_device, plan_buffers
from vla.runtime.errors import VlaError
from vla.runtime.manifest import parse_manifest
from vla.runtime.trt import cuda_error_message, dtype_name, tensorrt_missing, version_tuple
from vla.runtime.trt.build import (
    MB,
    BuildProgress,
    TrtLog,
    describe_parser_error,
    dynamic_names,
    graph_shape,
    hash_plugins,
    open_bundle,
    parse_failure,
    workspace_bytes,
)
from vla.runtime.trt.cache import (
    SIDECAR_SCHEMA,
    EngineKey,
    cache_path,
    decide,
    decide_from,
    make_key,
    parse_sidecar,
    read_sidecar,
    sha256_file,
    sidecar,
    sidecar_path,
    slug,
    stale_reasons,
    timing_cache_path,
)

ROOT = Path(__file__).resolve().parent.parent
VLA_BUILD = [sys.executable, "-m", "vla.runtime.trt.cli"]
VLA_BENCH = [sys.executable, "-m", "vla.runtime.bench.cli"]
HASH_A = "sha256:" + "ab12" * 16
HASH_B = "sha256:" + "cd34" * 16


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # the registry's tensorrt stubs raise all sorts at import
        return False
    return True


HAVE_TRT = _importable("tensorrt")
HAVE_CUDART = _importable("cuda.bindings.runtime")


def _gpu_count() -> int:
    if not HAVE_CUDART:
        return 0
    from cuda.bindings import runtime as cudart

    err, count = cudart.cudaGetDeviceCount()
    return int(count) if int(err) == 0 else 0


HAVE_GPU = _gpu_count() > 0
NO_TRT = "TensorRT is not installed here (cannot be: registry wheels are download stubs)"
NO_GPU = "no CUDA device here (needs cuda-bindings, a driver and a GPU)"
needs_gpu = pytest.mark.skipif(not HAVE_GPU, reason=NO_GPU)
needs_trt_gpu = pytest.mark.skipif(not (HAVE_TRT and HAVE_GPU), reason=NO_TRT if not HAVE_TRT else NO_GPU)


# ---- fabricated manifests and keys -------------------------------------------------------------------

def tiny_manifest_doc() -> dict:
    """A small valid manifest: one camera, two state pairs (float and bool), trajectory and score."""
    return {
        "schema_version": 1,
        "model": {"name": "tiny", "hash": HASH_A},
        "inputs": [
            {"name": "images", "dtype": "uint8", "shape": [1, 1, 3, 8, 16], "role": "camera",
             "camera": {"names": ["front"], "layout": "NCHW", "color": "RGB", "height": 8, "width": 16}},
            {"name": "memory", "dtype": "float32", "shape": [1, 4, 8], "role": "state",
             "state": {"from_output": "new_memory", "initial": 0.0}},
            {"name": "memory_valid", "dtype": "bool", "shape": [1, 4], "role": "state",
             "state": {"from_output": "new_memory_valid", "initial": False}},
        ],
        "outputs": [
            {"name": "trajectory", "dtype": "float32", "shape": [1, 2, 4, 3], "role": "trajectory",
             "trajectory": {"dt": 0.5, "horizon_s": 2.0, "frame": "ego", "fields": ["x", "y", "yaw"]}},
            {"name": "score", "dtype": "float32", "shape": [1, 2], "role": "score", "score": {"kind": "probability"}},
            {"name": "new_memory", "dtype": "float32", "shape": [1, 4, 8], "role": "state",
             "state": {"to_input": "memory"}},
            {"name": "new_memory_valid", "dtype": "bool", "shape": [1, 4], "role": "state",
             "state": {"to_input": "memory_valid"}},
        ],
    }


@pytest.fixture
def tiny_manifest():
    return parse_manifest(tiny_manifest_doc())


def key(**changes) -> EngineKey:
    base = dict(tensorrt="10.3.0", gpu="Orin", compute_capability="8.7", cuda_driver="12.6", cuda_runtime="12.6",
                model_hash=HASH_A, platform="linux-aarch64", plugins=(("libfoo.so", HASH_A),), workspace_mb=2048,
                profile=(("images", (1, 3), (1, 3), (1, 3)),))
    base.update(changes)
    return make_key(**base)


def engine_io(manifest_doc: dict) -> dict:
    """The engine I/O an exact build of ``manifest_doc`` would have."""
    io_ = {t["name"]: ("input", t["dtype"], tuple(t["shape"])) for t in manifest_doc["inputs"]}
    io_.update({t["name"]: ("output", t["dtype"], tuple(t["shape"])) for t in manifest_doc["outputs"]})
    return io_


@pytest.fixture
def fake_bundle(tmp_path) -> Path:
    """A bundle folder vla-build accepts up to the point it needs TensorRT (the graph is never parsed)."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(tiny_manifest_doc()))
    (folder / "model.onnx").write_bytes(b"not parsed before TensorRT is imported")
    return folder


# ---- stale reasons ----------------------------------------------------------------------------------

def test_same_key_is_reusable_and_driver_updates_do_not_count():
    assert stale_reasons(key(), key()) == []
    assert stale_reasons(key(cuda_driver="12.8", cuda_runtime="12.8"), key()) == []


def test_each_environment_reason_reads_as_a_sentence():
    assert stale_reasons(key(tensorrt="11.0.1"), key(tensorrt="10.3.0")) == [
        "built with TensorRT 10.3.0, this is 11.0.1"]
    assert stale_reasons(key(gpu="H100", compute_capability="9.0"), key()) == [
        "built for Orin (8.7), this GPU is H100 (9.0)"]
    assert stale_reasons(key(platform="linux-x86_64"), key()) == ["built on linux-aarch64, this is linux-x86_64"]


def test_bundle_change_names_both_hashes():
    assert stale_reasons(key(model_hash=HASH_B), key()) == [
        "bundle changed (model hash sha256:ab12ab12… → sha256:cd34cd34…)"]


def test_plugin_changed_added_removed():
    found = key(plugins=(("libfoo.so", HASH_A), ("libold.so", HASH_A)))
    wanted = key(plugins=(("libfoo.so", HASH_B), ("libnew.so", HASH_A)))
    assert stale_reasons(wanted, found) == [
        "plugin libfoo.so changed (sha256:ab12ab12… → sha256:cd34cd34…)",
        "plugin libnew.so added",
        "plugin libold.so removed",
    ]


def test_build_option_reasons():
    assert stale_reasons(key(workspace_mb=4096), key(workspace_mb=2048)) == [
        "build options changed: workspace_mb 2048 → 4096"]
    assert stale_reasons(key(workspace_mb=4096), key(workspace_mb=None)) == [
        "build options changed: workspace_mb auto → 4096"]
    # "auto" asks for nothing in particular: any workspace the plan was built with will do.
    assert stale_reasons(key(workspace_mb=None), key(workspace_mb=2048)) == []
    assert stale_reasons(key(profile=(("images", (1, 4), (1, 4), (1, 4)),)), key()) == [
        "build options changed: profile images [1,3] → [1,4]"]


def test_every_reason_at_once_and_environment_only():
    wanted = key(tensorrt="11.0.1", gpu="H100", compute_capability="9.0", model_hash=HASH_B, plugins=())
    assert len(stale_reasons(wanted, key())) == 4
    assert stale_reasons(wanted, key(), inputs=False) == [
        "built with TensorRT 10.3.0, this is 11.0.1", "built for Orin (8.7), this GPU is H100 (9.0)"]


def test_key_normalises_plugin_order():
    a = key(plugins=(("b.so", HASH_A), ("a.so", HASH_B)))
    b = key(plugins=[["a.so", HASH_B], ["b.so", HASH_A]])
    assert a == b and a.plugins[0][0] == "a.so"


# ---- sidecar ----------------------------------------------------------------------------------------

def test_sidecar_round_trip_through_json():
    k = key()
    doc = json.loads(json.dumps(sidecar(k, {"built": {"elapsed_s": 81.5}, "bundle": {"path": "/b"}})))
    assert doc["schema"] == SIDECAR_SCHEMA == "vla.plan/1"
    assert doc["built"]["elapsed_s"] == 81.5 and doc["bundle"]["path"] == "/b"
    assert doc["key"]["profile"] == {"images": {"min": [1, 3], "opt": [1, 3], "max": [1, 3]}}
    assert parse_sidecar(doc) == k
    with pytest.raises(ValueError, match="key"):
        sidecar(k, {"key": {}})


@pytest.mark.parametrize(("doc", "needle"), [
    ({"schema": "vla.plan/0", "key": {}}, "is not vla.plan/1"),
    ({"schema": "vla.plan/1", "key": {"tensorrt": "10.3.0"}}, "missing or not a string: gpu"),
    ({"schema": "vla.plan/1", "key": {**key().to_dict(), "workspace_mb": "big"}}, "workspace_mb"),
    ([1, 2], "not a plan sidecar"),
])
def test_bad_sidecars_are_one_line_errors(doc, needle):
    with pytest.raises(VlaError) as err:
        parse_sidecar(doc, "v2.plan.json")
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("v2.plan.json: ")


def test_plan_without_sidecar_is_refused(tmp_path):
    plan = tmp_path / "v2.plan"
    plan.write_bytes(b"plan")
    assert sidecar_path(plan) == tmp_path / "v2.plan.json"
    with pytest.raises(VlaError) as err:
        read_sidecar(plan)
    assert str(err.value) == (f"{plan} has no sidecar manifest v2.plan.json; rebuild it with vla-build so its "
                              "TensorRT version, GPU and bundle are known")


# ---- decisions and where plans live --------------------------------------------------------------------

def test_decide_build_reuse_rebuild_refuse(tmp_path):
    plan = tmp_path / "engines" / "orin-trt10.3.0.plan"
    fresh = sidecar(key(), {})
    stale = sidecar(key(tensorrt="10.2.0", model_hash=HASH_B), {})
    assert decide_from(plan, key(), False, plan_exists=False, sidecar_doc=None).action == "build"
    assert decide_from(plan, key(), False, plan_exists=True, sidecar_doc=fresh).action == "reuse"
    rebuild = decide_from(plan, key(), True, plan_exists=True, sidecar_doc=stale)
    assert rebuild.action == "rebuild" and rebuild.reasons == (
        "built with TensorRT 10.2.0, this is 10.3.0", "bundle changed (model hash sha256:cd34cd34… → sha256:ab12ab12…)")
    refuse = decide_from(plan, key(), False, plan_exists=True, sidecar_doc=stale)
    assert refuse.action == "refuse" and refuse.reasons == rebuild.reasons
    assert refuse.message == (f"{plan}: the cached TensorRT plan cannot be used: built with TensorRT 10.2.0, this is "
                              "10.3.0; bundle changed (model hash sha256:cd34cd34… → sha256:ab12ab12…); "
                              "pass --rebuild to build it again")


def test_decide_reads_the_files(tmp_path):
    plan = tmp_path / "v2.plan"
    assert decide(plan, key(), False).action == "build"
    plan.write_bytes(b"plan")
    no_sidecar = decide(plan, key(), False)
    assert no_sidecar.action == "refuse" and "has no sidecar manifest v2.plan.json" in no_sidecar.message
    assert "--rebuild" in no_sidecar.message
    assert decide(plan, key(), True).action == "rebuild"
    sidecar_path(plan).write_text("{not json")
    unreadable = decide(plan, key(), False)
    assert unreadable.action == "refuse" and "unreadable sidecar" in unreadable.reasons[0]
    sidecar_path(plan).write_text(json.dumps(sidecar(key(), {"built": {}})))
    assert decide(plan, key(), False).action == "reuse"
    assert decide(plan, key(gpu="H100", compute_capability="9.0"), False).action == "refuse"


def test_cache_and_timing_cache_paths(tmp_path):
    k = key(gpu="NVIDIA H100 80GB HBM3", tensorrt="10.3.0")
    assert slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3" and slug("  ") == "gpu"
    assert cache_path(tmp_path, k) == tmp_path / "engines" / "nvidia-h100-80gb-hbm3-trt10.3.0.plan"
    # Bare .onnx files side by side get a plan each.
    assert cache_path(tmp_path, k, "a.onnx") != cache_path(tmp_path, k, "b.onnx") != cache_path(tmp_path, k)
    assert cache_path(tmp_path, k, "a.onnx").name == "a-nvidia-h100-80gb-hbm3-trt10.3.0.plan"
    assert timing_cache_path(tmp_path, k) == tmp_path / "nvidia-h100-80gb-hbm3-trt10.3.0.timing"


def test_sha256_file(tmp_path):
    f = tmp_path / "lib.so"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ---- build helpers ------------------------------------------------------------------------------------

def test_workspace_is_half_the_free_memory_with_a_floor():
    size, how = workspace_bytes(free=6000 * MB, total=8000 * MB)
    assert size == 3000 * MB and how == "3000 MB (50% of 6000 MB free)"
    assert workspace_bytes(free=100 * MB, total=8000 * MB, requested_mb=512) == (
        512 * MB, "512 MB (--workspace-mb) (more than the 100 MB free)")
    with pytest.raises(VlaError) as err:
        workspace_bytes(free=400 * MB, total=8000 * MB)
    msg = str(err.value)
    assert "only 400 MB of GPU memory is free (of 8000 MB)" in msg and "at least 256 MB" in msg
    assert "close other GPU processes" in msg
    with pytest.raises(VlaError, match="positive"):
        workspace_bytes(free=1 << 40, total=1 << 40, requested_mb=0)


class _ParserError:
    """Stands in for TensorRT's ParserError (the formatter only calls its accessor methods)."""

    def __init__(self, node, name, op, code, desc):
        self._v = {"node": node, "node_name": name, "node_operator": op, "code": code, "desc": desc}
        for attr in self._v:
            setattr(self, attr, lambda attr=attr: self._v[attr])


def test_parser_errors_one_line_each_with_their_node():
    err = _ParserError(12, "/blocks.2/Foo", "Foo", "ErrorCode.UNSUPPORTED_NODE", "No importer registered\nfor Foo")
    assert describe_parser_error(err) == ("node 12 '/blocks.2/Foo' (Foo): UNSUPPORTED_NODE: "
                                          "No importer registered for Foo")
    graph_err = _ParserError(-1, "", "", "ErrorCode.INVALID_GRAPH", "opset 99")
    assert describe_parser_error(graph_err) == "graph: INVALID_GRAPH: opset 99"

    class Old:  # TensorRT without node_name/node_operator
        def node(self):
            return 3

        def code(self):
            return "ErrorCode.INVALID_NODE"

        def desc(self):
            return "bad"

    assert describe_parser_error(Old()) == "node 3: INVALID_NODE: bad"
    lines = [describe_parser_error(err), describe_parser_error(graph_err)]
    summary = parse_failure(Path("m.onnx"), "10.3.0", lines)
    assert summary == ("m.onnx: TensorRT 10.3.0 cannot parse this ONNX model: node 12 '/blocks.2/Foo' (Foo): "
                       "UNSUPPORTED_NODE: No importer registered for Foo (and 1 more error(s) above)")


def test_dynamic_dims_and_dtype_names():
    assert graph_shape([1, -1, 64]) == (1, None, 64)
    assert dynamic_names({"a": ("float32", (1, None)), "b": ("float32", (1, 2))}) == ["a"]

    class DataType:
        def __init__(self, name):
            self.name = name

    assert [dtype_name(DataType(n)) for n in ("FLOAT", "HALF", "BOOL", "INT64", "BF16")] == [
        "float32", "float16", "bool", "int64", "bf16"]


def test_progress_lines_and_heartbeat_status():
    lines: list[str] = []
    progress = BuildProgress(lines.append, start=0.0)
    progress.phase_start("Building engine", None, 3)
    progress.phase_start("Tactic selection", "Building engine", 40)
    progress.phase_start("Layer 7", "Tactic selection", 5)  # depth 2: tracked, not printed
    assert progress.step_complete("Tactic selection", 11) is True
    assert progress.status() == "Building engine > Tactic selection > Layer 7 0/5"
    progress.phase_finish("Layer 7")
    assert progress.status() == "Building engine > Tactic selection 12/40"
    progress.phase_finish("Tactic selection")
    progress.phase_finish("Building engine")
    assert progress.status() == "working"
    text = "\n".join(lines)
    assert "Building engine (3 steps)" in text and "  Tactic selection (40 steps)" in text
    assert "Layer 7" not in text and "Building engine done in" in text


def test_trt_log_keeps_errors_and_shows_warnings_once():
    lines: list[str] = []
    log = TrtLog(lines.append)
    assert log.last_error() == "TensorRT logged no error"
    for rank, msg in ((2, "slow"), (2, "slow"), (3, "info"), (1, "out of\nmemory")):
        log.record(rank, msg)
    assert log.errors == ["out of memory"] and log.last_error() == "out of memory"
    assert lines == ["  TensorRT warning: slow", "  TensorRT error: out of memory"]


def test_a_bare_onnx_carrying_its_manifest_is_a_bundle(reference_bundle, tmp_path):
    lone = tmp_path / "lone.onnx"  # no manifest.json beside it: vla-run and vla-build read the embedded one
    shutil.copy(reference_bundle / "model.onnx", lone)
    bundle = open_bundle(lone)
    want = json.loads((reference_bundle / "manifest.json").read_text())
    assert bundle.model == lone and bundle.model_hash == want["model"]["hash"]
    assert bundle.manifest.raw["inputs"] == want["inputs"] and bundle.manifest.raw["outputs"] == want["outputs"]
    with pytest.raises(VlaError, match="expected a bundle folder"):
        open_bundle(reference_bundle / "manifest.json")


def test_versions_and_messages():
    assert version_tuple("10.3.0.26") == (10, 3, 0, 26) and version_tuple("11.0.1rc1") == (11, 0, 1)
    assert version_tuple("unknown") == ()
    assert "no usable CUDA device" in cuda_error_message("cudaGetDeviceCount", 35, "cudaErrorInsufficientDriver", "x")
    assert cuda_error_message("cudaMalloc", 2, "cudaErrorMemoryAllocation", "out of memory").startswith(
        "cudaMalloc failed: cudaErrorMemoryAllocation (2): out of memory; the GPU is out of memory")
    assert "pip install tensorrt" in tensorrt_missing("No module named 'tensorrt'")


def test_bundle_and_plugin_checks(fake_bundle, tmp_path):
    bundle = open_bundle(fake_bundle)
    assert bundle.model_hash == HASH_A and bundle.manifest.name == "tiny"
    assert open_bundle(fake_bundle / "model.onnx").dir == fake_bundle
    (fake_bundle / "manifest.json").unlink()  # then the manifest must come from the graph, and this one has none
    with pytest.raises(VlaError, match="not a readable ONNX model"):
        open_bundle(fake_bundle)
    lib = tmp_path / "libfoo.so"
    lib.write_bytes(b"abc")
    (libs,) = hash_plugins([lib])
    assert (libs.name, libs.sha256) == ("libfoo.so", sha256_file(lib))
    with pytest.raises(VlaError, match="no such file"):
        hash_plugins([tmp_path / "missing.so"])


# ---- the runner's buffer plan (pure) ----------------------------------------------------------------------

def test_state_pairs_share_two_slots_crosswise(tiny_manifest):
    plan = plan_buffers(tiny_manifest, engine_io(tiny_manifest_doc()), "tiny.plan")
    assert plan.states == (("memory", "new_memory"), ("memory_valid", "new_memory_valid"))
    even, odd = plan.addresses(0), plan.addresses(1)
    for dst, src in plan.states:
        assert even[dst] != even[src] and odd[dst] != odd[src]  # a run never writes what it reads
        assert odd[dst] == even[src] and even[dst] == odd[src]  # after a commit, the input is the last output
    for name in ("images", "trajectory", "score"):
        assert even[name] == odd[name]
    assert len(plan.slot_bytes) == 3 + 2 * 2
    assert plan.tensor("memory").nbytes == 4 * 8 * 4 and plan.tensor("memory_valid").nbytes == 4
    assert plan.slot_bytes[plan.tensor("images").slots[0]] == 3 * 8 * 16
    assert plan.dynamic == ()


def test_state_schedule_survives_uncommitted_runs(tiny_manifest):
    """Simulate device memory: a run writes input + 1 into the output's slot; only committed runs advance."""
    plan = plan_buffers(tiny_manifest, engine_io(tiny_manifest_doc()), "tiny.plan")
    memory = {slot: 0.0 for slot in range(len(plan.slot_bytes))}
    parity, committed_value = 0, 0.0
    for commit in (True, True, False, True, False, False, True):
        slots = plan.addresses(parity)
        read = memory[slots["memory"]]
        assert read == committed_value  # every run reads exactly the last committed state
        memory[slots["new_memory"]] = read + 1
        if commit:
            parity ^= 1
            committed_value = read + 1
    assert committed_value == 4


def test_buffer_plan_checks_the_engine_against_the_manifest(tiny_manifest):
    io_ = engine_io(tiny_manifest_doc())
    io_["score"] = ("output", "float16", (1, 2))
    with pytest.raises(VlaError, match="output 'score' is float16 in the graph but float32 in the manifest"):
        plan_buffers(tiny_manifest, io_, "tiny.plan")
    io_ = engine_io(tiny_manifest_doc())
    io_["images"] = ("input", "uint8", (None, 1, 3, 8, 16))  # a dynamic batch takes the manifest's shape
    io_["debug"] = ("output", "float32", (2, 2))  # an output the manifest does not name still needs memory
    plan = plan_buffers(tiny_manifest, io_, "tiny.plan")
    assert plan.dynamic == ("images",) and plan.tensor("images").shape == (1, 1, 3, 8, 16)
    assert plan.tensor("debug").nbytes == 16 and not plan.tensor("debug").in_manifest
    io_["debug"] = ("output", "float32", (None, 2))
    with pytest.raises(VlaError, match="'debug' is not in the manifest and has a dynamic shape"):
        plan_buffers(tiny_manifest, io_, "tiny.plan")


def test_parse_device():
    assert (parse_device("cuda"), parse_device("cuda:1"), parse_device(2)) == (0, 1, 2)
    with pytest.raises(VlaError, match="cuda or cuda:N"):
        parse_device("cpu")


# ---- without TensorRT: imports, one-line errors ------------------------------------------------------------

def test_modules_import_without_tensorrt_or_cuda():
    code = ("import sys; import vla.runtime.trt, vla.runtime.trt.cache, vla.runtime.trt.build, vla.runtime.trt.cli, "
            "vla.runtime.backends.trt; bad = [m for m in ('tensorrt', 'cuda', 'torch') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the missing-TensorRT path cannot be seen")
def test_vla_build_without_tensorrt_is_one_line(fake_bundle):
    proc = run_cli(VLA_BUILD, fake_bundle, "-o", fake_bundle / "v2.plan")
    assert proc.returncode == 2
    line = assert_one_line_error(proc, "vla-build: error: TensorRT is not installed (import tensorrt failed:",
                                 "pip install tensorrt or use JetPack's python3-libnvinfer")
    assert proc.stderr.strip() == line  # exactly one line
    assert not (fake_bundle / "v2.plan").exists()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the missing-TensorRT path cannot be seen")
def test_vla_export_build_without_tensorrt_fails_before_exporting(tmp_path):
    out = tmp_path / "bundle"
    proc = run_cli([sys.executable, "-m", "vla.export.cli"], "reference", "-o", out, "--build")
    assert proc.returncode == 2
    assert_one_line_error(proc, "vla-export: error: TensorRT is not installed", "vla-export --build runs on the target")
    assert not out.exists()  # told at once, not after minutes of export


@pytest.mark.parametrize(("args", "needle"), [
    (("{missing}",), "no such bundle folder"),
    (("{empty}",), "folder has no model.onnx"),
    (("{bundle}", "--plugin", "{missing}/libx.so"), "--plugin"),
    (("{bundle}", "-o", "v2.engine"), "with a .plan suffix"),
    (("{bundle}", "--workspace-mb", "0"), "--workspace-mb 0"),
])
def test_vla_build_bad_inputs_are_one_line_before_tensorrt(fake_bundle, tmp_path, args, needle):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "bundle": fake_bundle}
    proc = run_cli(VLA_BUILD, *(a.format(**paths) for a in args))
    assert proc.returncode == 2
    line = assert_one_line_error(proc, "vla-build: error:", needle)
    assert "TensorRT" not in line  # the bundle's problem comes first, even where TensorRT is missing


def test_vla_build_bad_manifest_is_one_line(fake_bundle):
    doc = tiny_manifest_doc()
    doc["inputs"][1]["state"]["from_output"] = "nowhere"
    (fake_bundle / "manifest.json").write_text(json.dumps(doc))
    proc = run_cli(VLA_BUILD, fake_bundle)
    assert_one_line_error(proc, "manifest.json", "'nowhere'")


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here: the missing-TensorRT path cannot be seen")
def test_runner_without_tensorrt_is_one_line(fake_bundle, tiny_manifest, tmp_path):
    from vla.runtime.backends.trt import TrtBackend, open_trt_backend

    for make in (lambda: TrtBackend(tmp_path / "v2.plan", tiny_manifest), lambda: open_trt_backend(fake_bundle)):
        with pytest.raises(VlaError) as err:
            make()
        assert str(err.value).startswith("TensorRT is not installed (import tensorrt failed:")
        assert "the TensorRT backend runs on the target" in str(err.value) and "\n" not in str(err.value)
    plan = tmp_path / "alone.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(VlaError, match=r"has no sidecar manifest alone\.plan\.json"):
        open_trt_backend(plan)  # refused before TensorRT is even imported
    with pytest.raises(VlaError, match="no such file or bundle folder"):
        open_trt_backend(tmp_path / "nothing")


# ---- TensorRT 11 removed these: they must not come back ------------------------------------------------------

SCANNED = ("runtime/trt/__init__.py", "runtime/trt/build.py", "runtime/trt/cli.py", "runtime/backends/trt.py")
REMOVED_NAMES = {
    "EXPLICIT_BATCH", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "STRICT_TYPES",
    "platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32",
    "execute_async_v2", "execute_v2", "execute_async", "get_binding_index", "get_binding_name", "get_binding_shape",
    "get_binding_dtype", "binding_is_input", "set_binding_shape", "num_bindings",
    "int8_calibrator", "IInt8Calibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
    "IInt8LegacyCalibrator", "set_output_type", "algorithm_selector", "IAlgorithmSelector", "max_workspace_size",
}
REMOVED_MEMBERS = {
    "BuilderFlag": {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4"},
    "TacticSource": {"CUBLAS", "CUBLAS_LT", "CUDNN"},
}


def removed_api_uses(source: str) -> list[str]:
    """Uses of TensorRT APIs removed in 11 in Python code (names, Enum.MEMBER, string literals naming them,
    per-layer ``.precision``); comments and docstrings may mention them."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skip]
    hits = []
    for i, t in enumerate(toks):
        after_dot = i >= 2 and toks[i - 1].string == "."
        if t.type == tokenize.NAME and t.string in REMOVED_NAMES:
            hits.append(f"line {t.start[0]}: {t.string}")
        elif t.type == tokenize.NAME and after_dot and t.string in REMOVED_MEMBERS.get(toks[i - 2].string, ()):
            hits.append(f"line {t.start[0]}: {toks[i - 2].string}.{t.string}")
        elif t.type == tokenize.NAME and after_dot and t.string == "precision":
            hits.append(f"line {t.start[0]}: .precision (per-layer precision)")
        elif t.type == tokenize.STRING:
            try:
                value = ast.literal_eval(t.string)
            except (ValueError, SyntaxError):
                continue
            if value in REMOVED_NAMES:
                hits.append(f"line {t.start[0]}: {value!r}")
    return hits


def test_scanner_catches_removed_apis():
    snippet = ('config.set_flag(trt.BuilderFlag.FP16)\nnet = b.create_network(1 << int(trt.NetworkDefinitionCreation'
               'Flag.EXPLICIT_BATCH))\nlayer.precision = trt.float16\ngetattr(trt, "IInt8EntropyCalibrator2")\n'
               'ctx.execute_async_v2(bindings, s)\n"""docstring: EXPLICIT_BATCH is gone"""  # and FP16 too\n')
    assert [h.split(": ", 1)[1] for h in removed_api_uses(snippet)] == [
        "BuilderFlag.FP16", "EXPLICIT_BATCH", ".precision (per-layer precision)", "'IInt8EntropyCalibrator2'",
        "execute_async_v2"]


@pytest.mark.parametrize("relpath", SCANNED)
def test_no_api_removed_in_tensorrt_11(relpath):
    assert removed_api_uses((ROOT / relpath).read_text()) == []


def test_network_is_strongly_typed_from_the_enum():
    source = (ROOT / "runtime/trt/build.py").read_text()
    calls = re.findall(r"create_network\(([^)]*\)?)\)", source)
    assert calls == ["1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)"]
    runner = (ROOT / "runtime/backends/trt.py").read_text()
    assert "execute_async_v3(" in runner and "set_tensor_address(" in runner


def test_cuda_calls_exist_in_cuda_bindings():
    """Every ``rt.X``/``cudart.X`` the sources call is a function or constant of ``cuda.bindings.runtime``."""
    if not HAVE_CUDART:
        pytest.skip("cuda-bindings is not installed here (pip install cuda-bindings)")
    from cuda.bindings import runtime as cudart

    used = set()
    for relpath in ("runtime/trt/__init__.py", "runtime/backends/trt.py"):
        used |= set(re.findall(r"\b(?:rt|cudart)\.(cuda\w+)", (ROOT / relpath).read_text()))
    assert {"cudaStreamBeginCapture", "cudaGraphInstantiate", "cudaMallocHost", "cudaMemcpyAsync"} <= used
    assert sorted(n for n in used if not hasattr(cudart, n)) == []


@pytest.mark.skipif(not HAVE_CUDART or HAVE_GPU, reason="needs cuda-bindings on a machine without a usable GPU")
def test_probe_without_a_driver_is_one_line():
    from vla.runtime.trt import probe_cuda

    with pytest.raises(VlaError) as err:
        probe_cuda()
    message = str(err.value)
    assert message.startswith("cudaGetDeviceCount failed: cudaError") and "no usable CUDA device" in message


@needs_gpu
def test_probe_on_a_gpu():
    from vla.runtime.trt import probe_cuda

    device = probe_cuda()
    assert device.name and re.fullmatch(r"\d+\.\d+", device.compute_capability)
    assert 0 < device.free_bytes <= device.total_bytes
    assert re.fullmatch(r"\d+\.\d+", device.driver) and re.fullmatch(r"\d+\.\d+", device.runtime)


# ---- building and running: on TensorRT with a GPU, and on the stand-in everywhere -------------------------

@dataclass(frozen=True)
class Target:
    """Where the build-and-run tests go: ``tensorrt`` (the real one, with a GPU) or ``stand-in``
    (``trt_standin``: TensorRT's and cuda-bindings' APIs emulated in host memory, since neither can
    be installed here); ``env`` is the environment child processes need to see it."""

    name: str
    env: dict[str, str] | None = None


@pytest.fixture(scope="module", params=["stand-in", "tensorrt"])
def trt_target(request, tmp_path_factory) -> Target:
    if request.param == "tensorrt":
        if not (HAVE_TRT and HAVE_GPU):
            pytest.skip(NO_TRT if not HAVE_TRT else NO_GPU)
        return Target("tensorrt")
    shims = write_shims(tmp_path_factory.mktemp("trt-standin"))
    path = os.pathsep.join([str(shims), *filter(None, [os.environ.get("PYTHONPATH")])])
    return Target("stand-in", {**os.environ, "PYTHONPATH": path})


@pytest.fixture
def on_target(trt_target, monkeypatch) -> Gpu | None:
    """In this process, ``import tensorrt`` is the target's: the stand-in's emulated device, or None.

    With the stand-in the data path stays on the host even where the kernels have CUDA: its "device"
    memory is host memory, which the CUDA kernels cannot read.
    """
    if trt_target.name != "stand-in":
        return None
    import vla.kernels

    monkeypatch.setattr(vla.kernels, "cuda_available", lambda: False)
    return install(monkeypatch)


@pytest.fixture(scope="module")
def built_plan(reference_bundle, trt_target, tmp_path_factory) -> Path:
    """vla-build on the reference bundle, once per target (minutes on a Jetson, ~1 min on a big GPU)."""
    plan = tmp_path_factory.mktemp("plans") / "v2.plan"
    proc = run_cli(VLA_BUILD, reference_bundle, "-o", plan, "--heartbeat-s", "5", env=trt_target.env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "workspace:" in proc.stdout and "built in" in proc.stdout
    return plan


def _fill(backend, feeds: dict[str, np.ndarray]) -> None:
    for name, value in feeds.items():
        np.copyto(backend.feed(name), value)


def _close_to(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if a[name].dtype == np.bool_:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            scale = max(1.0, float(np.abs(b[name]).max()))
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=rtol * scale, err_msg=name)


def test_vla_build_writes_plan_and_sidecar_then_reuses(built_plan, reference_bundle, trt_target, on_target):
    import tensorrt as trt

    doc = read_sidecar(built_plan)
    k = parse_sidecar(doc)
    manifest = json.loads((reference_bundle / "manifest.json").read_text())
    assert k.tensorrt == trt.__version__ and k.model_hash == manifest["model"]["hash"]
    assert k.precision == "graph" and k.workspace_mb is None and doc["manifest"] == manifest
    assert doc["built"]["plan_bytes"] == built_plan.stat().st_size > 0
    assert Path(doc["timing_cache"]["path"]).stat().st_size > 0
    before = built_plan.stat().st_mtime_ns
    again = run_cli(VLA_BUILD, reference_bundle, "-o", built_plan, env=trt_target.env)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr
    assert built_plan.stat().st_mtime_ns == before


def test_plan_matches_onnx_runtime(built_plan, reference_bundle, trt_target, on_target):
    from vla.runtime.backends.trt import open_trt_backend
    from vla.runtime.engine import open_engine
    from vla.runtime.inputs.feeds import example_feeds

    trt_backend = open_trt_backend(built_plan, log=lambda _line: None)
    ort_backend = open_engine(str(reference_bundle), threads=1, backend="ort")
    try:
        feeds = example_feeds(trt_backend.manifest, seed=1)
        _fill(trt_backend, feeds)
        _fill(ort_backend, feeds)
        # FP32 graphs may run with TF32 tensor cores (TensorRT's default): agree to ~1e-2 of each output's
        # scale. The stand-in runs the same graph on ONNX Runtime: it must agree exactly.
        tolerance = 0.0 if trt_target.name == "stand-in" else 1e-2
        _close_to({k: v.copy() for k, v in trt_backend.run().items()}, ort_backend.run(), rtol=tolerance)
        timings = trt_backend.last_timings_ms()
        assert set(timings) == {"h2d", "compute", "d2h", "enqueue"} and timings["compute"] > 0
    finally:
        trt_backend.close()
        ort_backend.close()


@pytest.mark.parametrize("capture_fails", [False, True])
def test_device_state_and_cuda_graphs_match_host_commit(built_plan, trt_target, on_target, capture_fails):
    """commit_state (device double buffer, CUDA graphs per parity) gives the same ticks as the loop's
    host copy with plain launches; a graph replayed at the wrong parity would read the other slot.
    A capture that fails (forced on the stand-in) turns graphs off and the ticks stay the same."""
    from vla.runtime.backends.trt import open_trt_backend
    from vla.runtime.inputs.feeds import example_feeds

    if capture_fails and on_target is None:
        pytest.skip("a failing capture is forced on the stand-in only")
    if capture_fails:
        on_target.fail_capture = True
    lines: list[str] = []
    device = open_trt_backend(built_plan, cuda_graph=True, log=lines.append)
    host = open_trt_backend(built_plan, cuda_graph=False, log=lambda _line: None)
    try:
        states = [(t.name, t.detail["from_output"]) for t in device.manifest.inputs_with("state")]
        assert states, "the reference model has recurrent state"
        for backend in (device, host):
            for t in backend.manifest.inputs_with("state"):
                backend.feed(t.name)[...] = t.detail["initial"]
        for tick, commit in enumerate((True, True, False, True, True, True)):
            feeds = {k: v for k, v in example_feeds(device.manifest, seed=10 + tick).items()
                     if k not in dict(states)}
            _fill(device, feeds)
            _fill(host, feeds)
            a = {k: v.copy() for k, v in device.run().items()}
            b = host.run()
            _close_to(a, b, rtol=1e-6)
            if commit:
                device.commit_state()
                for dst, src in states:
                    np.copyto(host.feed(dst), b[src])
        if capture_fails:
            assert device.graph_note.startswith("off (capture failed: cudaStreamEndCapture"), device.graph_note
            assert sum("CUDA graph off (capture failed" in line for line in lines) == 1, lines
        else:
            assert device.graph_note.startswith("on (2 captured)"), device.graph_note
        if on_target is not None:
            # Every tick but parity 1's first (plain); parity 0's plain run was the one at start-up.
            assert on_target.calls["cudaGraphLaunch"] == (0 if capture_fails else 5)
    finally:
        device.close()
        host.close()
    if on_target is not None:
        assert on_target.live() == 0, "close() left allocations, streams, events or graphs behind"


def test_bundle_cache_reuses_and_refuses_stale(built_plan, reference_bundle, tmp_path, on_target):
    from vla.runtime.backends.trt import open_trt_backend

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("model.onnx", "manifest.json"):
        shutil.copy(reference_bundle / name, bundle / name)
    doc = read_sidecar(built_plan)
    cached = cache_path(bundle, parse_sidecar(doc))
    cached.parent.mkdir()
    shutil.copy(built_plan, cached)
    shutil.copy(sidecar_path(built_plan), sidecar_path(cached))
    lines: list[str] = []
    backend = open_trt_backend(bundle, log=lines.append)
    backend.close()
    assert any("reusing" in line for line in lines), lines
    doc["key"]["model_hash"] = HASH_B
    sidecar_path(cached).write_text(json.dumps(doc))
    with pytest.raises(VlaError) as err:
        open_trt_backend(bundle, log=lines.append)
    assert "bundle changed (model hash sha256:cd34cd34…" in str(err.value) and "pass --rebuild" in str(err.value)
    backend = open_trt_backend(bundle, rebuild=True, log=lines.append)  # --rebuild: built again, then used
    backend.close()
    assert any("rebuilding" in line for line in lines), lines
    assert parse_sidecar(read_sidecar(cached)).model_hash == doc["manifest"]["model"]["hash"] != HASH_B


def test_bare_onnx_files_side_by_side_keep_a_plan_each(reference_bundle, tmp_path, on_target):
    from vla.runtime.backends.trt import open_trt_backend

    for name in ("a.onnx", "b.onnx"):  # each carries its manifest, as vla-run --engine takes them
        shutil.copy(reference_bundle / "model.onnx", tmp_path / name)
    lines: list[str] = []
    for name in ("a.onnx", "b.onnx", "a.onnx"):
        open_trt_backend(tmp_path / name, log=lines.append).close()
    decisions = [line for line in lines if "building it" in line or "reusing" in line]
    assert ["building it" in d for d in decisions] == [True, True, False], decisions
    assert len(list((tmp_path / "engines").glob("*.plan"))) == 2


def test_loop_on_the_trt_host_data_path(built_plan, on_target):
    """The loop on TensorRT with preprocessing and decoding on the host: state committed on the device
    (commit_state), the engine replayed as a graph per parity."""
    from vla.runtime.backends.trt import open_trt_backend
    from vla.runtime.inputs.sources import open_cameras
    from vla.runtime.loop.runner import RunConfig, Runner

    if on_target is None:
        import vla.kernels as K

        if K.cuda_available():
            pytest.skip("with CUDA kernels the loop takes the GPU data path (test_loop_on_the_trt_gpu_path)")
    backend = open_trt_backend(built_plan, log=lambda _line: None)
    cameras = open_cameras(["synthetic://?size=640x360"], backend.manifest.camera_names)
    runner = Runner(backend, cameras, RunConfig(max_ticks=12, budget_ms=1000.0))
    try:
        assert runner.data_path.startswith("host")
        records = list(runner)
        assert backend.graph_note == "on (2 captured)"
    finally:
        runner.close()
    assert len(records) == 12 and all(r["status"] == "ok" for r in records), [r["reason"] for r in records]
    assert all(np.isfinite(r["trajectory"]).all() for r in records)
    if on_target is not None:
        assert on_target.calls["cudaGraphLaunch"] >= 8 and on_target.live() == 0


def test_vla_run_builds_into_the_bundle_once_then_reuses(tiny_bundle, trt_target, tmp_path):
    """vla-run --backend trt on a bundle: the first start builds into the bundle's engine cache, the
    next one reuses that plan; both run the loop (the tiny configuration: a run takes ~1 ms, so
    every tick is on time however slow the machine)."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name in ("model.onnx", "manifest.json"):
        shutil.copy(tiny_bundle / name, bundle / name)
    args = ("--engine", bundle, "--backend", "trt", "--device", "cuda", "--camera", "synthetic://?size=640x360",
            "--frames", "6", "--budget-ms", "1000")
    runs = [run_cli(VLA_RUN, *args, env=trt_target.env) for _ in range(2)]
    for proc, says in zip(runs, ("building it", "reusing"), strict=True):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert says in proc.stderr and "backend tensorrt" in proc.stderr, proc.stderr[-3000:]
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        assert len(records) == 6 and all(r["status"] == "ok" for r in records), [r["reason"] for r in records]
    assert len(list((bundle / "engines").glob("*.plan"))) == 1


def test_vla_bench_times_a_plan_with_device_stages(built_plan, trt_target, tmp_path):
    """vla-bench on a .plan: H2D, compute and D2H from CUDA events (trtexec's figures) and the enqueue
    time, around the engine replayed as a CUDA graph."""
    out = tmp_path / "plan.json"
    proc = run_cli(VLA_BENCH, "--engine", built_plan, "--iterations", "6", "--duration", "0", "--cuda-graph",
                   "--json", out, env=trt_target.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["backend"].startswith("TensorRT") and "CUDA graph on" in r["backend"] and r["settings"]["cuda_graph"]
    assert {"preprocess", "h2d", "compute", "d2h", "decode", "enqueue", "e2e"} <= set(r["stages"])
    s = r["samples"]
    assert all(len(s[k]) == len(s["e2e"]) >= 6 for k in ("h2d", "compute", "d2h", "enqueue"))
    # The device stages happen inside the host-timed iteration.
    assert all(h + c + d <= e for h, c, d, e in zip(s["h2d"], s["compute"], s["d2h"], s["e2e"], strict=True))


def test_vla_export_build_writes_bundle_and_engine(trt_target, tmp_path):
    tiny = [a for kv in TINY_REFERENCE for a in ("--config", kv)]  # the export's steps at a size that builds fast
    proc = run_cli(VLA_EXPORT, "reference-v1", "-o", tmp_path / "b", "--build", *tiny, env=trt_target.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = list((tmp_path / "b" / "engines").glob("*.plan"))
    assert len(plans) == 1 and sidecar_path(plans[0]).is_file()
    assert parse_sidecar(read_sidecar(plans[0])).model_hash == json.loads(
        (tmp_path / "b" / "manifest.json").read_text())["model"]["hash"]


def test_vla_build_prints_each_parser_error_and_fails_in_one_line(fake_bundle, trt_target):
    proc = run_cli(VLA_BUILD, fake_bundle, env=trt_target.env)
    assert_one_line_error(proc, "cannot parse this ONNX model")
    assert "ONNX parser:" in proc.stdout + proc.stderr
    assert not list(fake_bundle.glob("**/*.plan"))


def test_a_corrupt_plan_is_one_line(built_plan, tmp_path, on_target):
    from vla.runtime.backends.trt import open_trt_backend

    plan = tmp_path / "v2.plan"
    plan.write_bytes(b"\x00" * 4096)
    shutil.copy(sidecar_path(built_plan), sidecar_path(plan))
    with pytest.raises(VlaError) as err:
        open_trt_backend(plan, log=lambda _line: None)
    assert "cannot deserialize this plan" in str(err.value) and "rebuild it" in str(err.value)
    if on_target is not None:
        assert on_target.live() == 0, "a failed load left allocations or streams behind"


def test_trt_device_io_uploads_runs_downloads_and_captures(built_plan, reference_bundle, on_target):
    """TrtDeviceIO, the GPU data path's view of TensorRT, on the stand-in: a pinned copy into the
    engine's own camera buffer stands in for the preprocess kernel (kernels need a GPU), the run is
    enqueued without a wait, only the trajectory comes back, and the sequence captured as a graph
    replays with the pinned buffer's new contents."""
    from vla.runtime.backends.trt import TrtDeviceIO, open_trt_backend
    from vla.runtime.engine import open_engine
    from vla.runtime.inputs.feeds import example_feeds

    if on_target is None:
        pytest.skip("on TensorRT the data path runs with its kernels (test_loop_on_the_trt_gpu_path)")
    backend = open_trt_backend(built_plan, log=lambda _line: None)
    reference = open_engine(str(reference_bundle), threads=1, backend="ort")
    try:
        io = TrtDeviceIO(backend)
        m = backend.manifest
        (camera,) = [t.name for t in m.inputs_with("camera")]
        trajectory = m.outputs_with("trajectory")[0].name
        before = io.run_key()
        device_in = io.input(camera)  # written on the device from now on: no longer uploaded by the backend
        io.host_outputs([])  # and nothing copied back but what the tick downloads itself
        assert io.run_key() != before
        _, pinned_in = io.staging(device_in.shape, device_in.dtype)
        device_out = io.output(trajectory)
        _, pinned_out = io.staging(device_out.shape, device_out.dtype)

        def tick() -> None:
            io.upload(device_in, pinned_in)
            io.enqueue_run()
            io.download(pinned_out, device_out)

        def expected(seed: int) -> np.ndarray:
            feeds = example_feeds(m, seed=seed)
            _fill(reference, feeds)
            np.copyto(pinned_in, feeds[camera])
            _fill(backend, {k: v for k, v in feeds.items() if k != camera})
            return reference.run()[trajectory].copy()

        want = expected(3)
        tick()
        io.synchronize()
        io.finish_run()
        np.testing.assert_array_equal(pinned_out, want)
        graph = io.capture(tick)
        assert on_target.calls["cudaGraphInstantiate"] >= 1
        want = expected(4)
        pinned_out[...] = np.nan
        graph.launch()
        io.synchronize()
        np.testing.assert_array_equal(pinned_out, want)
        graph.close()
    finally:
        backend.close()
        reference.close()
    assert on_target.live() == 0


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_loop_on_the_trt_gpu_path(built_plan, trt_target, cuda_graph):
    """The loop on TensorRT's GPU data path (TrtDeviceIO): frames up, preprocess, engine and decode on
    the device; with CUDA graphs, one per state parity, captured after the first runs and replayed."""
    import vla.kernels as K
    from vla.runtime.backends.trt import open_trt_backend
    from vla.runtime.inputs.sources import open_cameras
    from vla.runtime.loop.runner import RunConfig, Runner

    if trt_target.name == "stand-in":
        pytest.skip("the stand-in's device memory is host memory: the data path's CUDA kernels need a GPU")
    if not K.cuda_available():
        pytest.skip(f"the kernels were built without CUDA here ({K.cuda_status()})")
    backend = open_trt_backend(built_plan, cuda_graph=cuda_graph, log=lambda _line: None)
    cameras = open_cameras(["synthetic://?size=1920x1080&fps=30"], backend.manifest.camera_names)
    runner = Runner(backend, cameras, RunConfig(max_ticks=20, cuda_graph=cuda_graph))
    try:
        assert runner.data_path.startswith("GPU")
        records = list(runner)
        tick = runner._device_tick
        assert tick.last_action == ("replay" if cuda_graph else "eager"), tick.graph_note
        if cuda_graph:
            assert tick.graph_note == "on (2 captured)"
    finally:
        runner.close()
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) >= 15, [r["reason"] for r in records if r["status"] != "ok"]
    assert all(np.isfinite(r["trajectory"]).all() for r in ok)
