"""The training run: expert data, flow-matching training, DAgger rounds, a closed-loop check, the weights file.

Plan of a run (``train``):

1. expert drives on scenarios ``0..scenarios-1`` (DART noise on two drives in three) and a held-out
   validation set (two drives on scenarios 900.., no noise) for the held-out loss;
2. training on the aggregate, ``steps`` optimiser steps in all (AdamW, warm-up then cosine), split evenly
   over the initial phase and every DAgger round;
3. each DAgger round: the current policy drives new scenarios (after the expert's) through the simulator's
   tracking controller, every visited state labelled by the expert, added to the aggregate;
4. a closed-loop check in-process on held-out scenarios (default 1000..1019, the evaluation's: reported,
   never used to choose anything), then the weights (safetensors, config in the metadata) and the card.

Reproducible by seed: the step count is a number, not a time (``steps``; ``--minutes`` picks it from a
nominal rate and is then only a guard that stops training early if the machine is much slower, which the
card and the progress line say). Batches, noise and flow times come from generators seeded from ``seed``;
drives are pure functions of their scenario seed and the weights.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.export.reference_v2 import ReferenceConfig2, ReferenceVLA2
from vla.runtime.errors import VlaError

from .card import write_card
from .data import ROUTE_AHEAD_M, Dart, DriveResult, Samples, manifest_of, model_payload, run_drives
from .flow import AuxHead, Batch, flow_loss

__all__ = ["TRAIN_MODEL", "TrainConfig", "TrainReport", "evaluate", "load_weights", "save_weights", "train"]

WEIGHTS_NAME = "reference-v2.safetensors"
#: The safetensors metadata keys (strings only): the model config as JSON, and what wrote the file.
META_CONFIG = "config"
META_FORMAT = "format"
FORMAT = "vla-reference-2"

#: Reference model 2 at the size trained on 2 CPU cores within an hour (see SIZE_REASON).
TRAIN_MODEL: dict[str, Any] = dict(
    image_height=64, image_width=128, patch=16, vit_dim=96, vit_depth=2, vit_heads=3, vision_pool=1,
    dim=128, heads=4, context_tokens=16, context_depth=2, world_depth=1,
    expert_dim=128, expert_heads=4, expert_depth=2, modes=3, flow_steps=10,
)
SIZE_REASON = (
    "training is compute-bound on 2 shared CPU cores, so the vision stage (most of the cost) is kept small: "
    "64x128 cameras (a sample is ~74 KB of uint8, so ~25k samples fit in ~2 GB) cut into 16-pixel patches, "
    "32 tokens per camera with no pooling, a ViT of dim 96 x depth 2; 8-pixel patches pooled 2x2 give the "
    "context the same 32 tokens per camera but cost ~1.6x more per step (measured: 1.6-2.1 s vs 1.0 s a "
    "step of 32 samples x 4 noise draws on 1 busy core), and steps are what the hour is short of. Context dim "
    "128 x depth 2 with 16 tokens, action expert dim 128 x depth 2 (~1.5 M parameters, 5.7 MB); K = 10 flow "
    "steps as the runtime runs them."
)
#: Nominal optimiser steps per minute of the default size (batch 32, 4 draws) on 2 shared cores: what
#: --minutes is turned into. Measured ~1 s a step with other work on the cores, ~0.4 s on idle ones.
NOMINAL_STEPS_PER_MIN = 60.0
#: The share of --minutes planned for optimiser steps (the rest: drives, checks, writing).
TRAIN_SHARE = 0.6
#: The share of the steps before the first DAgger round (the rest is split evenly over the rounds).
FIRST_PHASE_SHARE = 0.4
VAL_SEEDS = (900, 901)
EVAL_SEEDS = tuple(range(1000, 1020))


@dataclass
class TrainConfig:
    """Everything that decides the weights (plus the budget guard and where to write)."""

    seed: int = 0
    minutes: float = 55.0  # the whole run's budget (a guard: training stops early past it)
    steps: int | None = None  # optimiser steps in all; None: from minutes (NOMINAL_STEPS_PER_MIN, TRAIN_SHARE)
    model: dict[str, Any] = field(default_factory=dict)  # ReferenceConfig2 overrides on top of TRAIN_MODEL
    scenarios: int = 36  # expert drives: scenario seeds 0..scenarios-1
    dagger_rounds: int = 3
    dagger_scenarios: int = 12  # policy drives per round, on the seeds after the expert's
    batch: int = 32
    draws: int = 4  # (noise, t) pairs per sample per step
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200
    aux_weight: float = 1.0  # the training-only route head (flow.AuxHead); 0: none
    dart: Dart = field(default_factory=Dart)
    scenario: dict[str, Any] = field(default_factory=dict)  # make_scenario keywords (duration_s, traffic, ...)
    max_ticks: int | None = None  # per drive (tests)
    val_seeds: tuple[int, ...] = VAL_SEEDS
    eval_seeds: tuple[int, ...] = EVAL_SEEDS
    workers: int = 2
    threads: int = 2

    def model_config(self) -> ReferenceConfig2:
        merged = {**TRAIN_MODEL, "seed": self.seed, **self.model}
        try:
            return ReferenceConfig2(**merged)
        except TypeError as exc:
            raise VlaError(f"--config: {exc}; see ReferenceConfig2 for the fields") from None

    def total_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, int(self.minutes * NOMINAL_STEPS_PER_MIN * TRAIN_SHARE))


@dataclass
class TrainReport:
    """What the run did and measured: the card's contents."""

    command: str
    config: TrainConfig
    model: ReferenceVLA2
    data: dict[str, Any]
    steps: int = 0
    train_seconds: float = 0.0
    total_seconds: float = 0.0
    final_loss: dict[str, float] = field(default_factory=dict)
    val_loss: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, flow loss) along the way
    rounds: list[dict[str, Any]] = field(default_factory=list)  # DAgger rounds' closed-loop figures
    closed_loop: dict[str, Any] | None = None
    stopped_by_budget: bool = False
    weights_mb: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "command": self.command, "seed": c.seed, "model_config": asdict(self.model.config),
            "parameters": sum(p.numel() for p in self.model.parameters()), "size_reason": SIZE_REASON,
            "data": self.data, "optimiser": f"AdamW lr {c.lr:g} (warm-up {c.warmup}, cosine), weight decay "
                                            f"{c.weight_decay:g}, grad clip 1.0",
            "steps": self.steps, "batch": c.batch, "draws": c.draws, "train_seconds": self.train_seconds,
            "total_seconds": self.total_seconds, "machine": machine(c.threads), "final_loss": self.final_loss,
            "val_loss": self.val_loss, "closed_loop": self.closed_loop, "stopped_by_budget": self.stopped_by_budget,
            "weights_file": WEIGHTS_NAME, "weights_mb": self.weights_mb, "rounds": self.rounds,
        }


