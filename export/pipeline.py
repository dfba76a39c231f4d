"""vla-export's steps, in order: load → export → clean up → parity → precision and its gate → bundle.

Every step prints one progress line to stderr; every failure is one ``VlaError`` line. Nothing is
written to the output folder until every check has passed (or ``--force`` says to write anyway).

What goes where, so that the same MODEL and options give a byte-identical ``model.onnx``:
``manifest["export"]`` holds only what was *decided* (exporter, opset, options, precision,
exclusions, calibration-data hash) and is embedded in the model; ``manifest["measured"]`` holds
what was *measured* (timings, parity, accuracy, speed), varies from run to run and machine to
machine, and lives only in ``manifest.json`` and ``accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from vla.runtime.errors import ManifestError, VlaError
from vla.runtime.feeds import example_feeds
from vla.runtime.manifest import Manifest, check_against_graph, parse_manifest

from . import bundle
from .accuracy import Gate, describe, judge, measure
from .cleanup import prune_opset_imports, slim, tensorrt_problems
from .convert import check_onnx, export_onnx, tensor_types
from .load import LoadedModel, load_model
from .parity import Tolerance, check_parity, run_torch
from .precision import Fp16Converter, Int8Converter, candidates, local_errors
from .scenes import scene_sets
from .search import SearchResult, Trial, search_exclusions
from .signature import check_spec_against_model
from .speed import median_latencies_ms

HELDOUT_SEED = 10_000  # drives of the held-out set: seeds HELDOUT_SEED + seed + d
CALIB_SEED = 1_000  # drives of the synthetic calibration set (never overlaps the held-out seeds)
SENSITIVITY_SETS = 4  # held-out sets used to rank nodes (the gate always uses all of them)


def say(msg: str) -> None:
    print(f"vla-export: {msg}", file=sys.stderr, flush=True)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def export_fp32(args: argparse.Namespace, loaded: LoadedModel, spec: Manifest, seconds: dict[str, float]
                ) -> tuple[onnx.ModelProto, dict[str, Any], dict[str, Any], Any]:
    """The cleaned FP32 graph, how it was made, the parity report against PyTorch, and the
    torch.export program the graph came from (or None; see ``export_onnx``)."""
    feed_sets = [example_feeds(spec, args.seed + i) for i in range(max(1, args.parity_inputs))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / bundle.MODEL_FILE
        how, traced = export_onnx(loaded, spec, feed_sets[0], path, args.opset)
        seconds["torch_export"] = how.pop("seconds")
        say(f"exported with {how['exporter']} (opset {how['opset']}) in {seconds['torch_export']} s"
            + (f"; {how['note']}" if "note" in how else ""))
        model = check_onnx(path)
        if not args.no_slim:
            start = time.perf_counter()
            model, how["cleanup"] = slim(model)
            onnx.save_model(model, str(path))
            model = check_onnx(path)
            seconds["cleanup"] = round(time.perf_counter() - start, 2)
            b, a = how["cleanup"]["before"], how["cleanup"]["after"]
            say(f"cleaned up with {how['cleanup']['tool']}: nodes {b['nodes']} -> {a['nodes']}, "
                f"parameters {b['parameters']:,} -> {a['parameters']:,}, "
                f"size {b['bytes'] / 1e6:.1f} -> {a['bytes'] / 1e6:.1f} MB")
    for problem in tensorrt_problems(model):
        say(f"warning: TensorRT: {problem}")
    check_against_graph(spec, tensor_types(list(model.graph.input)), tensor_types(list(model.graph.output)),
                        "exported graph")
    start = time.perf_counter()
    parity = check_parity(loaded.eager, _session(model), spec, feed_sets, Tolerance(args.rtol, args.ade_tol))
    seconds["parity"] = round(time.perf_counter() - start, 2)
    traj = parity["trajectory"]
    summary = (f"parity over {parity['inputs']} input sets: "
               f"trajectory ADE {traj['ade_m']:.2e} m, FDE {traj['fde_m']:.2e} m")
    if not parity["passed"]:
        problems = "; ".join(parity["failures"])
        if not args.force:
            raise VlaError(f"{summary}; FAILED ({problems}); no bundle written (--force writes it anyway)")
        say(f"warning: parity FAILED ({problems}); going on because of --force")
    else:
        say(summary)
    return model, how, parity, traced


def convert_precision(args: argparse.Namespace, loaded: LoadedModel, spec: Manifest, fp32: onnx.ModelProto,
                      seconds: dict[str, float]) -> tuple[onnx.ModelProto, dict[str, Any], dict[str, Any]]:
    """FP16 or INT8 graph that passes the accuracy gate: (model, decided record, measured report)."""
    start = time.perf_counter()
    sess32 = _session(fp32)

    def step(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _run(sess32, feeds)

    held = scene_sets(spec, step, count=args.heldout, seed=HELDOUT_SEED + args.seed)
    refs = [run_torch(loaded.eager, spec, feeds) for feeds in held]
    say(f"held-out set: {len(held)} input sets from synthetic drives (seeds from {HELDOUT_SEED + args.seed}), "
        "reference outputs from PyTorch FP32")
    record: dict[str, Any] = {"mode": args.precision}
    if args.precision == "int8":
        from .calibration import calibration_sets

        calib, calib_info = calibration_sets(args.calib, spec, step, args.calib_samples, CALIB_SEED + args.seed)
        say(f"calibrating on {calib_info['samples']} input sets from {calib_info['source']} "
            f"({args.calib_method})")
        converter: Fp16Converter | Int8Converter = Int8Converter(fp32, calib, args.calib_method)
        ranges = converter.ranges()
        record["calibration"] = {**calib_info, "method": args.calib_method}
    else:
        overflow_sets = held[: SENSITIVITY_SETS]
        converter = Fp16Converter(fp32, overflow_sets)
        ranges = None
    seconds["calibration"] = round(time.perf_counter() - start, 2)
    record.update(converter.record())
    gate = Gate(args.gate_rel_ade, args.gate_ade_m)
    record["gate"] = {"rel_ade": gate.rel_ade, "ade_m": gate.ade_m, "heldout_sets": len(held)}

    built: dict[int, onnx.ModelProto] = {}

    def evaluate(excluded: list[str]) -> tuple[list[str], dict[str, Any]]:
        model = prune_opset_imports(converter.build(excluded))
        built[len(excluded)] = model
        sess = _session(model)
        figures = measure(spec, refs, [_run(sess, feeds) for feeds in held])
        return judge(figures, gate), figures

    def progress(t: Trial) -> None:
        verdict = "passes" if t.passed else "fails"
        say(f"{args.precision} with {t.excluded} node(s) kept in FP32: {describe(t.figures)}: gate {verdict}")

    start = time.perf_counter()
    nodes = candidates(fp32, args.precision)
    try:
        errors = local_errors(fp32, held[:SENSITIVITY_SETS], nodes, args.precision, ranges)
        order = {n: i for i, n in enumerate(nodes)}
        ranked = sorted(nodes, key=lambda n: (-errors.get(n, 0.0), order[n]))
        limit = args.max_exclude if args.max_exclude is not None else max(1, len(nodes) // 4)
        result = search_exclusions(ranked, evaluate, limit, on_trial=progress)
    finally:
        converter.close()
    seconds["gate_and_search"] = round(time.perf_counter() - start, 2)

    by_name = {n.name: n for n in fp32.graph.node}
    record["excluded"] = [{"node": n, "op": by_name[n].op_type, "local_error": round(errors.get(n, 0.0), 6)}
                          for n in result.excluded]
    record["search"] = {"candidates": len(nodes), "max_exclude": limit, "trials": len(result.trials),
                        "ranking": "relative RMS error of each node's output when only it is converted"}
    final = built[len(result.excluded)]
    report = _accuracy_report(result, gate)
    if not result.passed:
        msg = (f"{args.precision} accuracy gate failed ({'; '.join(result.final.failures)}) even with the "
               f"{len(result.excluded)} most sensitive of {len(nodes)} nodes kept in FP32")
        if not args.force:
            raise VlaError(f"{msg}; no bundle written (--max-exclude N allows more, --force writes it anyway)")
        say(f"warning: {msg}; writing anyway because of --force")
    timed = {"fp32": fp32, "converted_all": built[0]}
    if result.excluded:
        timed["final"] = final
    speeds = median_latencies_ms(timed, held[0])
    speeds.setdefault("final", speeds["converted_all"])
    report["speed_ms"] = {k: round(v, 2) for k, v in speeds.items()}
    report["speed_ms"]["exclusion_cost"] = round(speeds["final"] - speeds["converted_all"], 2)
    report["speedup_vs_fp32"] = round(speeds["fp32"] / speeds["final"], 3)
    say(f"{args.precision}: {len(result.excluded)} node(s) kept in FP32; {describe(result.final.figures)}; "
        f"{speeds['final']:.1f} ms vs FP32 {speeds['fp32']:.1f} ms (x{report['speedup_vs_fp32']:.2f}; "
        f"exclusions cost {report['speed_ms']['exclusion_cost']:+.1f} ms)")
    return final, record, report


def save_program(args: argparse.Namespace, loaded: LoadedModel, spec: Manifest, folder: Path,
                 seconds: dict[str, float], traced: Any = None) -> Path | None:
    """``program.pt2`` in ``folder``: the model as a torch.export program, for the runtime's torch backend.

    FP32 only: the torch backend runs the FP32 model, and FP16/INT8 are decided in the ONNX graph,
    so a precision bundle carrying an FP32 program would run a different model under the same name.
    TorchScript archives are skipped (PyTorch's converter handles fewer ops than TorchScript). It
    runs after the ONNX export and works on the module, not the graph, so ``model.onnx`` is the same
    with or without it. A model torch.export cannot take (rare: the ONNX exporter just traced it the
    same way) costs the bundle only its program, with a one-line warning.
    """
    if args.precision != "fp32" or loaded.form == "torchscript":
        return None
    start = time.perf_counter()
    path = folder / bundle.PROGRAM_FILE
    try:
        import torch

        from .convert import _quiet

        with _quiet():
            if traced is not None:
                program = traced  # the program the ONNX graph was exported from: no second trace
            elif isinstance(loaded.exportable, torch.export.ExportedProgram):
                program = loaded.exportable  # already a program: saved as loaded
            else:
                feeds = example_feeds(spec, args.seed)
                example = tuple(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in spec.inputs)
                program = torch.export.export(loaded.exportable, example)
            torch.export.save(program, str(path))
    except Exception as exc:
        say(f"warning: no {bundle.PROGRAM_FILE} in the bundle (--backend torch will not run it): torch.export "
            f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
        return None
    seconds["torch_program"] = round(time.perf_counter() - start, 2)
    say(f"saved the torch.export program ({bundle.PROGRAM_FILE}, {path.stat().st_size / 1e6:.1f} MB) "
        f"in {seconds['torch_program']} s")
    return path


def _accuracy_report(result: SearchResult, gate: Gate) -> dict[str, Any]:
    final = result.final
    return {"passed": result.passed, "failures": final.failures, "figures": final.figures,
            "gate": {"rel_ade": gate.rel_ade, "ade_m": gate.ade_m},
            "trials": [{"excluded": t.excluded, "passed": t.passed, "failures": t.failures,
                        "trajectory": t.figures["trajectory"]} for t in result.trials]}


def run_export(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    loaded = load_model(args.model, args.spec, args.config, factory=args.factory, trust_pickle=args.trust_pickle)
    try:
        spec = parse_manifest(loaded.spec)
    except ManifestError as exc:
        raise ManifestError(f"{args.model}: I/O spec: {exc}") from None
    check_spec_against_model(loaded, spec)
    if args.precision == "int8":
        from .calibration import check_source

        check_source(args.calib, spec, args.calib_samples)
    say(f"{loaded.source} ({loaded.form}), {spec.raw['model'].get('parameters', '?')} parameters")

    model, how, parity, traced = export_fp32(args, loaded, spec, seconds)
    precision: dict[str, Any] = {"mode": "fp32"}
    accuracy: dict[str, Any] | None = None
    if args.precision != "fp32":
        model, precision, accuracy = convert_precision(args, loaded, spec, model, seconds)
        for problem in tensorrt_problems(model):
            say(f"warning: TensorRT: {problem}")

    with tempfile.TemporaryDirectory(prefix="vla-export-") as staging:
        program = save_program(args, loaded, spec, Path(staging), seconds, traced)
        manifest = dict(spec.raw)
        manifest["model"] = dict(manifest["model"], hash=bundle.model_hash(model))
        manifest["tools"] = bundle.tool_versions()
        manifest["export"] = {**how, "form": loaded.form, "source": loaded.source, "precision": precision,
                              "options": _options(args)}
        if program is not None:  # decided, not measured: the same model and options give the same entry
            manifest["export"]["program"] = bundle.PROGRAM_FILE
        seconds["total"] = round(time.perf_counter() - t0, 2)
        manifest["measured"] = {"seconds": seconds,
                                "parity": {"passed": parity["passed"], "ade_m": parity["trajectory"]["ade_m"],
                                           "fde_m": parity["trajectory"]["fde_m"]}}
        if accuracy is not None:
            manifest["measured"]["accuracy"] = {"passed": accuracy["passed"], **accuracy["figures"]["trajectory"],
                                                "speed_ms": accuracy["speed_ms"],
                                                "speedup_vs_fp32": accuracy["speedup_vs_fp32"]}
        parse_manifest(manifest)  # what we write must load
        embedded = {k: v for k, v in manifest.items() if k != "measured"}
        bundle.embed_manifest(model, json.dumps(embedded, separators=(",", ":"), sort_keys=True))
        extra = {bundle.ACCURACY_FILE: accuracy} if accuracy is not None else {}
        binaries = {bundle.PROGRAM_FILE: program} if program is not None else {}
        bundle.write_bundle(args.output, model, manifest, parity, extra, binaries)
    files = ", ".join([bundle.MODEL_FILE, bundle.MANIFEST_FILE, bundle.PARITY_FILE, *extra, *binaries])
    say(f"wrote {args.output}/ ({files}) in {time.perf_counter() - t0:.1f} s")
    return 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that decide the graph (not where it is written): recorded, and hashed by equality."""
    keys = ["opset", "precision", "seed", "parity_inputs", "rtol", "ade_tol", "no_slim", "config"]
    if args.precision != "fp32":
        keys += ["heldout", "gate_rel_ade", "gate_ade_m", "max_exclude"]
    if args.precision == "int8":
        keys += ["calib", "calib_method", "calib_samples"]
    return {k: getattr(args, k) for k in keys}
