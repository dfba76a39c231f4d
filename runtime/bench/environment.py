"""The machine a benchmark ran on: CPU and its clocks, versions, GPU, and a Jetson's power state.

Latency figures are only comparable when the clock and power state they were taken under is known: a Jetson
in a low ``nvpmodel`` mode, or without ``jetson_clocks``, runs the same engine at half the speed, and a CPU
under ``schedutil``/``powersave`` ramps its frequency while the run goes on. So every report carries:

- ``collect()``: taken once, before the run (CPU, governors, versions, GPU, Jetson model/L4T/nvpmodel/clocks);
- ``TegrastatsSampler``: sampled during the run on a Jetson (temperatures, rail power, GPU load), because
  those change as the board heats up and throttles;
- ``clock_warnings()``: what to fix before the figures can be trusted, and how.

Nothing here needs root and nothing raises: an unreadable file, a missing, failing or hanging tool becomes
``None`` or ``{"error": "..."}`` in the description. ``root`` prefixes every /proc, /sys, /etc and /var path
read, so tests can describe a fake Jetson tree; tools (nvidia-smi, nvpmodel, jetson_clocks) always run on the
real machine, and ``tools=`` replaces them (stand-ins in tests, ``None`` for "absent").
"""

from __future__ import annotations

import contextlib
import csv
import glob
import importlib.metadata
import importlib.util
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Env = dict[str, Any]

#: nvidia-smi can hang for seconds on a wedged driver: a benchmark must not wait on it longer than this.
TOOL_TIMEOUT_S = 10.0
GIT_TIMEOUT_S = 5.0
#: Tools run without a shell; Jetson's nvpmodel lives in /usr/sbin, which a service's PATH may lack.
_EXTRA_TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin")

# ---------------------------------------------------------------------------------------------- helpers


class _Tree:
    """Reads files under ``root`` ("/" on the real machine), returning None for anything unreadable."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def read(self, path: str) -> str | None:
        return _read_file(self.path(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(self.path(path))

    def glob(self, pattern: str) -> list[str]:
        return glob.glob(self.path(pattern))


def _read_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def _read_int(path: str) -> int | None:
    text = _read_file(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _mhz(value: int | None, per_mhz: int) -> float | None:
    """kHz (cpufreq, per_mhz=1000) or Hz (devfreq, 1e6) to MHz."""
    return None if value is None else round(value / per_mhz, 1)


def _first_line(text: str, limit: int = 300) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:limit]


def _run(argv: list[str], timeout: float | None = None,
         env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str] | str:
    """The finished process, or one line saying why it could not run (so callers never see an exception)."""
    name = Path(argv[0]).name
    timeout = TOOL_TIMEOUT_S if timeout is None else timeout
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                              stdin=subprocess.DEVNULL, env=None if env is None else dict(env))
    except subprocess.TimeoutExpired:
        return f"{name} timed out after {timeout:g} s"
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        return f"{name} could not run: {e}"


def _tool(name: str, tools: Mapping[str, str | None] | None) -> str | None:
    if tools is not None and name in tools:
        return tools[name]
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_EXTRA_TOOL_DIRS])
    return shutil.which(name, path=search)


def _safe(section: Callable[[], Any]) -> Any:
    """One section of the description; a bug in it becomes an error entry, never a failed benchmark."""
    try:
        return section()
    except Exception as e:  # the guarantee of collect(): describe what can be described
        return {"error": f"{type(e).__name__}: {e}"}


# ------------------------------------------------------------------------------------------------- CPU

#: (implementer, part) from /proc/cpuinfo: ARM kernels have no useful "model name" (at best "ARMv8 Processor").
_ARM_PARTS = {
    (0x41, 0xD07): "ARM Cortex-A57",       # Jetson Nano, TX1, TX2
    (0x41, 0xD08): "ARM Cortex-A72",
    (0x41, 0xD0C): "ARM Neoverse-N1",
    (0x41, 0xD42): "ARM Cortex-A78AE",     # Jetson Orin, DRIVE Orin
    (0x41, 0xD4F): "ARM Neoverse-V2",      # Grace
    (0x41, 0xD83): "ARM Neoverse-V3AE",    # Jetson Thor, DRIVE Thor
    (0x41, 0xD84): "ARM Neoverse-V3",
    (0x4E, 0x003): "NVIDIA Denver 2",      # TX2
    (0x4E, 0x004): "NVIDIA Carmel",        # Xavier
}


def _cpuinfo_fields(text: str) -> list[dict[str, str]]:
    """One dict per "processor" block (keys lower-cased), plus the trailing block ARM kernels add."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, sep, value = line.partition(":")
        if sep:
            blocks[-1].setdefault(key.strip().lower(), value.strip())
    return [b for b in blocks if b]