def machine(threads: int) -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} on {threads} threads"


# ---- weights file ------------------------------------------------------------------------------------
def save_weights(model: ReferenceVLA2, path: Path, extra: dict[str, str] | None = None) -> Path:
    """The model's weights as safetensors with its config (JSON) in the metadata: the file alone rebuilds it."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {META_FORMAT: FORMAT, META_CONFIG: json.dumps(asdict(model.config), sort_keys=True), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return path


def load_weights(path: Path) -> ReferenceVLA2:
    """A weights file written by ``save_weights`` back into a model (through ``vla.export.load``'s reader,
    the one ``vla-export reference`` uses)."""
    from vla.export.load import read_trained_reference

    model, _ = read_trained_reference(Path(path))
    return model


# ---- training ----------------------------------------------------------------------------------------
def _to_batch(s: Samples, index: np.ndarray) -> Batch:
    return Batch(torch.from_numpy(s.images[index]), torch.from_numpy(s.ego[index]),
                 torch.from_numpy(s.nav_cmd[index]), torch.from_numpy(s.text_ids[index]),
                 torch.from_numpy(s.text_mask[index]), torch.from_numpy(s.labels[index]),
                 torch.from_numpy(s.route[index]))


def phase_steps(total: int, rounds: int) -> list[int]:
    """Steps per phase: FIRST_PHASE_SHARE of ``total`` before the first DAgger round, the rest evenly after
    each round (the policy must drive somewhat before its own states are worth labelling)."""
    if rounds <= 0:
        return [total]
    first = max(1, round(total * FIRST_PHASE_SHARE))
    rest = [(total - first) // rounds] * rounds
    rest[-1] += total - first - sum(rest)
    return [first, *rest]


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine to 5 % of it at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def held_out_loss(model: ReferenceVLA2, samples: Samples, seed: int, batch: int = 64) -> float:
    """The flow loss on ``samples`` with fixed noise and times (comparable across calls)."""
    if samples is None or not len(samples):
        return float("nan")
    was = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed + 12345)
    total, n = 0.0, 0
    for start in range(0, len(samples), batch):
        idx = np.arange(start, min(len(samples), start + batch))
        loss = flow_loss(model, _to_batch(samples, idx), gen, draws=1)
        total += loss.flow * len(idx)
        n += len(idx)
    model.train(was)
    return total / max(1, n)


class Trainer:
    """The optimiser state across phases: one schedule over ``total`` steps, one generator for batches/noise."""

    def __init__(self, model: ReferenceVLA2, cfg: TrainConfig, total: int, log: Callable[[str], None],
                 deadline: float) -> None:
        self.model, self.cfg, self.total, self.log, self.deadline = model, cfg, total, log, deadline
        self.aux = AuxHead(model.config.dim, 2 * len(ROUTE_AHEAD_M), cfg.seed) if cfg.aux_weight > 0 else None
        decay, no_decay = [], []
        named = list(model.named_parameters()) + ([] if self.aux is None else
                                                  [(f"aux.{n}", p) for n, p in self.aux.named_parameters()])
        for name, p in named:
            (no_decay if p.ndim < 2 or "pos" in name or "embed" in name or "queries" in name else decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))
        self.gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 1)
        self.rng = np.random.default_rng([cfg.seed, 3])
        self.step = 0
        self.seconds = 0.0
        self.stopped_by_budget = False
        self.last: dict[str, float] = {}
        self.curve: list[tuple[int, float]] = []

    def run(self, data: Samples, steps: int, label: str) -> None:
        """``steps`` optimiser steps on ``data`` (epochs of a seeded permutation)."""
        model, cfg = self.model, self.cfg
        model.train()
        order = self.rng.permutation(len(data))
        pos = 0
        t0 = time.monotonic()
        window: list[tuple[float, float, float]] = []
        last_print = t0
        for i in range(steps):
            if time.monotonic() > self.deadline:
                self.stopped_by_budget = True
                self.log(f"{label}: time budget reached at step {self.step} of {self.total}: stopping early "
                         "(these weights depend on the machine's speed)")
                break
            if pos + cfg.batch > len(order):
                order, pos = self.rng.permutation(len(data)), 0
            idx = np.sort(order[pos:pos + min(cfg.batch, len(order))])
            pos += cfg.batch
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.step, self.total, cfg.lr, cfg.warmup)
            loss = flow_loss(model, _to_batch(data, idx), self.gen, draws=cfg.draws, aux=self.aux,
                             aux_weight=cfg.aux_weight)
            self.opt.zero_grad(set_to_none=True)
            loss.total.backward()
            torch.nn.utils.clip_grad_norm_([p for group in self.opt.param_groups for p in group["params"]], 1.0)
            self.opt.step()
            self.step += 1
            window.append((loss.flow, loss.score, loss.first_control, loss.aux))
            now = time.monotonic()
            if now - last_print >= 30.0 or i == steps - 1:
                f, s, first, aux = (float(np.mean(col)) for col in zip(*window, strict=True))
                rate = (i + 1) * cfg.batch / (now - t0)
                self.log(f"{label}: step {self.step}/{self.total} flow {f:.4f} score {s:.3f} "
                         f"first-control {first:.3f} route {aux:.4f} lr {self.opt.param_groups[0]['lr']:.2e} "
                         f"({rate:.0f} samples/s)")
                self.last = {"flow": f, "score": s, "first_control": first, "route": aux}
                self.curve.append((self.step, f))
                window, last_print = [], now
        self.seconds += time.monotonic() - t0
        model.eval()


# ---- closed loop ---------------------------------------------------------------------------------------
def summarise(results: list[DriveResult]) -> dict[str, Any]:
    """Completion, goals, collisions and off-road ticks over policy drives (pure)."""
    if not results:
        return {}
    comp = [r.completion for r in results]
    return {
        "seeds": f"{results[0].seed}..{results[-1].seed}" if len(results) > 1 else str(results[0].seed),
        "scenarios": len(results),
        "completion": float(np.mean(comp)),
        "min_completion": float(np.min(comp)),
        "goals": sum(r.end == "goal" for r in results),
        "collisions": sum(r.collision is not None for r in results),
        "offroad_scenarios": sum(r.offroad_ticks > 0 for r in results),  # vla-sim ends (and fails) these
        "offroad_ticks": sum(r.offroad_ticks for r in results),
        "per_seed": [r.as_dict() for r in results],
    }


def evaluate(model: ReferenceVLA2, seeds: list[int] | tuple[int, ...], *, workers: int = 1,
             scenario: dict[str, Any] | None = None, max_ticks: int | None = None, tag: str = "eval",
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The policy drives ``seeds`` in closed loop (torch FP32, in-process or in worker processes)."""
    manifest = manifest_of(model)
    payload: Any = model if workers <= 1 else model_payload(model, tag)
    tasks = [("policy", s, {"model": payload, "label": False, "scenario": scenario or {}, "max_ticks": max_ticks,
                            "stop_offroad_s": None}) for s in seeds]

    def done(r: DriveResult) -> None:
        if log is not None:
            log(f"{tag}: scenario {r.seed}: {r.end}, route {100 * r.completion:.0f} %, "
                f"collision {r.collision or 'none'}, off-road ticks {r.offroad_ticks}")

    results = [r for _, r in run_drives(tasks, manifest, workers=workers, on_done=done)]
    return summarise(results)


