"""The model card (MODEL_CARD.md) written beside the trained weights.

A card is the one place a reader learns what the committed weights are: what data they saw (scenario
seeds, samples per source), the seed and configuration that reproduce them, how long training took on
which machine, and what they achieved (losses, closed-loop completion and collisions on held-out seeds).
It is rendered from a plain dict (``loop.TrainReport.as_dict()``) by a pure function, so it can be tested
without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARD_NAME = "MODEL_CARD.md"


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    lines = ["| | |", "|---|---|"]
    lines.extend(f"| {k} | {v} |" for k, v in rows)
    return lines


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100.0 * x:.1f} %"


def render_card(report: dict[str, Any]) -> str:
    """Markdown text of the card for a training report (the dict ``TrainReport.as_dict`` gives)."""
    cfg = report["model_config"]
    data = report["data"]
    ev = report.get("closed_loop") or {}
    lines = [
        "# vla-reference-2: trained weights",
        "",
        "Reference model 2 (`vla.export.reference_v2.ReferenceVLA2`: ViT per camera -> context transformer ->",
        "flow-matching action expert) trained by `vla-train` (`vla.train`) to imitate the scripted expert of the",
        "synthetic driving world (`vla.sim.world.Expert`: pure pursuit on the route's lane centre + IDM), with",
        "DART-style noise on the executed controls and DAgger rounds, on inputs built by the runtime's own code",
        "(camera preprocessing, `EgoFeed`, `CommandEncoder`), so the model sees in training what it sees on the",
        "vehicle. `vla-export reference` builds from these weights (the config is in the file's metadata).",
        "",
        "## Reproduce",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Seed {report['seed']}; same seed, arguments and thread count give the same weights"
        + (" (this run was cut by its time budget, so it does not reproduce exactly)."
           if report.get("stopped_by_budget") else "."),
        "",
        "## Model",
        "",
        *_table([
            ("parameters", f"{report['parameters']:,}"),
            ("cameras", f"{', '.join(cfg['cameras'])} at {cfg['image_height']}x{cfg['image_width']} (HxW), "
                        f"patch {cfg['patch']}"),
            ("vision", f"ViT dim {cfg['vit_dim']}, depth {cfg['vit_depth']}, pool {cfg['vision_pool']}"),
            ("context", f"dim {cfg['dim']}, depth {cfg['context_depth']}, {cfg['context_tokens']} tokens"),
            ("action expert", f"dim {cfg['expert_dim']}, depth {cfg['expert_depth']}, {cfg['modes']} modes, "
                              f"{cfg['waypoints']} x {cfg['dt']} s, K = {cfg['flow_steps']} Euler steps"),
            ("weights file", f"{report.get('weights_file', 'reference-v2.safetensors')} "
                             f"({report.get('weights_mb', 0):.1f} MB, float32)"),
        ]),
        "",
        "Why this size: " + report.get("size_reason", ""),
        "",
        "Full configuration:",
        "",
        "```json",
        json.dumps(cfg, sort_keys=True),
        "```",
        "",
        "## Data",
        "",
        *_table([
            ("training scenarios", data["train_seeds"]),
            ("samples", f"{data['samples']:,} (one per 0.1 s tick)"),
            ("by source", ", ".join(f"{k}: {v:,}" for k, v in data["by_source"].items())),
            ("DART noise", data["dart"]),
            ("DAgger rounds", f"{data['dagger_rounds']} (policy rollouts on scenarios {data['dagger_seeds']}, "
                              "every visited state labelled by the expert)"),
            ("label", "Expert.future_controls(world, 64, 0.1): (accel m/s², curvature 1/m) every 0.1 s"),
            ("generation time", f"{data['seconds']:.0f} s"),
        ]),
        "",
        "## Training",
        "",
        *_table([
            ("loss", "flow matching (rectified flow) on the expert's velocity, x1 = (label - prior(ego)) / "
                     "control_scale, first second weighted x4, curvature x2 against accel (unit space); score: "
                     "cross-entropy towards the mode whose "
                     "one-step end-point estimate is closest to the label; plus a training-only head (not in "
                     "the weights) regressing the route's path 0-30 m ahead in the ego frame from the context, so "
                     "the vision stage learns lane geometry from a direct target"),
            ("optimiser", report["optimiser"]),
            ("steps", f"{report['steps']:,} x batch {report['batch']} (x {report['draws']} noise draws each)"),
            ("training time", f"{report['train_seconds'] / 60:.1f} min of {report['total_seconds'] / 60:.1f} min "
                              "in all"),
            ("machine", report["machine"]),
            ("final loss", f"flow {report['final_loss']['flow']:.4f}, score {report['final_loss']['score']:.3f}, "
                           f"route {report['final_loss'].get('route', 0.0):.4f}"),
            ("held-out loss", "n/a" if report.get("val_loss") is None else f"flow {report['val_loss']:.4f}"),
        ]),
        "",
        "## Closed loop (in-process, torch FP32)",
        "",
        "The policy drives the world itself, as in the simulator's closed loop: each 0.1 s tick it renders the",
        "cameras, runs the K Euler steps from fresh noise, takes the highest-score mode, integrates it into poses",
        "like the runtime's decode and the simulator's tracking controller follows them (20 Hz, from 50 ms on).",
        "",
    ]
    if ev:
        lines += _table([
            ("scenarios", ev["seeds"]),
            ("route completion", f"mean {_pct(ev['completion'])}, min {_pct(ev['min_completion'])}"),
            ("reached the goal", f"{ev['goals']} of {ev['scenarios']}"),
            ("collisions", ev["collisions"]),
            ("left the road", f"{ev.get('offroad_scenarios', 'n/a')} scenarios, {ev['offroad_ticks']} ticks in all "
                              "(the check drives on; vla-sim ends a scenario there)"),
        ])
        met = ev["completion"] >= 0.95 and ev["collisions"] == 0 and not ev.get("offroad_scenarios", 0)
        lines += ["", ("Meets" if met else "**Below**") + " the closed-loop targets (route completion >= 95 %, no "
                  "collision, on the road) in this check."]
        if ev.get("per_seed"):
            lines += ["", "Per scenario: " + "; ".join(
                f"{s['seed']}: {_pct(s['completion'])} {s['end']}" for s in ev["per_seed"])]
    else:
        lines.append("Not run.")
    lines += ["", "The targets (route completion >= 95 %, zero collisions, INT8 within 2 points of FP32) are",
              "measured through the real runtime on scenarios 1000..1019, which no training step saw.", ""]
    return "\n".join(lines)


def write_card(folder: Path, report: dict[str, Any]) -> Path:
    path = Path(folder) / CARD_NAME
    path.write_text(render_card(report))
    return path
