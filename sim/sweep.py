"""Sweeps: the same scenarios at every point of a grid (latency × precision × drops …), on Ray.

Each (point, scenario) is one Ray task on an actor that opens each bundle once and keeps it; an
embedded local Ray by default (one actor per core), a cluster with ``--ray-address``. Points are
parsed and expanded by pure functions (tested without Ray); the table and the plot are made from
the per-point aggregates.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vla.runtime.errors import VlaError
from vla.runtime.stages import parse_rate

from .closed_loop import SimOptions

#: Sweep axes: name -> (the SimOptions field it sets, None: it picks the bundle; how its values are read).
AXES: dict[str, tuple[str | None, Callable[[str], Any]]] = {
    "latency": ("latency_ms", float),
    "drop": ("drop_frames", float),
    "precision": (None, str),
    "stage_rate": ("stage_rate", parse_rate),
}
PRECISIONS = ("fp32", "fp16", "int8")


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """``latency=0,50,100`` -> ("latency", [0.0, 50.0, 100.0]); one-line errors for the rest."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not values.strip():
        raise VlaError(f"--sweep {text!r}: write AXIS=V1,V2,… (axes: {', '.join(AXES)})")
    if name not in AXES:
        raise VlaError(f"--sweep {text!r}: unknown axis {name!r} (axes: {', '.join(AXES)})")
    _, read = AXES[name]
    out = []
    for raw in values.split(","):
        raw = raw.strip()
        try:
            value = read(raw)
        except ValueError:
            raise VlaError(f"--sweep {name}: {raw!r} is not a number") from None  # (parse_rate says its own)
        if name == "precision" and value not in PRECISIONS:
            raise VlaError(f"--sweep precision: {raw!r} is not one of {', '.join(PRECISIONS)}")
        if (name in ("latency", "drop") and value < 0) or (name == "drop" and value > 1):
            raise VlaError(f"--sweep {name}: {raw} is out of range")
        out.append(value)
    return name, out


def grid(axes: Sequence[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination, the first axis varying slowest: [{"latency": 0.0, "precision": "fp32"}, …]."""
    names = [n for n, _ in axes]
    if len(set(names)) != len(names):
        raise VlaError(f"--sweep: an axis is given twice ({', '.join(names)})")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(v for _, v in axes))]


def options_for(options: SimOptions, point: dict[str, Any]) -> SimOptions:
    """``options`` at a sweep point (the axes that set an option; precision picks the bundle instead)."""
    return replace(options, **{AXES[k][0]: v for k, v in point.items() if AXES[k][0] is not None})


def engine_for(template: str, point: dict[str, Any]) -> str:
    """The bundle of a point: ``--engine bundles/ref-{precision}`` names one bundle per precision."""
    if "precision" in point and "{precision}" not in template:
        raise VlaError("--sweep precision needs --engine with {precision} in it, e.g. bundles/ref-{precision} "
                       "(export each: vla-export reference --precision int8 -o bundles/ref-int8)")
    try:
        return template.format(**point)
    except (KeyError, IndexError, ValueError) as exc:
        raise VlaError(f"--engine {template!r}: cannot fill it from the sweep point {point} ({exc})") from None


@dataclass(frozen=True)
class Task:
    point: dict[str, Any]
    engine: str
    seed: int


def tasks(template: str, points: Sequence[dict[str, Any]], seeds: Sequence[int]) -> list[Task]:
    return [Task(p, engine_for(template, p), s) for p in points for s in seeds]


def point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def table(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> str:
    """A markdown table: one row per point with its aggregate."""
    head = [*axes, "scenarios", "score", "route completion", "collisions", "off-road", "ticks ok"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [f"{r['point'][a]:g}" if isinstance(r["point"][a], float) else str(r["point"][a]) for a in axes]
        t = r["overall"]
        cells += [str(r["scenarios"]), f"{t['score']:.3f}", f"{100 * t['route_completion']:.1f} %",
                  str(t["collisions"]), str(t["offroad"]), f"{100 * t['ok_fraction']:.1f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
