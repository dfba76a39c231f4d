"""What ``vla-run --record`` costs the loop (issue 19: "overhead ≤ 1 ms p99 per tick").

Two figures from the same run, because each misses something the other sees:

(a) the tap's own time: the recorder's four ``LoopTap`` calls (``on_run``, ``on_outputs``, ``on_tick``,
    ``on_command``) timed with ``perf_counter`` on the loop thread and summed per tick. This is the
    work recording adds to the loop thread (copies and queueing; encoding runs on the dispatcher's
    thread). It is the figure the goal is judged on: it includes ``on_tick``, which runs after the
    record's ``publish_time`` is stamped and so never shows in e2e.
(b) the loop's e2e latency (capture to publish) with and without recording, in interleaved blocks
    (off/on, then on/off, ...) on one ``Runner`` so drift of the machine (clocks, caches, other
    work) falls on both arms alike. It also sees what (a) cannot: the dispatcher's thread encoding
    and compressing on cores the engine and preprocessing share.

Recording is switched by attaching a ``RecordingSession`` (a fresh file per block) to the runner's
taps between ticks and closing it at the end of the block; the first ``--settle`` ticks of every
block are left out of both arms (closing a session writes what is queued and the summary).

(a) is wall time, so it also holds whatever kept the loop thread from running during the calls. The
table gives the loop thread's CPU time in them beside it: where wall ≫ CPU the loop was waiting for
a core (or the GIL), not working. ``--loop-fifo N`` runs the loop thread alone under SCHED_FIFO
after the warm-up, as a real-time deployment would, which takes that waiting out.

    python benchmarks/record_overhead.py --engine bundles/reference
    python benchmarks/record_overhead.py --engine bundles/reference --engine bundles/reference-v1 --loop-fifo 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from machine import abba, describe

from vla.runtime.engine import open_engine
from vla.runtime.inputs.sources import open_cameras
from vla.runtime.loop.runner import RunConfig, Runner
from vla.runtime.loop.stats import summarize
from vla.runtime.record.session import RecordingSession, RecordOptions

TAP_METHODS = ("on_run", "on_outputs", "on_tick", "on_command")
GOAL_MS = 1.0  # issue 19: recording overhead ≤ 1 ms p99 per tick


class TapTimer:
    """Times a recorder's ``LoopTap`` calls on the loop thread, without editing the recorder.

    The runner looks the methods up on the tap each call (``getattr(tap, name)``), so timed
    wrappers set on the instance are what it calls. ``take()`` after each tick gives that tick's
    total; calls from another thread (none today) are counted apart, not charged to a tick."""

    def __init__(self, loop_thread: int) -> None:
        self.loop_thread = loop_thread
        self._tick_s = self._tick_cpu_s = 0.0
        self.calls: dict[str, list[float]] = {m: [] for m in TAP_METHODS}  # ms per call
        self.foreign_calls = 0

    def wrap(self, recorder: Any) -> None:
        for name in TAP_METHODS:
            setattr(recorder, name, self._timed(name, getattr(recorder, name)))

    def _timed(self, name: str, call: Callable[..., None]) -> Callable[..., None]:
        def timed(*args: Any) -> None:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                call(*args)
            finally:
                dt = time.perf_counter() - t0
                if threading.get_ident() == self.loop_thread:
                    self._tick_s += dt
                    self._tick_cpu_s += time.thread_time() - c0
                    self.calls[name].append(dt * 1000.0)
                else:
                    self.foreign_calls += 1

        return timed

    def take(self) -> tuple[float, float]:
        """Milliseconds of tap time since the last ``take`` (one tick's, when called after each): wall
        time, and the loop thread's CPU time in it (the rest is waiting: for the GIL, which the
        dispatcher's thread holds while it builds messages, or for a core)."""
        ms = (self._tick_s * 1000.0, self._tick_cpu_s * 1000.0)
        self._tick_s = self._tick_cpu_s = 0.0
        return ms


def set_loop_policy(fifo: int | None) -> None:
    """This thread (the loop's) under SCHED_FIFO at ``fifo``, or back to SCHED_OTHER (None).

    Linux applies it to the calling thread only, and threads inherit it when created, so it is
    dropped while the recorder's thread starts: only the loop runs real-time."""
    if fifo is None:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    else:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(fifo))


