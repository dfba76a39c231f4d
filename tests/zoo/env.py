"""The zoo's Python environment: a venv under build/zoo-env with the third-party libraries the zoo's
policies are written with (LeRobot, timm, transformers, tokenizers, diffusers), built on first use.

Why a second environment: the project pins a CPU-only torch, and PyPI's torchvision (which timm and
LeRobot need) is linked against CUDA torch and cannot load beside it. The venv is made with
``--system-site-packages``, so the installed ``vla`` package, onnx, onnxscript, onnxruntime and
numpy are the main install's, while torch/torchvision and the zoo's libraries shadow the main
env's inside it. It is reused while its stamp matches the requirements' hash (requirements files,
Python version), rebuilt otherwise. A machine that cannot get the wheels gets ``ZooEnvUnavailable``
with pip's last line, so the zoo tests skip saying why instead of failing on a network.

Run ``python tests/zoo/env.py`` to build (or check) it by hand; it prints the interpreter's path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: Where the env lives: build/zoo-env, or $VLA_ZOO_ENV (e.g. a folder outside the checkout, so that
#: fresh clones on one machine share one env instead of each building its own).
ENV_DIR = Path(os.environ.get("VLA_ZOO_ENV") or ROOT / "build" / "zoo-env")
REQUIREMENTS = HERE / "requirements.txt"
REQUIREMENTS_NODEPS = HERE / "requirements-nodeps.txt"
STAMP = ".zoo-requirements.sha256"

#: Imports that must work in the finished env: what the policies use, and vla's exporter beneath them.
SMOKE = ("import torch, torchvision, timm, transformers, tokenizers, diffusers, onnx, onnxscript, vla.export; "
         "from lerobot.policies.act.modeling_act import ACTPolicy")

#: Everything the zoo runs in this env is offline: random weights, configs built in code, no hub.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}


class ZooEnvUnavailable(RuntimeError):
    """The zoo env could not be built here (no wheel, no network); the message is pip's last line."""


def requirements_hash() -> str:
    """What the env is built from: both requirements files and the interpreter's version."""
    h = hashlib.sha256()
    for path in (REQUIREMENTS, REQUIREMENTS_NODEPS):
        h.update(path.read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


def env_python(env_dir: Path = ENV_DIR) -> Path:
    return env_dir / "bin" / "python"


def offline_env(**extra: str) -> dict[str, str]:
    """os.environ plus the offline switches, for every process that runs zoo code."""
    return {**os.environ, **OFFLINE, **extra}


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=offline_env())
    if proc.returncode != 0:
        raise ZooEnvUnavailable(f"{what} failed: {_last_line(proc.stderr or proc.stdout)}")


def _build(env_dir: Path) -> None:
    shutil.rmtree(env_dir, ignore_errors=True)
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], "python -m venv")
    pip = [str(env_python(env_dir)), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    _run([*pip, "-r", str(REQUIREMENTS)], f"pip install -r {REQUIREMENTS.relative_to(ROOT)}")
    _run([*pip, "--no-deps", "-r", str(REQUIREMENTS_NODEPS)], f"pip install -r {REQUIREMENTS_NODEPS.relative_to(ROOT)}")
    _run([str(env_python(env_dir)), "-c", SMOKE], "the zoo env's import check")


def ensure_env(env_dir: Path = ENV_DIR, log=None) -> Path:
    """The zoo env's interpreter, building the env first when it is missing or stale.

    A file lock keeps two pytest processes from building it at once; ``log`` (a callable taking a
    line) hears about a build, which takes minutes and GBs (torch's CUDA wheels).
    """
    wanted = requirements_hash()
    stamp = env_dir / STAMP
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(env_dir.parent / "zoo-env.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == wanted and env_python(env_dir).exists():
            return env_python(env_dir)
        if log:
            log(f"building the zoo env in {env_dir} (torch, torchvision, LeRobot, timm, transformers; minutes)")
        t0 = time.monotonic()
        _build(env_dir)
        stamp.write_text(wanted + "\n")
        if log:
            log(f"zoo env built in {time.monotonic() - t0:.0f} s")
        return env_python(env_dir)


if __name__ == "__main__":
    try:
        print(ensure_env(log=lambda line: print(line, file=sys.stderr)))
    except ZooEnvUnavailable as exc:
        sys.exit(f"zoo env: {exc}")
