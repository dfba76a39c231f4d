"""Shared fixtures: one real export of the reference model per test session (≈15 s), and one of a
tiny configuration of it whose engine runs in about a millisecond.

Tests of the loop's decisions (late, overrun, fallback, state, camera and ego trouble, health) run
the tiny bundle with ``paced``: a real engine whose run time the test sets, so what they assert
holds on any machine, however fast, and with other work on its cores. Tests that run the full
reference model at real speed assert only what holds everywhere (records well-formed, statuses
consistent with the timings they report), never how many ticks were on time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# Console scripts run as modules with this interpreter, so tests never pick up another install.
VLA_EXPORT = [sys.executable, "-m", "vla.export.cli"]
VLA_RUN = [sys.executable, "-m", "vla.runtime.cli"]


#: The reference model's architecture at a size whose engine runs in about 1 ms on one core (the
#: same inputs, outputs and roles: three cameras, ego, command, text, noise, recurrent memory).
TINY_REFERENCE = ("image_height=32", "image_width=64", "vit_dim=32", "vit_depth=1", "vit_heads=1", "dim=32",
                  "heads=1", "resampler_depth=1", "fusion_depth=1", "world_depth=1", "action_depth=1",
                  "scene_tokens=8", "memory_pool=2", "euler_steps=1")
#: Reference model 2 at a size that exports in seconds.
TINY_V2 = ("image_height=32", "image_width=64", "vit_dim=32", "vit_depth=1", "vit_heads=1", "dim=32", "heads=1",
           "context_tokens=4", "context_depth=1", "expert_dim=32", "expert_heads=1", "expert_depth=1",
           "waypoints=16")


def run_cli(cmd: list[str], *args: str, timeout: float | None = None, **kw) -> subprocess.CompletedProcess:
    """Run a command to completion. No time limit by default: how long work takes is the machine's
    business; a limit belongs only where a test is about a command ending (a signal, a hang)."""
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def paced(run: Callable[[], dict], ms: float) -> Callable[[], dict]:
    """The engine's real run, then a sleep until ``ms`` have passed since it started: an engine whose
    run time the test sets (the tiny bundle runs in ~1 ms, so ``ms`` is what the loop sees)."""

    def run_paced() -> dict:
        t0 = time.monotonic()
        out = run()
        time.sleep(max(0.0, t0 + ms / 1000.0 - time.monotonic()))
        return out

    return run_paced


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A user error: non-zero exit, no traceback, a last stderr line naming the problem."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    err = [ln for ln in proc.stderr.strip().splitlines() if "error" in ln]
    assert len(err) == 1, proc.stderr
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


@pytest.fixture(scope="session")
def reference_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "reference"
    proc = run_cli(VLA_EXPORT, "reference-v1", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def bundle_copy(reference_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(reference_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """The reference model in its tiny configuration (``TINY_REFERENCE``), exported as a user would."""
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    proc = run_cli(VLA_EXPORT, "reference-v1", "-o", out, *(a for kv in TINY_REFERENCE for a in ("--config", kv)))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def tiny_v2_bundle(tmp_path_factory) -> Path:
    """Reference model 2 (a bundle of stages: vision + context async, the action expert every tick) in its tiny
    configuration (``TINY_V2``), exported as a user would; shared, so tests must not write into it."""
    out = tmp_path_factory.mktemp("bundles") / "tiny-v2"
    proc = run_cli(VLA_EXPORT, "reference", "-o", out, *(a for kv in TINY_V2 for a in ("--config", kv)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def reference_manifest(reference_bundle) -> dict:
    return json.loads((reference_bundle / "manifest.json").read_text())
