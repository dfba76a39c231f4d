"""``vla-export MODEL -o BUNDLE``: PyTorch model -> checked ONNX bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vla.runtime.cli_support import require, run_main
from vla.runtime.errors import VlaError

from .accuracy import Gate

EPILOG = """\
MODEL is one of:
  reference        the built-in reference VLA, model 2, exported as three stages: vision and context
                   (async) and the flow-matching action expert (repeated flow_steps times per decision);
                   the trained weights of export/weights (vla-train) when present; --config KEY=VALUE
                   (ReferenceConfig2 fields) builds the seeded untrained model of that size
  reference-v1     reference model 1: one graph with recurrent memory (--config: ReferenceConfig fields)
  model.pt         a TorchScript archive (torch.jit.save), with vla_spec.json in _extra_files
  model.pt2        a torch.export archive (torch.export.save), with vla_spec.json in extra_files
  weights.pt       a state_dict (torch.save(model.state_dict())), with --factory MODULE:FUNCTION
  model.pkl        a pickled nn.Module (torch.save(model)), only with --trust-pickle
  BUNDLE/          an FP32 bundle folder (model.onnx + manifest.json): re-quantised to --precision
                   fp16 or int8 without the PyTorch model; the gate compares with its ONNX Runtime outputs

precision (decided in the graph, so ONNX Runtime and TensorRT 11 run the same numbers):
  fp32             the cleaned graph, checked against PyTorch (parity)
  fp16             FP16 weights and compute, FP32 inputs/outputs; normalisations, softmax,
                   integrations, output heads and overflowing nodes stay FP32
  int8             explicit Q/DQ as TensorRT wants it (symmetric INT8 activations, per-channel
                   symmetric INT8 weights), calibrated on --calib; --int8-form ort or dynamic for
                   graphs meant for ONNX Runtime CPU
  fp16 and int8 must pass the accuracy gate on held-out synthetic drives against PyTorch FP32:
  trajectory ADE <= --gate-rel-ade of the reference trajectories' spread (default 2%), or with
  --gate-ade-m alone ADE <= that many metres, or both limits when both are given. A spread under
  0.1 m is too small to judge a relative gate by (the export says so): gate in metres then.
  If the gate fails, PyTorch modules are kept in FP32, those whose restoration lowers the
  trajectory error most first (each measured), until it passes (--search-seconds, --max-exclude).