def cpu_model(cpuinfo: str | None, dt_model: str | None = None) -> str | None:
    """The CPU's name: x86 "model name"; on ARM the core type from "CPU part" (big.LITTLE joined with " + "),
    else "model name"/"Hardware", else the device-tree model, else what ``platform`` knows."""
    blocks = _cpuinfo_fields(cpuinfo or "")

    def first(key: str) -> str | None:
        return next((b[key] for b in blocks if b.get(key)), None)

    model_name = first("model name")
    parts: list[str] = []
    for b in blocks:
        try:
            impl, part = int(b["cpu implementer"], 16), int(b["cpu part"], 16)
        except (KeyError, ValueError):
            continue
        name = _ARM_PARTS.get((impl, part), f"ARM CPU part 0x{part:03x}")
        if name not in parts:
            parts.append(name)
    if parts:
        return " + ".join(parts)
    return model_name or first("hardware") or dt_model or platform.processor() or platform.machine() or None


def _cpu_index(path: str) -> int:
    digits = re.sub(r"\D", "", os.path.basename(path))
    return int(digits) if digits else -1


def _cpufreq(tree: _Tree) -> dict[str, Any] | None:
    """Governors and frequencies of the online CPUs, summarised; None where the kernel has no cpufreq
    (most VMs and containers)."""
    cpus = []
    for d in sorted(tree.glob("/sys/devices/system/cpu/cpu[0-9]*"), key=_cpu_index):
        if (_read_file(os.path.join(d, "online")) or "1").strip() == "0":
            continue  # an offline core runs nothing of ours
        f = os.path.join(d, "cpufreq")
        gov = (_read_file(os.path.join(f, "scaling_governor")) or "").strip() or None
        cur, lo, hi = (_read_int(os.path.join(f, n)) for n in ("scaling_cur_freq", "scaling_min_freq",
                                                                 "scaling_max_freq"))
        if gov is None and cur is None and lo is None and hi is None:
            continue
        cpus.append((os.path.basename(d), gov, cur, lo, hi))
    if not cpus:
        return None
    curs = [c[2] for c in cpus if c[2] is not None]
    los = [c[3] for c in cpus if c[3] is not None]
    his = [c[4] for c in cpus if c[4] is not None]
    judged = {}
    for name, gov, _cur, lo, hi in cpus:
        if gov == "performance" or (lo is not None and lo == hi):
            judged[name] = True
        elif gov is not None or (lo is not None and hi is not None):
            judged[name] = False
    return {
        "cpus": len(cpus),
        "governors": sorted({c[1] for c in cpus if c[1]}),
        "cur_mhz": {"min": _mhz(min(curs), 1000), "max": _mhz(max(curs), 1000)} if curs else None,
        "min_mhz": _mhz(min(los), 1000) if los else None,
        "max_mhz": _mhz(max(his), 1000) if his else None,
        "not_fixed": [name for name, fixed in judged.items() if not fixed],
        "fixed": all(judged.values()) if judged else None,
    }


def _cpu(tree: _Tree) -> dict[str, Any]:
    freq = _safe(lambda: _cpufreq(tree))
    fixed = freq.pop("fixed", None) if isinstance(freq, dict) else None  # an {"error"} entry has none
    try:
        affinity: list[int] | None = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        affinity = None
    return {
        "model": cpu_model(tree.read("/proc/cpuinfo"), _device_tree_model(tree)),
        "logical_cores": os.cpu_count(),
        "affinity": affinity,
        "cpufreq": freq,
        # True: every online CPU runs "performance" or has min == max; False: one scales; None: unknown.
        "fixed_clocks": fixed,
    }


# -------------------------------------------------------------------------------------------- OS, versions


