"""vla-sim's default clock and a dual-rate bundle: how many ticks are ok, and how old the context is.

On the simulated clock with the engine's measured time, the loop's idle time is skipped, but not while
an engine run (the dual-rate slow stages) is still computing (``runtime/loop/clock.py``). This drives
held-out scenarios as ``vla-sim`` does (``sim.closed_loop.drive``, one engine opened once) and reports
the tick statuses and the context age the fast path used, optionally with ``--load N`` busy processes on
the machine, so a loaded box can be compared with an idle one in the same session.

    python benchmarks/sim_context.py --engine bundles/reference --seeds 20 [--load 2]
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import sys
from typing import Any

from machine import describe

from vla.runtime.engine import open_engine
from vla.runtime.loop.stats import summarize
from vla.sim.closed_loop import SimOptions, drive
from vla.sim.world import make_scenario


def _spin() -> None:
    while True:
        pass


def measure(engine: str, first_seed: int, seeds: int) -> dict[str, Any]:
    backend = open_engine(engine)
    status: collections.Counter[str] = collections.Counter()
    ages: list[float] = []
    reasons: collections.Counter[str] = collections.Counter()
    try:
        for seed in range(first_seed, first_seed + seeds):
            records: list[dict[str, Any]] = []
            drive(backend, make_scenario(seed), SimOptions(), on_tick=records.append)
            for r in records:
                status[r["status"]] += 1
                if r.get("context_age_ms") is not None:
                    ages.append(float(r["context_age_ms"]))
                if r["status"] != "ok":
                    reasons[(r.get("reason") or r.get("problem") or "?").split(":")[0]] += 1
    finally:
        backend.close()
    return {"status": dict(status), "context_age_ms": summarize(ages), "reasons": dict(reasons)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="bundles/reference", help="a dual-rate bundle (vla-export reference)")
    p.add_argument("--seed", type=int, default=1000, help="first scenario seed (default 1000: held out)")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--load", type=int, default=0, help="busy processes to run alongside (default 0: idle)")
    args = p.parse_args()
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.load)]
    for s in spinners:
        s.start()
    try:
        result = measure(args.engine, args.seed, args.seeds)
    finally:
        for s in spinners:
            s.terminate()
    st, age = result["status"], result["context_age_ms"]
    ticks = sum(st.values())
    print(f"machine: {describe()}")
    print(f"{args.engine}: seeds {args.seed}..{args.seed + args.seeds - 1}, {args.load} busy processes alongside; "
          "simulated clock, measured engine time")
    print("| ticks | ok | fallback | fault | late | context age p50 / p99 / max (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {ticks} | {100.0 * st.get('ok', 0) / max(ticks, 1):.1f} % | {st.get('fallback', 0)} | "
          f"{st.get('fault', 0)} | {st.get('late', 0)} | {age['median']:.0f} / {age['p99']:.0f} / {age['max']:.0f} |")
    if result["reasons"]:
        print(f"not ok, by reason: {result['reasons']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
