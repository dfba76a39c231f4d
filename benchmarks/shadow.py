"""Shadow mode must never delay the primary: the loop's end-to-end latency with and without ``--shadow``.

Runs the real loop in this process (``Runner``, synthetic cameras in their own process) on ``--engine``, N ticks
without a shadow and N ticks with one (the same bundle by default, so its runs cost what the primary's do),
interleaved over several rounds (off/on, then on/off, ...) so a machine that gets busier or quieter in between
weighs on both sides alike. Reports, as markdown tables: the primary's latency per stage p50/p99 both ways and
their ratio; the e2e of the ticks right after a shadow run against those right after a skip (the same runs, so
the same load); statuses, deadline misses and the machine's load average after each run (figures taken while
other work runs mean little); and what the shadow did (runs, skips by reason, runs that ended after the next
tick was due, run time, ADE).

    python benchmarks/shadow.py --engine bundles/reference --rounds 3 --ticks 100
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections import Counter
from typing import Any

from machine import CAMERA_720P, abba, describe

from vla.runtime.engine import open_engine
from vla.runtime.inputs.sources import open_cameras
from vla.runtime.loop.runner import STAGES, RunConfig, Runner
from vla.runtime.loop.shadow import Shadow
from vla.runtime.loop.stats import summarize


def run_once(engine: str, camera: str, ticks: int, rate: float, budget_ms: float, shadow: str | None) -> dict[str, Any]:
    """One loop of ``ticks`` ticks; the records' latencies and, with a shadow, its totals."""
    backend = open_engine(engine)
    cams = open_cameras([camera], backend.manifest.camera_names, backend.manifest.camera_sizes)
    runner = Runner(backend, cams, RunConfig(rate_hz=rate, budget_ms=budget_ms, max_ticks=ticks))
    sh = None
    try:
        sh = Shadow.open(shadow, runner) if shadow else None
        records = list(runner)
    finally:
        runner.close()
        if sh is not None:
            sh.close()
    out: dict[str, Any] = {
        **{s: [r["latency_ms"][s] for r in records if s in r["latency_ms"]] for s in STAGES},
        "status": Counter(r["status"] for r in records),
        "misses": sum(r["deadline_missed"] for r in records),
    }
    if sh is not None:
        # The same run's ticks split by whether the candidate ran in the idle time just before them: a control
        # under the same load, which interleaved runs on a shared machine cannot promise.
        ran = {r["shadow"]["tick"] for r in records if r["shadow"]["tick"] is not None}
        pairs = list(itertools.pairwise(records))
        out["e2e_after_run"] = [cur["latency_ms"]["e2e"] for prev, cur in pairs if prev["tick"] in ran]
        out["e2e_after_skip"] = [cur["latency_ms"]["e2e"] for prev, cur in pairs if prev["tick"] not in ran]
        out.update(totals=dict(sh.totals), skips=dict(sh.skips), overlaps=sh.overlaps, ade=sh.ades.values(),
                   run_ms=sh.run_ms.values(), describe=sh.describe())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="bundles/reference", help="the primary bundle (vla-export reference -o DIR)")
    p.add_argument("--shadow", help="the candidate bundle (default: --engine itself)")
    p.add_argument("--camera", default=CAMERA_720P, help=f"camera URI (default {CAMERA_720P}: real-size frames)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ticks", type=int, default=100, help="ticks per run")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--budget-ms", type=float, default=100.0)
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args()
    candidate = args.shadow or args.engine

    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for k, on in enumerate(abba(args.rounds)):
        i, mode = k // 2, "on" if on else "off"
        r = run_once(args.engine, args.camera, args.ticks, args.rate, args.budget_ms,
                     candidate if mode == "on" else None)
        r["load"] = os.getloadavg()[0]  # other work on the machine: the figures mean little when it is high
        runs[mode].append(r)
        e2e = summarize(r["e2e"])
        print(f"round {i + 1} shadow {mode:>3}: e2e p50 {e2e['median']:.2f} ms, p99 {e2e['p99']:.2f} ms; "
              f"load average {r['load']:.2f}" + (f"; shadow {r['totals']}" if mode == "on" else ""),
              file=sys.stderr, flush=True)

    def pooled(mode: str, key: str) -> dict[str, float]:
        return summarize([v for r in runs[mode] for v in r[key]])

    stages = {s: {m: pooled(m, s) for m in runs} for s in STAGES}
    e2e = stages["e2e"]
    status = {m: sum((r["status"] for r in runs[m]), Counter()) for m in runs}
    misses = {m: sum(r["misses"] for r in runs[m]) for m in runs}
    loads = {m: ", ".join(f"{r['load']:.1f}" for r in runs[m]) for m in runs}
    totals = sum((Counter(r["totals"]) for r in runs["on"]), Counter())
    skips = sum((Counter(r["skips"]) for r in runs["on"]), Counter())
    overlaps = sum(r["overlaps"] for r in runs["on"])
    ade = summarize([v for r in runs["on"] for v in r["ade"]])
    shadow_ms = summarize([v for r in runs["on"] for v in r["run_ms"]])

    print(f"machine: {describe()}")
    print(f"primary {args.engine}, candidate {candidate}; {args.rounds} rounds x {args.ticks} ticks each way at "
          f"{args.rate:g} Hz, budget {args.budget_ms:g} ms, camera {args.camera}")
    print(f"{runs['on'][0]['describe']}\n")
    print("| primary (ms) | without shadow p50 | p99 | with shadow p50 | p99 | ratio p50 | ratio p99 |")
    print("|---|---|---|---|---|---|---|")
    for name, st in stages.items():
        off, on = st["off"], st["on"]
        print(f"| {name} | {off['median']:.2f} | {off['p99']:.2f} | {on['median']:.2f} | {on['p99']:.2f} | "
              f"{on['median'] / off['median']:.3f} | {on['p99'] / off['p99']:.3f} |")
    after = {k: pooled("on", f"e2e_after_{k}") for k in ("run", "skip")}
    print()
    print("| with shadow: e2e (ms) of ticks | count | p50 | p99 | max |")
    print("|---|---|---|---|---|")
    for k, label in (("run", "right after a shadow run"), ("skip", "right after a skipped tick")):
        st = after[k]
        print(f"| {label} | {st['count']} | " + (f"{st['median']:.2f} | {st['p99']:.2f} | {st['max']:.2f} |"
                                                 if st["count"] else "- | - | - |"))
    print()
    print("| | without shadow | with shadow |")
    print("|---|---|---|")
    print(f"| statuses | {dict(status['off'])} | {dict(status['on'])} |")
    print(f"| deadline misses | {misses['off']} | {misses['on']} |")
    print(f"| load average (1 min) after each run | {loads['off']} | {loads['on']} |")
    print(f"| shadow runs / skipped / errors | - | {totals['runs']} / {totals['skipped']} / {totals['errors']} |")
    print(f"| skips by reason | - | {dict(skips) or '-'} |")
    print(f"| shadow runs that ended after the next tick was due | - | {overlaps} |")
    if shadow_ms["count"]:
        print(f"| shadow run (ms) p50 / p99 | - | {shadow_ms['median']:.2f} / {shadow_ms['p99']:.2f} |")
    if ade["count"]:
        print(f"| ADE (m) p50 / p99 / max | - | {ade['median']:.4f} / {ade['p99']:.4f} / {ade['max']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": describe(), "engine": args.engine, "candidate": candidate, "rounds": args.rounds,
                       "ticks": args.ticks, "latency_ms": stages, "load": loads,
                       "e2e_with_shadow_by_previous_tick": after,
                       "status": {m: dict(s) for m, s in status.items()}, "deadline_misses": misses,
                       "shadow": {"totals": dict(totals), "skips": dict(skips), "overlaps": overlaps,
                                  "run_ms": shadow_ms, "ade_m": ade},
                       "per_run": {m: [{"e2e": summarize(r["e2e"])} for r in rs] for m, rs in runs.items()}},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
