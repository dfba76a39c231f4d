"""``vla-export MODEL -o BUNDLE``: PyTorch model -> checked ONNX bundle."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from vla.runtime.cli_support import run_main
from vla.runtime.errors import ManifestError, VlaError

EPILOG = """\
MODEL is one of:
  reference        the built-in reference VLA (seeded weights); size it with --config KEY=VALUE
  model.pt         a TorchScript archive (torch.jit.save), with vla_spec.json in _extra_files
  model.pt2        a torch.export archive (torch.export.save), with vla_spec.json in extra_files

examples:
  vla-export reference -o bundles/reference
  vla-export reference -o bundles/k5 --config modes=5 --config euler_steps=10
  vla-export my_model.pt2 -o bundles/mine --spec my_spec.json
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vla-export", description="Export a PyTorch driving model to an ONNX bundle "
        "(model.onnx + manifest.json + parity.json), checked against PyTorch with ONNX Runtime.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="'reference', a .pt TorchScript or a .pt2 torch.export archive")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="BUNDLE", help="bundle folder to write")
    p.add_argument("--spec", metavar="FILE",
                   help="I/O spec, JSON or YAML (the inputs/outputs/vocabulary part of a manifest); "
                   "default: the model's own (a vla_spec attribute, an io_spec() method, or vla_spec.json in the archive)")
    p.add_argument("--factory", metavar="MODULE:FUNCTION",
                   help="for a state_dict MODEL: the importable function that builds the nn.Module to load it into")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow MODEL to be a pickled nn.Module (torch.save(model)); unpickling runs code from "
                   "the file, so only for files you trust")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="reference model size, e.g. modes=5, euler_steps=10, cameras='[\"front\"]'")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (default 20)")
    p.add_argument("--parity-inputs", type=int, default=3, metavar="N", help="seeded input sets to compare (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the parity inputs (default 0)")
    p.add_argument("--rtol", type=float, default=1e-3, help="max error relative to each output's scale (default 1e-3)")
    p.add_argument("--ade-tol", type=float, default=0.01, help="max trajectory ADE in metres (default 0.01)")
    p.add_argument("--force", action="store_true", help="write the bundle even if parity misses the tolerance")
    return p


def export(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    from vla.runtime.feeds import example_feeds
    from vla.runtime.manifest import check_against_graph, parse_manifest

    from . import bundle
    from .convert import check_onnx, export_onnx, tensor_types
    from .load import load_model
    from .parity import Tolerance, check_parity
    from .signature import check_spec_against_model

    t0 = time.perf_counter()
    loaded = load_model(args.model, args.spec, args.config, factory=args.factory, trust_pickle=args.trust_pickle)
    try:
        spec_manifest = parse_manifest(loaded.spec)
    except ManifestError as exc:
        raise ManifestError(f"{args.model}: I/O spec: {exc}") from None
    check_spec_against_model(loaded, spec_manifest)
    feed_sets = [example_feeds(spec_manifest, args.seed + i) for i in range(max(1, args.parity_inputs))]
    print(f"vla-export: {loaded.source} ({loaded.form}), "
          f"{spec_manifest.raw['model'].get('parameters', '?')} parameters", file=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / bundle.MODEL_FILE
        how = export_onnx(loaded, spec_manifest, feed_sets[0], onnx_path, args.opset)
        print(f"vla-export: exported with {how['exporter']} (opset {how['opset']}) in {how['seconds']} s"
              + (f"; {how['note']}" if "note" in how else ""), file=sys.stderr)
        model = check_onnx(onnx_path)
        check_against_graph(spec_manifest, tensor_types(list(model.graph.input)),
                            tensor_types(list(model.graph.output)), "exported graph")
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        parity = check_parity(loaded.eager, session, spec_manifest, feed_sets, Tolerance(args.rtol, args.ade_tol))

    manifest = dict(spec_manifest.raw)
    manifest["model"] = dict(manifest["model"], hash=bundle.model_hash(model))
    manifest["tools"] = bundle.tool_versions()
    manifest["export"] = {**how, "form": loaded.form, "source": loaded.source,
                          "parity": {"passed": parity["passed"], "ade_m": parity["trajectory"]["ade_m"],
                                     "fde_m": parity["trajectory"]["fde_m"]}}
    parse_manifest(manifest)  # what we write must load
    traj = parity["trajectory"]
    summary = (f"parity over {parity['inputs']} input sets: "
               f"trajectory ADE {traj['ade_m']:.2e} m, FDE {traj['fde_m']:.2e} m")
    if not parity["passed"]:
        problems = "; ".join(parity["failures"])
        if not args.force:
            raise VlaError(f"{summary}; FAILED ({problems}); no bundle written (--force writes it anyway)")
        print(f"vla-export: warning: parity FAILED ({problems}); writing anyway because of --force", file=sys.stderr)
    bundle.embed_manifest(model, json.dumps(manifest, separators=(",", ":")))
    bundle.write_bundle(args.output, model, manifest, parity)
    print(f"vla-export: {summary}", file=sys.stderr)
    print(f"vla-export: wrote {args.output}/ ({bundle.MODEL_FILE}, {bundle.MANIFEST_FILE}, {bundle.PARITY_FILE}) "
          f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("vla-export", lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())