stages (a model split into graphs that run at their own rates): the spec (--spec, or the model's io_spec() /
stages_spec()) declares them under `stages`, in run order, e.g.
    stages:
      vision: encoder                                   # a submodule path
      context: {module: vlm, rate: async, max_age_ms: 300}
      action: {module: expert, repeat: 10, sample: {input: sample, output: next_sample, init: noise}, time: t}
  per stage: module, inputs (default: forward()'s parameters), outputs (default: the submodule's output_names),
  rate (tick, async or every:N), max_age_ms, repeat K with sample {input, output, init} and time/index names,
  precision. Each stage is exported and checked against PyTorch on its own, and the composed decision (run by
  the runtime's staged backend) against the model's forward(); the bundle holds one <stage>.onnx per stage.
  --precision applies to every stage, --stage-precision NAME=P[,NAME=P] overrides it per stage; one accuracy
  gate judges the composed trajectory.

examples:
  vla-export reference -o bundles/reference
  vla-export reference-v1 -o bundles/reference-v1
  vla-export reference -o bundles/ref-mixed --stage-precision vision=fp16,context=fp16 --gate-ade-m 0.05
  vla-export reference -o bundles/reference --build        # on the target: its TensorRT plan too
  vla-export reference -o bundles/reference-int8 --precision int8 --calib synthetic
  vla-export reference -o bundles/k5 --config modes=5 --config flow_steps=5
  vla-export my_model.pt2 -o bundles/mine --spec my_spec.yaml --precision fp16
  vla-export weights.pt --factory mypkg.models:build -o bundles/mine --precision int8 --calib recordings/
  vla-export weights.pt --factory mypkg.models:build --spec-skeleton spec.yaml \\
             --example images=1x1x3x224x224:uint8 --example ego=1x16x3   # a draft spec to review
  vla-export bundles/reference-v1 -o bundles/ref-v1-int8 --precision int8   # from an FP32 one-graph bundle
  vla-export vla.pt2 -o bundles/vla --spec spec.yaml --tokenizer tokenizer.json --command "turn left"
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vla-export", description="Export a PyTorch driving model to an ONNX bundle "
        "(model.onnx + manifest.json + parity.json [+ accuracy.json]), cleaned, in the precision you choose, "
        "checked against PyTorch with ONNX Runtime.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL",
                   help="'reference', a model file, or an FP32 bundle folder to re-quantise (see below)")
    p.add_argument("-o", "--output", type=Path, metavar="BUNDLE", help="bundle folder to write (required, "
                   "except with --spec-skeleton)")
    p.add_argument("--spec", metavar="FILE",
                   help="I/O spec, JSON or YAML (the inputs/outputs/vocabulary part of a manifest); default: the "
                   "model's own (a vla_spec attribute, an io_spec() method, or vla_spec.json in an archive)")
    p.add_argument("--spec-skeleton", metavar="OUT.yaml",
                   help="write a draft I/O spec from forward()'s signature and one run on example inputs (roles "
                   "guessed, each guess marked REVIEW), then stop: no export")
    p.add_argument("--example", action="append", default=[], metavar="NAME=SHAPE[:DTYPE]",
                   help="with --spec-skeleton: the shape of a forward() input, e.g. images=1x3x3x224x224:uint8, "
                   "ego=1x16x6 (dtype default float32); not needed for a .pt2 archive")
    p.add_argument("--factory", metavar="MODULE:FUNCTION",
                   help="for a state_dict MODEL: the importable function that builds the nn.Module to load it into")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow MODEL to be a pickled nn.Module (torch.save(model)); unpickling runs code from "
                   "the file, so only for files you trust")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="reference model size, e.g. modes=5, euler_steps=10, cameras='[\"front\"]'")
    p.add_argument("--opset", type=int, default=20,
                   help="ONNX opset (default 20, the newest TensorRT 10.3 parses)")
    p.add_argument("--one-graph", action="store_true", help="a model declared in stages: export its forward() "
                   "as one graph instead (one rate; e.g. to compare with the staged bundle)")
    p.add_argument("--no-slim", action="store_true", help="skip the onnxslim clean-up (constant folding, "
                   "dead nodes, shape simplification)")
    p.add_argument("--seed", type=int, default=0, help="seed of the parity inputs and held-out drives (default 0)")
    p.add_argument("--tokenizer", metavar="FILE",
                   help="a Hugging Face tokenizers file (tokenizer.json) the model's text input is read with: "
                   "copied into the bundle and hashed in the manifest; vla-run needs only the tokenizers package")
    p.add_argument("--command", metavar="TEXT",
                   help="route command of the parity, calibration and held-out inputs, encoded as vla-run does "
                   "(default: the commands the model takes: its vocabulary's phrases that fit, its default)")
    g = p.add_argument_group("parity (the FP32 graph against PyTorch)")
    g.add_argument("--parity-inputs", type=int, default=3, metavar="N", help="seeded input sets to compare (default 3)")
    g.add_argument("--rtol", type=float, default=1e-3, help="max error relative to each output's scale (default 1e-3)")
    g.add_argument("--ade-tol", type=float, default=0.01, help="max trajectory ADE in metres (default 0.01)")
    g = p.add_argument_group("precision and the accuracy gate")
    g.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="default fp32")
    g.add_argument("--calib", default="synthetic", metavar="DIR|synthetic",
                   help="INT8 calibration data: 'synthetic' drives (default), or a folder of .npz input "
                   "recordings or of images (flat, or in sub-folders named after the cameras)")
    g.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="how activation ranges are chosen from the calibration data (default minmax)")
    g.add_argument("--calib-samples", type=int, default=32, metavar="N", help="calibration input sets (default 32)")
    g.add_argument("--heldout", type=int, default=16, metavar="N",
                   help="held-out input sets the gate measures on (default 16)")
    g.add_argument("--gate-rel-ade", type=float, default=None, metavar="R",
                   help="max trajectory ADE as a fraction of the reference trajectories' spread (default 0.02 "
                   "unless --gate-ade-m is given alone)")
    g.add_argument("--gate-ade-m", type=float, default=None, metavar="M",
                   help="max trajectory ADE in metres; alone, the gate is in metres only (default: reported, "
                   "not gated)")
    g.add_argument("--max-exclude", type=int, default=None, metavar="N",
                   help="most nodes the search may keep in FP32 (default: half of the candidates; "
                   "0 keeps nothing in FP32: modules are still measured, so a refusal names those that hurt)")
    g.add_argument("--search-seconds", type=float, default=300.0, metavar="S",
                   help="time budget of the exclusion search (default 300): modules are measured one by one, "
                   "most likely culprits first, and the best result so far is kept when time runs out")
    g.add_argument("--int8-form", choices=("tensorrt", "ort", "dynamic"), default=None,
                   help="INT8 graph form, named after its target: tensorrt (default; symmetric INT8 Q/DQ, the "
                   "form TensorRT parses), ort (UINT8-activation Q/DQ that ONNX Runtime's x86 kernels run "
                   "fastest, best for convolutions), dynamic (run-time activation ranges, MatMul/Gemm "
                   "only, no calibration: transformer blocks on ONNX Runtime CPU)")
    g.add_argument("--stage-precision", action="append", default=[], metavar="NAME=P[,NAME=P]",
                   help="for a model declared in stages: the precision (fp32, fp16 or int8) of stage NAME, "
                   "overriding --precision (and the declaration's own) for it, e.g. context=int8,action=fp16")
    p.add_argument("--force", action="store_true", help="write the bundle even if parity or the gate fails")
    p.add_argument("--build", action="store_true",
                   help="then build the bundle's TensorRT plan into BUNDLE/engines/, as vla-build BUNDLE does (on "
                   "the target: needs TensorRT 10.3+ and a GPU; checked before the export starts)")
    return p


