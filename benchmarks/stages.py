"""Issue 17's figures for reference model 2 (vision / context / flow-matching action expert as three stages).

One run of each comparison, on this machine, ONNX Runtime on the CPU:

1. **Latency, single vs dual rate** (the real loop, ``synthetic://`` cameras at 10 Hz, 100 ms budget):
   the model exported as one graph (``vla-export reference --one-graph``); the bundle of stages with
   every stage every tick; the context stages every 3rd tick; the context stages asynchronously.
   Per schedule: the decision's engine time (one graph and single rate: the whole model; dual: the
   fast path, action expert x K), decode, end to end, the context age, the statuses. Goal: fast
   path (engine + decode) <= 40 % of the single-graph decision (the percentages are against it).
2. **Quality, dual vs single rate** (offline, deterministic): a synthetic drive's ticks decided with
   the context of the tick itself (single rate) and with the context the dual-rate schedule would
   have used (one tick old for async, one to three for every 3rd), same ego, command and noise:
   ADE / FDE (m) between the integrated trajectories.
3. **K sweep**: the action expert exported for K = 1, 2, 5, 10 Euler steps: the fast path's time
   (``vla-bench --stage action``'s timing) and ADE / FDE against K = 10 on the same drive and noise.

    python benchmarks/stages.py [--ticks 150] [--out build/bench-stages] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vla.kernels.decode import integrate_controls
from vla.runtime.backends.staged import StagedBackend, StageStore
from vla.runtime.bench.engine_bench import BenchConfig, open_target, run_bench
from vla.runtime.engine import open_engine
from vla.runtime.inputs.sources import open_cameras
from vla.runtime.loop.runner import RunConfig, Runner
from vla.runtime.stages import split

#: (label, bundle: "one" graph or the "staged" one, stage rate, context max age)
SCHEDULES = (("one graph (model 2 exported whole)", "one", None, None),
             ("stages, single rate (every stage every tick)", "staged", "tick", None),
             ("stages, dual rate, context every 3rd tick", "staged", 3, 450.0),
             ("stages, dual rate, context async", "staged", "async", None))
KS = (1, 2, 5, 10)


def export(out: Path, steps: int, one_graph: bool = False) -> Path:
    folder = out / (f"reference-k{steps}" + ("-one-graph" if one_graph else ""))
    if not (folder / "manifest.json").exists():
        cmd = [sys.executable, "-m", "vla.export.cli", "reference", "-o", str(folder),
               "--config", f"flow_steps={steps}", *(["--one-graph"] if one_graph else [])]
        print(f"stages: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
    return folder


def loop_figures(bundle: Path, rate: str | int, max_age: float | None, ticks: int) -> dict:
    backend = open_engine(str(bundle), backend="ort", stage_rate=rate)
    cams = open_cameras(["synthetic://"], backend.manifest.camera_names, backend.manifest.camera_sizes)
    runner = Runner(backend, cams, RunConfig(max_ticks=ticks + 10, stage_rate=rate, context_max_age_ms=max_age))
    try:
        records = list(runner)[10:]  # the first second settles caches and threads
    finally:
        runner.close()

    def pct(values: list[float]) -> dict:
        return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))} if values else {}

    ok = [r for r in records if r["status"] == "ok"]
    decision = [r["latency_ms"]["engine"] + r["latency_ms"]["decode"] for r in ok]
    stage_ms: dict[str, list[float]] = {}
    for r in records:
        for k, v in (r["stage_ms"] or {}).items():
            stage_ms.setdefault(k, []).append(v)
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {"ticks": len(records), "status": statuses, "decision_ms": pct(decision),
            "e2e_ms": pct([r["latency_ms"]["e2e"] for r in ok]),
            "context_age_ms": pct([r["context_age_ms"] for r in ok if r["context_age_ms"] is not None]),
            "stage_ms": {k: pct(v) for k, v in stage_ms.items()}}


def drive(bundle: Path, ticks: int, seed: int = 7) -> list[dict[str, np.ndarray]]:
    """A synthetic drive's tick inputs (cameras, ego, command, noise), from export/scenes.py."""
    from vla.export.scenes import drive_feeds

    backend = open_engine(str(bundle), backend="ort")
    try:
        return [{k: v.copy() for k, v in f.items()} for f in
                drive_feeds(backend.manifest, lambda feeds: {}, seed=seed, ticks=ticks)]
    finally:
        backend.close()


def trajectories(backend: StagedBackend, feeds: list[dict[str, np.ndarray]], lags: list[int]) -> list[np.ndarray]:
    """Each tick decided on the context of tick t - lag[t]: poses [K, T, 3] from the integrated controls."""
    slow, fast = split(backend.stages) if any(s.slow for s in backend.stages) else ((), backend.stages)
    m = backend.manifest
    traj = m.outputs_with("trajectory")[0]
    contexts = []
    for f in feeds:
        for name, value in f.items():
            np.copyto(backend.feed(name), value)
        store = StageStore()
        backend.prepare(slow, None)
        contexts.append(backend.execute(slow, store))
    out = []
    for t, f in enumerate(feeds):
        for name, value in f.items():
            np.copyto(backend.feed(name), value)
        store = StageStore()
        backend.prepare(fast, contexts[max(0, t - lags[t])])
        backend.execute(fast, store)
        out.append(integrate_controls(store.values[traj.name], m.start_speed(f.__getitem__), float(traj.detail["dt"])))
    return out


