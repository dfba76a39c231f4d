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
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from vla.runtime.errors import ManifestError, VlaError
from vla.runtime.inputs.feeds import example_feeds
from vla.runtime.manifest import Manifest, check_against_graph, parse_manifest

from . import bundle, exclusions
from .accuracy import Gate, describe, judge, measure, reference_note
from .cleanup import dedupe_initializers, parameter_note, prune_opset_imports, shared_note, slim, tensorrt_problems
from .convert import check_onnx, export_onnx, tensor_types
from .load import LoadedModel, load_model
from .module_names import group_by_module, keep_module_paths_only, module_paths, read_scopes, stamp
from .parity import Tolerance, check_parity, run_torch
from .precision import Fp16Converter, Int8Converter, candidates, local_errors
from .progress import Progress
from .scenes import scene_sets
from .search import EffectSearch, Trial, search_by_effect
from .signature import check_spec_against_model
from .speed import median_latencies_ms
from .text import attach_tokenizer, check_commands, check_vocabulary_size, locate_tokenizer

HELDOUT_SEED = 10_000  # drives of the held-out set: seeds HELDOUT_SEED + seed + d
CALIB_SEED = 1_000  # drives of the synthetic calibration set (never overlaps the held-out seeds)
SENSITIVITY_SETS = 4  # held-out sets used to order the modules' measurement (the gate always uses all of them)
DEFAULT_SEARCH_SECONDS = 300.0  # --search-seconds: the exclusion search's time budget
MAX_GROUPS = 24  # modules measured one by one at most (deeper module paths are merged to fit)


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
    command = getattr(args, "command", None)
    feed_sets = [example_feeds(spec, args.seed + i, command) for i in range(max(1, args.parity_inputs))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / bundle.MODEL_FILE
        how, traced = export_onnx(loaded, spec, feed_sets[0], path, args.opset)
        seconds["torch_export"] = how.pop("seconds")
        say(f"exported with {how['exporter']} (opset {how['opset']}) in {seconds['torch_export']} s"
            + (f"; {how['note']}" if "note" in how else ""))
        model = check_onnx(path)
        if not args.no_slim:
            start = time.perf_counter()
            scopes = read_scopes(model)  # the clean-up drops the exporter's per-node module scopes
            model, how["cleanup"] = slim(model)
            stamp(model, scopes)
            onnx.save_model(model, str(path))
            model = check_onnx(path)
            seconds["cleanup"] = round(time.perf_counter() - start, 2)
            b, a = how["cleanup"]["before"], how["cleanup"]["after"]
            say(f"cleaned up with {how['cleanup']['tool']}: nodes {b['nodes']} -> {a['nodes']}, "
                f"parameters {b['parameters']:,} -> {a['parameters']:,}, "
                f"size {b['bytes'] / 1e6:.1f} -> {a['bytes'] / 1e6:.1f} MB"
                + shared_note(how["cleanup"]["deduplicated"]))
        else:  # no clean-up, but identical initializers are still stored once (lossless)
            keep_module_paths_only(model)
            model, how["deduplicated"] = dedupe_initializers(model)
            if how["deduplicated"]["initializers"]:
                say(f"--no-slim: no clean-up{shared_note(how['deduplicated'])}")
        note = parameter_note(model, spec.raw["model"].get("parameters"))
        if note:
            say(f"note: {note}")
    for problem in tensorrt_problems(model):
        say(f"warning: TensorRT: {problem}")
    check_against_graph(spec, tensor_types(list(model.graph.input)), tensor_types(list(model.graph.output)),
                        "exported graph")
    check_vocabulary_size(model, spec, say)  # a tokenizer with more ids than the embedding has rows
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


def convert_precision(args: argparse.Namespace, reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                      reference_name: str, spec: Manifest, fp32: onnx.ModelProto, seconds: dict[str, float]
                      ) -> tuple[onnx.ModelProto, dict[str, Any], dict[str, Any]]:
    """FP16 or INT8 graph that passes the accuracy gate: (model, decided record, measured report).

    ``reference`` gives the outputs the gate compares against on one input set (PyTorch FP32 for an
    export, the FP32 bundle's ONNX Runtime session for a re-quantisation), named by ``reference_name``.
    """
    start = time.perf_counter()
    sess32 = _session(fp32)

    def step(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _run(sess32, feeds)

    held = scene_sets(spec, step, count=args.heldout, seed=HELDOUT_SEED + args.seed,
                      command=getattr(args, "command", None))
    refs = [reference(feeds) for feeds in held]
    say(f"held-out set: {len(held)} input sets from synthetic drives (seeds from {HELDOUT_SEED + args.seed}), "
        f"reference outputs from {reference_name}")
    record: dict[str, Any] = {"mode": args.precision}
    form = (getattr(args, "int8_form", None) or "tensorrt") if args.precision == "int8" else None
    if args.precision == "int8":
        from .calibration import calibration_sets

        if form == "dynamic":
            calib: list[dict[str, np.ndarray]] = []
            say("int8 dynamic form: weights quantised now, activations at run time (no calibration)")
        else:
            calib, calib_info = calibration_sets(args.calib, spec, step, args.calib_samples, CALIB_SEED + args.seed,
                                                 command=getattr(args, "command", None))
            say(f"calibrating on {calib_info['samples']} input sets from {calib_info['source']} "
                f"({args.calib_method}, {form} form)")
            record["calibration"] = {**calib_info, "method": args.calib_method}
        converter: Fp16Converter | Int8Converter = Int8Converter(fp32, calib, args.calib_method, form=form)
        ranges = converter.ranges()
    else:
        overflow_sets = held[: SENSITIVITY_SETS]
        converter = Fp16Converter(fp32, overflow_sets)
        ranges = None
    seconds["calibration"] = round(time.perf_counter() - start, 2)
    record.update(converter.record())
    gate = Gate.from_options(args.gate_rel_ade, args.gate_ade_m)
    record["gate"] = {**gate.record(), "heldout_sets": len(held)}
    note = reference_note(spec, refs, gate)
    if note:
        say(f"warning: {note}")

    built: dict[frozenset[str], onnx.ModelProto] = {}  # everything converted, and the last trial
    trials = [0]

    def evaluate(excluded: list[str]) -> tuple[list[str], dict[str, Any]]:
        model = prune_opset_imports(converter.build(excluded))
        for key in [k for k in built if k]:  # a model per trial would hold gigabytes on a large graph
            del built[key]
        built[frozenset(excluded)] = model
        trials[0] += 1
        sess = _session(model)
        figures = measure(spec, refs, [_run(sess, feeds) for feeds in held])
        return judge(figures, gate), figures

    start = time.perf_counter()
    budget = float(getattr(args, "search_seconds", DEFAULT_SEARCH_SECONDS))
    nodes = candidates(fp32, args.precision, form or "tensorrt")
    paths = module_paths(fp32)
    groups = group_by_module(nodes, paths, MAX_GROUPS)
    limit = args.max_exclude if args.max_exclude is not None else max(1, len(nodes) // 2)
    bar = Progress()

    def progress(t: Trial) -> None:
        what = ", ".join(t.groups[:3]) + (f" +{len(t.groups) - 3}" if len(t.groups) > 3 else "") or "nothing"
        verdict = "passes" if t.passed else "fails"
        total = 1 + len(groups) + 2 * max(1, len(groups)).bit_length()
        bar.step(min(trials[0], total), total, f"{time.perf_counter() - start:.0f}/{budget:g} s: "
                 f"{args.precision} with {what} in FP32 ({t.excluded} node(s)): {describe(t.figures, gate)}: "
                 f"gate {verdict}")

    try:
        errors = local_errors(fp32, held[:SENSITIVITY_SETS], nodes, args.precision, ranges)
        order = sorted(groups, key=lambda g: -max(errors.get(n, 0.0) for n in groups[g]))
        result = search_by_effect(groups, order, evaluate, limit,
                                  lambda _: time.perf_counter() - start >= budget, on_trial=progress)
        key = frozenset(result.excluded)
        final = built[key] if key in built else prune_opset_imports(converter.build(result.excluded))
    finally:
        bar.close()
        converter.close()
    seconds["gate_and_search"] = round(time.perf_counter() - start, 2)

    record["excluded"] = exclusions.decided(result, fp32, paths)
    record["search"] = {"candidates": len(nodes), "groups": len(groups), "max_exclude": limit,
                        "ranking": "measured: trajectory ADE with each module alone kept in FP32"}
    report = _accuracy_report(result, gate)
    report["search"] = {"trials": len(result.trials), "seconds_budget": budget, "out_of_time": result.out_of_time,
                        "effects": exclusions.effects_table(result)}
    report["excluded_modules"] = exclusions.measured(result)
    for line in exclusions.summary_lines(args.precision, result):
        say(line)
    if not result.passed:
        msg = exclusions.refusal(args.precision, result, len(nodes), limit, budget)
        if not args.force:
            raise VlaError(msg)
        say(f"warning: {msg.replace('; no bundle written', '')}; writing anyway because of --force")
    timed = {"fp32": fp32, "converted_all": built[frozenset()]}
    if result.excluded:
        timed["final"] = final
    speeds = median_latencies_ms(timed, held[0])
    speeds.setdefault("final", speeds["converted_all"])
    report["speed_ms"] = {k: round(v, 2) for k, v in speeds.items()}
    report["speed_ms"]["exclusion_cost"] = round(speeds["final"] - speeds["converted_all"], 2)
    report["speedup_vs_fp32"] = round(speeds["fp32"] / speeds["final"], 3)
    report["slower_than_fp32"] = speeds["final"] > speeds["fp32"]  # as the speed note judges (not the rounded ratio)
    report["speed_note"] = exclusions.speed_note(args.precision, form, speeds["fp32"], speeds["final"])
    say(f"{args.precision}: {len(result.excluded)} node(s) in {len(result.groups)} module(s) kept in FP32; "
        f"{describe(result.final.figures, gate)}; "
        f"{speeds['final']:.1f} ms vs FP32 {speeds['fp32']:.1f} ms (x{speeds['fp32'] / speeds['final']:.2f}; "
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
    failed = write_program(path, traced, loaded.exportable, lambda: example_feeds(spec, args.seed), spec)
    if failed:
        say(f"warning: no {bundle.PROGRAM_FILE} in the bundle (--backend torch will not run it): torch.export "
            f"failed: {failed}")
        return None
    seconds["torch_program"] = round(time.perf_counter() - start, 2)
    say(f"saved the torch.export program ({bundle.PROGRAM_FILE}, {path.stat().st_size / 1e6:.1f} MB) "
        f"in {seconds['torch_program']} s")
    return path


def write_program(path: Path, traced: Any, model: Any, feeds: Callable[[], dict[str, np.ndarray]], spec: Manifest
                  ) -> str | None:
    """Save ``model`` as a torch.export program at ``path``: ``traced`` (the program its ONNX graph came from:
    no second trace), ``model`` itself if it is a program already, else a trace on ``feeds()`` in ``spec``'s
    input order. None when written, else why not (one line)."""
    import torch

    from .convert import _quiet

    try:
        with _quiet():
            program = traced
            if program is None and isinstance(model, torch.export.ExportedProgram):
                program = model
            if program is None:
                values = feeds()
                example = tuple(torch.from_numpy(np.ascontiguousarray(values[t.name])) for t in spec.inputs)
                program = torch.export.export(model, example)
            torch.export.save(program, str(path))
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return None


def _accuracy_report(result: EffectSearch, gate: Gate) -> dict[str, Any]:
    final = result.final
    return {"passed": result.passed, "failures": final.failures, "figures": final.figures,
            "gate": gate.record(), "notes": gate.notes(final.figures),
            "trials": [{"excluded": t.excluded, "modules": t.groups, "passed": t.passed, "failures": t.failures,
                        "trajectory": t.figures["trajectory"]} for t in result.trials]}


def run_export(args: argparse.Namespace) -> int:
    from .requantize import is_bundle, requantize

    if is_bundle(args.model):  # an FP32 bundle: a new precision without the PyTorch model
        return requantize(args)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    loaded = load_model(args.model, args.spec, args.config, factory=args.factory, trust_pickle=args.trust_pickle)
    # Stages hook: a spec declaring `stages` is exported one graph per stage by export/staged.py.
    from .staged import refuse_stage_options, run_staged_export, take_declaration

    declared = take_declaration(loaded)
    tokenizer = getattr(args, "tokenizer", None)
    try:
        spec = parse_manifest(attach_tokenizer(loaded.spec, tokenizer))
    except ManifestError as exc:
        raise ManifestError(f"{args.model}: I/O spec: {exc}") from None
    spec = locate_tokenizer(spec, tokenizer)
    check_commands(spec, getattr(args, "command", None), say)  # before the slow steps
    check_spec_against_model(loaded, spec)
    if args.precision == "int8":
        from .calibration import check_source

        check_source(args.calib, spec, args.calib_samples)
    say(f"{loaded.source} ({loaded.form}), {spec.raw['model'].get('parameters', '?')} parameters")
    if declared is not None and not getattr(args, "one_graph", False):  # stages hook (see above)
        return run_staged_export(args, loaded, spec, declared, t0, seconds)
    refuse_stage_options(args)
    if declared is not None:
        say(f"--one-graph: the declared stages ({', '.join(declared)}) are exported as one graph of the model's "
            "forward(), run whole every tick")

    model, how, parity, traced = export_fp32(args, loaded, spec, seconds)
    precision: dict[str, Any] = {"mode": "fp32"}
    accuracy: dict[str, Any] | None = None
    if args.precision != "fp32":
        model, precision, accuracy = convert_precision(
            args, lambda feeds: run_torch(loaded.eager, spec, feeds), "PyTorch FP32", spec, model, seconds)
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
            manifest["measured"]["accuracy"] = measured_accuracy(accuracy)
        parse_manifest(manifest)  # what we write must load
        bundle.embed_decided(model, manifest)
        extra = {bundle.ACCURACY_FILE: accuracy} if accuracy is not None else {}
        binaries = {bundle.PROGRAM_FILE: program} if program is not None else {}
        binaries.update(bundle.stage_tokenizer(spec, Path(staging)))
        bundle.write_bundle(args.output, model, manifest, parity, extra, binaries)
    files = ", ".join([bundle.MODEL_FILE, bundle.MANIFEST_FILE, bundle.PARITY_FILE, *extra, *binaries])
    say(f"wrote {args.output}/ ({files}) in {time.perf_counter() - t0:.1f} s")
    if accuracy is not None and accuracy.get("speed_note"):
        say(accuracy["speed_note"])
    return 0


def measured_accuracy(accuracy: dict[str, Any]) -> dict[str, Any]:
    """The accuracy report's summary for ``manifest["measured"]``: the gate's figures, the modules kept
    in FP32 with their measured effect, and the speed against FP32 on ONNX Runtime CPU."""
    return {"passed": accuracy["passed"], **accuracy["figures"]["trajectory"],
            "excluded_modules": accuracy["excluded_modules"],
            "speed_ms": accuracy["speed_ms"], "speedup_vs_fp32": accuracy["speedup_vs_fp32"],
            "slower_than_fp32": accuracy["slower_than_fp32"]}


def precision_option_keys(args: argparse.Namespace) -> list[str]:
    """The options that decide an FP16 or INT8 graph on top of the FP32 one (none for FP32); one list for
    an export and a re-quantisation, so both record the same options."""
    if args.precision == "fp32":
        return []
    keys = ["heldout", "gate_rel_ade", "gate_ade_m", "max_exclude", "command"]
    if args.precision == "int8":
        keys += ["int8_form"] + ([] if getattr(args, "int8_form", "") == "dynamic"
                                 else ["calib", "calib_method", "calib_samples"])
    return keys


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that decide the graph (not where it is written): recorded, and hashed by equality."""
    keys = ["opset", "precision", "seed", "parity_inputs", "rtol", "ade_tol", "no_slim", "config",
            *precision_option_keys(args)]
    return {k: getattr(args, k, None) for k in keys}
