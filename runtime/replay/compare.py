"""openpilot's replay tolerance, per output: the pure half of ``vla-replay``.

Two values differ when ``|a - b| > max(tol, tol * max(|a|, |b|))``: ``tol`` is an absolute floor
for values near zero and a relative bound for large ones. ``tol = 0`` asks for bit-exact equality
(NaN equals NaN only where both are NaN). Tolerances come from ``--tol NAME=X`` / ``--tol X``, then
the bundle's manifest (an output's ``tolerance``), then the default for its precision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import VlaError

#: Defaults by the replaying bundle's precision: FP32 on another machine may round differently in the
#: last bits; FP16 and INT8 are lossy by design (INT8's matches openpilot's PC tolerance).
PRECISION_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2, "int8": 0.3, "mixed": 5e-2}


def differs(a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """Element-wise: where ``a`` and ``b`` differ beyond ``tol`` (openpilot's rule)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b)
        bound = np.maximum(tol, tol * np.maximum(np.abs(a), np.abs(b)))
        bad = diff > bound
    bad |= nan_a != nan_b
    # inf - inf is NaN: equal infinities are equal, others differ
    both_inf = np.isinf(a) & np.isinf(b)
    bad[both_inf] = a[both_inf] != b[both_inf]
    return bad


@dataclass
class OutputDiff:
    """One output over a whole replay: how many values, how many beyond tolerance, the worst."""

    name: str
    tol: float
    values: int = 0
    runs: int = 0
    bad_values: int = 0
    bad_runs: int = 0
    max_abs: float = 0.0
    worst_run: int | None = None
    worst_tick: int | None = None
    first_bad: tuple[int, int, int] | None = None  # (run, tick, flat index)

    def add(self, run: int, tick: int, recorded: np.ndarray, replayed: np.ndarray) -> None:
        rec, rep = np.asarray(recorded), np.asarray(replayed)
        if rec.shape != rep.shape:
            raise VlaError(f"output '{self.name}': recorded shape {list(rec.shape)}, replayed {list(rep.shape)}: "
                           "the bundle is not the model of the recording")
        bad = differs(rec, rep, self.tol)
        self.values += rec.size
        self.runs += 1
        n = int(bad.sum())
        if n:
            self.bad_values += n
            self.bad_runs += 1
            if self.first_bad is None:
                self.first_bad = (run, tick, int(np.flatnonzero(bad)[0]))
        with np.errstate(invalid="ignore"):
            d = np.abs(rec.astype(np.float64) - rep.astype(np.float64))
        finite = d[np.isfinite(d)]
        worst = float(finite.max()) if finite.size else 0.0
        if self.worst_run is None or worst > self.max_abs:
            self.max_abs, self.worst_run, self.worst_tick = worst, run, tick

    def as_dict(self) -> dict:
        return {"output": self.name, "tol": self.tol, "runs": self.runs, "values": self.values,
                "bad_values": self.bad_values, "bad_runs": self.bad_runs, "max_abs": self.max_abs,
                "worst_run": self.worst_run, "worst_tick": self.worst_tick,
                "first_bad": list(self.first_bad) if self.first_bad else None}


@dataclass
class Tolerances:
    per_output: dict[str, float] = field(default_factory=dict)
    default: float | None = None  # --tol X

    @classmethod
    def parse(cls, items: Iterable[str]) -> Tolerances:
        """``--tol X`` (every output) and ``--tol NAME=X`` (one output); one-line errors."""
        out = cls()
        for item in items:
            name, eq, value = item.rpartition("=")
            try:
                tol = float(value)
            except ValueError:
                tol = -1.0
            if not tol >= 0.0 or not np.isfinite(tol):
                raise VlaError(f"--tol {item}: expected X or NAME=X with X a number >= 0 (0: bit-exact)")
            if eq:
                out.per_output[name] = tol
            else:
                out.default = tol
        return out

    def resolve(self, name: str, manifest_outputs: Mapping[str, dict], precision: str) -> float:
        if name in self.per_output:
            return self.per_output[name]
        if self.default is not None:
            return self.default
        declared = (manifest_outputs.get(name) or {}).get("tolerance")
        if declared is not None:
            return float(declared)
        return PRECISION_TOLERANCE.get(precision, PRECISION_TOLERANCE["fp32"])
