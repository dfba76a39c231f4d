"""Which nodes to keep in high precision, decided by measuring: ``search_by_effect``.

The converted nodes come in *groups*, one per PyTorch module. Each group's effect on the trajectory
is measured (ADE with only that group kept in FP32), the groups are ranked by it, and the smallest
prefix of the ranking that passes the gate is found by doubling then bisection, within a node limit
and a time budget. Keeping more of the graph in FP32 brings it closer to FP32, but not strictly
(rounding errors can cancel), so the ranking is measured rather than assumed. Every trial runs the
real converted graph through ``evaluate``; this module only decides what to try next, so it is
tested without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: evaluate(excluded nodes) -> (gate failures, figures); no failures means the gate passed.
Evaluate = Callable[[list[str]], tuple[list[str], dict[str, Any]]]


@dataclass
class Trial:
    excluded: int  # nodes kept in high precision
    failures: list[str]
    figures: dict[str, Any]
    groups: list[str] = field(default_factory=list)  # the modules they belong to

    @property
    def passed(self) -> bool:
        return not self.failures


def prefix_lengths(max_exclude: int) -> list[int]:
    """The doubling schedule: 1, 2, 4, ... and ``max_exclude`` itself last."""
    out, k = [], 1
    while k < max_exclude:
        out.append(k)
        k *= 2
    if max_exclude > 0:
        out.append(max_exclude)
    return out


#: out_of_time(trials run so far) -> True when no further trial may start (a clock in the pipeline,
#: a trial count in tests).
OutOfTime = Callable[[int], bool]


@dataclass
class Effect:
    """What keeping one group (a module's nodes) in FP32, everything else converted, does to ADE."""

    group: str
    nodes: list[str]
    ade_m: float  # trajectory ADE with this group in FP32
    effect_m: float  # ADE with everything converted minus ``ade_m``: how much this group alone costs


@dataclass
class EffectSearch:
    """The groups chosen (kept in FP32, most harmful first), the trial that measured them, and why it ended."""

    groups: list[str]
    excluded: list[str]  # their nodes
    passed: bool
    final: Trial
    trials: list[Trial]
    effects: dict[str, Effect]
    out_of_time: bool = False

    def harmful(self, n: int = 3) -> list[Effect]:
        """The ``n`` groups whose FP32 restoration helped most (for a refusal naming them)."""
        ranked = sorted(self.effects.values(), key=lambda e: -e.effect_m)
        return [e for e in ranked if e.effect_m > 0][:n]


def _ade(t: Trial) -> float:
    return float(t.figures.get("trajectory", {}).get("ade_m", float("inf")))


def search_by_effect(groups: dict[str, list[str]], order: list[str], evaluate: Evaluate, max_exclude: int,
                     out_of_time: OutOfTime, on_trial: Callable[[Trial], None] | None = None) -> EffectSearch:
    """Fewest groups to keep in FP32 so the gate passes, chosen by *measured* effect on the trajectory.

    1. Everything converted; if that passes, nothing is kept in FP32.
    2. For each group, in ``order`` (a cheap guess of sensitivity, so the likely culprits are measured
       first should time run out): everything converted except that group; its *effect* is how much
       ADE falls. Groups never measured rank after the measured ones, in ``order``; groups of more than
       ``max_exclude`` nodes are measured (a refusal names them) but never chosen.
    3. The smallest prefix of that ranking that passes, by doubling then bisection (``prefix_lengths``),
       never more than ``max_exclude`` nodes in FP32.

    ``out_of_time`` is asked before every trial after the first; when it says stop, the best result so
    far is returned (a passing one if any trial passed). Trials are memoised by their node set.
    """
    trials: list[Trial] = []
    seen: dict[frozenset[str], Trial] = {}

    def trial(names: list[str]) -> Trial:
        nodes = [n for g in names for n in groups[g]]
        key = frozenset(nodes)
        if key in seen:
            return seen[key]
        failures, figures = evaluate(nodes)
        t = Trial(len(nodes), failures, figures, groups=list(names))
        trials.append(t)
        seen[key] = t
        if on_trial:
            on_trial(t)
        return t

    def done(chosen: list[str], t: Trial, effects: dict[str, Effect], late: bool = False) -> EffectSearch:
        return EffectSearch(chosen, [n for g in chosen for n in groups[g]], t.passed, t, trials, effects, late)

    base = trial([])
    effects: dict[str, Effect] = {}
    if base.passed:
        return done([], base, effects)
    late = False  # the budget cut the search short (reported, even when the result passes)
    for g in order:  # groups too big to keep are measured too: a refusal names what hurts
        if out_of_time(len(trials)):
            late = True
            break
        t = trial([g])
        effects[g] = Effect(g, list(groups[g]), _ade(t), _ade(base) - _ade(t))
    allowed = [g for g in order if len(groups[g]) <= max_exclude]
    measured = sorted((g for g in effects if g in allowed), key=lambda g: -effects[g].effect_m)
    ranked = measured + [g for g in allowed if g not in effects]
    # One group that passes on its own: no set is smaller. The most helpful first, but any that passes
    # (the gate judges more than ADE, so the top of the ranking may fail where another group passes).
    best = next((g for g in measured if seen[frozenset(groups[g])].passed), None)
    if best is not None:
        return done([best], seen[frozenset(groups[best])], effects, late)

    sizes = [0]  # nodes in each prefix of ``ranked``
    for g in ranked:
        sizes.append(sizes[-1] + len(groups[g]))
    longest = max(k for k, s in enumerate(sizes) if s <= max_exclude)
    lo, hi = 1 if measured else 0, None
    for k in prefix_lengths(longest):
        if k <= lo and measured:
            continue
        if out_of_time(len(trials)):
            return _give_up(done, trials, set(allowed), effects)
        t = trial(ranked[:k])
        if t.passed:
            hi = k
            break
        lo = k
    if hi is None:
        return _give_up(done, trials, set(allowed), effects, late=late)
    while hi - lo > 1:
        if out_of_time(len(trials)):
            late = True
            break
        mid = (lo + hi) // 2
        if trial(ranked[:mid]).passed:
            hi = mid
        else:
            lo = mid
    return done(ranked[:hi], seen[frozenset(n for g in ranked[:hi] for n in groups[g])], effects, late)


def _give_up(done: Callable[..., EffectSearch], trials: list[Trial], allowed: set[str],
             effects: dict[str, Effect], late: bool = True) -> EffectSearch:
    """No passing set: the trial with the lowest ADE among those the limit allows (a refusal reports it,
    ``--force`` writes it)."""
    best = min((t for t in trials if set(t.groups) <= allowed), key=_ade)
    return done(list(best.groups), best, effects, late)