def ade_fde(a: list[np.ndarray], b: list[np.ndarray]) -> dict:
    d = np.stack([np.linalg.norm(x[..., :2] - y[..., :2], axis=-1) for x, y in zip(a, b, strict=True)])
    return {"ade_m": float(d.mean()), "fde_m": float(d[..., -1].mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=150, help="timed loop ticks per schedule (default 150)")
    ap.add_argument("--drive-ticks", type=int, default=40, help="ticks of the drive for the quality figures")
    ap.add_argument("--out", default="build/bench-stages", help="bundles and results.json go here")
    ap.add_argument("--markdown", help="write the tables as Markdown")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundles = {k: export(out, k) for k in KS}
    ref = bundles[10]
    results: dict = {"machine": subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip(),
                     "when": time.strftime("%Y-%m-%d %H:%M"), "loop": {}, "quality": {}, "k_sweep": {}}
    which = {"staged": ref, "one": export(out, 10, one_graph=True)}
    for label, bundle, rate, max_age in SCHEDULES:
        print(f"stages: loop, {label}", file=sys.stderr, flush=True)
        results["loop"][label] = loop_figures(which[bundle], rate, max_age, args.ticks)
    feeds = drive(ref, args.drive_ticks)
    n = len(feeds)
    backend = open_engine(str(ref), backend="ort")
    try:
        single = trajectories(backend, feeds, [0] * n)
        results["quality"]["async (context 1 tick old)"] = ade_fde(trajectories(backend, feeds, [1] * n), single)
        every3 = [0 if t == 0 else t - 3 * ((t - 1) // 3) for t in range(n)]
        results["quality"]["every 3rd tick (1-3 ticks old)"] = ade_fde(trajectories(backend, feeds, every3), single)
    finally:
        backend.close()
    for k, folder in bundles.items():
        cfg = BenchConfig(iterations=50, duration_s=2.0, warmup_s=0.3, stage="action")
        target = open_target(str(folder), "ort", cfg)
        try:
            timed = run_bench(target, cfg)["stages"]["stage:action"]
        finally:
            target.close()
        staged = open_engine(str(folder), backend="ort")
        try:
            trajs = trajectories(staged, feeds, [0] * n)
        finally:
            staged.close()
        results["k_sweep"][k] = {"action_ms": {"p50": timed["median"], "p99": timed["p99"]}, "trajs": trajs}
    ref_trajs = results["k_sweep"][10]["trajs"]
    for k in KS:
        entry = results["k_sweep"][k]
        entry.update(ade_fde(entry.pop("trajs"), ref_trajs))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    text = markdown(results)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


def markdown(r: dict) -> str:
    lines = [f"Machine: `{r['machine']}`, {r['when']}; `python benchmarks/stages.py`", "",
             "| schedule | ok / ticks | decision p50 / p99 (ms) | e2e p50 / p99 (ms) | context age p50 / p99 (ms) |",
             "| --- | --- | --- | --- | --- |"]
    single = None
    for label, f in r["loop"].items():
        d, e, a = f["decision_ms"], f["e2e_ms"], f["context_age_ms"]
        single = single or d["p50"]
        age = f"{a['p50']:.0f} / {a['p99']:.0f}" if a else "-"
        lines.append(f"| {label} | {f['status'].get('ok', 0)} / {f['ticks']} | {d['p50']:.1f} / {d['p99']:.1f} "
                     f"({100 * d['p50'] / single:.0f} %) | {e['p50']:.1f} / {e['p99']:.1f} | {age} |")
    lines += ["", "| per-stage time (ms, p50) | " + " | ".join(r["loop"]) + " |", "| --- |" + " --- |" * len(r["loop"])]
    names = sorted({k for f in r["loop"].values() for k in f["stage_ms"]})
    for name in names:
        cells = [f"{f['stage_ms'][name]['p50']:.1f}" if name in f["stage_ms"] else "-" for f in r["loop"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| quality vs single rate | ADE (m) | FDE (m) |", "| --- | --- | --- |"]
    for label, q in r["quality"].items():
        lines.append(f"| {label} | {q['ade_m']:.3f} | {q['fde_m']:.3f} |")
    lines += ["", "| K (Euler steps) | action stage p50 / p99 (ms) | ADE vs K=10 (m) | FDE vs K=10 (m) |",
              "| --- | --- | --- | --- |"]
    for k, s in r["k_sweep"].items():
        lines.append(f"| {k} | {s['action_ms']['p50']:.1f} / {s['action_ms']['p99']:.1f} | {s['ade_m']:.3f} | "
                     f"{s['fde_m']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
