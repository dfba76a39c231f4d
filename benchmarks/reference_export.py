"""Export the reference model the way a user does (``vla-export reference-v1``), for benchmarks that need a
bundle of their own.

Reference model 1 (one graph), so that these benchmarks' figures stay comparable with the ones recorded
before reference model 2 (three stages, ``benchmarks/stages.py``) became ``vla-export reference``.

One place for it, so that a failed export is one line naming the export's own last message (a
``VlaError`` that ``run_main`` prints), never a traceback from ``subprocess``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from vla.runtime.errors import VlaError


def export_reference(out: Path | str, *options: str, model: str = "reference-v1") -> float:
    """Run ``vla-export MODEL -o OUT [options]`` in a child process; its wall time in seconds.

    A child process, as a user runs it: the export's own start-up, its checks and gates are part of it.
    """
    cmd = [sys.executable, "-m", "vla.export.cli", model, "-o", str(out), *options]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise VlaError(f"vla-export {model} {' '.join(options)} failed (exit {done.returncode}): {last}")
    return time.perf_counter() - start