# ---- the run ---------------------------------------------------------------------------------------------
def _collect(results: list[tuple[Samples | None, DriveResult]]) -> tuple[list[Samples], list[DriveResult]]:
    return [s for s, _ in results if s is not None], [r for _, r in results]


def train(cfg: TrainConfig, out: Path, *, command: str = "vla-train", log: Callable[[str], None] = print,
          evaluate_after: bool = True) -> TrainReport:
    """Run the whole plan (module doc); write ``out``/reference-v2.safetensors and MODEL_CARD.md."""
    start = time.monotonic()
    deadline = start + cfg.minutes * 60.0
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    model = ReferenceVLA2(cfg.model_config())
    manifest = manifest_of(model)
    params = sum(p.numel() for p in model.parameters())
    total = cfg.total_steps()
    rounds = max(0, cfg.dagger_rounds)
    log(f"seed {cfg.seed}, {params / 1e6:.2f} M parameters, {total} steps over {1 + rounds} phase(s), "
        f"budget {cfg.minutes:g} min, {cfg.workers} drive worker(s), {cfg.threads} torch threads")

    # 1. expert drives (DART) and the validation drives
    t_data = time.monotonic()
    seeds = list(range(cfg.scenarios))
    expert_kw = {"dart": cfg.dart, "scenario": cfg.scenario, "max_ticks": cfg.max_ticks}
    tasks = [("expert", s, {**expert_kw, "index": i}) for i, s in enumerate(seeds)]
    tasks += [("expert", s, {"dart": None, "scenario": cfg.scenario, "max_ticks": cfg.max_ticks})
              for s in cfg.val_seeds]
    n_done = [0]

    def drive_done(r: DriveResult) -> None:
        n_done[0] += 1
        log(f"data: drive {n_done[0]}/{len(tasks)} (scenario {r.seed}): {r.ticks} ticks, {r.end}, "
            f"route {100 * r.completion:.0f} %")

    samples, results = _collect(run_drives(tasks, manifest, workers=cfg.workers, on_done=drive_done))
    n_val = len(cfg.val_seeds)
    val_set = {int(s) for s in cfg.val_seeds}
    train_parts = [s for s in samples if int(s.seed[0]) not in val_set]
    val = Samples.concat([s for s in samples if int(s.seed[0]) in val_set]) if n_val else None
    data = Samples.concat(train_parts)
    expert_results = results[:len(seeds)]
    data_seconds = time.monotonic() - t_data
    log(f"data: {len(data)} samples ({data.nbytes / 2**20:.0f} MiB) from {len(seeds)} expert drives in "
        f"{data_seconds:.0f} s; expert route completion {100 * np.mean([r.completion for r in expert_results]):.1f} %"
        f", collisions {sum(r.collision is not None for r in expert_results)}; validation {len(val) if val else 0}")

    # 2./3. training phases with DAgger rounds between them
    trainer = Trainer(model, cfg, total, log, deadline)
    per_phase = phase_steps(total, rounds)
    report = TrainReport(command, cfg, model, {})
    next_seed = cfg.scenarios
    dagger_seeds: list[int] = []
    for phase in range(1 + rounds):
        trainer.run(data, per_phase[phase], f"phase {phase}")
        if val is not None:
            vl = held_out_loss(model, val, cfg.seed)
            log(f"phase {phase}: held-out flow loss {vl:.4f} ({len(val)} samples, scenarios {list(cfg.val_seeds)})")
            report.val_loss = vl
        if phase == rounds or trainer.stopped_by_budget:
            break
        t_round = time.monotonic()
        round_seeds = list(range(next_seed, next_seed + cfg.dagger_scenarios))
        next_seed += cfg.dagger_scenarios
        dagger_seeds += round_seeds
        payload = model_payload(model, f"round{phase + 1}") if cfg.workers > 1 else model
        tasks = [("policy", s, {"model": payload, "label": True, "scenario": cfg.scenario,
                                "max_ticks": cfg.max_ticks}) for s in round_seeds]
        new, res = _collect(run_drives(tasks, manifest, workers=cfg.workers))
        fig = summarise(res)
        fig.pop("per_seed", None)
        report.rounds.append({"round": phase + 1, **fig})
        if new:
            data = Samples.concat([data, *new])
        log(f"dagger round {phase + 1}: {sum(len(s) for s in new)} samples from scenarios {round_seeds[0]}.."
            f"{round_seeds[-1]} in {time.monotonic() - t_round:.0f} s; policy route completion "
            f"{100 * fig.get('completion', 0):.1f} %, goals {fig.get('goals', 0)}, collisions "
            f"{fig.get('collisions', 0)}; aggregate {len(data)} samples ({data.nbytes / 2**20:.0f} MiB)")

    report.steps, report.train_seconds = trainer.step, trainer.seconds
    report.final_loss, report.losses = trainer.last, trainer.curve
    report.stopped_by_budget = trainer.stopped_by_budget
    report.data = {
        "train_seeds": f"0..{cfg.scenarios - 1}", "samples": len(data), "by_source": data.counts(),
        "dart": cfg.dart.describe(), "dagger_rounds": len(report.rounds),
        "dagger_seeds": f"{dagger_seeds[0]}..{dagger_seeds[-1]}" if dagger_seeds else "none",
        "seconds": data_seconds, "bytes": data.nbytes,
    }

    # 4. weights first (a failed check must not lose them), then the closed-loop check, then the card
    out = Path(out)
    path = save_weights(model, out / WEIGHTS_NAME, {"seed": str(cfg.seed), "steps": str(trainer.step),
                                                    "trained_by": "vla-train"})
    report.weights_mb = path.stat().st_size / 2**20
    log(f"weights: {path} ({report.weights_mb:.1f} MB)")
    if evaluate_after and cfg.eval_seeds:
        report.closed_loop = evaluate(model, cfg.eval_seeds, workers=cfg.workers, scenario=cfg.scenario,
                                      max_ticks=cfg.max_ticks, tag="check", log=log)
        cl = report.closed_loop
        log(f"closed loop on scenarios {cl['seeds']}: route completion {100 * cl['completion']:.1f} % "
            f"(min {100 * cl['min_completion']:.0f} %), goals {cl['goals']}/{cl['scenarios']}, collisions "
            f"{cl['collisions']}, off the road in {cl['offroad_scenarios']} ({cl['offroad_ticks']} ticks)")
    report.total_seconds = time.monotonic() - start
    card = write_card(out, report.as_dict())
    log(f"card: {card}; total {report.total_seconds / 60:.1f} min")
    return report


def command_line(argv: list[str]) -> str:
    """The command that reproduces a run, for the card."""
    import shlex

    return " ".join(["vla-train", *(shlex.quote(a) for a in argv)]) if argv else "vla-train"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run vla-train (vla.train.cli)")
