"""vla.runtime.bench.environment: the machine, clocks and versions every vla-bench report carries.

This machine is an x86 VM without a GPU, cpufreq, tegrastats, nvpmodel or jetson_clocks, and the Jetson files
(/etc/nv_tegra_release, /proc/device-tree/model, devfreq, nvpmodel state) cannot exist here. So the Jetson paths
run against fake trees under tmp_path (``collect(root=...)``), the tools against small stand-in scripts that
print recorded output, and the parsers against output recorded on real boards (public logs and docs).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vla.runtime.bench import environment as envmod
from vla.runtime.bench.environment import (
    TegrastatsSampler,
    clock_warnings,
    collect,
    describe,
    max_power_mode,
    parse_cuda_version,
    parse_jetson_clocks,
    parse_l4t_release,
    parse_nvidia_smi,
    parse_nvpmodel,
    parse_nvpmodel_conf,
    parse_tegrastats,
)

ROOT = Path(__file__).resolve().parent.parent
NO_TOOLS = {"nvidia-smi": None, "nvpmodel": None, "jetson_clocks": None}

# ------------------------------------------------------------------------------------------ recorded output

# tegrastats, Orin Nano 8GB, JetPack 6 (public logs): idle, idle after a load, busy.
TS_NANO_IDLE = (
    "05-05-2025 06:05:39 RAM 2639/7620MB (lfb 9x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [1%@729,4%@729,8%@729,4%@729,5%@729,4%@729] GR3D_FREQ 0% cpu@44.156C soc2@43.781C soc0@44.687C "
    "gpu@45.968C tj@45.968C soc1@45.312C VDD_IN 5263mW/5263mW VDD_CPU_GPU_CV 717mW/717mW VDD_SOC 1794mW/1794mW"
)
TS_NANO_AFTER = (
    "10-08-2026 04:38:21 RAM 1343/7620MB (lfb 157x4MB) SWAP 165/3810MB (cached 3MB) "
    "CPU [0%@1497,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 15%@204 "
    "GR3D_FREQ 0%@[305] NVDEC off NVJPG off VIC off OFA off APE 200 "
    "cpu@48.562C soc2@46.593C soc0@48.625C gpu@49.625C tj@49.312C soc1@47.937C "
    "VDD_IN 5251mW/8535mW VDD_CPU_GPU_CV 512mW/1944mW VDD_SOC 2720mW/3659mW"
)
TS_NANO_BUSY = (
    "10-08-2026 04:35:02 RAM 6712/7620MB (lfb 12x4MB) SWAP 369/3810MB (cached 8MB) "
    "CPU [38%@1497,2%@729,1%@729,0%@729,1%@729,0%@729] EMC_FREQ 61%@2133 "
    "GR3D_FREQ 99%@[612] NVDEC off NVJPG off VIC off OFA off APE 200 "
    "cpu@57.125C soc2@55.093C soc0@56.625C gpu@58.625C tj@58.312C soc1@55.937C "
    "VDD_IN 16321mW/11204mW VDD_CPU_GPU_CV 7104mW/4944mW VDD_SOC 3120mW/3659mW"
)
# AGX Orin 64GB, JetPack 5 (catid.io): upper-case sensor names, -256C for absent sensors, "NC" channels.
TS_AGX_JP5 = (
    "04-24-2023 00:01:24 RAM 1282/62795MB (lfb 15152x4MB) SWAP 0/31398MB (cached 0MB) "
    "CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] "
    "EMC_FREQ 0%@2133 GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0 VIC_FREQ 729 APE 174 CV0@-256C CPU@42.593C Tboard@32C "
    "SOC2@39.343C Tdiode@33.25C SOC0@39.375C CV1@-256C GPU@-256C tj@42.593C SOC1@40.468C CV2@-256C "
    "VDD_GPU_SOC 2399mW/2399mW VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 4032mW/4032mW NC 0mW/0mW "
    "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW"
)
# AGX Orin 64GB, JetPack 6, DLA in use: GR3D frequency per GPC, "NVDLA0_FREQ @1600" is no temperature.
TS_AGX_DLA = (
    "11-21-2025 08:49:48 RAM 13983/62780MB (lfb 424x4MB) SWAP 126/31390MB (cached 0MB) CPU [90%@2201,100%@2201,"
    "100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201] "
    "EMC_FREQ 1%@2133 GR3D_FREQ 14%@[407,407] VIC_FREQ 115 NVDLA0_FREQ @1600 APE 174 CV0@73.625C CPU@77.281C "
    "Tboard@62C SOC2@70C Tdiode@62.25C SOC0@69.531C CV1@72.5C GPU@69.125C tj@77.281C SOC1@68.968C CV2@67.25C "
    "VDD_GPU_SOC 3150mW/2971mW VDD_CPU_CV 14312mW/12415mW VIN_SYS_5V0 4968mW/5048mW VDDQ_VDD2_1V8AO 1091mW/1091mW"
)
# Jetson Nano, JetPack 4: POM_ rails without units.
TS_NANO_JP4 = (
    "RAM 1766/3964MB (lfb 197x4MB) SWAP 0/2048MB (cached 0MB) CPU [24%@1224,15%@1224,13%@1224,10%@1224] "
    "EMC_FREQ 0% GR3D_FREQ 0% PLL@21C CPU@25C PMIC@100C GPU@23.5C AO@33.5C thermal@24.5C "
    "POM_5V_IN 2545/2547 POM_5V_GPU 0/0 POM_5V_CPU 549/529"
)

# jetson_clocks --show: AGX Orin, JetPack 5, before `sudo jetson_clocks` (public notes; cpu8-11 offline).
JC_AGX_DVFS = """SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
Online CPUs: 0-7
cpu0:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1728000 CurrentFreq=1420800 IdleStates: WFI=1 c7=1
cpu1:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1728000 CurrentFreq=729600 IdleStates: WFI=1 c7=1
cpu2:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1728000 CurrentFreq=1420800 IdleStates: WFI=1 c7=1
cpu3:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1728000 CurrentFreq=729600 IdleStates: WFI=1 c7=1
cpu4:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1728000 CurrentFreq=1497600 IdleStates: WFI=1 c7=1
cpu5:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1728000 CurrentFreq=729600 IdleStates: WFI=1 c7=1
cpu6:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1728000 CurrentFreq=1497600 IdleStates: WFI=1 c7=1
cpu7:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1728000 CurrentFreq=729600 IdleStates: WFI=1 c7=1
cpu8:  Online=0 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=729600 IdleStates: WFI=1 c7=1
GPU MinFreq=306000000 MaxFreq=828750000 CurrentFreq=306000000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=2133000000 FreqOverride=0
FAN Dynamic Speed Control=nvfancontrol hwmon3_pwm1=0
NV Power Mode: MODE_30W
"""
# AGX Orin, JetPack 7 (L4T R39) after `sudo jetson_clocks`: governor still schedutil, min == max == current.
_CPU_FIXED = "Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0"
JC_AGX_FIXED = "\n".join([
    "SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit",
    "Online CPUs: 0-11, Offline CPUs:",
    *(f"cpu{i}:{' ' if i > 9 else '  '}{_CPU_FIXED}" for i in range(12)),
    "GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000",
    "Active GPU TPCs: 8",
    "EMC MinFreq=3199000000 MaxFreq=3199000000 CurrentFreq=3199000000",
    "DLA0_CORE:   Online=1 MinFreq=0 MaxFreq=1600000000 CurrentFreq=1600000000",
    "FAN Dynamic Speed Control=nvfancontrol hwmon2_pwm1=66",
    "NV Power Mode: MAXN",
]) + "\n"
JC_NOT_ROOT = "Error: Run this script(/usr/bin/jetson_clocks) as a root user\n"

# nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY> --format=csv,noheader,nounits. No GPU here to record from: rows in
# the query's format with an idle H100 SXM's figures, a laptop GPU whose power.draw is [N/A], a name with a comma.
SMI_QUERY = """NVIDIA H100 80GB HBM3, 550.54.15, 345, 2619, 1980, 2619, 33, 69.87, P0
NVIDIA H100 80GB HBM3, 550.54.15, 1980, 2619, 1980, 2619, 61, 412.50, P0
"""
SMI_NA = "NVIDIA GeForce RTX 3070 Laptop GPU, 580.173.02, 210, 405, 2100, 7001, 45, [N/A], P8\n"
SMI_BANNER = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""
SMI_NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that "
                 "the latest NVIDIA driver is installed and running.\n")

L4T_R36_4_4 = ("# R36 (release), REVISION: 4.4, GCID: 41062509, BOARD: generic, EABI: aarch64, "
               "DATE: Mon Jun 16 16:07:13 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n")
NVPMODEL_CONF_AGX = """# AGX Orin power models (excerpt)
< POWER_MODEL ID=0 NAME=MAXN >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=MODE_15W >
< POWER_MODEL ID=2 NAME=MODE_30W >
< POWER_MODEL ID=3 NAME=MODE_50W >
< PM_CONFIG DEFAULT=2 >
"""


# ------------------------------------------------------------------------------------------ the real machine


def test_collect_on_this_machine():
    import numpy
    import onnxruntime

    env = collect()
    assert json.loads(json.dumps(env)) == env  # JSON as it is: no tuples, sets or objects
    cpu = env["cpu"]
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    assert cpu["model"] and cpu["model"] == (model or cpu["model"])
    assert cpu["logical_cores"] == os.cpu_count()
    assert cpu["affinity"] == sorted(os.sched_getaffinity(0))
    assert env["os"] == {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
                         "python": platform.python_version(), "distro": env["os"]["distro"]}
    versions = env["versions"]
    assert versions["onnxruntime"] == onnxruntime.__version__
    assert versions["onnxruntime_providers"] == onnxruntime.get_available_providers()
    assert versions["numpy"] == numpy.__version__
    assert versions["vla_runtime"] == "0.1.0"
    tensorrt = importlib.util.find_spec("tensorrt")
    assert (versions["tensorrt"] is None) == (tensorrt is None)

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        assert versions["git_revision"] is None
    else:
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
        assert versions["git_revision"] == head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")

    if shutil.which("nvidia-smi") is None:
        assert env["gpu"] is None
    else:
        assert env["gpu"].get("name") or env["gpu"].get("error")
    if not Path("/etc/nv_tegra_release").exists():
        assert env["jetson"] is None
    if not list(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_governor")):
        assert cpu["cpufreq"] is None and cpu["fixed_clocks"] is None
        assert clock_warnings(env) == [w for w in clock_warnings(env) if w.startswith("clock state unknown")]
        assert len(clock_warnings(env)) == 1


def test_describe_matches_benchmarks_machine():
    spec = importlib.util.spec_from_file_location("bench_machine", ROOT / "benchmarks" / "machine.py")
    machine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(machine)
    env = collect(tools=NO_TOOLS)
    assert describe(env) == machine.describe()  # no GPU and no Jetson here: the same line as the benchmarks'


def test_git_revision_outside_a_checkout(tmp_path):
    assert envmod.git_revision(tmp_path) is None
    # A checkout of some other project (a venv inside another repository) is not this project's revision.
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n')
        assert envmod.git_revision(tmp_path) is None


def test_torch_cuda_read_without_importing_torch(tmp_path, monkeypatch):
    pkg = tmp_path / "torch"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / "version.py").write_text("from typing import Optional\n__version__ = '2.5.0'\n"
                                    "cuda: Optional[str] = '12.6'\ngit_version = 'abc'\n")
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert envmod._torch_cuda() == "12.6"
    assert "torch" not in sys.modules


# ------------------------------------------------------------------------------------------ fake Jetson trees


def _write(root: Path, path: str, text: str) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def fake_orin(root: Path, *, governor: str, cpu_min: int, cur: list[int], gpu_min: int, pmode: int) -> Path:
    """An AGX Orin's files: 4 CPUs (cpu3 offline), iGPU devfreq, nvpmodel.conf and its state file."""
    _write(root, "/proc/device-tree/model", "NVIDIA Jetson AGX Orin Developer Kit\x00")
    _write(root, "/etc/nv_tegra_release", L4T_R36_4_4)
    _write(root, "/etc/os-release", 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\n')
    _write(root, "/proc/cpuinfo", "".join(
        f"processor\t: {i}\nmodel name\t: ARMv8 Processor rev 1 (v8l)\nBogoMIPS\t: 62.50\n"
        f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd42\n"
        f"CPU revision\t: 1\n\n" for i in range(3)))
    for i in range(4):
        base = f"/sys/devices/system/cpu/cpu{i}"
        if i:
            _write(root, f"{base}/online", "0\n" if i == 3 else "1\n")
        _write(root, f"{base}/cpufreq/scaling_governor", f"{governor}\n")
        _write(root, f"{base}/cpufreq/scaling_min_freq", f"{cpu_min}\n")
        _write(root, f"{base}/cpufreq/scaling_max_freq", "2201600\n")
        _write(root, f"{base}/cpufreq/scaling_cur_freq", f"{cur[i % len(cur)] if i < 3 else 115200}\n")
    gpu = "/sys/class/devfreq/17000000.ga10b"
    _write(root, f"{gpu}/governor", "nvhost_podgov\n")
    _write(root, f"{gpu}/min_freq", f"{gpu_min}\n")
    _write(root, f"{gpu}/max_freq", "1300500000\n")
    _write(root, f"{gpu}/cur_freq", f"{gpu_min}\n")
    _write(root, "/etc/nvpmodel.conf", NVPMODEL_CONF_AGX)
    _write(root, "/var/lib/nvpmodel/status", f"pmode:{pmode:04d} fmode:quiet\n")
    return root


def test_fake_orin_with_dvfs_and_a_low_power_mode(tmp_path):
    root = fake_orin(tmp_path, governor="schedutil", cpu_min=729600, cur=[2201600, 1113600, 729600],
                     gpu_min=306000000, pmode=2)
    env = collect(str(root), tools=NO_TOOLS)
    assert json.loads(json.dumps(env)) == env
    cpu = env["cpu"]
    assert cpu["model"] == "ARM Cortex-A78AE"
    assert cpu["cpufreq"] == {"cpus": 3, "governors": ["schedutil"], "cur_mhz": {"min": 729.6, "max": 2201.6},
                              "min_mhz": 729.6, "max_mhz": 2201.6, "not_fixed": ["cpu0", "cpu1", "cpu2"]}
    assert cpu["fixed_clocks"] is False
    assert env["os"]["distro"] == "Ubuntu 22.04.4 LTS"
    jetson = env["jetson"]
    assert jetson["model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert jetson["l4t"] == "36.4.4"
    assert jetson["nvpmodel"] == {"name": "MODE_30W", "id": 2, "source": "/var/lib/nvpmodel/status",
                                  "max": {"id": 0, "name": "MAXN"}, "at_max": False}
    assert jetson["jetson_clocks"] is None  # the tool is absent here
    assert jetson["gpu_freq"] == {"device": "17000000.ga10b", "governor": "nvhost_podgov", "cur_mhz": 306.0,
                                  "min_mhz": 306.0, "max_mhz": 1300.5, "fixed": False}
    assert jetson["emc_freq"] is None  # only in root-only debugfs
    assert (jetson["clocks_fixed"], jetson["clocks_fixed_source"]) == (False, "sysfs")
    assert clock_warnings(env) == [
        "Jetson clocks are not fixed (CPU and GPU scale with load, CPU 729.6-2201.6 MHz now): "
        "run `sudo jetson_clocks` before benchmarking",
        "nvpmodel power mode is MODE_30W (mode 2), not the board's maximum MAXN (mode 0): "
        "run `sudo nvpmodel -m 0`, then `sudo jetson_clocks`",
    ]
    assert describe(env).endswith(", NVIDIA Jetson AGX Orin Developer Kit (L4T 36.4.4, MODE_30W)")
    assert describe(env).startswith("ARM Cortex-A78AE, ")


@pytest.mark.parametrize("governor, cpu_min", [("performance", 729600), ("schedutil", 2201600)])
def test_fake_orin_with_fixed_clocks_at_maxn(tmp_path, governor, cpu_min):
    # jetson_clocks leaves the governor at schedutil and sets min == max: that is fixed, as "performance" is.
    root = fake_orin(tmp_path, governor=governor, cpu_min=cpu_min, cur=[2201600], gpu_min=1300500000, pmode=0)
    env = collect(str(root), tools=NO_TOOLS)
    assert env["cpu"]["fixed_clocks"] is True
    assert env["cpu"]["cpufreq"]["not_fixed"] == []
    assert env["jetson"]["clocks_fixed"] is True
    assert env["jetson"]["nvpmodel"]["at_max"] is True
    assert clock_warnings(env) == []


def test_fake_x86_with_schedutil(tmp_path):
    for i in range(2):
        base = f"/sys/devices/system/cpu/cpu{i}/cpufreq"
        _write(tmp_path, f"{base}/scaling_governor", "schedutil\n")
        _write(tmp_path, f"{base}/scaling_min_freq", "400000\n")
        _write(tmp_path, f"{base}/scaling_max_freq", "5100000\n")
        _write(tmp_path, f"{base}/scaling_cur_freq", f"{800000 + i * 3000000}\n")
    _write(tmp_path, "/proc/cpuinfo", "processor\t: 0\nmodel name\t: 13th Gen Intel(R) Core(TM) i9-13900K\n")
    env = collect(str(tmp_path), tools=NO_TOOLS)
    assert env["jetson"] is None
    assert env["cpu"]["model"] == "13th Gen Intel(R) Core(TM) i9-13900K"
    assert env["cpu"]["fixed_clocks"] is False
    assert clock_warnings(env) == [
        "CPU frequency scaling is active (governor schedutil, 800.0-3800.0 MHz now): "
        "set it with `sudo cpupower frequency-set -g performance`"]


def test_collect_survives_an_unreadable_tree(tmp_path):
    # Directories where files should be: every read fails; nothing may raise.
    for path in ("/proc/cpuinfo", "/etc/nv_tegra_release", "/proc/device-tree/model", "/etc/nvpmodel.conf",
                 "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "/var/lib/nvpmodel/status"):
        (tmp_path / path.lstrip("/")).mkdir(parents=True)
    env = collect(str(tmp_path), tools=NO_TOOLS)
    assert env["cpu"]["fixed_clocks"] is None
    assert env["jetson"]["l4t"] is None and env["jetson"]["nvpmodel"] is None
    assert env["jetson"]["clocks_fixed"] is None
    assert clock_warnings(env)[-1].startswith("clock state unknown")
    assert json.loads(json.dumps(env)) == env


# ------------------------------------------------------------------------------------------ stand-in tools


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_nvidia_smi_stand_in(tmp_path):
    (tmp_path / "query.txt").write_text(SMI_QUERY)
    (tmp_path / "banner.txt").write_text(SMI_BANNER)
    smi = _script(tmp_path / "nvidia-smi", f'''echo "$@" >> "{tmp_path}/args.txt"
case "$1" in --query-gpu=*) cat "{tmp_path}/query.txt";; *) cat "{tmp_path}/banner.txt";; esac
''')
    gpu = collect(str(tmp_path), tools={**NO_TOOLS, "nvidia-smi": smi})["gpu"]
    assert (tmp_path / "args.txt").read_text().splitlines()[0] == (
        "--query-gpu=name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,temperature.gpu,"
        "power.draw,pstate --format=csv,noheader,nounits")
    assert gpu["count"] == 2 and gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["driver_version"] == "550.54.15" and gpu["cuda_driver_version"] == "12.4"
    assert gpu["gpus"][1]["sm_mhz"] == 1980 and gpu["gpus"][1]["power_w"] == 412.5
    env = {"cpu": {"model": "AMD EPYC", "logical_cores": 2}, "os": {"system": "Linux", "release": "6.8",
           "python": "3.11.7"}, "gpu": gpu, "jetson": None}
    assert describe(env) == "AMD EPYC, 2 cores, Linux 6.8, Python 3.11.7, GPU 2x NVIDIA H100 80GB HBM3"


def test_nvidia_smi_failing_or_hanging(tmp_path, monkeypatch):
    (tmp_path / "msg.txt").write_text(SMI_NO_DRIVER)
    failing = _script(tmp_path / "failing", f'cat "{tmp_path}/msg.txt"\nexit 9\n')
    gpu = collect(str(tmp_path), tools={**NO_TOOLS, "nvidia-smi": failing})["gpu"]
    assert gpu == {"error": "nvidia-smi exited 9: " + SMI_NO_DRIVER.strip()}

    monkeypatch.setattr(envmod, "TOOL_TIMEOUT_S", 0.5)
    hanging = _script(tmp_path / "hanging", "exec sleep 30\n")
    started = time.monotonic()
    gpu = collect(str(tmp_path), tools={**NO_TOOLS, "nvidia-smi": hanging})["gpu"]
    assert gpu == {"error": "hanging timed out after 0.5 s"}
    assert time.monotonic() - started < 10


def test_jetson_tools_stand_ins(tmp_path):
    root = fake_orin(tmp_path / "root", governor="schedutil", cpu_min=729600, cur=[1420800],
                     gpu_min=306000000, pmode=2)
    (tmp_path / "jc.txt").write_text(JC_AGX_DVFS)
    (tmp_path / "nvp.txt").write_text("NVPM WARN: fan mode is not set!\nNV Power Mode: MODE_30W\n2\n")
    (tmp_path / "noroot.txt").write_text(JC_NOT_ROOT)
    tools = {"nvidia-smi": None,
             "nvpmodel": _script(tmp_path / "nvpmodel", f'cat "{tmp_path}/nvp.txt"\n'),
             "jetson_clocks": _script(tmp_path / "jetson_clocks", f'cat "{tmp_path}/jc.txt"\n')}
    jetson = collect(str(root), tools=tools)["jetson"]
    assert jetson["nvpmodel"] == {"name": "MODE_30W", "id": 2, "source": "nvpmodel -q",
                                  "max": {"id": 0, "name": "MAXN"}, "at_max": False}
    assert jetson["jetson_clocks"]["cpus_not_fixed"] == [f"cpu{i}" for i in range(8)]
    assert (jetson["clocks_fixed"], jetson["clocks_fixed_source"]) == (False, "jetson_clocks --show")

    # Not root: jetson_clocks refuses; recorded as such, and the clock state comes from sysfs instead.
    tools["jetson_clocks"] = _script(tmp_path / "jetson_clocks", f'cat "{tmp_path}/noroot.txt" >&2\nexit 1\n')
    jetson = collect(str(root), tools=tools)["jetson"]
    assert jetson["jetson_clocks"] == {"error": "needs root (`sudo jetson_clocks --show`): " + JC_NOT_ROOT.strip(),
                                       "needs_root": True}
    assert (jetson["clocks_fixed"], jetson["clocks_fixed_source"]) == (False, "sysfs")


# ------------------------------------------------------------------------------------------ parsers


def test_parse_nvidia_smi():
    rows = parse_nvidia_smi(SMI_QUERY + SMI_NA + "NVIDIA RTX A6000, Ada, 550.1, 1, 2, 3, 4, 5, 6.5, P2\n\n")
    assert rows[0] == {"name": "NVIDIA H100 80GB HBM3", "driver_version": "550.54.15", "sm_mhz": 345,
                       "mem_mhz": 2619, "max_sm_mhz": 1980, "max_mem_mhz": 2619, "temperature_c": 33,
                       "power_w": 69.87, "pstate": "P0"}
    assert rows[2]["power_w"] is None and rows[2]["pstate"] == "P8" and rows[2]["max_mem_mhz"] == 7001
    assert rows[3]["name"] == "NVIDIA RTX A6000, Ada" and rows[3]["power_w"] == 6.5
    assert len(rows) == 4
    assert parse_nvidia_smi("No devices were found\n") == []
    assert parse_cuda_version(SMI_BANNER) == "12.4"
    assert parse_cuda_version("no banner") is None


def test_parse_l4t_release():
    assert parse_l4t_release(L4T_R36_4_4) == "36.4.4"
    assert parse_l4t_release("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic") == "36.3.0"
    assert parse_l4t_release("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref") == "32.7.1"
    assert parse_l4t_release("not a release file") is None


def test_parse_nvpmodel_and_its_modes():
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    assert parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN_SUPER\n2\n") == \
        {"name": "MAXN_SUPER", "id": 2}
    assert parse_nvpmodel("NV Power Mode: 15W\n") == {"name": "15W", "id": None}
    assert parse_nvpmodel("nvpmodel: command failed") == {"name": None, "id": None}
    agx = parse_nvpmodel_conf(NVPMODEL_CONF_AGX)
    assert [m["name"] for m in agx] == ["MAXN", "MODE_15W", "MODE_30W", "MODE_50W"]
    assert max_power_mode(agx) == {"id": 0, "name": "MAXN"}
    # Orin Nano Super: the fastest mode is not the highest id.
    nano_super = parse_nvpmodel_conf("< POWER_MODEL ID=0 NAME=15W >\n< POWER_MODEL ID=1 NAME=25W >\n"
                                     "< POWER_MODEL ID=2 NAME=MAXN_SUPER >\n< POWER_MODEL ID=3 NAME=7W >\n")
    assert max_power_mode(nano_super) == {"id": 2, "name": "MAXN_SUPER"}
    # Orin Nano 8GB on JetPack 5: no MAXN, 15W is the top.
    assert max_power_mode([{"id": 0, "name": "15W"}, {"id": 1, "name": "7W"}]) == {"id": 0, "name": "15W"}
    assert max_power_mode([]) is None


def test_parse_jetson_clocks():
    dvfs = parse_jetson_clocks(JC_AGX_DVFS)
    assert (dvfs["soc"], dvfs["machine"]) == ("tegra234", "NVIDIA Jetson AGX Orin Developer Kit")
    assert dvfs["cpus"] == 8  # cpu8 is offline
    assert dvfs["cpus_not_fixed"] == [f"cpu{i}" for i in range(8)]
    assert dvfs["cpu_cur_mhz"] == {"min": 729.6, "max": 1497.6}
    assert dvfs["gpu"] == {"min_mhz": 306.0, "max_mhz": 828.8, "cur_mhz": 306.0, "fixed": False}
    assert dvfs["emc"]["cur_mhz"] == 2133.0
    assert (dvfs["cpu_fixed"], dvfs["gpu_fixed"], dvfs["fixed"]) == (False, False, False)
    assert dvfs["power_mode"] == "MODE_30W"

    fixed = parse_jetson_clocks(JC_AGX_FIXED)
    assert fixed["cpus"] == 12 and fixed["cpus_not_fixed"] == []
    assert (fixed["cpu_fixed"], fixed["gpu_fixed"], fixed["fixed"]) == (True, True, True)
    assert fixed["gpu"]["max_mhz"] == 1300.5 and fixed["power_mode"] == "MAXN"

    # min == max but a core below it (thermal or power capping): not at the fixed clock.
    capped = parse_jetson_clocks(JC_AGX_FIXED.replace("CurrentFreq=2201600", "CurrentFreq=1497600", 1))
    assert (capped["cpus_not_fixed"], capped["fixed"]) == (["cpu0"], False)
    # CPUs pinned but the GPU left to DVFS: not fixed.
    half = parse_jetson_clocks(JC_AGX_FIXED.replace("GPU MinFreq=1300500000", "GPU MinFreq=306000000"))
    assert (half["cpu_fixed"], half["gpu_fixed"], half["fixed"]) == (True, False, False)
    assert parse_jetson_clocks(JC_NOT_ROOT)["fixed"] is None


def test_parse_tegrastats_jetpack6_orin_nano():
    s = parse_tegrastats(TS_NANO_IDLE)
    assert s["time"] == "05-05-2025 06:05:39"
    assert (s["ram_used_mb"], s["ram_total_mb"], s["swap_used_mb"], s["swap_total_mb"]) == (2639, 7620, 0, 3810)
    assert [c["load_pct"] for c in s["cpu"]] == [1, 4, 8, 4, 5, 4]
    assert {c["freq_mhz"] for c in s["cpu"]} == {729}
    assert (s["gr3d_pct"], s["gr3d_freq_mhz"], s["emc_pct"]) == (0, None, None)
    assert s["temps_c"] == {"cpu": 44.156, "soc2": 43.781, "soc0": 44.687, "gpu": 45.968, "tj": 45.968,
                            "soc1": 45.312}
    assert s["rails_mw"] == {"VDD_IN": {"cur": 5263, "avg": 5263}, "VDD_CPU_GPU_CV": {"cur": 717, "avg": 717},
                             "VDD_SOC": {"cur": 1794, "avg": 1794}}
    busy = parse_tegrastats(TS_NANO_BUSY)
    assert (busy["gr3d_pct"], busy["gr3d_freq_mhz"], busy["emc_pct"], busy["emc_freq_mhz"]) == (99, 612, 61, 2133)
    assert busy["cpu"][0] == {"load_pct": 38, "freq_mhz": 1497}
    assert busy["rails_mw"]["VDD_IN"] == {"cur": 16321, "avg": 11204}


def test_parse_tegrastats_jetpack5_agx_orin():
    s = parse_tegrastats(TS_AGX_JP5)
    # -256C sensors are absent ones; names lower-cased so JetPack 5 and 6 summaries compare.
    assert s["temps_c"] == {"cpu": 42.593, "tboard": 32.0, "soc2": 39.343, "tdiode": 33.25, "soc0": 39.375,
                            "tj": 42.593, "soc1": 40.468}
    assert s["rails_mw"] == {"VDD_GPU_SOC": {"cur": 2399, "avg": 2399}, "VDD_CPU_CV": {"cur": 400, "avg": 400},
                             "VIN_SYS_5V0": {"cur": 4032, "avg": 4032},
                             "VDDQ_VDD2_1V8AO": {"cur": 301, "avg": 301}}
    assert len(s["cpu"]) == 12 and (s["gr3d_pct"], s["gr3d_freq_mhz"]) == (0, 0)
    dla = parse_tegrastats(TS_AGX_DLA)
    assert (dla["gr3d_pct"], dla["gr3d_freq_mhz"], dla["emc_pct"]) == (14, 407, 1)
    assert dla["temps_c"]["cpu"] == 77.281 and dla["temps_c"]["cv0"] == 73.625
    assert "nvdla0_freq" not in dla["temps_c"] and len(dla["temps_c"]) == 11
    assert dla["rails_mw"]["VDD_CPU_CV"] == {"cur": 14312, "avg": 12415}
    assert dla["ram_used_mb"] == 13983 and {c["load_pct"] for c in dla["cpu"][1:]} == {100}


def test_parse_tegrastats_jetpack4_and_old_formats():
    s = parse_tegrastats(TS_NANO_JP4)
    assert s["time"] is None
    assert s["rails_mw"] == {"POM_5V_IN": {"cur": 2545, "avg": 2547}, "POM_5V_GPU": {"cur": 0, "avg": 0},
                             "POM_5V_CPU": {"cur": 549, "avg": 529}}
    assert s["temps_c"]["pmic"] == 100.0 and s["temps_c"]["thermal"] == 24.5
    assert (s["emc_pct"], s["emc_freq_mhz"], s["gr3d_pct"]) == (0, None, 0)
    # "off" cores, and the documented "CPU [X%,Y%,...]@Z" form with one frequency for all cores.
    old = parse_tegrastats("RAM 220/3956MB (lfb 847x4MB) CPU [12%,3%,off,off]@1428 EMC_FREQ 9%@1600 "
                           "GR3D_FREQ 45%@921 POM_5V_IN 3187/3187")
    assert old["cpu"] == [{"load_pct": 12, "freq_mhz": 1428}, {"load_pct": 3, "freq_mhz": 1428}, None, None]
    assert (old["gr3d_pct"], old["gr3d_freq_mhz"]) == (45, 921)
    empty = parse_tegrastats("tegrastats: permission denied")
    assert empty["rails_mw"] == {} and empty["temps_c"] == {} and empty["cpu"] is None


# ------------------------------------------------------------------------------------------ the sampler


def _stand_in_tegrastats(path: Path, lines: list[str], ignore_sigterm: bool = False) -> Path:
    """A stand-in for tegrastats (which cannot exist here): records its arguments, then prints the recorded
    lines in turn, one per --interval, until it is killed."""
    path.write_text(f"""#!{sys.executable}
import signal, sys, time
{"signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_sigterm else ""}
open({str(path) + ".args"!r}, "w").write(" ".join(sys.argv[1:]))
interval = int(sys.argv[sys.argv.index("--interval") + 1]) / 1000
lines = {lines!r}
i = 0
while True:
    print(lines[i % len(lines)], flush=True)
    i += 1
    time.sleep(interval)
""")
    path.chmod(0o755)
    return path


def _wait_for(sampler: TegrastatsSampler, samples: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while sampler.samples < samples:
        assert time.monotonic() < deadline, f"only {sampler.samples} samples"
        time.sleep(0.01)


def test_sampler_end_to_end(tmp_path):
    lines = [TS_NANO_IDLE, TS_NANO_BUSY, TS_NANO_AFTER]
    exe = _stand_in_tegrastats(tmp_path / "tegrastats", lines)
    with TegrastatsSampler(interval_ms=20, executable=exe) as sampler:
        _wait_for(sampler, 4)
    assert Path(str(exe) + ".args").read_text() == "--interval 20"
    assert sampler.returncode == -signal.SIGTERM
    summary = sampler.summary()
    n = summary["samples"]
    assert n >= 4
    seen = [parse_tegrastats(lines[i % 3]) for i in range(n)]  # what the stand-in printed, in order
    assert summary["interval_ms"] == 20 and "error" not in summary
    assert summary["temps_c"]["tj"] == {"min": 45.968, "max": 58.312}
    assert summary["temps_c"]["cpu"] == {"min": 44.156, "max": 57.125}
    assert summary["rails_mw"]["VDD_IN"]["max"] == 16321
    assert summary["rails_mw"]["VDD_IN"]["mean"] == pytest.approx(
        sum(s["rails_mw"]["VDD_IN"]["cur"] for s in seen) / n)
    assert summary["rails_mw"]["VDD_CPU_GPU_CV"]["max"] == 7104
    assert summary["gr3d_pct_mean"] == pytest.approx(sum(s["gr3d_pct"] for s in seen) / n)
    assert summary["emc_pct_mean"] == pytest.approx(sum(s["emc_pct"] for s in seen if s["emc_pct"] is not None)
                                                    / sum(s["emc_pct"] is not None for s in seen))
    assert summary["ram_used_mb_max"] == 6712
    assert summary["cpu_freq_mhz"] == {"min": 729, "max": 1497}
    assert json.loads(json.dumps(summary)) == summary


def test_sampler_kills_a_tegrastats_that_ignores_sigterm(tmp_path):
    exe = _stand_in_tegrastats(tmp_path / "tegrastats", [TS_NANO_IDLE], ignore_sigterm=True)
    sampler = TegrastatsSampler(interval_ms=20, executable=exe, stop_timeout_s=0.5)
    with sampler:
        _wait_for(sampler, 1)
    assert sampler.returncode == -signal.SIGKILL
    summary = sampler.summary()
    assert summary["samples"] >= 1
    assert summary["rails_mw"]["VDD_SOC"] == {"mean": 1794.0, "max": 1794}


def test_sampler_reports_a_tegrastats_that_prints_no_sample(tmp_path):
    exe = _script(tmp_path / "tegrastats", "echo 'Error: permission denied'\nexit 1\n")
    with TegrastatsSampler(interval_ms=20, executable=exe) as sampler:
        deadline = time.monotonic() + 10
        while sampler._proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    summary = sampler.summary()
    assert summary["samples"] == 0 and sampler.returncode == 1
    assert summary["error"] == "tegrastats printed no sample: Error: permission denied"
    missing = TegrastatsSampler(executable=tmp_path / "absent")
    with missing:
        pass
    assert missing.summary()["error"].startswith("tegrastats could not start:")


def test_sampler_off_jetson_does_nothing():
    if shutil.which("tegrastats") is not None:
        pytest.skip("this machine has a tegrastats")
    with TegrastatsSampler() as sampler:
        pass
    assert sampler.executable is None and sampler._proc is None
    assert sampler.summary() is None


def test_tegrastats_pattern_does_not_take_memory_for_a_rail():
    # "RAM 2639/7620MB" looks like "RAIL cur/avg" up to the unit: a rail regex that ignores the unit breaks.
    assert not re.search(envmod._TS_RAIL, "RAM 2639/7620MB (lfb 9x4MB) SWAP 0/3810MB (cached 0MB) IRAM 0/252kB")
