"""The ``vla.bench/1`` result: what every report is written from, and what ``compare`` reads.

Keys (all times in milliseconds)::

    schema        "vla.bench/1"
    mode          "engine" | "loop"
    engine        the path benchmarked (bundle folder, .plan or .onnx)
    backend       the backend's own description, e.g. "onnxruntime 1.32.0 CPUExecutionProvider, 1 ..."
    settings      {"iterations", "duration_s", "warmup_s", "budget_ms", "shapes", "cuda_graph",
                   "spin_wait", "threads", "rate_hz", "cameras"}   (what applies; others None)
                  loop mode adds "camera", "warmup_ticks", "data_path" (the loop's own line) and "limits"
    environment   environment.collect(): machine, versions, clocks (and Jetson power state)
    warnings      ["clocks are not fixed: ...", ...]
    stages        {stage: stats.summarize(values)} for stage in STAGES that were measured;
                  summarize gives count, min, max, mean, median, std, cv, p50, p90, p95, p99, p99.9
    samples       {stage: [per-iteration values, in run order]} (the PNG's timeline, re-analysis)
    throughput_qps  iterations / wall time from the first timed iteration's start to the last's end
    deadline      {"budget_ms", "misses", "rate"}  (e2e > budget), or None without a budget; loop mode:
                  misses are ticks whose engine result was not in hand by the deadline, whatever
                  was published (vla.runtime.loop.tally), and "by_status" says what was published instead
    status        loop mode: {status: ticks} for ok, late, fallback, fault (0 included)
    fallback_reasons  loop mode: {reason kind: ticks} of the ticks not ok, most frequent first
    limit_warnings    loop mode: {reason kind: ticks} published despite a limit (--limits warn)
    wall_s        seconds spent timing (warm-up excluded)
    interrupted   True when Ctrl-C ended the run early (the figures cover what was measured)
    started_at    ISO 8601 UTC time the timed part started
"""

from __future__ import annotations

from typing import Any

SCHEMA = "vla.bench/1"
#: Stages in pipeline order. Engine mode on a CPU backend measures preprocess, compute, decode and
#: e2e; GPU backends time h2d, compute and d2h with CUDA events and add enqueue (the host's enqueue
#: call, listed after these as trtexec lists it); loop mode adds acquire (capture -> every
#: camera's frame in hand: the cameras' latency, not the runtime's) and overhead (e2e - acquire -
#: compute: what the runtime itself costs per tick).
STAGES = ("acquire", "preprocess", "h2d", "compute", "d2h", "decode", "overhead", "e2e")
FIGURES = ("min", "mean", "median", "p90", "p95", "p99", "p99.9", "max", "std", "cv")

Result = dict[str, Any]
