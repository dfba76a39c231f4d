"""The zoo: driving policies written with the libraries of the field, from export through the loop.

Three policies (``tests/zoo/policies.py``), tiny, offline, random weights: (a) LeRobot's ACT,
(b) LeRobot's Diffusion Policy with its DDIM sampler unrolled and a ``noise`` input, (c) a timm
backbone shared by three cameras + a transformers BERT encoder fed by a ``tokenizers`` WordPiece
tokenizer + a GRU state. Each is saved as a user would save it (state_dict, torch.export archive,
safetensors + tokenizer.json), exported FP32 by ``vla-export`` with parity, run by ``vla-run`` for
3 s with a multi-word command, and benched by ``vla-bench`` (engine and loop).

They are built and exported in the zoo env (``tests/zoo/env.py``: build/zoo-env, made on first use,
minutes; the tests skip with pip's reason where its wheels cannot be had); the bundles run in this
environment, as on a vehicle. The weights are untrained, so the loop runs with ``--limits warn``
(their paths break the plausibility limits) and a budget no machine misses: these tests are about
every part working on models that are not ours, not about speed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from zoo import env as zoo_env
from zoo.env import ZooEnvUnavailable, ensure_env, offline_env
from zoo.policies import COMMAND

from conftest import run_cli

TESTS = Path(__file__).resolve().parent
VLA_RUN = [sys.executable, "-m", "vla.runtime.cli"]
VLA_BENCH = [sys.executable, "-m", "vla.runtime.bench.cli"]
VLA_REPLAY = [sys.executable, "-m", "vla.runtime.replay.cli"]
ZOO = ("act", "diffusion", "text")
#: Loop settings every machine meets with these models (~30-100 ms an engine run on 2 loaded cores).
LOOP = ("--rate", "4", "--budget-ms", "1000", "--limits", "warn")


# ---- the zoo env: reused while its requirements match (no build here: _build is replaced by a recorder,
# because the real one downloads GBs; the real build is what the zoo_python fixture does) -------------
def _fake_env(tmp_path: Path, stamp: str) -> Path:
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").touch()
    (env / zoo_env.STAMP).write_text(stamp + "\n")
    return env


def test_zoo_env_reused_while_its_stamp_matches(tmp_path, monkeypatch):
    env = _fake_env(tmp_path, zoo_env.requirements_hash())
    monkeypatch.setattr(zoo_env, "_build", lambda d: pytest.fail("rebuilt an env whose stamp matches"))
    assert ensure_env(env) == env / "bin" / "python"


def test_zoo_env_rebuilt_when_requirements_change(tmp_path, monkeypatch):
    env = _fake_env(tmp_path, "0" * 64)
    built = []
    monkeypatch.setattr(zoo_env, "_build", built.append)
    assert ensure_env(env) == env / "bin" / "python"
    assert built == [env]
    assert (env / zoo_env.STAMP).read_text().strip() == zoo_env.requirements_hash()


def test_zoo_env_failure_is_pips_last_line_and_leaves_no_stamp(tmp_path, monkeypatch):
    env = _fake_env(tmp_path, "0" * 64)

    def fail(_):
        zoo_env._run([sys.executable, "-c", "import sys; sys.exit('pip: noise\\nERROR: No matching distribution')"],
                     "pip install")

    monkeypatch.setattr(zoo_env, "_build", fail)
    with pytest.raises(ZooEnvUnavailable, match=r"^pip install failed: ERROR: No matching distribution$"):
        ensure_env(env)
    assert (env / zoo_env.STAMP).read_text().strip() == "0" * 64


# ---- the zoo -------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def zoo_python(pytestconfig) -> Path:
    """The zoo env's interpreter; its first build (minutes) is announced on the terminal, past capture."""
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        if reporter and capture:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"zoo: {line}")

    try:
        return ensure_env(log=say)
    except ZooEnvUnavailable as exc:
        pytest.skip(f"zoo env unavailable: {exc}")


class Exported:
    """One zoo policy, saved as a user saves it (``info``: zoo/make.py's record) and exported FP32."""

    def __init__(self, folder: Path, info: dict, export_stderr: str) -> None:
        self.folder, self.info, self.export_stderr = folder, info, export_stderr
        self.bundle = folder / "bundle"
        self.manifest = json.loads((self.bundle / "manifest.json").read_text())
        self.parity = json.loads((self.bundle / "parity.json").read_text())