def _os(tree: _Tree) -> dict[str, Any]:
    release = tree.read("/etc/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', release, re.M)
    return {
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "distro": m.group(1) if m else None,
    }


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except Exception:  # PackageNotFoundError, or a broken dist-info
        return None


def _torch_cuda() -> str | None:
    """torch.version.cuda without importing torch (seconds, and GBs of CUDA libraries): read torch/version.py."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return getattr(getattr(torch, "version", None), "cuda", None)
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        text = _read_file(os.path.join(folder, "version.py"))
        m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text or "", re.M)
        if m:
            return m.group(1)
    return None


def git_revision(path: str | os.PathLike[str] | None = None) -> str | None:
    """``git rev-parse --short HEAD`` of this project's checkout, "+dirty" when ``git status --porcelain`` lists
    anything; None when not run from a checkout or git is missing or fails.

    Without ``path``: the checkout this module is imported from (an editable install), else the working
    directory's when it is this project's checkout (a wheel installed from it, run from it, as CI does).
    """
    if path is None:
        for where in (Path(__file__).resolve().parent, Path.cwd()):
            rev = git_revision(where)
            if rev is not None:
                return rev
        return None
    where = str(path)
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take index.lock while someone else commits in this checkout.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    top = _run(["git", "-C", where, "rev-parse", "--show-toplevel"], GIT_TIMEOUT_S, env)
    if isinstance(top, str) or top.returncode != 0:
        return None
    # A wheel installed into a venv that sits inside some other repository must not report that one's revision.
    pyproject = _read_file(os.path.join(top.stdout.strip(), "pyproject.toml")) or ""
    if not re.search(r'^name\s*=\s*"vla-runtime"', pyproject, re.M):
        return None
    head = _run(["git", "-C", where, "rev-parse", "--short", "HEAD"], GIT_TIMEOUT_S, env)
    if isinstance(head, str) or head.returncode != 0 or not head.stdout.strip():
        return None
    rev = head.stdout.strip()
    status = _run(["git", "-C", where, "status", "--porcelain"], GIT_TIMEOUT_S, env)
    if not isinstance(status, str) and status.returncode == 0 and status.stdout.strip():
        rev += "+dirty"
    return rev


def _versions() -> dict[str, Any]:
    out: dict[str, Any] = {"onnxruntime": None, "onnxruntime_dist": None, "onnxruntime_providers": None}
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
        out["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except Exception:  # absent, or a GPU build whose libraries don't load
        pass
    with contextlib.suppress(Exception):
        # onnxruntime, onnxruntime-gpu (Jetson wheels) and others all install the same module.
        dists = importlib.metadata.packages_distributions().get("onnxruntime") or []
        out["onnxruntime_dist"] = dists[0] if dists else None
    try:
        import tensorrt  # absent on most machines; that is normal

        out["tensorrt"] = str(getattr(tensorrt, "__version__", None) or "") or None
    except Exception:
        out["tensorrt"] = None
    out["torch"] = _dist_version("torch")
    out["torch_cuda"] = _safe(_torch_cuda) if out["torch"] else None
    try:
        import numpy

        out["numpy"] = numpy.__version__
    except Exception:
        out["numpy"] = None
    out["onnx"] = _dist_version("onnx")
    out["cuda_python"] = _dist_version("cuda-python")
    out["cuda_bindings"] = _dist_version("cuda-bindings")
    out["vla_runtime"] = _dist_version("vla-runtime")
    out["git_revision"] = _safe(git_revision)
    return out


# ------------------------------------------------------------------------------------------------- GPU

#: The query collect() sends; parse_nvidia_smi() maps its columns, in this order, to these keys.
NVIDIA_SMI_QUERY = ("name", "driver_version", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem",
                    "temperature.gpu", "power.draw", "pstate")
_NVIDIA_SMI_KEYS = ("name", "driver_version", "sm_mhz", "mem_mhz", "max_sm_mhz", "max_mem_mhz",
                    "temperature_c", "power_w", "pstate")
_TEXT_KEYS = {"name", "driver_version", "pstate"}


def _number(text: str) -> int | float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and "." not in text else value


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """Rows of ``nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY> --format=csv,noheader,nounits``, one dict per GPU.

    "[N/A]", "[Not Supported]" and the like become None (power.draw is "[N/A]" on many boards); lines that are
    not a row of the query (warnings) are skipped."""
    n = len(_NVIDIA_SMI_KEYS)
    gpus = []
    for row in csv.reader(io.StringIO(text), skipinitialspace=True):
        row = [c.strip() for c in row]
        if len(row) > n:  # a comma in the product name: the extra cells belong to it
            row = [", ".join(row[: len(row) - n + 1]), *row[len(row) - n + 1:]]
        if len(row) != n or not row[0]:
            continue
        gpu: dict[str, Any] = {}
        for key, cell in zip(_NVIDIA_SMI_KEYS, row, strict=True):
            if not cell or cell.startswith("[") or cell.upper() == "N/A":
                gpu[key] = None
            else:
                gpu[key] = cell if key in _TEXT_KEYS else _number(cell)
        gpus.append(gpu)
    return gpus


def parse_cuda_version(text: str) -> str | None:
    """The "CUDA Version: 12.4" of nvidia-smi's banner: the newest CUDA the installed driver runs."""
    m = re.search(r"CUDA (?:UMD )?Version\s*:\s*([\d.]+)", text)
    return m.group(1) if m else None


def _gpu(tools: Mapping[str, str | None] | None) -> dict[str, Any] | None:
    exe = _tool("nvidia-smi", tools)
    if exe is None:
        return None  # no NVIDIA driver installed: a CPU machine
    proc = _run([exe, f"--query-gpu={','.join(NVIDIA_SMI_QUERY)}", "--format=csv,noheader,nounits"])
    if isinstance(proc, str):
        return {"error": proc}
    if proc.returncode != 0:
        return {"error": f"nvidia-smi exited {proc.returncode}: {_first_line(proc.stdout + proc.stderr)}"}
    gpus = parse_nvidia_smi(proc.stdout)
    if not gpus:
        return {"error": f"nvidia-smi listed no GPU: {_first_line(proc.stdout + proc.stderr)!r}"}
    banner = _run([exe])
    cuda = None if isinstance(banner, str) else parse_cuda_version(banner.stdout)
    return {"count": len(gpus), "name": gpus[0]["name"], "driver_version": gpus[0]["driver_version"],
            "cuda_driver_version": cuda, "gpus": gpus}


# ---------------------------------------------------------------------------------------------- Jetson


def _device_tree_model(tree: _Tree) -> str | None:
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        text = tree.read(path)
        if text:
            return text.replace("\x00", "").strip() or None
    return None


def is_jetson(root: str = "/") -> bool:
    """/etc/nv_tegra_release (Jetson Linux) or a Jetson/DRIVE device-tree model or an nvidia,tegra SoC."""
    tree = _Tree(root)
    if tree.exists("/etc/nv_tegra_release"):
        return True
    model = _device_tree_model(tree) or ""
    if any(k in model for k in ("NVIDIA Jetson", "Orin", "Thor", "DRIVE")):
        return True
    return "nvidia,tegra" in (tree.read("/proc/device-tree/compatible") or "")


def parse_l4t_release(text: str) -> str | None:
    """"# R36 (release), REVISION: 3.0, GCID: ..." (/etc/nv_tegra_release) -> "36.3.0"."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2).rstrip('.')}" if m else None


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """``nvpmodel -q``: "NV Power Mode: MAXN" then the mode number on a line of its own (NVPM WARN lines
    may come first) -> {"name": "MAXN", "id": 0}; None for what is not there."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    mode_id = None
    if m:
        n = re.search(r"^\s*(\d+)\s*$", text[m.end():], re.M)
        mode_id = int(n.group(1)) if n else None
    return {"name": m.group(1) if m else None, "id": mode_id}


def parse_nvpmodel_conf(text: str) -> list[dict[str, Any]]:
    """The modes /etc/nvpmodel.conf defines: "< POWER_MODEL ID=0 NAME=MAXN >" -> {"id": 0, "name": "MAXN"}."""
    return [{"id": int(i), "name": name}
            for i, name in re.findall(r"^\s*<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)", text, re.M)]


def max_power_mode(modes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The unconstrained mode: MAXN / MAXN_SUPER where the board has one, else the highest wattage (an Orin
    Nano 8GB on JetPack 5 has only 15W and 7W). Not the highest id: on an Orin Nano Super 2 is MAXN_SUPER
    and 3 is 7W."""
    maxn = [m for m in modes if m["name"].upper().startswith("MAXN")]
    if maxn:
        return maxn[0]
    watts = [(int(w[-1]), m) for m in modes if (w := re.findall(r"(\d+)W", m["name"]))]
    return max(watts, key=lambda wm: wm[0])[1] if watts else None


def parse_jetson_clocks(text: str) -> dict[str, Any]:
    """``jetson_clocks --show``: is every online CPU at MinFreq == MaxFreq == CurrentFreq, and the GPU at
    MinFreq == MaxFreq (what ``jetson_clocks`` sets; the governor name stays "schedutil")?

    Handles both "cpu0: Online=1 Governor=..." (JetPack 4/5) and "cpu0:  Governor=..." (JetPack 6.2+)."""
    cpus, not_fixed, curs = 0, [], []
    for name, rest in re.findall(r"^\s*(cpu\d+):\s*(.*)$", text, re.M):
        fields = dict(re.findall(r"(\w+)=(\S+)", rest))
        if fields.get("Online", "1") == "0":
            continue
        try:
            lo, hi, cur = (int(fields[k]) for k in ("MinFreq", "MaxFreq", "CurrentFreq"))
        except (KeyError, ValueError):
            continue
        cpus += 1
        curs.append(cur)
        if not lo == hi == cur:
            not_fixed.append(name)

    def unit(label: str) -> dict[str, Any] | None:
        m = re.search(rf"^\s*{label}\s+MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)", text, re.M)
        if not m:
            return None
        lo, hi, cur = (int(g) for g in m.groups())
        return {"min_mhz": _mhz(lo, 10**6), "max_mhz": _mhz(hi, 10**6), "cur_mhz": _mhz(cur, 10**6),
                "fixed": lo == hi}

    gpu, emc = unit("GPU"), unit("EMC")
    soc = re.search(r"SOC family:\s*(\S+)\s+Machine:\s*(.*)$", text, re.M)
    mode = re.search(r"NV Power Mode:\s*(\S+)", text)
    cpu_fixed = (not not_fixed) if cpus else None
    gpu_fixed = gpu["fixed"] if gpu else None
    known = [f for f in (cpu_fixed, gpu_fixed) if f is not None]
    return {
        "soc": soc.group(1) if soc else None,
        "machine": soc.group(2).strip() if soc else None,
        "cpus": cpus,
        "cpu_cur_mhz": {"min": _mhz(min(curs), 1000), "max": _mhz(max(curs), 1000)} if curs else None,
        "cpus_not_fixed": not_fixed,
        "cpu_fixed": cpu_fixed,
        "gpu": gpu,
        "gpu_fixed": gpu_fixed,
        "emc": emc,
        "power_mode": mode.group(1) if mode else None,
        "fixed": all(known) if known else None,
    }


def _nvpmodel(tree: _Tree, tools: Mapping[str, str | None] | None) -> dict[str, Any] | None:
    modes = parse_nvpmodel_conf(tree.read("/etc/nvpmodel.conf") or "")
    current: dict[str, Any] | None = None
    error = None
    exe = _tool("nvpmodel", tools)
    if exe is not None:
        proc = _run([exe, "-q"])
        if isinstance(proc, str):
            error = proc
        else:
            parsed = parse_nvpmodel(proc.stdout + proc.stderr)
            if parsed["name"] is not None:
                current = {**parsed, "source": "nvpmodel -q"}
            else:
                error = f"nvpmodel -q exited {proc.returncode}: {_first_line(proc.stdout + proc.stderr)}"
    if current is None:
        # What nvpmodel itself writes ("pmode:0002 fmode:quiet"): readable without root or the tool.
        m = re.search(r"pmode:(\d+)", tree.read("/var/lib/nvpmodel/status") or "")
        if m:
            mode_id = int(m.group(1))
            name = next((md["name"] for md in modes if md["id"] == mode_id), None)
            current = {"name": name, "id": mode_id, "source": "/var/lib/nvpmodel/status"}
    if current is None:
        return {"error": error} if error else None
    if current["id"] is None and current["name"] is not None:
        current["id"] = next((md["id"] for md in modes if md["name"] == current["name"]), None)
    best = max_power_mode(modes)
    current["max"] = best
    if best is not None and current["id"] is not None:
        current["at_max"] = current["id"] == best["id"]
    else:  # no readable nvpmodel.conf: only a MAXN mode is known to be the top one
        current["at_max"] = True if (current["name"] or "").upper().startswith("MAXN") else None
    return current


def _jetson_clocks(tools: Mapping[str, str | None] | None) -> dict[str, Any] | None:
    exe = _tool("jetson_clocks", tools)
    if exe is None:
        return None
    proc = _run([exe, "--show"])
    if isinstance(proc, str):
        return {"error": proc}
    out = proc.stdout + proc.stderr
    parsed = parse_jetson_clocks(out)
    if parsed["cpus"] or parsed["gpu"]:
        return parsed
    if "root" in out.lower():
        return {"error": f"needs root (`sudo jetson_clocks --show`): {_first_line(out)}", "needs_root": True}
    return {"error": f"jetson_clocks --show exited {proc.returncode}: {_first_line(out)}"}


def _devfreq(tree: _Tree, pattern: str) -> dict[str, Any] | None:
    """A devfreq device's clocks (Hz in sysfs), readable without root: the Jetson iGPU is one."""
    for d in sorted(tree.glob("/sys/class/devfreq/*")):
        name = os.path.basename(d)
        if not re.search(pattern, name):
            continue
        lo, hi, cur = (_read_int(os.path.join(d, n)) for n in ("min_freq", "max_freq", "cur_freq"))
        if lo is None and hi is None and cur is None:
            continue
        return {"device": name, "governor": (_read_file(os.path.join(d, "governor")) or "").strip() or None,
                "cur_mhz": _mhz(cur, 10**6), "min_mhz": _mhz(lo, 10**6), "max_mhz": _mhz(hi, 10**6),
                "fixed": None if lo is None or hi is None else lo == hi}
    return None


def _emc(tree: _Tree) -> dict[str, Any] | None:
    """The memory clock: a devfreq "emc" device where there is one, else BPMP debugfs (root only: None)."""
    found = _devfreq(tree, r"emc")
    if found:
        return found
    for base in ("/sys/kernel/debug/bpmp/debug/clk/emc", "/sys/kernel/debug/clk/emc"):
        cur = _read_int(tree.path(f"{base}/rate")) or _read_int(tree.path(f"{base}/clk_rate"))
        if cur is not None:
            lo, hi = _read_int(tree.path(f"{base}/min_rate")), _read_int(tree.path(f"{base}/max_rate"))
            return {"device": "emc", "governor": None, "cur_mhz": _mhz(cur, 10**6), "min_mhz": _mhz(lo, 10**6),
                    "max_mhz": _mhz(hi, 10**6), "fixed": None if lo is None or hi is None else lo == hi}
    return None


def _jetson(tree: _Tree, tools: Mapping[str, str | None] | None, cpu_fixed: bool | None) -> dict[str, Any] | None:
    if not is_jetson(tree.root):
        return None
    clocks = _safe(lambda: _jetson_clocks(tools))
    gpu_freq = _safe(lambda: _devfreq(tree, r"gpu|ga10b|gv11b|gp10b|gb10b"))
    if isinstance(clocks, dict) and clocks.get("fixed") is not None:
        fixed, source = clocks["fixed"], "jetson_clocks --show"
    else:
        # jetson_clocks needs root to show anything: the same question from sysfs (cpufreq and GPU devfreq).
        gpu_fixed = gpu_freq.get("fixed") if isinstance(gpu_freq, dict) else None
        known = [f for f in (cpu_fixed, gpu_fixed) if f is not None]
        fixed, source = (all(known), "sysfs") if known else (None, None)
    release = tree.read("/etc/nv_tegra_release")
    return {
        "model": _device_tree_model(tree),
        "l4t": parse_l4t_release(release) if release else None,
        "nvpmodel": _safe(lambda: _nvpmodel(tree, tools)),
        "jetson_clocks": clocks,
        "clocks_fixed": fixed,
        "clocks_fixed_source": source,
        "gpu_freq": gpu_freq,
        "emc_freq": _safe(lambda: _emc(tree)),
    }


# ------------------------------------------------------------------------------------------------ collect


def collect(root: str = "/", *, tools: Mapping[str, str | None] | None = None) -> Env:
    """A JSON-serialisable description of this machine, its clocks and its software: ``cpu``, ``os``,
    ``versions``, ``gpu`` (None without an NVIDIA driver) and ``jetson`` (None off a Jetson).

    ``root`` prefixes the /proc, /sys, /etc and /var paths read (a fake tree in tests); ``tools`` maps
    "nvidia-smi", "nvpmodel" and "jetson_clocks" to an executable, or None for absent, instead of PATH.
    Never raises: what cannot be found out is None or {"error": ...}."""
    tree = _Tree(root)
    cpu = _safe(lambda: _cpu(tree))
    cpu_fixed = cpu.get("fixed_clocks") if isinstance(cpu, dict) else None
    return {
        "cpu": cpu,
        "os": _safe(lambda: _os(tree)),
        "versions": _safe(_versions),
        "gpu": _safe(lambda: _gpu(tools)),
        "jetson": _safe(lambda: _jetson(tree, tools, cpu_fixed)),
    }


# ----------------------------------------------------------------------------------- warnings, describe


def _section(env: Env, key: str) -> dict[str, Any]:
    value = env.get(key)
    return value if isinstance(value, dict) and "error" not in value else {}


def clock_warnings(env: Env) -> list[str]:
    """One line per problem that makes the figures hard to compare, each saying what to do about it.

    A GPU below its maximum SM clock is not one (an idle GPU drops to P8; it clocks up under load)."""
    warnings = []
    cpu, jetson = _section(env, "cpu"), _section(env, "jetson")
    fixed = cpu.get("fixed_clocks")
    freq = cpu.get("cpufreq") if isinstance(cpu.get("cpufreq"), dict) else {}
    cur = freq.get("cur_mhz") or {}
    span = f"{cur.get('min')}-{cur.get('max')} MHz now" if cur else "frequency unknown"
    if jetson:
        if jetson.get("clocks_fixed") is False:
            shown = _section(jetson, "jetson_clocks")  # jetson_clocks --show where it ran, else sysfs
            cpu_ok = shown.get("cpu_fixed", fixed)
            gpu_ok = shown.get("gpu_fixed", _section(jetson, "gpu_freq").get("fixed"))
            scaling = " and ".join(n for n, ok in (("CPU", cpu_ok), ("GPU", gpu_ok)) if ok is False) or "clocks"
            warnings.append(f"Jetson clocks are not fixed ({scaling} scale with load, CPU {span}): "
                            f"run `sudo jetson_clocks` before benchmarking")
        nvp = jetson.get("nvpmodel") if isinstance(jetson.get("nvpmodel"), dict) else {}
        best = nvp.get("max") or {}
        if nvp.get("at_max") is False:
            warnings.append(f"nvpmodel power mode is {nvp.get('name')} (mode {nvp.get('id')}), not the board's "
                            f"maximum {best.get('name')} (mode {best.get('id')}): run `sudo nvpmodel -m "
                            f"{best.get('id')}`, then `sudo jetson_clocks`")
    elif fixed is False:
        governors = ", ".join(freq.get("governors") or []) or "unknown"
        warnings.append(f"CPU frequency scaling is active (governor {governors}, {span}): set it with "
                        f"`sudo cpupower frequency-set -g performance`")
    if fixed is None and not (jetson and jetson.get("clocks_fixed") is not None):
        warnings.append("clock state unknown: no cpufreq in /sys (a VM or container?), so whether the CPU clock "
                        "moved during the run is not recorded")
    return warnings


def describe(env: Env) -> str:
    """One line, as benchmarks/machine.py writes it: 'AMD EPYC, 2 cores, Linux 6.18.44, Python 3.11.7', then
    the GPU and the Jetson model with its L4T release and power mode where there are ones."""
    cpu, osd, gpu, jetson = (_section(env, k) for k in ("cpu", "os", "gpu", "jetson"))
    parts = [cpu.get("model") or "unknown CPU", f"{cpu.get('logical_cores')} cores",
             f"{osd.get('system')} {osd.get('release')}", f"Python {osd.get('python')}"]
    if gpu.get("name"):
        count = gpu.get("count") or 1
        parts.append(f"GPU {count}x {gpu['name']}" if count > 1 else f"GPU {gpu['name']}")
    if jetson:
        nvp = jetson.get("nvpmodel") if isinstance(jetson.get("nvpmodel"), dict) else {}
        extra = [f"L4T {jetson['l4t']}" if jetson.get("l4t") else None, nvp.get("name")]
        detail = ", ".join(e for e in extra if e)
        parts.append(f"{jetson.get('model') or 'Jetson'}" + (f" ({detail})" if detail else ""))
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------- tegrastats

_TS_TIME = re.compile(r"^(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d)")
_TS_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_TS_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_TS_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
_TS_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+))?")
_TS_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
# "cpu@45.5C", "CPU@77.281C" (JetPack 5), "cpu@51.968C/51.968C"; not "24%@1224" (no letter before the @).
_TS_TEMP = re.compile(r"(?<![\w@])([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C(?:/\S+)?(?=\s|$)")
# "VDD_IN 5263mW/5263mW", "POM_5V_GPU 0/0" (JetPack 4), "GPU 0/0" (Xavier); not "RAM 2639/7620MB".
_TS_RAIL = re.compile(r"(?<![\w/])([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/\d+(?:mW)?)?(?=\s|$)")


