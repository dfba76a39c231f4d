"""The accuracy gate: a converted graph against the FP32 PyTorch reference on held-out scenes.

Pure arithmetic on arrays (no sessions, no files), so the figures and the verdict are tested on
their own. What is measured, per held-out input set and then aggregated:

- per output: max |a - b| / max |ref| (the output's scale, as in parity) and the mean of the
  same ratio over sets, plus whether every value is finite;
- the trajectory: ADE and FDE in metres (x, y), averaged over sets, modes and waypoints;
- the trajectory's *spread*: the mean distance of each reference trajectory (every set and mode)
  from the mean reference trajectory, i.e. how much the model's own output varies across scenes.
  ADE / spread is the relative figure. Absolute metres depend on the scene and speed; an untrained
  model's trajectories are not yet meaningful in metres, so both are reported and both can gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vla.runtime.manifest import Manifest


@dataclass(frozen=True)
class Gate:
    """Limits a converted graph must meet; ``None`` leaves a figure reported but not gated."""

    rel_ade: float = 0.02  # trajectory ADE / spread of the reference trajectories
    ade_m: float | None = None  # trajectory ADE in metres
    output_rel: float | None = None  # every float output's max relative error


def trajectory_spread(refs: list[np.ndarray]) -> float:
    """Mean distance (m) of every reference trajectory ``[..., T, >=2]`` from their mean."""
    flat = np.concatenate([r[..., :2].reshape(-1, r.shape[-2], 2) for r in refs]).astype(np.float64)
    return float(np.linalg.norm(flat - flat.mean(axis=0), axis=-1).mean())


def measure(manifest: Manifest, refs: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Figures of ``got`` against ``refs`` (one dict of outputs per held-out set, same order)."""
    outputs: dict[str, Any] = {}
    for spec in manifest.outputs:
        if np.dtype(spec.dtype).kind != "f":
            mism = sum(int(np.count_nonzero(r[spec.name] != g[spec.name])) for r, g in zip(refs, got, strict=True))
            outputs[spec.name] = {"mismatches": mism}
            continue
        rels, finite = [], True
        for r, g in zip(refs, got, strict=True):
            a, b = r[spec.name].astype(np.float64), g[spec.name].astype(np.float64)
            finite &= bool(np.isfinite(b).all())
            rels.append(float(np.abs(a - b).max()) / max(float(np.abs(a).max()), 1e-6))
        outputs[spec.name] = {"max_rel": max(rels), "mean_rel": float(np.mean(rels)), "finite": finite}
    traj = manifest.outputs_with("trajectory")[0].name
    ref_t = [r[traj] for r in refs]
    dist = [np.linalg.norm(r[..., :2].astype(np.float64) - g[traj][..., :2], axis=-1)
            for r, g in zip(ref_t, got, strict=True)]
    ade = float(np.mean([d.mean() for d in dist]))
    fde = float(np.mean([d[..., -1].mean() for d in dist]))
    spread = trajectory_spread(ref_t)
    return {"sets": len(refs), "outputs": outputs,
            "trajectory": {"ade_m": ade, "fde_m": fde, "spread_m": spread, "rel_ade": ade / max(spread, 1e-9)}}


def judge(figures: dict[str, Any], gate: Gate) -> list[str]:
    """What fails the gate, one short phrase each (empty: passed)."""
    failures = [f"{name}: non-finite values" for name, o in figures["outputs"].items() if o.get("finite") is False]
    failures += [f"{name}: {o['mismatches']} elements differ" for name, o in figures["outputs"].items()
                 if o.get("mismatches")]
    t = figures["trajectory"]
    if t["rel_ade"] > gate.rel_ade or not np.isfinite(t["rel_ade"]):
        failures.append(f"trajectory ADE {t['ade_m']:.3f} m is {100 * t['rel_ade']:.2f}% of the spread "
                        f"{t['spread_m']:.2f} m (limit {100 * gate.rel_ade:g}%)")
    if gate.ade_m is not None and not t["ade_m"] <= gate.ade_m:
        failures.append(f"trajectory ADE {t['ade_m']:.3f} m > {gate.ade_m:g} m")
    if gate.output_rel is not None:
        failures += [f"{name}: max relative error {o['max_rel']:.2e} > {gate.output_rel:g}"
                     for name, o in figures["outputs"].items() if o.get("max_rel", 0.0) > gate.output_rel]
    return failures


def describe(figures: dict[str, Any]) -> str:
    """One line: the trajectory figures, for progress output."""
    t = figures["trajectory"]
    return (f"ADE {t['ade_m']:.4f} m, FDE {t['fde_m']:.4f} m, {100 * t['rel_ade']:.2f}% of spread "
            f"{t['spread_m']:.2f} m over {figures['sets']} held-out sets")