def measure(engine: str, camera: str, raw: bool, blocks: int, ticks: int, settle: int, workdir: Path,
            loop_fifo: int | None = None) -> dict[str, Any]:
    """One configuration: ``blocks`` × (off, on) blocks of ``ticks`` ticks on one runner.

    ``loop_fifo``: after the warm-up (the engine's, the camera process's threads already started), the
    loop thread alone runs under SCHED_FIFO at this priority: how a real-time deployment shields the
    loop from the rest of the machine, recording's thread included."""
    backend = open_engine(engine)
    cams = open_cameras([camera], backend.manifest.camera_names, backend.manifest.camera_sizes)
    runner = Runner(backend, cams, RunConfig(log=lambda line: None))
    timer = TapTimer(threading.get_ident())
    e2e: dict[bool, list[float]] = {False: [], True: []}
    tap_ms: list[float] = []
    tap_cpu_ms: list[float] = []
    files: list[dict[str, Any]] = []
    dropped = 0
    records: Iterator[dict[str, Any]] = iter(runner)
    try:
        for i, on in enumerate(abba(blocks)):  # recording off/on per block
            session = None
            if on:
                if loop_fifo is not None:
                    set_loop_policy(None)
                path = workdir / f"{Path(engine).name}-{'raw' if raw else 'plain'}-{i}.mcap"
                session = RecordingSession(runner, RecordOptions(str(path), raw=raw, cameras={n: c.uri for n, c in
                                                                                             cams.items()},
                                                                 engine=engine))
                timer.wrap(session.recorder)
                timer.take()  # the command written at attach time belongs to no tick
            if loop_fifo is not None and i > 0:
                set_loop_policy(loop_fifo)
            try:
                for n in range(ticks):
                    record = next(records)
                    if loop_fifo is not None and i == 0 and n == 0:
                        set_loop_policy(loop_fifo)  # the warm-up is done: its threads are SCHED_OTHER
                    spent, cpu = timer.take()
                    if n < settle:
                        continue
                    e2e[on].append(record["latency_ms"]["e2e"])
                    if on:
                        tap_ms.append(spent)
                        tap_cpu_ms.append(cpu)
            finally:
                if session is not None:
                    runner.taps.remove(session.recorder)
                    session.close()
                    dropped += session.dispatcher.dropped
                    files.append({"messages": session.sink.messages, "bytes": session.sink.size})
    finally:
        if loop_fifo is not None:
            set_loop_policy(None)  # the next configuration's engine and camera threads start SCHED_OTHER
        close = getattr(records, "close", None)
        if close is not None:
            close()
        runner.close()
    off, on_ = summarize(e2e[False]), summarize(e2e[True])
    return {
        "engine": engine, "camera": camera, "raw": raw, "loop_fifo": loop_fifo, "blocks": blocks,
        "ticks_per_block": ticks, "settle": settle, "backend": backend.describe(),
        "tap_ms_per_tick": summarize(tap_ms),
        "tap_cpu_ms_per_tick": summarize(tap_cpu_ms),
        "tap_ms_per_call": {m: summarize(v) for m, v in timer.calls.items() if v},
        "foreign_calls": timer.foreign_calls,
        "e2e_ms": {"off": off, "on": on_},
        "e2e_ratio": {"p50": on_["median"] / off["median"], "p99": on_["p99"] / off["p99"]},
        "dropped_jobs": dropped,
        "mb_per_s": sum(f["bytes"] for f in files) / 1e6 / (len(files) * ticks / runner.cfg.rate_hz),
        "files": files,
    }