def parse_tegrastats(line: str) -> dict[str, Any]:
    """One tegrastats line: RAM/SWAP (MB), per-CPU load % and MHz (None for an "off" core), GR3D (iGPU) and EMC
    load % and MHz, temperatures (°C, names lower-cased so JetPack 5's "CPU@" and 6's "cpu@" compare) and power
    rails ({"cur": mW, "avg": mW}: current and running average). Fields the line lacks are None or empty."""
    out: dict[str, Any] = {"time": None, "ram_used_mb": None, "ram_total_mb": None, "swap_used_mb": None,
                           "swap_total_mb": None, "cpu": None, "gr3d_pct": None, "gr3d_freq_mhz": None,
                           "emc_pct": None, "emc_freq_mhz": None, "temps_c": {}, "rails_mw": {}}
    if m := _TS_TIME.search(line):
        out["time"] = m.group(1)
    if m := _TS_RAM.search(line):
        out["ram_used_mb"], out["ram_total_mb"] = int(m.group(1)), int(m.group(2))
    if m := _TS_SWAP.search(line):
        out["swap_used_mb"], out["swap_total_mb"] = int(m.group(1)), int(m.group(2))
    if m := _TS_CPU.search(line):
        shared = int(m.group(2)) if m.group(2) else None  # old "CPU [X%,Y%]@Z": one frequency for all
        cores: list[dict[str, int | None] | None] = []
        for item in m.group(1).split(","):
            c = re.fullmatch(r"\s*(\d+)%(?:@(\d+))?\s*", item)
            cores.append({"load_pct": int(c.group(1)), "freq_mhz": int(c.group(2)) if c.group(2) else shared}
                         if c else None)  # "off": the core is powered down
        out["cpu"] = cores
    if m := _TS_GR3D.search(line):
        out["gr3d_pct"], out["gr3d_freq_mhz"] = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    if m := _TS_EMC.search(line):
        out["emc_pct"], out["emc_freq_mhz"] = int(m.group(1)), int(m.group(2)) if m.group(2) else None
    for name, value in _TS_TEMP.findall(line):
        if float(value) > -200:  # -256C: a sensor that is not there (AGX Orin's CV0@-256C)
            out["temps_c"][name.lower()] = float(value)
    for name, cur, avg in _TS_RAIL.findall(line):
        if name != "NC":  # AGX Orin lists its unconnected monitor channels as "NC 0mW/0mW"
            out["rails_mw"][name] = {"cur": int(cur), "avg": int(avg)}
    return out


