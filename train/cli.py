"""``vla-train``: imitation learning (+ DAgger) of reference model 2 on the synthetic world's scripted expert.

Writes ``--out``/reference-v2.safetensors (the config in its metadata) and MODEL_CARD.md; ``vla-export
reference`` builds from export/weights/reference-v2.safetensors when it is there.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a machine whose cores are shared
# (other jobs, the drive workers) spinning threads made a 2-thread training step 4-8x slower than 1 thread;
# passive waiting keeps 2 threads at least as fast as 1.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from vla.runtime.cli_support import require, run_main
from vla.runtime.errors import VlaError

EPILOG = """\
examples:
  vla-train                                   # the committed weights: export/weights, seed 0, 55 min budget
  vla-train --out /tmp/w --minutes 5 --scenarios 8 --dagger-rounds 1
  vla-train --config vit_depth=3 --config image_height=96 --config image_width=192
  vla-train --quick --out /tmp/w              # a tiny run (tests): seconds, not a useful policy

--minutes is the whole run's budget: the optimiser step count is planned from it at a nominal rate
(or given with --steps) and training stops early if the budget runs out (the card then says the
weights depend on the machine's speed). Same seed and arguments give the same weights.
"""

#: --quick: a tiny model, two short drives and a few steps: exercises every part in seconds.
QUICK_MODEL = {"image_height": 32, "image_width": 64, "patch": 8, "vit_dim": 32, "vit_depth": 1, "vit_heads": 1,
               "dim": 32, "heads": 1, "context_tokens": 4, "context_depth": 1, "expert_dim": 32,
               "expert_heads": 1, "expert_depth": 1}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vla-train", description="Train reference model 2 by imitation of the "
                                "synthetic world's expert (DART noise, DAgger rounds); write safetensors weights "
                                "and a model card.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder for reference-v2.safetensors and MODEL_CARD.md (default: export/weights, "
                        "what vla-export reference reads)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, batches, noise and DART (default 0)")
    p.add_argument("--minutes", type=float, default=None, help="the run's time budget (default 55)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps in all (default: from --minutes)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="ReferenceConfig2 field over the training size (repeatable)")
    p.add_argument("--scenarios", type=int, default=None, help="expert drives on scenarios 0..N-1 (default 36)")
    p.add_argument("--dagger-rounds", type=int, default=None, help="DAgger rounds (default 3)")
    p.add_argument("--dagger-scenarios", type=int, default=None, help="policy drives per DAgger round (default 12)")
    p.add_argument("--eval-seeds", default=None, metavar="A..B|A,B,..",
                   help="closed-loop check scenarios (default 1000..1019; 'none' to skip)")
    p.add_argument("--batch", type=int, default=None, help="samples per step (default 32)")
    p.add_argument("--workers", type=int, default=None, help="drive worker processes (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for training (default 2)")
    p.add_argument("--duration", type=float, default=None, help="scenario length in s (default: the world's 30)")
    p.add_argument("--quick", action="store_true", help="a tiny run for tests (tiny model, short drives)")
    return p


def parse_seeds(text: str) -> tuple[int, ...]:
    """``1000..1019`` (inclusive), ``1,2,5`` or ``none``."""
    if text.strip().lower() == "none":
        return ()
    try:
        if ".." in text:
            a, b = text.split("..", 1)
            lo, hi = int(a), int(b)
            if hi < lo:
                raise ValueError
            return tuple(range(lo, hi + 1))
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise VlaError(f"--eval-seeds {text!r}: expected A..B, A,B,C or none") from None


def config_from(args: argparse.Namespace):
    """The TrainConfig the arguments describe (``--quick`` first, explicit flags over it)."""
    from .loop import TrainConfig

    cfg = TrainConfig()
    if args.quick:
        cfg = TrainConfig(minutes=5.0, steps=12, model=dict(QUICK_MODEL), scenarios=2, dagger_rounds=1,
                          dagger_scenarios=1, batch=8, draws=2, warmup=2, max_ticks=12, val_seeds=(900,),
                          eval_seeds=(1000,), workers=1, threads=1)
    for name, value in (("seed", args.seed), ("minutes", args.minutes), ("steps", args.steps),
                        ("scenarios", args.scenarios), ("dagger_rounds", args.dagger_rounds),
                        ("dagger_scenarios", args.dagger_scenarios), ("batch", args.batch),
                        ("workers", args.workers), ("threads", args.threads)):
        if value is not None:
            setattr(cfg, name, value)
    for name in ("minutes", "steps", "scenarios", "batch", "workers", "threads", "dagger_scenarios"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise VlaError(f"--{name.replace('_', '-')} must be positive, not {value}")
    if cfg.dagger_rounds < 0:
        raise VlaError(f"--dagger-rounds must be 0 or more, not {cfg.dagger_rounds}")
    from vla.export.load import parse_overrides  # imports torch: after OMP_WAIT_POLICY is set

    cfg.model = {**cfg.model, **parse_overrides(args.config)}
    if args.eval_seeds is not None:
        cfg.eval_seeds = parse_seeds(args.eval_seeds)
    if args.duration is not None:
        if args.duration <= 0:
            raise VlaError(f"--duration must be positive, not {args.duration}")
        cfg.scenario = {**cfg.scenario, "duration_s": args.duration}
    cfg.model_config()  # a bad override fails here, in one line, before any drive
    from vla.export.reference_v2 import ReferenceVLA2

    try:
        ReferenceVLA2(cfg.model_config())
    except VlaError:
        raise
    except (TypeError, ValueError) as exc:
        raise VlaError(f"--config: {exc}") from None
    return cfg


def default_out() -> Path:
    from vla.export.load import TRAINED_REFERENCE

    return TRAINED_REFERENCE.parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)

    def body() -> int:
        require("torch", "safetensors", "vla.sim.world", "vla.sim.render")
        from .loop import command_line, train

        cfg = config_from(args)
        out = args.out if args.out is not None else default_out()
        if out.exists() and not out.is_dir():
            raise VlaError(f"--out {out}: exists and is not a folder")

        def log(line: str) -> None:
            print(f"vla-train: {line}", flush=True)

        train(cfg, out, command=command_line(argv), log=log)
        return 0

    return run_main("vla-train", body)


if __name__ == "__main__":
    sys.exit(main())
