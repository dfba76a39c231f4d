"""What a simulation run says: per-scenario and overall results, the summary lines, results.json and
the pictures of failed scenarios."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import aggregate

#: A scenario failed when it hit something, left the road, or completed less of its route than this.
MIN_COMPLETION = 0.95


def failed(result: dict[str, Any]) -> bool:
    return bool(result["collisions"]) or bool(result["offroad"]) or result["route_completion"] < MIN_COMPLETION


def overall(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The whole run: the metrics' aggregate, status counts summed, failed scenarios named."""
    out = dict(aggregate(list(results)))
    status: Counter[str] = Counter()
    for r in results:
        status.update(r.get("status", {}))
    ticks = sum(status.values())
    out["offroad"] = sum(1 for r in results if r["offroad"])  # scenarios that left the road
    out["status"] = dict(status)
    out["ok_fraction"] = status.get("ok", 0) / ticks if ticks else 0.0
    out["failed_seeds"] = [r["seed"] for r in results if failed(r)]
    return out


def scenario_line(r: dict[str, Any]) -> str:
    s = r.get("status", {})
    return (f"seed {r['seed']}: {r['end']}; route {100 * r['route_completion']:.0f} %, collisions {r['collisions']}, "
            f"off-road {'yes' if r['offroad'] else 'no'}, score {r['score']:.3f}; ticks ok {s.get('ok', 0)}, "
            f"late {s.get('late', 0)}, fallback {s.get('fallback', 0)}, fault {s.get('fault', 0)}")


def summary_line(total: dict[str, Any], n: int) -> str:
    s = total["status"]
    return (f"{n} scenarios: score {total['score']:.3f}, route completion {100 * total['route_completion']:.1f} %, "
            f"collisions {total['collisions']}, off-road {total['offroad']}; ticks ok {s.get('ok', 0)}, "
            f"late {s.get('late', 0)}, fallback {s.get('fallback', 0)}, fault {s.get('fault', 0)} "
            f"({100 * total['ok_fraction']:.1f} % ok)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no inf/NaN (an endless time to collision)
    return value


def write_results(out: Path, config: dict[str, Any], results: Sequence[dict[str, Any]],
                  total: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(_jsonable({"config": config, "overall": total, "scenarios": list(results)}),
                               indent=1) + "\n")
    return path


def route_xy(world: Any) -> np.ndarray:
    """The route's centre line from the start to the goal, [N, 2] in the world frame."""
    route = world.scenario.route
    path = route.path
    lo, hi = int(route.s_start / path.ds), math.ceil(route.s_goal / path.ds) + 1
    return path.xy[max(0, lo):min(path.n, hi)]


def draw_failed(out: Path, drives: Iterable[Any], every: bool = False) -> list[Path]:
    """A top-down PNG per failed scenario (every one with ``every``) from ``Drive`` objects."""
    from .plots import topdown_png

    paths = []
    for d in drives:
        r = d.result
        if not (every or failed(r)):
            continue
        marks = []
        if r["collisions"] and len(d.trace):
            marks.append((float(d.trace[-1, 1]), float(d.trace[-1, 2]), "collision"))
        boxes, _colors = d.world.boxes()
        title = f"seed {r['seed']}: {r['end']}, route {100 * r['route_completion']:.0f} %, score {r['score']:.3f}"
        paths.append(topdown_png(out / f"scenario-{r['seed']}.png", d.world.ground(), route_xy(d.world),
                                 d.trace[:, 1:4], boxes, title, marks))
    return paths
