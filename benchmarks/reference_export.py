"""Export the reference model the way a user does (``vla-export reference``), for benchmarks that need a
bundle of their own.

One place for it, so that a failed export is one line naming the export's own last message (a
``VlaError`` that ``run_main`` prints), never a traceback from ``subprocess``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from vla.runtime.errors import VlaError


def export_reference(out: Path | str, *options: str) -> float:
    """Run ``vla-export reference -o OUT [options]`` in a child process; its wall time in seconds.

    A child process, as a user runs it: the export's own start-up, its checks and gates are part of it.
    """
    cmd = [sys.executable, "-m", "vla.export.cli", "reference", "-o", str(out), *options]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise VlaError(f"vla-export reference {' '.join(options)} failed (exit {done.returncode}): {last}")
    return time.perf_counter() - start
