"""Honest counts of a run: ticks by status, deadline misses whatever was published, reasons by kind.

A tick's status says what was published; whether the tick missed its deadline is a separate
question, decided per tick by ``deadline_missed`` and carried in its record (``deadline_missed``):
the engine's result for the tick was not in hand by the deadline (capture + budget), because the
engine was still running at the deadline, or was still busy with an earlier tick so this one could
not run, or finished but its result was published past the deadline. Whether that tick then went
out ``late``, ``fallback`` or ``fault`` (health may have turned it into a fault) does not change that
it missed. A tick that never ran the model for another reason (no fresh frames, stale ego) did not
miss a deadline: its reason says why it fell back.

``Tally`` counts published records (``vla-run``'s summary, ``vla-bench --loop``), so the figures
printed, saved and scraped (``metrics.py`` uses the same kinds) are one definition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from .health import reason_kind

STATUSES = ("ok", "late", "fallback", "fault")
#: How the engine stood at a tick's end: "done" (it ran for this tick and its result, usable or not,
#: was decoded before publishing), "pending" (still running at the deadline), "busy" (an earlier
#: tick's run held it, so this tick's never started), "none" (the model was not run: frames, ego).
ENGINE_STATES = ("done", "pending", "busy", "none")


def deadline_missed(engine: str, publish: float, deadline: float) -> bool:
    """Whether a tick missed its deadline: its engine result was not in hand (published) by then."""
    if engine not in ENGINE_STATES:
        raise ValueError(f"engine state {engine!r}: expected one of {', '.join(ENGINE_STATES)}")
    return engine in ("pending", "busy") or (engine == "done" and publish > deadline)


def record_missed(record: Mapping[str, Any]) -> bool:
    """Whether a published record missed its deadline: its ``deadline_missed``; a record from before
    that field counts as a miss when it went out ``late`` (all the old summary counted)."""
    return bool(record.get("deadline_missed", record.get("status") == "late"))


def record_problem(record: Mapping[str, Any]) -> str | None:
    """The tick's own reason for not publishing the model's trajectory: ``problem`` when the record
    has it (while faulted ``reason`` is the fault's), else ``reason`` of a late or fallback record."""
    if "problem" in record:
        return record["problem"]
    return record.get("reason") if record.get("status") in ("late", "fallback") else None


class Tally:
    """Running counts over published records (``add`` each); ``as_dict`` for summaries and reports."""

    def __init__(self) -> None:
        self.ticks = 0
        self.status: Counter[str] = Counter()
        self.deadline_misses: Counter[str] = Counter()  # by the status that was published instead
        self.reasons: Counter[str] = Counter()  # by kind (health.reason_kind), over every tick not ok
        self.warnings: Counter[str] = Counter()  # published despite a limit (--limits warn), by kind
        self.last: dict[str, str] = {}  # the last full text of each kind (kinds are bounded, so is this)

    def add(self, record: Mapping[str, Any]) -> None:
        status = record["status"]
        self.ticks += 1
        self.status[status] += 1
        if record_missed(record):
            self.deadline_misses[status] += 1
        if problem := record_problem(record):
            kind = reason_kind(problem)
            self.reasons[kind] += 1
            self.last[kind] = problem
        if warning := record.get("warning"):
            kind = reason_kind(warning)
            self.warnings[kind] += 1
            self.last[kind] = warning

    def extend(self, records: Iterable[Mapping[str, Any]]) -> Tally:
        for record in records:
            self.add(record)
        return self

    def as_dict(self) -> dict[str, Any]:
        """Every status (0 included, so a reader never guesses), misses by published status, kinds."""
        misses = sum(self.deadline_misses.values())
        return {
            "status": {s: self.status.get(s, 0) for s in (*STATUSES, *sorted(set(self.status) - set(STATUSES)))},
            "deadline_misses": misses,
            "deadline_misses_by_status": {s: n for s in STATUSES if (n := self.deadline_misses.get(s, 0))},
            "fallback_reasons": dict(self.reasons.most_common()),
            "limit_warnings": dict(self.warnings.most_common()),
            "last_reasons": dict(self.last),
        }


def format_counts(counts: Mapping[str, int], *, zeros: bool = True) -> str:
    """``ok 97, late 1, fallback 2, fault 0`` (the mapping's order)."""
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v or zeros) or "none"


def format_kinds(counts: Mapping[str, int], last: Mapping[str, str] | None = None) -> str:
    """``late x80, engine overrun x3`` (most frequent first, as ``as_dict`` orders them). A kind that
    names a limit flag gets its last value, which the kind itself leaves out: ``implausible
    trajectory beyond --max-curvature x12 (last: curvature 0.52 1/m > 0.3 at t=1.2 s)``."""
    parts = []
    for kind, n in counts.items():
        text = f"{kind} x{n}"
        example = (last or {}).get(kind, "")
        if " --" in kind and ": " in example:
            text += f" (last: {example.split(': ', 1)[1]})"
        parts.append(text)
    return ", ".join(parts)