@pytest.fixture(scope="session")
def zoo_bundles(zoo_python, tmp_path_factory):
    """name -> Exported, each made once per session, on first use."""
    made: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in made:
            folder = tmp_path_factory.mktemp(f"zoo-{name}")
            env = offline_env(PYTHONPATH=str(TESTS))
            extra = ["--tokenizer"] if name == "text" else []
            proc = run_cli([str(zoo_python), "-m", "zoo.make", name, str(folder), *extra], cwd=folder, env=env)
            assert proc.returncode == 0, proc.stderr
            info = json.loads((folder / "info.json").read_text())
            # The text policy (transformers) is exported from the checkout root, where the project's
            # own folders (kernels/) must not shadow what the user's libraries import.
            proc = run_cli([str(zoo_python), "-m", "vla.export.cli", info["model"], *info["args"],
                            "--command", COMMAND, "-o", folder / "bundle"],
                           cwd=TESTS.parent if name == "text" else folder, env=env)
            assert proc.returncode == 0, proc.stderr
            assert "Traceback" not in proc.stderr, proc.stderr
            made[name] = Exported(folder, info, proc.stderr)
        return made[name]

    return get


def _onnx_parameters(model_path: Path) -> int:
    model = onnx.load(str(model_path))
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))


@pytest.mark.parametrize("name", ZOO)
def test_exports_fp32_with_parity(zoo_bundles, name):
    z = zoo_bundles(name)
    assert z.parity["passed"], z.parity
    assert z.parity["trajectory"]["ade_m"] < 1e-3, z.parity
    assert z.manifest["export"]["precision"]["mode"] == "fp32"
    # Shared or unused weights never make the bundle larger than the PyTorch model.
    torch_params = z.info["parameters"]
    assert _onnx_parameters(z.bundle / "model.onnx") <= torch_params
    assert z.manifest["export"]["cleanup"]["after"]["parameters"] <= torch_params
    # The size the manifest records is the PyTorch model's own, for every saved form (.pt2 included).
    assert z.manifest["model"]["parameters"] == torch_params


def test_text_policy_bundle_carries_its_tokenizer(zoo_bundles):
    z = zoo_bundles("text")
    block = z.manifest["tokenizer"]
    assert (z.bundle / block["file"]).read_bytes() == (z.folder / "tokenizer.json").read_bytes()
    assert block["vocab_size"] <= 256 and block["pad_id"] == 0
    # The backbone runs once per camera: three branches, one copy of its weights in the graph.
    assert z.manifest["export"]["cleanup"].get("deduplicated", {}).get("parameters", 0) > 0


def test_diffusion_sampler_unrolled_as_lerobot_samples(zoo_bundles):
    """The exported forward (DDIM steps over buffers) gives LeRobot's own set_timesteps/step loop's result."""
    z = zoo_bundles("diffusion")
    assert z.info["sampler_max_abs_diff"] < 1e-5
    assert {t["role"] for t in z.manifest["inputs"]} >= {"noise", "camera", "ego", "command"}


