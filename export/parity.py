"""Parity between the PyTorch model and the exported ONNX graph, run by ONNX Runtime.

``compare`` is pure (arrays in, report out) so its arithmetic is tested on its own. Relative error
is max |a - b| / max |b| per output: the scale of an output, not of each element, so values near zero
do not blow it up. Trajectory error is also given in metres (ADE/FDE over x, y).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vla.runtime.manifest import Manifest


@dataclass(frozen=True)
class Tolerance:
    rel: float = 1e-3  # max |a-b| / max |ref| per float output
    ade_m: float = 0.01  # trajectory average displacement error, metres


def trajectory_errors(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """ADE and FDE in metres over every batch item and mode; ``[..., T, >=2]`` with x, y first."""
    dist = np.linalg.norm(ref[..., :2].astype(np.float64) - got[..., :2].astype(np.float64), axis=-1)
    return float(dist.mean()), float(dist[..., -1].mean())


def output_errors(names: list[str], ref: dict[str, np.ndarray], got: dict[str, np.ndarray], rel: float
                  ) -> tuple[dict[str, Any], list[str]]:
    """Per-output errors of ``names`` and what fails: integers must match exactly, floats within ``rel``
    of the reference's largest magnitude; outputs missing or of the wrong shape fail outright."""
    outputs: dict[str, Any] = {}
    failures: list[str] = []
    for name in names:
        r, g = ref[name], got.get(name)
        if g is None or g.shape != r.shape:
            failures.append(f"{name}: shape {None if g is None else list(g.shape)} != {list(r.shape)}")
            continue
        if r.dtype.kind in "biu":
            mismatches = int(np.count_nonzero(r != g))
            outputs[name] = {"mismatches": mismatches}
            if mismatches:
                failures.append(f"{name}: {mismatches} elements differ")
            continue
        diff = np.abs(r.astype(np.float64) - g.astype(np.float64))
        finite = bool(np.isfinite(g).all())
        max_abs = float(diff.max()) if diff.size else 0.0
        max_rel = max_abs / max(float(np.abs(r).max()) if r.size else 0.0, 1e-6)
        outputs[name] = {"max_abs": max_abs, "max_rel": max_rel, "finite": finite}
        if not finite or max_rel > rel:
            failures.append(f"{name}: max relative error {max_rel:.2e} > {rel:.0e}"
                            if finite else f"{name}: non-finite values")
    return outputs, failures


def keep_worst(worst: dict[str, Any], outputs: dict[str, Any]) -> None:
    """Fold one comparison's per-output figures into ``worst`` (the largest error, any non-finite)."""
    for name, figures in outputs.items():
        acc = worst.setdefault(name, dict(figures))
        for key, value in figures.items():
            acc[key] = (acc[key] and value) if isinstance(value, bool) else max(acc[key], value)


def compare(manifest: Manifest, ref: dict[str, np.ndarray], got: dict[str, np.ndarray],
            tol: Tolerance) -> dict[str, Any]:
    """Per-output errors and the verdict. Outputs missing or of the wrong shape fail outright."""
    outputs, failures = output_errors([t.name for t in manifest.outputs], ref, got, tol.rel)
    traj = manifest.outputs_with("trajectory")[0].name
    result: dict[str, Any] = {"outputs": outputs}
    if traj in outputs:
        ade, fde = trajectory_errors(ref[traj], got[traj])
        result["trajectory"] = {"ade_m": ade, "fde_m": fde}
        if ade > tol.ade_m:
            failures.append(f"{traj}: ADE {ade:.4f} m > {tol.ade_m} m")
    result["failures"] = failures
    return result


def run_torch(eager, manifest: Manifest, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in manifest.inputs]
    with torch.no_grad():
        out = eager(*args)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return {t.name: o.detach().cpu().numpy() for t, o in zip(manifest.outputs, out, strict=True)}


def check_parity(eager, session, manifest: Manifest, feed_sets: list[dict[str, np.ndarray]],
                 tol: Tolerance) -> dict[str, Any]:
    """Compare on every feed set; the report keeps the worst figure of each metric."""
    worst: dict[str, Any] = {"outputs": {}, "trajectory": {"ade_m": 0.0, "fde_m": 0.0}, "failures": []}
    for feeds in feed_sets:
        ref = run_torch(eager, manifest, feeds)
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
        rep = compare(manifest, ref, got, tol)
        keep_worst(worst["outputs"], rep["outputs"])
        for key in ("ade_m", "fde_m"):
            worst["trajectory"][key] = max(worst["trajectory"][key], rep.get("trajectory", {}).get(key, 0.0))
        worst["failures"] += [f for f in rep["failures"] if f not in worst["failures"]]
    worst["inputs"] = len(feed_sets)
    worst["tolerance"] = {"rel": tol.rel, "ade_m": tol.ade_m}
    worst["passed"] = not worst["failures"]
    return worst
