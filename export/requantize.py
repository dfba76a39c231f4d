"""``vla-export BUNDLE --precision fp16|int8 -o OUT``: a new precision from an FP32 bundle, without the
PyTorch model or its code.

The bundle holds all that is needed: the cleaned FP32 graph (with each node's PyTorch module path,
stamped at export, so the report still names modules), and the manifest (inputs, outputs, roles)
that drives the held-out and calibration scenes. The accuracy gate compares against the FP32
bundle's own ONNX Runtime outputs, which its parity check already tied to PyTorch; the result
records the source bundle's model hash, so the chain FP32 export -> re-quantised bundle is traceable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from vla.runtime.errors import ManifestError, VlaError
from vla.runtime.manifest import parse_manifest, with_files

from . import bundle

#: Files of the source bundle that belong to its FP32 precision or its measurement, not carried over.
NOT_CARRIED = {bundle.MODEL_FILE, bundle.MANIFEST_FILE, bundle.PARITY_FILE, bundle.ACCURACY_FILE, bundle.PROGRAM_FILE}
#: Options that only make sense with a PyTorch MODEL.
MODEL_ONLY = (("spec", "--spec"), ("factory", "--factory"), ("config", "--config"), ("trust_pickle", "--trust-pickle"),
              ("tokenizer", "--tokenizer"))
#: Options of the FP32 export and its parity check, which a bundle has already been through.
FP32_ONLY = (("opset", "--opset"), ("no_slim", "--no-slim"), ("rtol", "--rtol"), ("ade_tol", "--ade-tol"),
             ("parity_inputs", "--parity-inputs"))


def is_bundle(model: str) -> bool:
    """MODEL names a bundle folder (``model.onnx`` + ``manifest.json``), not a PyTorch model."""
    path = Path(model)
    return path.is_dir() and (path / bundle.MODEL_FILE).is_file() and (path / bundle.MANIFEST_FILE).is_file()


def refuse_model_options(args: argparse.Namespace, default_of: Callable[[str], Any]) -> None:
    """One line for an option a bundle MODEL cannot take: a PyTorch model's (the bundle has its own
    manifest), or the FP32 export's (``default_of(attr)``: the option's default; any other value would
    otherwise be silently ignored)."""
    folder = args.model
    for attr, flag in MODEL_ONLY:
        if getattr(args, attr, None):
            raise VlaError(f"{flag} does not apply to a bundle MODEL ({folder} carries its own manifest)")
    for attr, flag in FP32_ONLY:
        if getattr(args, attr) != default_of(attr):
            raise VlaError(f"{flag} does not apply to a bundle MODEL: it shaped the FP32 export of {folder} "
                           "(export again from the PyTorch model to change it)")


def read_source(folder: Path, precision: str) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The FP32 graph (manifest metadata removed) and the raw manifest of a bundle; one-line errors for
    a bundle that is not FP32, is damaged, or a precision that asks for nothing."""
    if precision == "fp32":
        raise VlaError(f"{folder} is a bundle: re-quantising needs --precision fp16 or int8 (it is FP32 already)")
    try:
        raw = json.loads((folder / bundle.MANIFEST_FILE).read_text())
        spec = parse_manifest(raw)
    except (OSError, ValueError, ManifestError) as exc:
        raise VlaError(f"{folder}/{bundle.MANIFEST_FILE}: not a readable bundle manifest ({exc})") from None
    if spec.precision != "fp32":
        raise VlaError(f"{folder} is a bundle at {spec.precision}; re-quantise from an FP32 bundle "
                       "(the one it was made from, or vla-export MODEL -o DIR)")
    try:
        model = onnx.load(str(folder / bundle.MODEL_FILE))
    except Exception as exc:
        raise VlaError(f"{folder}/{bundle.MODEL_FILE}: not a readable ONNX model ({type(exc).__name__})") from None
    want = spec.model_hash
    if want and bundle.model_hash(model) != want:
        raise VlaError(f"{folder}/{bundle.MODEL_FILE} does not match the manifest's model hash (the bundle was "
                       "changed after export); export it again")
    del model.metadata_props[:]
    return model, raw


def requantize(args: argparse.Namespace) -> int:
    """The re-quantised bundle in ``args.output``; the same gate, search and report as an export."""
    from .pipeline import _run, _session, convert_precision, measured_accuracy, say

    t0 = time.perf_counter()
    folder = Path(args.model)
    fp32, raw = read_source(folder, args.precision)
    spec = with_files(parse_manifest(raw), folder)  # its tokenizer, for the scenes' route commands
    from .text import check_commands

    check_commands(spec, getattr(args, "command", None), say)
    if args.precision == "int8":
        from .calibration import check_source

        check_source(args.calib, spec, args.calib_samples)
    source_hash = spec.model_hash or bundle.model_hash(fp32)
    say(f"{folder} (FP32 bundle, model {source_hash[:19]}...), re-quantising to {args.precision}")
    seconds: dict[str, float] = {}
    sess = _session(fp32)
    model, precision, accuracy = convert_precision(
        args, lambda feeds: _run(sess, feeds), "the FP32 bundle's ONNX Runtime outputs", spec, fp32, seconds)

    source_export = raw.get("export") or {}
    options = {**(source_export.get("options") or {}), **_precision_options(args)}
    manifest = {k: v for k, v in raw.items() if k != "measured"}
    manifest["model"] = dict(manifest["model"], hash=bundle.model_hash(model))
    manifest["tools"] = bundle.tool_versions()
    manifest["export"] = {**{k: v for k, v in source_export.items() if k not in ("program", "precision", "options")},
                          "precision": precision, "options": options,
                          "source_bundle": {"model_hash": source_hash, "precision": "fp32"}}
    seconds["total"] = round(time.perf_counter() - t0, 2)
    source_measured = raw.get("measured") or {}
    manifest["measured"] = {"seconds": seconds, "parity": source_measured.get("parity"),
                            "source_bundle": str(folder), "accuracy": measured_accuracy(accuracy)}
    parse_manifest(manifest)
    bundle.embed_decided(model, manifest)
    try:  # the FP32 bundle's parity report travels with it; a missing or damaged one is not worth a refusal
        parity = json.loads((folder / bundle.PARITY_FILE).read_text())
    except (OSError, ValueError):
        parity = {}
    if not isinstance(parity, dict):
        parity = {}
    parity["note"] = f"parity of the FP32 bundle this was made from ({source_hash}) against PyTorch"
    with tempfile.TemporaryDirectory(prefix="vla-requant-") as staging:
        carried = {}
        for src in sorted(folder.iterdir()):
            if src.is_file() and src.name not in NOT_CARRIED:  # a tokenizer and the like travel with the model
                carried[src.name] = Path(shutil.copy2(src, Path(staging) / src.name))
        bundle.write_bundle(args.output, model, manifest, parity, {bundle.ACCURACY_FILE: accuracy}, carried)
    files = ", ".join([bundle.MODEL_FILE, bundle.MANIFEST_FILE, bundle.PARITY_FILE, bundle.ACCURACY_FILE, *carried])
    say(f"wrote {args.output}/ ({files}) in {time.perf_counter() - t0:.1f} s")
    if accuracy.get("speed_note"):
        say(accuracy["speed_note"])
    return 0


def _precision_options(args: argparse.Namespace) -> dict[str, Any]:
    """The re-quantisation's own options, recorded over the source bundle's (the same keys an export records)."""
    from .pipeline import precision_option_keys

    return {k: getattr(args, k, None) for k in ["precision", "seed", *precision_option_keys(args)]}
