"""The extension imports on a machine without a GPU or driver and says CUDA is unavailable."""

from __future__ import annotations

import glob
import subprocess
import sys

import vla.kernels as kernels


def _machine_has_nvidia_driver() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*")) or bool(glob.glob("/proc/driver/nvidia/version"))


def test_import_reports_cuda_state_without_crashing():
    report = kernels.cuda_report()
    assert isinstance(kernels.cuda_available(), bool)
    assert kernels.cuda_status().startswith("CUDA available" if kernels.cuda_available() else "CUDA unavailable")
    if not _machine_has_nvidia_driver():
        # The case CI and the dev machine are in: built with nvcc, no driver.
        assert kernels.cuda_available() is False
        if report["compiled"]:
            assert report["error_code"] == 35, report  # cudaErrorInsufficientDriver
            assert "no NVIDIA driver" in kernels.cuda_status()


def test_import_in_a_fresh_process_with_no_visible_device():
    code = "import vla.kernels as k; print(k.cuda_available()); print(k.cuda_status())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "False"
    assert proc.stdout.splitlines()[1].startswith("CUDA unavailable")


def test_build_contains_cuda_when_nvcc_was_found():
    import shutil

    if shutil.which("nvcc"):
        # nvcc is on this machine (and CI's): the build must have compiled the CUDA part,
        # so a CUDA compile error can never pass silently.
        assert kernels.cuda_compiled(), kernels.cuda_report()
        assert "87" in kernels.cuda_report()["architectures"]


def test_vehicle_runtime_does_not_need_pytorch():
    """`pip install .` (no export extra) must be able to run bundles: the runtime never imports torch."""
    code = ("import sys, vla.runtime.cli, vla.runtime.loop.runner, vla.runtime.engine, "
            "vla.runtime.inputs.sources.synthetic; "
            "from vla.runtime import Runner; print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
