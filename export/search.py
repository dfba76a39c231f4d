"""Which nodes to keep in high precision: the smallest prefix of the sensitivity ranking that passes.

``ranked`` lists the converted nodes, most sensitive first (``precision.local_errors``). Excluding
a longer prefix can only bring the graph closer to FP32, so the search doubles the prefix until the
gate passes (1, 2, 4, ... up to ``max_exclude``) and then bisects between the last failing and the
first passing length. Every trial is measured on the real converted graph by ``evaluate``; this
module only decides what to try next, so it is tested without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: evaluate(excluded nodes) -> (gate failures, figures); no failures means the gate passed.
Evaluate = Callable[[list[str]], tuple[list[str], dict[str, Any]]]


@dataclass
class Trial:
    excluded: int  # length of the ranked prefix kept in high precision
    failures: list[str]
    figures: dict[str, Any]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class SearchResult:
    excluded: list[str]
    passed: bool
    trials: list[Trial] = field(default_factory=list)

    @property
    def final(self) -> Trial:
        """The trial whose exclusions were chosen (or the best failing one)."""
        match = [t for t in self.trials if t.excluded == len(self.excluded)]
        return match[-1] if match else self.trials[-1]


def prefix_lengths(max_exclude: int) -> list[int]:
    """The doubling schedule: 1, 2, 4, ... and ``max_exclude`` itself last."""
    out, k = [], 1
    while k < max_exclude:
        out.append(k)
        k *= 2
    if max_exclude > 0:
        out.append(max_exclude)
    return out


def search_exclusions(ranked: list[str], evaluate: Evaluate, max_exclude: int,
                      on_trial: Callable[[Trial], None] | None = None) -> SearchResult:
    """Smallest passing prefix of ``ranked`` (length <= ``max_exclude``); ``passed`` False if none."""
    max_exclude = min(max_exclude, len(ranked))
    trials: list[Trial] = []

    def trial(k: int) -> Trial:
        failures, figures = evaluate(ranked[:k])
        t = Trial(k, failures, figures)
        trials.append(t)
        if on_trial:
            on_trial(t)
        return t

    if trial(0).passed:
        return SearchResult([], True, trials)
    lo, hi = 0, None
    for k in prefix_lengths(max_exclude):
        if trial(k).passed:
            hi = k
            break
        lo = k
    if hi is None:
        return SearchResult(ranked[:lo], False, trials)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if trial(mid).passed:
            hi = mid
        else:
            lo = mid
    return SearchResult(ranked[:hi], True, trials)
