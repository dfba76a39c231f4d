"""Does the engine fit the latency budget? Judged once, from the loop's warm-up runs, before tick 0.

A user whose engine cannot fit the budget would otherwise see only a stream of ``late`` and then
``fault`` lines, and read the runtime as broken. The loop times its warm-up runs (after the first,
which allocates) and this module turns those times into one line: the measured figures, and what
to change (the budget, the rate, or the precision). Pure functions: no clock, no engine.

The engine is not the whole tick: the camera's own delivery, preprocessing and decoding come on
top (a few milliseconds on the host path when the camera renders the model's size). So the engine
may take at most ``1 - reserve`` of the budget at its p99; and a run longer than the tick period
overruns into the next tick whatever the budget says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .stats import median, percentile

#: The share of the budget kept for everything around the engine (camera delivery, preprocess, decode).
RESERVE = 0.1


@dataclass(frozen=True)
class BudgetFit:
    """The warm-up's engine figures against the budget and the tick period."""

    runs: int
    p50_ms: float
    p99_ms: float
    budget_ms: float
    period_ms: float
    reserve: float = RESERVE
    precision: str | None = None  # the bundle's (manifest export.precision.mode), to suggest a lighter one

    @property
    def engine_allowance_ms(self) -> float:
        """The most the engine may take at p99 and still leave the reserve."""
        return self.budget_ms * (1.0 - self.reserve)

    @property
    def fits_budget(self) -> bool:
        return self.p99_ms <= self.engine_allowance_ms

    @property
    def fits_period(self) -> bool:
        return self.p99_ms <= self.period_ms

    @property
    def fits(self) -> bool:
        return self.fits_budget and self.fits_period

    def suggested_budget_ms(self) -> int:
        """The smallest budget, in 10 ms steps, that leaves the reserve around the measured p99."""
        return int(math.ceil(self.p99_ms / (1.0 - self.reserve) / 10.0) * 10)

    def suggested_rate_hz(self) -> float:
        """The highest rate in whole Hz (or 0.5 Hz steps below 1 Hz) whose period holds the p99 run."""
        rate = 1000.0 / max(self.p99_ms, 1e-3)
        return math.floor(rate) if rate >= 1.0 else max(0.5, math.floor(rate * 2) / 2)

    def line(self) -> str:
        """One line for the start-up banner: the figures, and when they do not fit, what to do."""
        figures = f"engine p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms over {self.runs} warm-up runs"
        if self.fits:
            return (f"warm-up: {figures}; fits the {self.budget_ms:g} ms budget "
                    f"({self.engine_allowance_ms:.0f} ms for the engine, the rest for cameras and the loop)")
        problems = []
        if not self.fits_budget:
            problems.append(f"more than the {self.engine_allowance_ms:.0f} ms the {self.budget_ms:g} ms budget "
                            f"leaves the engine, so ticks will be late")
        if not self.fits_period:
            problems.append(f"longer than the {self.period_ms:.0f} ms tick period, so runs will overrun the next tick")
        fixes = []
        if not self.fits_budget:
            fixes.append(f"--budget-ms {max(self.suggested_budget_ms(), int(self.budget_ms) + 10)}")
        if not self.fits_period:
            fixes.append(f"--rate {self.suggested_rate_hz():g}")
        fixes.append(lighter_precision(self.precision))
        return f"warning: {figures}: {'; '.join(problems)}. Try {', or '.join(fixes)}"


def lighter_precision(precision: str | None) -> str:
    """What to export instead of a bundle of ``precision`` for a faster engine."""
    if precision == "int8":
        return "a faster engine (vla-build, --backend trt on the target's GPU)"
    if precision == "fp16":
        return "a lighter precision (vla-export --precision int8)"
    return "a lighter precision (vla-export --precision fp16 or int8)"


def judge_budget(engine_ms: Sequence[float], budget_ms: float, rate_hz: float, reserve: float = RESERVE,
                 precision: str | None = None) -> BudgetFit | None:
    """The warm-up runs' times (milliseconds) against the budget; None when there are none."""
    if not engine_ms:
        return None
    s = sorted(engine_ms)
    return BudgetFit(len(s), median(s), percentile(s, 99), budget_ms, 1000.0 / rate_hz, reserve, precision)
