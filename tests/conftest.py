"""Shared fixtures: one real export of the reference model per test session (≈15 s)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Console scripts run as modules with this interpreter, so tests never pick up another install.
VLA_EXPORT = [sys.executable, "-m", "vla.export.cli"]
VLA_RUN = [sys.executable, "-m", "vla.runtime.cli"]


def run_cli(cmd: list[str], *args: str, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


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
    proc = run_cli(VLA_EXPORT, "reference", "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def bundle_copy(reference_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(reference_bundle, dst)
    return dst


@pytest.fixture(scope="session")
def reference_manifest(reference_bundle) -> dict:
    return json.loads((reference_bundle / "manifest.json").read_text())