@pytest.mark.parametrize("name", ZOO)
def test_runs_in_the_loop_with_a_multi_word_command(zoo_bundles, name, tmp_path):
    z = zoo_bundles(name)
    out = tmp_path / "run.jsonl"
    proc = run_cli(VLA_RUN, "--engine", z.bundle, "--camera", "synthetic://", "--duration", "3",
                   "--command", COMMAND, *LOOP, "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) >= 4, proc.stderr
    traj = next(t for t in z.manifest["outputs"] if t["role"] == "trajectory")
    cams = {n for t in z.manifest["inputs"] if t["role"] == "camera" for n in t["camera"]["names"]}
    for r in records:
        assert r["schema"] == "vla.tick/2"
        assert r["status"] in ("ok", "late", "fallback"), r  # never a fault: no crash, no run of failures
        assert set(r["frame_id"]) == cams
        assert np.isfinite(np.asarray(r["trajectory"])).all()
        assert len(r["trajectory"]) == traj["shape"][2] and r["dt"] == traj["trajectory"]["dt"]
    ok = [r for r in records if r["status"] == "ok"]
    assert ok, [r["reason"] for r in records]
    # A nav-id model names the command its phrase selected; a text model, the text it read.
    assert {r["command"] for r in records} == {COMMAND if name == "text" else "turn_left"}
    modes = traj["shape"][1]
    assert all(0 <= r["mode"] < modes for r in ok)


@pytest.mark.parametrize("name", ZOO)
def test_benches(zoo_bundles, name, tmp_path):
    z = zoo_bundles(name)
    engine = run_cli(VLA_BENCH, "--engine", z.bundle, "--iterations", "5", "--duration", "0.3", "--warmup", "0.1",
                     "--command", COMMAND, "--json", tmp_path / "engine.json")
    assert engine.returncode == 0, engine.stderr
    report = json.loads((tmp_path / "engine.json").read_text())
    assert report["mode"] == "engine" and report["stages"]["compute"]["count"] >= 5
    loop = run_cli(VLA_BENCH, "--engine", z.bundle, "--loop", "--ticks", "6", "--rate", "4", "--budget-ms", "1000",
                   "--limits", "warn", "--command", COMMAND, "--json", tmp_path / "loop.json")
    assert loop.returncode == 0, loop.stderr
    report = json.loads((tmp_path / "loop.json").read_text())
    assert report["mode"] == "loop" and report["stages"]["e2e"]["count"] >= 1, report["stages"]


def test_diffusion_policy_declared_in_stages_runs_dual_rate(zoo_bundles, tmp_path):
    """A user's split of LeRobot's Diffusion Policy, declared in its spec (zoo/policies.py DIFFUSION_STAGES):
    the observation encoder as an async stage, one DDIM step of the U-Net repeated 4 times; the composition
    samples as LeRobot's own loop does, exports stage by stage and drives the loop at two rates."""
    z = zoo_bundles("diffusion-stages")
    assert z.info["sampler_max_abs_diff"] < 1e-5  # the declared stages, composed, against LeRobot's sampler
    stages = {s["name"]: s for s in z.manifest["stages"]}
    assert list(stages) == ["condition", "denoise"] and stages["denoise"]["repeat"]["steps"] == 4
    assert stages["condition"]["rate"] == "async" and stages["denoise"]["repeat"]["index"] == "step"
    assert z.parity["passed"] and z.parity["composed"]["trajectory"]["ade_m"] < 1e-3, z.parity
    assert not (z.bundle / "model.onnx").exists()
    out = tmp_path / "run.jsonl"
    proc = run_cli(VLA_RUN, "--engine", z.bundle, "--camera", "synthetic://", "--duration", "3",
                   "--command", COMMAND, *LOOP, "--output", out)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["status"] in ("ok", "late", "fallback") for r in records), records
    ok = [r for r in records if r["status"] == "ok"]
    assert ok, [r["reason"] for r in records]
    assert all("denoise" in r["stage_ms"] and r["context_age_ms"] <= 600 for r in ok)
    assert "dual rate: condition async" in proc.stderr


@pytest.mark.parametrize("name", (*ZOO, "diffusion-stages"))
def test_recorded_and_replayed_bit_exact(zoo_bundles, name, tmp_path):
    """Policies we did not write (LeRobot ACT and Diffusion, a transformers text policy, a user's stage split of
    Diffusion Policy on the dual-rate schedule): ``vla-run --record`` then ``vla-replay --tol 0`` with the same
    bundle gives every output bit-exact, mcap's own reader reads the file, and its summary is written."""
    from mcap.reader import make_reader

    z = zoo_bundles(name)
    log = tmp_path / "run.mcap"
    proc = run_cli(VLA_RUN, "--engine", z.bundle, "--camera", "synthetic://", "--frames", "8", "--command", COMMAND,
                   *LOOP, "--record", log, "--record-raw", "--output", tmp_path / "run.jsonl")
    assert proc.returncode == 0, proc.stderr
    with log.open("rb") as f:
        reader = make_reader(f)
        assert reader.get_summary() is not None
        ticks = [json.loads(m.data) for _, _, m in reader.iter_messages(topics=["/tick"])]
    assert len(ticks) == 8
    report = tmp_path / "report.json"
    proc = run_cli(VLA_REPLAY, log, "--engine", z.bundle, "--tol", "0", "--json", report)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(report.read_text())
    assert r["ok"] and r["compared"] >= 8 and r["skipped"] == 0, r
    assert all(o["max_abs"] == 0.0 for o in r["outputs"]), r["outputs"]
