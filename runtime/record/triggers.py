"""When to keep a snippet of the loop: the ``--record-on`` grammar and the trigger decision.

A vehicle cannot record everything forever, so ``vla-run --record-on …`` keeps the last seconds in a
ring (``ring.py``) and writes a file only around the moments worth looking at. This module decides
which moments those are, from the tick records the loop already publishes:

==================  =====================================================================
item                fires
==================  =====================================================================
``fault``           on the tick the loop enters a fault (not on every faulted tick)
``fallback``        on the first fallback after an ok tick (an edge: a run of fallbacks
                    is one event, and the ones that follow a fault belong to the fault)
``late``            on the first late tick of a streak
``late-streak:N``   on the Nth consecutive late tick (once per streak)
``surprise>X``      when the world model's surprise crosses above X
``disagreement>X``  when the shadow engine's ADE to the primary crosses above X metres
``manual``          never from a record: SIGUSR1 or the Python API (``manual_reason``)
==================  =====================================================================

Everything fires on edges, not levels: a fault lasting a minute is one reason, not 600. The decision
is a pure function of an immutable state and one record, so the recorder's thread owns no logic and
the tests need no loop, clock or thread.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vla.runtime.errors import VlaError

GRAMMAR = "fault, fallback, late, late-streak:N, surprise>X, disagreement>X, manual"
KINDS = ("fault", "fallback", "late", "late-streak", "surprise", "disagreement", "manual")

_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?"
_STREAK = re.compile(r"late-streak\s*:\s*([0-9]{1,9})")  # 9 digits: int() never sees a huge string
_THRESHOLD = re.compile(rf"(surprise|disagreement)\s*>\s*({_NUMBER})")


@dataclass(frozen=True)
class Trigger:
    """One ``--record-on`` item: ``kind`` (one of ``KINDS``) and its number (N of a streak, X of a
    threshold; None for the others)."""

    kind: str
    value: float | int | None = None

    def __str__(self) -> str:
        """The item as it is written on the command line (``parse_triggers`` reads it back)."""
        if self.kind == "late-streak":
            return f"late-streak:{self.value}"
        if self.kind in ("surprise", "disagreement"):
            return f"{self.kind}>{self.value!r}"
        return self.kind


def _bad(item: str, why: str) -> VlaError:
    shown = item if len(item) <= 40 else item[:37] + "..."
    return VlaError(f"--record-on: {why} {shown!r}; use a comma list of: {GRAMMAR}")


def _parse_item(item: str) -> Trigger:
    text = item.strip().lower()
    if text in ("fault", "fallback", "late", "manual"):
        return Trigger(text)
    if m := _STREAK.fullmatch(text):
        n = int(m.group(1))
        if n < 1:
            raise _bad(item, "a late streak needs N >= 1, not")
        return Trigger("late-streak", n)
    if m := _THRESHOLD.fullmatch(text):
        x = float(m.group(2))
        if not math.isfinite(x):  # 1e999 passes the pattern but is no threshold
            raise _bad(item, "the threshold must be a finite number, not")
        return Trigger(m.group(1), x)
    raise _bad(item, "unknown trigger")


def parse_triggers(spec: str) -> tuple[Trigger, ...]:
    """The triggers of a ``--record-on`` value, in the order given, each once. Anything that is not
    the grammar raises a one-line ``VlaError`` naming the item, so a typo never silently records
    nothing."""
    if not spec or not spec.strip():
        raise VlaError(f"--record-on: no trigger given; use a comma list of: {GRAMMAR}")
    out: list[Trigger] = []
    for item in spec.split(","):
        if not item.strip():
            raise _bad(spec, "an empty item in")
        trigger = _parse_item(item)
        if trigger not in out:
            out.append(trigger)
    return tuple(out)


@dataclass(frozen=True)
class TriggerState:
    """What the decision remembers between ticks (immutable: ``next_trigger`` returns a new one).

    ``faulted``: the last tick was a fault. ``fallback_armed``: an ok tick was seen since the last
    fallback fired (or the last fault). ``late_run``: consecutive late ticks up to the last one.
    ``above``: the threshold triggers whose value was last seen above X (re-armed by a value at or
    below X; a tick without a value changes nothing, since the shadow engine only runs when the
    primary is idle and the surprise needs a previous prediction).
    """

    faulted: bool = False
    fallback_armed: bool = False
    late_run: int = 0
    above: frozenset[Trigger] = field(default_factory=frozenset)


def _number(value: Any) -> float | None:
    """A measured value, or None when there is none (missing, not a number, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _measure(kind: str, record: Mapping[str, Any]) -> float | None:
    if kind == "surprise":
        return _number(record.get("surprise"))
    shadow = record.get("shadow")
    return _number(shadow.get("ade_m")) if isinstance(shadow, Mapping) else None


def _prefixed(kind: str, text: Any) -> str:
    """``kind: text`` without saying the kind twice (a late tick's reason already starts ``late:``)."""
    if not text:
        return kind
    text = " ".join(str(text).split())  # one line, whatever the reason held
    return text if text.startswith(f"{kind}:") else f"{kind}: {text}"


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def next_trigger(state: TriggerState, triggers: Sequence[Trigger],
                 record: Mapping[str, Any]) -> tuple[TriggerState, str | None]:
    """The state after one tick record, and why it should be recorded (None: it should not).

    Keys read: ``status`` (ok, late, fallback, fault), ``event`` (the health event; entering a fault
    starts with ``fault``), ``reason``, ``surprise`` (float or None) and ``shadow`` (a dict with
    ``ade_m``, or None). When several triggers fire on one tick their reasons are joined with ``; ``
    in the order the triggers were given. Fault, fallback and late edges are tracked whatever the list
    holds; a threshold's edge only while it is listed.
    """
    status = record.get("status")
    event = record.get("event")
    fault_now = status == "fault"
    entering_fault = (isinstance(event, str) and event.startswith("fault")) or (fault_now and not state.faulted)
    fallback_like = status not in ("ok", "late", "fault")
    fallback_fires = fallback_like and state.fallback_armed
    late_run = state.late_run + 1 if status == "late" else 0

    if status == "ok":
        armed = True
    elif fault_now or fallback_fires:
        armed = False
    else:
        armed = state.fallback_armed

    reasons: list[str] = []
    above = set(state.above)
    for t in triggers:
        if t.kind == "fault" and entering_fault:
            detail = record.get("reason")
            if not detail and isinstance(event, str):
                detail = event.partition(":")[2].strip()
            reasons.append(_prefixed("fault", detail))
        elif t.kind == "fallback" and fallback_fires:
            reasons.append(_prefixed("fallback", record.get("reason")))
        elif t.kind == "late" and late_run == 1:
            reasons.append(_prefixed("late", record.get("reason")))
        elif t.kind == "late-streak" and late_run == t.value:
            reasons.append(f"late-streak: {late_run} late ticks")
        elif t.kind in ("surprise", "disagreement"):
            value = _measure(t.kind, record)
            if value is None:
                continue
            if value > t.value:
                if t not in above:
                    above.add(t)
                    unit = " m" if t.kind == "disagreement" else ""
                    reasons.append(f"{t.kind} {_fmt(value)}{unit} > {_fmt(t.value)}")
            else:
                above.discard(t)
    new = replace(state, faulted=fault_now, fallback_armed=armed, late_run=late_run, above=frozenset(above))
    return new, "; ".join(reasons) if reasons else None


def manual_reason(note: str | None = None) -> str:
    """The reason a manual trigger (SIGUSR1, the Python API) records, on one line."""
    return _prefixed("manual", note)