class _Aggregate:
    """Running figures over tegrastats samples: a long run at 100 ms must not keep every line."""

    def __init__(self) -> None:
        self.samples = 0
        self.temps: dict[str, list[float]] = {}  # name -> [min, max]
        self.rails: dict[str, list[float]] = {}  # name -> [sum, max, count]
        self.gr3d = [0.0, 0]
        self.emc = [0.0, 0]
        self.ram_max: int | None = None
        self.cpu_freq: list[int] = []  # [min, max]

    def add(self, s: dict[str, Any]) -> None:
        self.samples += 1
        for name, t in s["temps_c"].items():
            lo_hi = self.temps.setdefault(name, [t, t])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], t), max(lo_hi[1], t)
        for name, rail in s["rails_mw"].items():
            acc = self.rails.setdefault(name, [0.0, rail["cur"], 0])
            acc[0] += rail["cur"]
            acc[1] = max(acc[1], rail["cur"])
            acc[2] += 1
        for acc, value in ((self.gr3d, s["gr3d_pct"]), (self.emc, s["emc_pct"])):
            if value is not None:
                acc[0] += value
                acc[1] += 1
        if s["ram_used_mb"] is not None:
            self.ram_max = max(self.ram_max or 0, s["ram_used_mb"])
        freqs = [c["freq_mhz"] for c in s["cpu"] or [] if c and c["freq_mhz"] is not None]
        if freqs:
            lo = min(freqs + self.cpu_freq[:1])
            hi = max(freqs + self.cpu_freq[1:])
            self.cpu_freq = [lo, hi]

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "temps_c": {n: {"min": v[0], "max": v[1]} for n, v in self.temps.items()},
            "rails_mw": {n: {"mean": v[0] / v[2], "max": v[1]} for n, v in self.rails.items()},
            "gr3d_pct_mean": self.gr3d[0] / self.gr3d[1] if self.gr3d[1] else None,
            "emc_pct_mean": self.emc[0] / self.emc[1] if self.emc[1] else None,
            "ram_used_mb_max": self.ram_max,
            "cpu_freq_mhz": {"min": self.cpu_freq[0], "max": self.cpu_freq[1]} if self.cpu_freq else None,
        }