def table(results: list[dict[str, Any]]) -> str:
    """The figures as a markdown table (one row per configuration)."""
    head = ("| bundle | frames | tap p50 | tap p99 | tap max | tap CPU p99 | e2e p50 off → on | e2e p99 off → on "
            "| p99 ratio | MB/s | dropped |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        t, off, on = r["tap_ms_per_tick"], r["e2e_ms"]["off"], r["e2e_ms"]["on"]
        cpu = r["tap_cpu_ms_per_tick"]
        lines.append(f"| {Path(r['engine']).name} | {'raw' if r['raw'] else 'model inputs'} | {t['median']:.3f} | "
                     f"{t['p99']:.3f} | {t['max']:.3f} | {cpu['p99']:.3f} | {off['median']:.2f} → {on['median']:.2f} | "
                     f"{off['p99']:.2f} → {on['p99']:.2f} | {r['e2e_ratio']['p99']:.2f} | {r['mb_per_s']:.1f} | "
                     f"{r['dropped_jobs']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", action="append", help="bundle; repeatable (default bundles/reference)")
    p.add_argument("--camera", default="synthetic://", help="camera URI (default synthetic://, the model's size)")
    p.add_argument("--raw", choices=("off", "on", "both"), default="both",
                   help="record the raw camera frames too (--record-raw): off, on, or both configurations "
                   "(default both)")
    p.add_argument("--blocks", type=int, default=3, help="A/B block pairs per configuration (default 3)")
    p.add_argument("--ticks", type=int, default=100, help="ticks per block (default 100, 10 s at 10 Hz)")
    p.add_argument("--settle", type=int, default=5, help="ticks left out at the start of each block (default 5)")
    p.add_argument("--loop-fifo", type=int, metavar="PRIORITY",
                   help="after the warm-up, run the loop thread alone under SCHED_FIFO at this priority (needs "
                   "CAP_SYS_NICE): the loop shielded from the other threads and processes on its cores")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args()
    if args.settle >= args.ticks:
        p.error("--settle must be less than --ticks")
    if args.loop_fifo is not None:
        try:  # refused now, in one line, rather than after the first configuration's warm-up
            set_loop_policy(args.loop_fifo)
            set_loop_policy(None)
        except (OSError, ValueError) as exc:
            p.error(f"--loop-fifo {args.loop_fifo}: not applied ({getattr(exc, 'strerror', None) or exc}); it needs "
                    "CAP_SYS_NICE and a priority of 1-99")
    raws = {"off": [False], "on": [True], "both": [False, True]}[args.raw]
    results = []
    with tempfile.TemporaryDirectory(prefix="vla-record-overhead-") as tmp:
        for engine in args.engine or ["bundles/reference"]:
            for raw in raws:
                r = measure(engine, args.camera, raw, args.blocks, args.ticks, args.settle, Path(tmp), args.loop_fifo)
                print(f"{Path(engine).name} {'raw' if raw else 'plain'}: tap p99 {r['tap_ms_per_tick']['p99']:.3f} ms"
                      f"/tick; e2e p99 {r['e2e_ms']['off']['p99']:.2f} → {r['e2e_ms']['on']['p99']:.2f} ms",
                      file=sys.stderr, flush=True)
                results.append(r)
    machine = describe()
    print(f"machine: {machine}")
    print(f"camera {args.camera}; "
          + (f"loop thread SCHED_FIFO {args.loop_fifo} after the warm-up; " if args.loop_fifo is not None else "")
          + f"{args.blocks}×2 interleaved blocks of {args.ticks} ticks (first {args.settle} of "
          "each left out); tap = the recorder's calls on the loop thread, ms per tick (wall; CPU: the loop "
          "thread's own time in them); e2e in ms")
    print()
    print(table(results))
    print()
    for r in results:
        calls = ", ".join(f"{m} p99 {s['p99']:.3f}" for m, s in r["tap_ms_per_call"].items())
        print(f"{Path(r['engine']).name} {'raw' if r['raw'] else 'plain'} per call (ms): {calls}")
    worst = max(r["tap_ms_per_tick"]["p99"] for r in results)
    met = worst <= GOAL_MS
    print(f"goal (tap p99 ≤ {GOAL_MS:g} ms per tick): {'met' if met else 'MISSED'} (worst p99 {worst:.3f} ms)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