PRECISIONS = ("fp32", "fp16", "int8")


def parse_stage_precision(values: list[str]) -> dict[str, str]:
    """``--stage-precision`` (repeatable, comma-separated NAME=P) -> stage name -> precision."""
    out: dict[str, str] = {}
    for item in (part.strip() for value in values for part in value.split(",")):
        if not item:
            continue
        name, sep, precision = item.partition("=")
        if not sep or not name.strip() or precision.strip() not in PRECISIONS:
            raise VlaError(f"--stage-precision {item!r}: expected NAME=fp32|fp16|int8, e.g. context=int8,action=fp16")
        out[name.strip()] = precision.strip()
    return out


def _check(args: argparse.Namespace) -> None:
    """Numbers argparse cannot judge: a one-line error before any slow work starts."""
    for name in ("parity_inputs", "calib_samples", "heldout"):
        if getattr(args, name) < 1:
            raise VlaError(f"--{name.replace('_', '-')} must be at least 1")
    per_stage = set(parse_stage_precision(getattr(args, "stage_precision", []) or []).values())
    if per_stage and getattr(args, "one_graph", False):
        raise VlaError("--stage-precision sets the precision of stages; --one-graph exports no stages: use --precision")
    if args.heldout < 2 and (args.precision != "fp32" or per_stage - {"fp32"}):
        raise VlaError("--heldout must be at least 2 (the spread of the reference trajectories needs two)")
    Gate.from_options(args.gate_rel_ade, args.gate_ade_m)  # limits that are not positive numbers
    if args.max_exclude is not None and args.max_exclude < 0:
        raise VlaError("--max-exclude must be 0 or more")
    if not args.search_seconds > 0:
        raise VlaError("--search-seconds must be more than 0")
    int8 = args.precision == "int8" or "int8" in per_stage
    if not int8 and args.calib != "synthetic":
        raise VlaError("--calib only applies to --precision int8")
    if args.int8_form is not None and not int8:
        raise VlaError("--int8-form only applies to --precision int8")
    if args.int8_form == "dynamic" and args.calib != "synthetic":
        raise VlaError("--calib does not apply to --int8-form dynamic (it takes activation ranges at run time)")
    if args.precision == "int8":
        args.int8_form = args.int8_form or "tensorrt"
    from .requantize import is_bundle, refuse_model_options

    if is_bundle(args.model):
        refuse_model_options(args, build_parser().get_default)


def export(args: argparse.Namespace) -> int:
    if args.spec_skeleton:
        require("torch", "yaml")
        from .skeleton import write_skeleton

        return write_skeleton(args)
    # The export extra, checked before any slow work: one line naming what to install.
    from .requantize import is_bundle

    slimmed = not (args.no_slim or is_bundle(args.model))  # a bundle was cleaned up when it was exported
    require("torch", "onnx", "onnxscript", *(("onnxslim",) if slimmed else ()))
    from .pipeline import run_export

    _check(args)
    if args.build:  # before minutes of export: a machine that cannot build is told so at once
        from vla.runtime.trt import import_cudart, import_tensorrt, probe_cuda

        import_tensorrt("vla-export --build runs")
        probe_cuda(0, import_cudart())
    code = run_export(args)
    if code != 0 or not args.build:
        return code
    from vla.runtime.trt.cli import build_bundle

    return build_bundle(args.output)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.output is None and not args.spec_skeleton:
        parser.error("the following arguments are required: -o/--output")
    if args.example and not args.spec_skeleton:
        parser.error("--example only applies with --spec-skeleton")
    return run_main("vla-export", lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())