def _is_sample(s: dict[str, Any]) -> bool:
    return bool(s["ram_used_mb"] is not None or s["cpu"] is not None or s["temps_c"] or s["rails_mw"]
                or s["gr3d_pct"] is not None)


class TegrastatsSampler:
    """Runs ``tegrastats --interval MS`` for the length of a ``with`` block and summarises what it printed.

    Why during the run: a Jetson heats up, throttles and changes its rail power as a benchmark goes on, which a
    snapshot taken before it cannot show. Off a Jetson (no ``tegrastats`` on PATH and none given) it does
    nothing and ``summary()`` is None. ``executable`` replaces the PATH lookup (a stand-in script in tests).
    """

    def __init__(self, interval_ms: int = 100, executable: str | os.PathLike[str] | None = None,
                 stop_timeout_s: float = 2.0) -> None:
        self.interval_ms = int(interval_ms)
        self.executable = str(executable) if executable is not None else shutil.which("tegrastats")
        self.stop_timeout_s = stop_timeout_s
        self.returncode: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._agg = _Aggregate()
        self._error: str | None = None
        self._other: str | None = None  # the last line that was not a sample (tegrastats' own error message)

    @property
    def samples(self) -> int:
        with self._lock:
            return self._agg.samples

    def start(self) -> TegrastatsSampler:
        if self.executable is None or self._proc is not None:
            return self
        try:
            self._proc = subprocess.Popen([self.executable, "--interval", str(self.interval_ms)],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
        except (OSError, ValueError) as e:
            self._error = f"tegrastats could not start: {e}"
            return self
        self._thread = threading.Thread(target=self._read, args=(self._proc.stdout,), name="tegrastats",
                                        daemon=True)
        self._thread.start()
        return self

    def _read(self, stream: io.TextIOBase) -> None:
        with contextlib.suppress(OSError, ValueError):  # the pipe closing under us ends the run, nothing else
            for raw in stream:
                line = raw.strip()
                if not line:
                    continue
                sample = parse_tegrastats(line)
                if _is_sample(sample):
                    with self._lock:
                        self._agg.add(sample)
                else:
                    self._other = line

    def stop(self) -> None:
        """Terminate tegrastats, wait, kill it if it does not go; then let the reader drain the pipe."""
        proc = self._proc
        if proc is None or self.returncode is not None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=self.stop_timeout_s)
        self.returncode = proc.poll()
        if self._thread is not None:
            self._thread.join(timeout=self.stop_timeout_s)
            if not self._thread.is_alive() and proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> TegrastatsSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(self) -> dict[str, Any] | None:
        """samples, per-temperature min/max °C, per-rail mean/max current mW, GR3D (iGPU) and EMC mean load %,
        peak RAM used and the CPU frequency range; None when tegrastats was not there to run."""
        if self.executable is None:
            return None
        with self._lock:
            out = self._agg.summary()
        out["interval_ms"] = self.interval_ms
        if self._error:
            out["error"] = self._error
        elif out["samples"] == 0 and self._other:
            out["error"] = f"tegrastats printed no sample: {self._other[:300]}"
        return out
