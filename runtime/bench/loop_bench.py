"""The real ``vla-run`` pipeline timed tick by tick: cameras, grouping, preprocess, engine, decode,
fallback policy and publishing, exactly as the loop runs them (``vla.runtime.Runner``).

Per tick it takes the published record's stage times: ``acquire`` (capture → every camera's frame
in hand: the cameras' own latency plus the wait for the group), ``preprocess``, ``compute`` (the
engine), ``decode``, ``e2e`` (frame capture → publish, the latency the car sees) and ``overhead`` =
e2e − acquire − compute: everything the runtime adds around the engine once it has the frames, the
figure its own cost is judged by.
The counts are the loop's own (``vla.runtime.loop.tally``), from the timed ticks' records: ticks by
status; deadline misses (every tick whose engine result was not in hand by its deadline, whatever
was published: late, a fallback while the engine was still busy, a fault) with the status published
instead; the reasons of the ticks that were not ok, by kind; ticks published despite a limit.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import Any

from ..errors import VlaError
from ..loop.stats import summarize
from ..loop.tally import Tally
from .result import SCHEMA, Result

#: record latency key -> bench stage
_STAGE_OF = {"acquire": "acquire", "preprocess": "preprocess", "engine": "compute", "decode": "decode",
             "e2e": "e2e"}


def tick_samples(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-stage values from published records; overhead only where the engine ran (pure)."""
    samples: dict[str, list[float]] = {s: [] for s in (*_STAGE_OF.values(), "overhead")}
    for rec in records:
        lat = rec.get("latency_ms", {})
        for key, stage in _STAGE_OF.items():
            if key in lat:
                samples[stage].append(float(lat[key]))
        if "engine" in lat and "e2e" in lat:
            samples["overhead"].append(float(lat["e2e"]) - float(lat.get("acquire", 0.0)) - float(lat["engine"]))
        for stage, ms in (rec.get("stage_ms") or {}).items():  # a bundle of stages: each graph's own time
            samples.setdefault(f"stage:{stage}", []).append(float(ms))
        if rec.get("context_age_ms") is not None:
            samples.setdefault("context_age", []).append(float(rec["context_age_ms"]))
    return {k: v for k, v in samples.items() if v}


def run_loop_bench(engine: str, camera: str, *, ticks: int, rate_hz: float, budget_ms: float,
                   threads: int | None = None, warmup_ticks: int = 10, backend: str = "auto", device: str = "cpu",
                   cuda_graph: bool = False, limits: str = "enforce", command: str | None = None,
                   stage_rate: str | int | None = None) -> Result:
    """``ticks`` timed ticks of the loop after ``warmup_ticks``, on the backend vla-run would open
    for ``backend``/``device`` (its GPU data path on a GPU), with vla-run's ``--limits``; Ctrl-C
    ends it early."""
    import time

    from ..engine import open_engine
    from ..inputs.commands import CommandEncoder
    from ..inputs.sources import open_cameras
    from ..loop.limits import check_mode
    from ..loop.runner import RunConfig, Runner

    check_mode(limits)  # before the engine and the cameras open

    opened = open_engine(engine, threads, backend=backend, device=device, cuda_graph=cuda_graph,
                         stage_rate=stage_rate)
    if cuda_graph and opened.device_io() is None:  # the loop's own test for its GPU path, before the cameras
        where = opened.describe()
        opened.close()
        raise VlaError(f"--cuda-graph: the loop runs on the host data path here ({where}), so there is no device "
                       "tick to graph; use --device cuda with --backend torch or trt, or drop --cuda-graph")
    try:  # the command as vla-run encodes it, refused before the cameras open; its note said once
        encoded = CommandEncoder(opened.manifest).encode(command)
    except BaseException:
        opened.close()
        raise
    if encoded is not None and encoded.note:
        print(f"vla-bench: warning: {encoded.note}", file=sys.stderr, flush=True)
    cameras = open_cameras([camera], opened.manifest.camera_names, opened.manifest.camera_sizes)
    runner = Runner(opened, cameras, RunConfig(rate_hz=rate_hz, budget_ms=budget_ms, max_ticks=warmup_ticks + ticks,
                                               cuda_graph=cuda_graph, limits=limits, command=command,
                                               stage_rate=stage_rate))
    records: list[dict[str, Any]] = []
    interrupted = False
    started_at = first = last = None
    try:
        for i, rec in enumerate(runner):
            if i < warmup_ticks:
                continue
            if first is None:
                first = time.monotonic()
                started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            records.append(rec)
            last = time.monotonic()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        runner.close()
    samples = tick_samples(records)
    counts = Tally().extend(records).as_dict()
    misses = counts["deadline_misses"]
    wall = (last - first) if first is not None and last is not None else 0.0
    return {
        "schema": SCHEMA,
        "mode": "loop",
        "engine": engine,
        "backend": opened.describe(),
        "settings": {"iterations": ticks, "duration_s": None, "warmup_s": None, "budget_ms": budget_ms,
                     "shapes": None, "cuda_graph": cuda_graph, "spin_wait": False, "threads": threads,
                     "rate_hz": rate_hz, "cameras": len(cameras), "camera": camera, "warmup_ticks": warmup_ticks,
                     "data_path": runner.data_path, "limits": limits, "schedule": runner.schedule},
        "stages": {name: summarize(vals) for name, vals in samples.items()},
        "samples": samples,
        "throughput_qps": (len(records) - 1) / wall if wall > 0 else float("nan"),
        "deadline": {"budget_ms": budget_ms, "misses": misses,
                     "rate": misses / len(records) if records else float("nan"),
                     "by_status": counts["deadline_misses_by_status"]},
        "status": counts["status"],
        "fallback_reasons": counts["fallback_reasons"],
        "limit_warnings": counts["limit_warnings"],
        "wall_s": wall,
        "interrupted": interrupted,
        "started_at": started_at,
    }
