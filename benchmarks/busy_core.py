"""Run a command while other processes keep cores busy: does it hold on a loaded machine?

CI and developers' machines are small (2 cores) and shared; the test suite and the first run must
pass there with something else running, not only on an idle box. This starts ``--cores`` busy
loops (plain Python at normal priority, the load a neighbour's build or a second job puts on a
core), runs the command, and reports its wall time and exit status, then stops the loops.

    python benchmarks/busy_core.py                    # the README's test command, one core kept busy
    python benchmarks/busy_core.py -- python -m pytest -q tests/test_reliability.py
    python benchmarks/busy_core.py --cores 0 -- ...   # the same on an idle machine, to compare

Exit status: the command's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUSY_LOOP = "while True:\n    pass\n"


def describe() -> str:
    """CPU model and cores, read without the project (this runs before the README's command
    installs it, so ``machine.describe`` cannot be imported yet)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def readme_test_command(readme: Path = ROOT / "README.md") -> str:
    """The one line between the README's test-command markers (what ``.ci/run`` runs)."""
    text = readme.read_text()
    block = text.split("<!-- test-command -->", 1)[1].split("<!-- /test-command -->", 1)[0]
    lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("```")]
    if len(lines) != 1:
        raise SystemExit(f"busy_core: {readme} must hold exactly one test command between its markers")
    return lines[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cores", type=int, default=1, help="busy loops to run beside the command (default 1)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ... (default: the README's test command)")
    args = p.parse_args()
    if args.cores < 0:
        raise SystemExit("busy_core: --cores must be 0 or more")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    shell = readme_test_command() if not command else None
    print(f"busy_core: machine: {describe()}", flush=True)
    print(f"busy_core: {args.cores} busy loop(s) at normal priority; running: {shell or ' '.join(command)}",
          flush=True)
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(args.cores)]
    t0 = time.monotonic()
    try:
        # Ctrl-C reaches the command as it would at a terminal, even when this script runs as a
        # background job (whose children inherit SIGINT ignored).
        rc = subprocess.run(["bash", "-c", shell] if shell else command, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)).returncode
    except KeyboardInterrupt:
        rc = 130
    finally:
        wall = time.monotonic() - t0
        for loop in loops:
            loop.kill()
            loop.wait()
    print(f"busy_core: exit status {rc} after {wall / 60:.1f} min ({wall:.0f} s) with {args.cores} core(s) kept busy",
          flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
