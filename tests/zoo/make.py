"""Build one zoo policy and save it the way a user hands it to vla-export (run in the zoo env).

    python -m zoo.make act|diffusion|diffusion-stages|text OUT_DIR [--tokenizer]

writes, in OUT_DIR, the model file (act: a state_dict ``.pt``; diffusion: a torch.export archive
``.pt2`` carrying ``vla_spec.json``; diffusion-stages: a state_dict ``.pt`` and a ``spec.json`` declaring
its stages; text: ``.safetensors`` weights, plus ``tokenizer.json``) and
``info.json``: the vla-export arguments for it (absolute paths), the PyTorch parameter count, and what the build
checked (for the diffusion policy: the unrolled sampler against LeRobot's own sampling loop).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import policies


def _save_act(out: Path) -> dict:
    built = policies.build_act()
    torch.save(built.module.state_dict(), out / "act.pt")
    return {"built": built, "model": str(out / "act.pt"), "args": ["--factory", "zoo.policies:act_factory"]}


def _save_diffusion(out: Path) -> dict:
    built = policies.build_diffusion()
    with torch.no_grad():
        unrolled = built.module(*built.inputs)
        library = built.module.reference_sample(*built.inputs)
    program = torch.export.export(built.module, built.inputs)
    torch.export.save(program, str(out / "diffusion.pt2"), extra_files={"vla_spec.json": json.dumps(built.spec)})
    return {"built": built, "model": str(out / "diffusion.pt2"), "args": [],
            "sampler_max_abs_diff": float((unrolled - library).abs().max())}


def _save_diffusion_stages(out: Path) -> dict:
    """A state_dict and a spec declaring the stages (vision conditioning async, the DDIM step repeated)."""
    built = policies.build_diffusion_staged()
    with torch.no_grad():
        staged = built.module(*built.inputs)
        library = built.module.conditioner.diffusion.conditional_sample(
            built.inputs[3].shape[1], global_cond=built.module.conditioner(*built.inputs[:3]).repeat_interleave(
                built.inputs[3].shape[1], dim=0), noise=built.inputs[3].flatten(0, 1))
        library = (library + 1.0) / 2.0 * (built.module.denoiser.high - built.module.denoiser.low) \
            + built.module.denoiser.low
    torch.save(built.module.state_dict(), out / "diffusion_stages.pt")
    (out / "spec.json").write_text(json.dumps(built.spec))
    return {"built": built, "model": str(out / "diffusion_stages.pt"),
            "args": ["--factory", "zoo.policies:diffusion_stages_factory", "--spec", str(out / "spec.json")],
            "sampler_max_abs_diff": float((staged.flatten(0, 1) - library).abs().max())}


def _save_text(out: Path, tokenizer: bool) -> dict:
    from safetensors.torch import save_file

    built = policies.build_text_policy(word_vocab=not tokenizer)
    policies.train_tokenizer(out / "tokenizer.json")
    save_file(built.module.state_dict(), str(out / "text.safetensors"))
    factory = "zoo.policies:text_factory_tokenizer" if tokenizer else "zoo.policies:text_factory"
    args = ["--factory", factory] + (["--tokenizer", str(out / "tokenizer.json")] if tokenizer else [])
    return {"built": built, "model": str(out / "text.safetensors"), "args": args}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.make")
    parser.add_argument("name", choices=sorted(policies.BUILDERS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--tokenizer", action="store_true", help="text: read text with tokenizer.json")
    a = parser.parse_args(argv)
    a.out = a.out.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    made = {"act": lambda: _save_act(a.out), "diffusion": lambda: _save_diffusion(a.out),
            "diffusion-stages": lambda: _save_diffusion_stages(a.out),
            "text": lambda: _save_text(a.out, a.tokenizer)}[a.name]()
    built = made.pop("built")
    made["parameters"] = sum(p.numel() for p in built.module.parameters())
    made["torch"] = torch.__version__
    (a.out / "info.json").write_text(json.dumps(made, indent=2))
    json.dump(made, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
