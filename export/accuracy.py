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

Which limits apply (``Gate.from_options``, i.e. vla-export's options): ``--gate-ade-m M`` alone gates
on metres only; ``--gate-rel-ade R`` alone, or neither, on the relative figure (default 2 %); both,
on both. The relative figure needs a spread to be relative *to*: below ``MIN_SPREAD_M`` the model's
trajectories hardly vary across scenes (an untrained head, a model that barely reads its inputs),
2 % of that is a fraction of a millimetre, and a harmless rounding error reads as a large share of
it. So a spread under the floor is flagged in the figures, the report and the printed lines, with
the way out: gate in metres with ``--gate-ade-m``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla.runtime.errors import VlaError
from vla.runtime.manifest import Manifest

DEFAULT_REL_ADE = 0.02  # the relative limit when no limit is given
#: Below this spread (m) the reference trajectories vary too little to judge a relative gate by:
#: 2 % of 0.1 m is 2 mm, finer than anything a planner acts on, and INT8 rounding alone exceeds it.
MIN_SPREAD_M = 0.1


@dataclass(frozen=True)
class Gate:
    """Limits a converted graph must meet; ``None`` leaves a figure reported but not gated."""

    rel_ade: float | None = DEFAULT_REL_ADE  # trajectory ADE / spread of the reference trajectories
    ade_m: float | None = None  # trajectory ADE in metres
    output_rel: float | None = None  # every float output's max relative error

    @classmethod
    def from_options(cls, rel_ade: float | None, ade_m: float | None) -> Gate:
        """The gate the user asked for: metres alone gate on metres only; a relative limit alone, or
        neither, on the relative figure (default ``DEFAULT_REL_ADE``); both, on both. A limit that is
        not a positive number is a one-line ``VlaError``."""
        for flag, value in (("--gate-rel-ade", rel_ade), ("--gate-ade-m", ade_m)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise VlaError(f"{flag} must be a positive number (got {value:g})")
        if rel_ade is None and ade_m is None:
            rel_ade = DEFAULT_REL_ADE
        return cls(rel_ade=rel_ade, ade_m=ade_m)

    def record(self) -> dict[str, Any]:
        """The effective limits, for the bundle (``None``: not gated)."""
        return {"rel_ade": self.rel_ade, "ade_m": self.ade_m, "min_spread_m": MIN_SPREAD_M}

    def notes(self, figures: dict[str, Any]) -> list[str]:
        """What the user should know about how ``figures`` were judged (empty: nothing)."""
        note = spread_note(figures["trajectory"]["spread_m"], self)
        return [note] if note else []


def spread_note(spread_m: float, gate: Gate | None = None) -> str | None:
    """One sentence when ``spread_m`` is too small for the relative gate ``gate`` (or any relative
    gate, when ``gate`` is None) to mean anything, with what to do; None otherwise."""
    if spread_m >= MIN_SPREAD_M or (gate is not None and gate.rel_ade is None):
        return None
    return (f"the reference trajectories' spread {spread_m:.4f} m is below {MIN_SPREAD_M:g} m, too small to "
            "judge a relative gate by (the model's trajectories hardly vary across scenes); gate in metres "
            "instead, e.g. --gate-ade-m 0.05 (alone it replaces the relative limit)")


def trajectory_spread(refs: list[np.ndarray]) -> float:
    """Mean distance (m) of every reference trajectory ``[..., T, >=2]`` from their mean."""
    flat = np.concatenate([r[..., :2].reshape(-1, r.shape[-2], 2) for r in refs]).astype(np.float64)
    return float(np.linalg.norm(flat - flat.mean(axis=0), axis=-1).mean())


def reference_note(manifest: Manifest, refs: list[dict[str, np.ndarray]], gate: Gate) -> str | None:
    """``spread_note`` for the reference outputs ``refs`` before any graph is judged (one warning line)."""
    traj = manifest.outputs_with("trajectory")[0].name
    return spread_note(trajectory_spread([r[traj] for r in refs]), gate)


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
            "trajectory": {"ade_m": ade, "fde_m": fde, "spread_m": spread, "rel_ade": ade / max(spread, 1e-9),
                           "spread_below_floor": spread < MIN_SPREAD_M}}


def judge(figures: dict[str, Any], gate: Gate) -> list[str]:
    """What fails the gate, one short phrase each (empty: passed)."""
    failures = [f"{name}: non-finite values" for name, o in figures["outputs"].items() if o.get("finite") is False]
    failures += [f"{name}: {o['mismatches']} elements differ" for name, o in figures["outputs"].items()
                 if o.get("mismatches")]
    t = figures["trajectory"]
    if gate.rel_ade is not None and (t["rel_ade"] > gate.rel_ade or not np.isfinite(t["rel_ade"])):
        failure = (f"trajectory ADE {t['ade_m']:.3f} m is {100 * t['rel_ade']:.2f}% of the spread "
                   f"{t['spread_m']:.2f} m (limit {100 * gate.rel_ade:g}%)")
        if t["spread_m"] < MIN_SPREAD_M:
            failure += (f"; a spread under {MIN_SPREAD_M:g} m is too small to judge a relative gate by: "
                        "gate in metres with --gate-ade-m M")
        failures.append(failure)
    if gate.ade_m is not None and not t["ade_m"] <= gate.ade_m:
        failures.append(f"trajectory ADE {t['ade_m']:.3f} m > {gate.ade_m:g} m")
    if gate.output_rel is not None:
        failures += [f"{name}: max relative error {o['max_rel']:.2e} > {gate.output_rel:g}"
                     for name, o in figures["outputs"].items() if o.get("max_rel", 0.0) > gate.output_rel]
    return failures


def describe(figures: dict[str, Any], gate: Gate | None = None) -> str:
    """One line: the trajectory figures, for progress output; it says when the spread is under the
    floor (unless ``gate`` is in metres only, where the relative figure is just reported)."""
    t = figures["trajectory"]
    low = t["spread_m"] < MIN_SPREAD_M and (gate is None or gate.rel_ade is not None)
    return (f"ADE {t['ade_m']:.4f} m, FDE {t['fde_m']:.4f} m, {100 * t['rel_ade']:.2f}% of spread "
            f"{t['spread_m']:.4f} m" + (f" (under the {MIN_SPREAD_M:g} m floor: see --gate-ade-m)" if low else "")
            + f" over {figures['sets']} held-out sets")
