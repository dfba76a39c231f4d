"""vla-export for a model declared in stages: one graph per stage, each checked on its own and composed.

A model's spec (``--spec``, or the module's ``io_spec()``/``stages_spec()``) may declare ``stages``: a
mapping, in run order, of stage name -> the submodule it runs (and how: inputs, outputs, rate, a
repeated sampler step). The spec's ``inputs``/``outputs`` stay the model's contract; tensors one stage
hands to a later one become the manifest's ``intermediates``. The steps mirror ``pipeline.py``:

1. the declaration is turned into the manifest's stage list and its dataflow checked before anything is
   traced (``runtime.stages.dataflow_problem``: a missing edge is one line naming it);
2. the declared composition runs in PyTorch on the example inputs, recording every stage's inputs and
   outputs (a repeat stage K times, its sample fed back, time i/K and index i filled as the runtime does);
3. each submodule is exported with its recorded inputs, cleaned up and checked against its part of the
   manifest, then compared with PyTorch per stage (parity), and the composed decision, run by the
   runtime's own ``StagedBackend``, against the model's ``forward`` (ADE/FDE in metres; a controls
   trajectory is integrated from the ego's speed first, as the runtime's decode does);
4. stages not in FP32 are converted (``precision.py``'s converters) and the composed trajectory passes
   ONE accuracy gate against PyTorch FP32 on held-out drives: a stage split has no per-node search, the
   user chooses per stage (``--stage-precision``);
5. the bundle is written only when every check passed: ``<stage>.onnx`` each (manifest embedded),
   ``<stage>.pt2`` for FP32 stages, ``manifest.json`` with ``stages`` and ``intermediates``, no model.onnx.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from vla.runtime.errors import VlaError
from vla.runtime.inputs.feeds import example_feeds
from vla.runtime.manifest import DTYPES, Manifest, check_against_graph, parse_manifest
from vla.runtime.stages import Repeat, Stage, dataflow_problem, parse_rate, stage_raw

from . import bundle
from .accuracy import Gate, describe, judge, measure, reference_note
from .cleanup import dedupe_initializers, prune_opset_imports, shared_note, slim, tensorrt_problems
from .cli import PRECISIONS, parse_stage_precision
from .convert import check_onnx, export_onnx, tensor_types
from .load import LoadedModel, _first_line
from .module_names import keep_module_paths_only, read_scopes, stamp
from .parity import Tolerance, compare, keep_worst, output_errors, run_torch, trajectory_errors
from .pipeline import CALIB_SEED, HELDOUT_SEED, SENSITIVITY_SETS, _options, _run, _session, say, write_program
from .precision import Fp16Converter, Int8Converter
from .scenes import scene_sets

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_KEYS = ("module", "inputs", "outputs", "rate", "max_age_ms", "repeat", "sample", "time", "index", "precision")

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Declared:
    """One declared stage: its manifest entry (``stage``) and the submodule it is exported from."""

    stage: Stage
    module_path: str
    module: nn.Module
    rate_declared: bool


# ---- the declaration ----------------------------------------------------------------------------
def take_declaration(loaded: LoadedModel) -> dict[str, Any] | None:
    """The spec's ``stages`` mapping, removed from ``loaded.spec`` (the rest is the manifest's I/O part,
    which the schema checks); None for a one-graph model."""
    spec = loaded.spec
    if not isinstance(spec, dict) or "stages" not in spec:
        return None
    raw = spec["stages"]
    loaded.spec = {k: v for k, v in spec.items() if k != "stages"}
    if not isinstance(raw, Mapping) or not raw:
        raise VlaError("stages: expected a mapping of stage name -> submodule path (or {module: PATH, ...}), "
                       "in run order")
    return dict(raw)


def refuse_stage_options(args: argparse.Namespace) -> None:
    """``--stage-precision`` on a one-graph model: one line, before the export starts."""
    if parse_stage_precision(getattr(args, "stage_precision", None) or []):
        raise VlaError("--stage-precision applies only to a model declared in stages (a `stages` mapping in its "
                       "spec, or a stages_spec() method) exported as stages; this export is one graph: use --precision")


def _rate(name: str, value: Any) -> str | int:
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        value = f"every:{value}"
    if isinstance(value, Mapping) and set(value) == {"every"}:
        value = f"every:{value['every']}"
    try:
        return parse_rate(str(value))
    except VlaError:
        raise VlaError(f"stages: stage '{name}': rate {value!r}: expected tick, async or every:N (N >= 1)") from None


def _names(name: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise VlaError(f"stages: stage '{name}': {key} must be a list of tensor names, e.g. {key}: [a, b]")
    return tuple(value)


def _forward_inputs(name: str, path: str, module: nn.Module) -> tuple[str, ...]:
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise VlaError(f"stages: stage '{name}' (module '{path}'): its forward() takes *args/**kwargs; declare "
                       "its inputs: [...] in call order")
    return tuple(p.name for p in params)


def parse_declaration(raw: dict[str, Any], root: nn.Module, spec: Manifest) -> list[Declared]:
    """The declared stages, in order, with defaults filled and undeclared rates inherited (``inherit_rates``);
    every problem is one ``VlaError`` line naming the stage."""
    out: list[Declared] = []
    for name, decl in raw.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise VlaError(f"stages: stage name {name!r} must be letters, digits, '_' or '-'")
        d: Mapping[str, Any] = {"module": decl} if isinstance(decl, str) else decl
        if not isinstance(d, Mapping):
            raise VlaError(f"stages: stage '{name}': expected a submodule path or a mapping {{module: PATH, ...}}")
        unknown = sorted(set(d) - set(_KEYS))
        if unknown:
            raise VlaError(f"stages: stage '{name}': unknown key(s) {unknown} (known: {', '.join(_KEYS)})")
        path = d.get("module")
        if not isinstance(path, str) or not path:
            raise VlaError(f"stages: stage '{name}': needs module: PATH (a submodule, e.g. encoder or blocks.0)")
        try:
            module = root.get_submodule(path)
        except AttributeError:
            children = ", ".join(n for n, _ in root.named_children()) or "none"
            raise VlaError(f"stages: stage '{name}': {type(root).__name__} has no submodule '{path}' "
                           f"(its submodules: {children})") from None
        inputs = _names(name, "inputs", d["inputs"]) if "inputs" in d else _forward_inputs(name, path, module)
        if "outputs" in d:
            outputs = _names(name, "outputs", d["outputs"])
        elif getattr(module, "output_names", None):
            outputs = _names(name, "outputs", list(module.output_names))
        else:
            raise VlaError(f"stages: stage '{name}' (module '{path}'): declare its outputs: [...] (in return order; "
                           f"{type(module).__name__} has no output_names attribute)")
        max_age = d.get("max_age_ms")
        if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, (int, float))
                                    or max_age <= 0):
            raise VlaError(f"stages: stage '{name}': max_age_ms must be a positive number of milliseconds")
        repeat = _repeat(name, d, spec)
        precision = d.get("precision")
        if precision is not None and precision not in PRECISIONS:
            raise VlaError(f"stages: stage '{name}': precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        rate = _rate(name, d["rate"]) if "rate" in d else "tick"
        stage = Stage(name, f"{name}.onnx", inputs, outputs, rate, None if max_age is None else float(max_age),
                      repeat, precision or "")
        out.append(Declared(stage, path, module, "rate" in d))
    return out


def _repeat(name: str, d: Mapping[str, Any], spec: Manifest) -> Repeat | None:
    if "repeat" not in d:
        extra = [k for k in ("sample", "time", "index") if k in d]
        if extra:
            raise VlaError(f"stages: stage '{name}': {', '.join(extra)} only apply with repeat: K")
        return None
    steps = d["repeat"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise VlaError(f"stages: stage '{name}': repeat must be a whole number of steps >= 1, not {steps!r}")
    sample = d.get("sample") or {}
    if not isinstance(sample, Mapping) or set(sample) - {"input", "output", "init"}:
        raise VlaError(f"stages: stage '{name}': sample must be a mapping {{input, output, init}}")
    init = sample.get("init")
    if init is None:
        noise = spec.inputs_with("noise")
        if not noise:
            raise VlaError(f"stages: stage '{name}': the model has no noise input to start the sample from; "
                           "declare sample: {init: NAME}")
        init = noise[0].name
    for key in ("time", "index"):
        if key in d and not isinstance(d[key], str):
            raise VlaError(f"stages: stage '{name}': {key} must name one of its inputs")
    return Repeat(steps, str(sample.get("input", "sample")), str(sample.get("output", "next_sample")), str(init),
                  d.get("time"), d.get("index"))


def inherit_rates(decls: list[Declared], model_outputs: set[str]) -> tuple[list[Declared], list[str]]:
    """A stage without a declared rate whose outputs feed only slow stages of one rate (and no model
    output) runs with them: a vision encoder feeding an async context model is part of the slow path,
    and a tick-rate writer would be refused (a slow stage may not read the fast path). Later stages are
    settled first, so a chain (vision -> context) inherits through. Returns the stages and a note each."""
    decls = list(decls)
    notes: list[str] = []
    for i in range(len(decls) - 1, -1, -1):
        d = decls[i]
        if d.rate_declared or set(d.stage.outputs) & model_outputs:
            continue
        readers = [r.stage for r in decls[i + 1:] if set(r.stage.inputs) & set(d.stage.outputs)]
        if not readers or not all(r.slow for r in readers) or len({r.rate for r in readers}) != 1:
            continue
        first = readers[0]
        age = d.stage.max_age_ms if d.stage.max_age_ms is not None else first.max_age_ms
        decls[i] = replace(d, stage=replace(d.stage, rate=first.rate, max_age_ms=age))
        notes.append(f"stage '{d.stage.name}' runs with '{first.name}' ({first.rate_text()}): its outputs feed only "
                     "slow stages (declare rate: tick to refuse that)")
    return decls, notes


def intermediate_names(decls: list[Declared], model_outputs: set[str]) -> list[str]:
    """Stage outputs that are not model outputs (a repeat's running sample only when a later stage reads it)."""
    names: list[str] = []
    for i, d in enumerate(decls):
        later = {n for r in decls[i + 1:] for n in r.stage.inputs}
        for o in d.stage.outputs:
            if o in model_outputs or o in names:
                continue
            if d.stage.repeat is not None and o == d.stage.repeat.sample_output and o not in later:
                continue
            names.append(o)
    return names


def stage_precisions(args: argparse.Namespace, decls: list[Declared]) -> dict[str, str]:
    """Each stage's precision: ``--stage-precision`` over the declaration's ``precision`` over ``--precision``."""
    override = parse_stage_precision(getattr(args, "stage_precision", None) or [])
    names = [d.stage.name for d in decls]
    unknown = [n for n in override if n not in names]
    if unknown:
        raise VlaError(f"--stage-precision {unknown[0]}: no such stage (stages: {', '.join(names)})")
    return {d.stage.name: override.get(d.stage.name) or d.stage.precision or args.precision for d in decls}


# ---- the composition in PyTorch ------------------------------------------------------------------
@dataclass
class Recording:
    """One decision run stage by stage in PyTorch: each stage's inputs and outputs per call (K calls for a
    repeat stage), and every tensor of the decision by name (a repeat stage's: its last step's)."""

    calls: dict[str, list[tuple[Feeds, Feeds]]]
    values: Feeds


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def compose_torch(decls: list[Declared], feeds: Feeds) -> Recording:
    """Run the declared stages in order on ``feeds``, as the runtime's ``StagedBackend`` will."""
    values: dict[str, torch.Tensor] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    calls: dict[str, list[tuple[Feeds, Feeds]]] = {}
    with torch.no_grad():
        for d in decls:
            s, r = d.stage, d.stage.repeat
            record = calls.setdefault(s.name, [])
            if r is None:
                args = {n: _value(values, s, n) for n in s.inputs}
                out = _call(d, args)
                record.append(({n: _np(a) for n, a in args.items()}, {n: _np(o) for n, o in out.items()}))
            else:
                sample = _value(values, s, r.init)
                batch = sample.shape[0] if sample.dim() else 1
                for i in range(r.steps):
                    args = {}
                    for n in s.inputs:
                        if n == r.sample_input:
                            args[n] = sample
                        elif n == r.time:
                            args[n] = torch.full((batch,), i / r.steps, dtype=torch.float32)
                        elif n == r.index:
                            args[n] = torch.full((batch,), i, dtype=torch.int64)
                        else:
                            args[n] = _value(values, s, n)
                    out = _call(d, args)
                    record.append(({n: _np(a) for n, a in args.items()}, {n: _np(o) for n, o in out.items()}))
                    sample = out[r.sample_output]
            values.update(out)
    return Recording(calls, {k: _np(v) for k, v in values.items()})


def _value(values: dict[str, torch.Tensor], stage: Stage, name: str) -> torch.Tensor:
    if name not in values:  # dataflow_problem has vetted the names; this is a model that lies about its outputs
        raise VlaError(f"stages: stage '{stage.name}' reads '{name}', which no model input or earlier stage made")
    return values[name]


def _call(d: Declared, args: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    s = d.stage
    try:
        out = d.module(*args.values())
    except Exception as exc:
        raise VlaError(f"stages: stage '{s.name}' (module '{d.module_path}') failed on its inputs "
                       f"{list(args)}: {_first_line(exc)}; check the declared inputs (in call order)") from None
    out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    if len(out) != len(s.outputs):
        raise VlaError(f"stages: stage '{s.name}' (module '{d.module_path}') returns {len(out)} output(s) but "
                       f"declares {len(s.outputs)}: {list(s.outputs)}; declare outputs: [...] in return order")
    if not all(isinstance(o, torch.Tensor) for o in out):
        raise VlaError(f"stages: stage '{s.name}' (module '{d.module_path}') must return tensors")
    return dict(zip(s.outputs, out, strict=True))


# ---- the manifest -------------------------------------------------------------------------------
def stage_entry(d: Declared, precision: str, graph: onnx.ModelProto | None = None) -> dict[str, Any]:
    """The manifest's entry for one stage (``hash`` once its graph is final)."""
    entry = {**stage_raw(d.stage), "module": d.module_path, "precision": precision}
    if graph is not None:
        entry["hash"] = bundle.model_hash(graph)
    entry["parameters"] = sum(p.numel() for p in d.module.parameters())
    return entry


def staged_raw(spec: Manifest, decls: list[Declared], intermediates: list[str], rec: Recording,
               precisions: dict[str, str]) -> dict[str, Any]:
    """The model's manifest with ``stages`` and ``intermediates`` (dtype and shape from the PyTorch run)."""
    inter = []
    for name in intermediates:
        value = rec.values[name]
        if str(value.dtype) not in DTYPES:
            raise VlaError(f"stages: intermediate '{name}' is {value.dtype}; stages may hand on only "
                           f"{', '.join(DTYPES)} tensors")
        inter.append({"name": name, "dtype": str(value.dtype), "shape": list(value.shape)})
    raw = dict(spec.raw)
    raw["stages"] = [stage_entry(d, precisions[d.stage.name]) for d in decls]
    raw["intermediates"] = inter
    return raw


# ---- export, parity -----------------------------------------------------------------------------
def export_stage(args: argparse.Namespace, loaded: LoadedModel, d: Declared, part: Manifest, feeds: Feeds,
                 folder: Path) -> tuple[onnx.ModelProto, dict[str, Any], Any]:
    """The cleaned FP32 graph of one stage, how it was made, and the torch.export program it came from."""
    name = d.stage.name
    sub = LoadedModel(d.module, d.module, {}, loaded.form, f"{loaded.source} stage '{name}' ({d.module_path})")
    path = folder / d.stage.file
    how, traced = export_onnx(sub, part, feeds, path, args.opset)
    model = check_onnx(path)
    if not args.no_slim:
        scopes = read_scopes(model)
        model, how["cleanup"] = slim(model)
        stamp(model, scopes)
        onnx.save_model(model, str(path))
        model = check_onnx(path)
        b, a = how["cleanup"]["before"], how["cleanup"]["after"]
        cleaned = (f"; cleaned up: nodes {b['nodes']} -> {a['nodes']}, parameters {b['parameters']:,} -> "
                   f"{a['parameters']:,}{shared_note(how['cleanup']['deduplicated'])}")
    else:
        keep_module_paths_only(model)
        model, how["deduplicated"] = dedupe_initializers(model)
        cleaned = shared_note(how["deduplicated"])
    say(f"stage '{name}' ({d.module_path}): exported with {how['exporter']} (opset {how['opset']}) in "
        f"{how.pop('seconds')} s{cleaned}")
    for problem in tensorrt_problems(model):
        say(f"warning: TensorRT: stage '{name}': {problem}")
    check_against_graph(part, tensor_types(list(model.graph.input)), tensor_types(list(model.graph.output)),
                        f"stage '{name}' graph")
    return model, how, traced


def stage_parity(model: onnx.ModelProto, calls: list[tuple[Feeds, Feeds]], rtol: float) -> dict[str, Any]:
    """The stage graph on ONNX Runtime against the recorded PyTorch outputs: the worst figure per output."""
    sess = _session(model)
    outputs: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    for inputs, ref in calls:
        figures, failed = output_errors(list(ref), ref, _run(sess, inputs), rtol)
        keep_worst(outputs, figures)
        failures += [f for f in failed if f not in failures]
    return {"calls": len(calls), "outputs": outputs, "failures": failures, "passed": not failures}


def in_metres(spec: Manifest, outputs: Feeds, feeds: Feeds) -> Feeds:
    """``outputs`` with a controls trajectory integrated into poses [B, M, T, 4] (x, y, yaw, speed) from the
    ego's newest speed, as the runtime's decode does, so ADE/FDE are in metres; other trajectories as they are."""
    if not spec.controls:
        return outputs
    from vla.kernels.decode import integrate_controls

    traj = spec.outputs_with("trajectory")[0]
    controls = outputs[traj.name]
    poses = [integrate_controls(np.ascontiguousarray(controls[b], dtype=np.float32),
                                spec.start_speed(lambda name, b=b: feeds[name][b : b + 1]), float(traj.detail["dt"]))
             for b in range(controls.shape[0])]
    return {**outputs, traj.name: np.stack(poses)}


def run_decision(backend: Any, spec: Manifest, feeds: Feeds) -> Feeds:
    """One decision of an opened bundle (a ``StagedBackend``) on ``feeds``."""
    for t in spec.inputs:
        if t.role != "state":
            np.copyto(backend.feed(t.name), feeds[t.name])
    return {k: np.array(v) for k, v in backend.run().items()}


def composed_parity(eager: Any, backend: Any, spec: Manifest, feed_sets: list[Feeds], tol: Tolerance
                    ) -> dict[str, Any]:
    """The runtime's staged run against the model's own forward(): every output, and ADE/FDE in metres."""
    worst: dict[str, Any] = {"outputs": {}, "trajectory": {"ade_m": 0.0, "fde_m": 0.0}, "failures": []}
    traj = spec.outputs_with("trajectory")[0].name
    for feeds in feed_sets:
        ref, got = run_torch(eager, spec, feeds), run_decision(backend, spec, feeds)
        rep = compare(spec, ref, got, Tolerance(tol.rel, float("inf")))
        keep_worst(worst["outputs"], rep["outputs"])
        ade, fde = trajectory_errors(in_metres(spec, ref, feeds)[traj], in_metres(spec, got, feeds)[traj])
        worst["trajectory"]["ade_m"] = max(worst["trajectory"]["ade_m"], ade)
        worst["trajectory"]["fde_m"] = max(worst["trajectory"]["fde_m"], fde)
        worst["failures"] += [f for f in rep["failures"] if f not in worst["failures"]]
    if worst["trajectory"]["ade_m"] > tol.ade_m:
        worst["failures"].append(f"{traj}: composed ADE {worst['trajectory']['ade_m']:.4f} m > {tol.ade_m} m")
    worst["trajectory"]["in_metres"] = "integrated controls" if spec.controls else "as output"
    worst["inputs"] = len(feed_sets)
    worst["passed"] = not worst["failures"]
    return worst


def _open(folder: Path, raw: dict[str, Any], graphs: dict[str, onnx.ModelProto]) -> Any:
    """Write a bundle of stages to ``folder`` (a scratch one) and open it on ONNX Runtime, as vla-run would."""
    from vla.runtime.engine import open_engine

    folder.mkdir(parents=True, exist_ok=True)
    (folder / bundle.MANIFEST_FILE).write_text(json.dumps(raw))
    for file, graph in graphs.items():
        onnx.save_model(graph, str(folder / file))
    return open_engine(str(folder), backend="ort", threads=1)


# ---- precision ----------------------------------------------------------------------------------
def _spaced(items: list[Any], count: int) -> list[Any]:
    """At most ``count`` of ``items``, evenly spaced (calibration sets of a repeat stage's K steps)."""
    if len(items) <= count:
        return items
    return [items[int(i * len(items) / count)] for i in range(count)]


def convert_stages(args: argparse.Namespace, loaded: LoadedModel, spec: Manifest, decls: list[Declared],
                   precisions: dict[str, str], raw: dict[str, Any], fp32: dict[str, onnx.ModelProto],
                   work: Path, seconds: dict[str, float]
                   ) -> tuple[dict[str, onnx.ModelProto], dict[str, Any], dict[str, Any]]:
    """Stages not in FP32 converted, and the composed trajectory judged once against PyTorch FP32 on the
    held-out drives: (graphs by stage name, what was decided per stage, the accuracy report)."""
    start = time.perf_counter()
    command = getattr(args, "command", None)
    files = {d.stage.file: fp32[d.stage.name] for d in decls}
    backend32 = _open(work / "fp32", raw, files)
    try:
        def step(feeds: Feeds) -> Feeds:
            return run_decision(backend32, spec, feeds)

        held = scene_sets(spec, step, count=args.heldout, seed=HELDOUT_SEED + args.seed, command=command)
        refs = [in_metres(spec, run_torch(loaded.eager, spec, f), f) for f in held]
        say(f"held-out set: {len(held)} input sets from synthetic drives (seeds from {HELDOUT_SEED + args.seed}), "
            "reference outputs from PyTorch FP32")
        calib: list[Recording] = []
        record: dict[str, Any] = {}
        if "int8" in precisions.values():
            from .calibration import calibration_sets, check_source

            check_source(args.calib, spec, args.calib_samples)
            sets, info = calibration_sets(args.calib, spec, step, args.calib_samples, CALIB_SEED + args.seed,
                                          command=command)
            calib = [compose_torch(decls, f) for f in sets]
            say(f"calibrating the INT8 stages on {info['samples']} input sets from {info['source']} "
                f"({args.calib_method}), each stage on its own inputs in the composed PyTorch run")
            record["calibration"] = {**info, "method": args.calib_method}
        overflow = [compose_torch(decls, f) for f in held[:SENSITIVITY_SETS]]
    finally:
        backend32.close()
    graphs = dict(fp32)
    decided: dict[str, Any] = {}
    form = getattr(args, "int8_form", None) or "tensorrt"
    for d in decls:
        name, precision = d.stage.name, precisions[d.stage.name]
        if precision == "fp32":
            decided[name] = {"mode": "fp32"}
            continue
        if precision == "int8":
            sets = _spaced([inputs for rec in calib for inputs, _ in rec.calls[name]], args.calib_samples)
            converter: Fp16Converter | Int8Converter = Int8Converter(fp32[name], sets, args.calib_method, form=form)
        else:
            converter = Fp16Converter(fp32[name], [inputs for rec in overflow for inputs, _ in rec.calls[name]])
        try:
            graphs[name] = prune_opset_imports(converter.build([]))
            decided[name] = {"mode": precision, **converter.record()}
        finally:
            converter.close()
        for problem in tensorrt_problems(graphs[name]):
            say(f"warning: TensorRT: stage '{name}': {problem}")
    seconds["calibration"] = round(time.perf_counter() - start, 2)

    start = time.perf_counter()
    gate = Gate.from_options(args.gate_rel_ade, args.gate_ade_m)
    note = reference_note(spec, refs, gate)
    if note:
        say(f"warning: {note}")
    backend = _open(work / "converted", raw, {d.stage.file: graphs[d.stage.name] for d in decls})
    try:
        got = [in_metres(spec, run_decision(backend, spec, f), f) for f in held]
    finally:
        backend.close()
    figures = measure(spec, refs, got)
    failures = judge(figures, gate)
    seconds["gate"] = round(time.perf_counter() - start, 2)
    which = ", ".join(f"{n}={p}" for n, p in precisions.items())
    report = {"passed": not failures, "failures": failures, "figures": figures, "gate": gate.record(),
              "notes": gate.notes(figures), "stage_precisions": dict(precisions), **record}
    verdict = f"stages {which}: {describe(figures, gate)}"
    if failures:
        msg = (f"{verdict}: accuracy gate FAILED ({'; '.join(failures)}); no bundle written (keep a stage in FP32 "
               "with --stage-precision NAME=fp32; --force writes it anyway)")
        if not args.force:
            raise VlaError(msg)
        say(f"warning: {msg.replace('; no bundle written', '')}; writing anyway because of --force")
    else:
        say(f"{verdict}: gate passes")
    return graphs, decided, report


# ---- the whole export ---------------------------------------------------------------------------
def _save_program(d: Declared, part: Manifest, feeds: Feeds, traced: Any, folder: Path) -> Path | None:
    """``<stage>.pt2``: the stage as a torch.export program (FP32 stages only), or None with a warning."""
    path = folder / d.stage.file.replace(".onnx", ".pt2")
    failed = write_program(path, traced, d.module, lambda: feeds, part)
    if failed:
        say(f"warning: no {path.name} in the bundle (--backend torch will not run stage '{d.stage.name}'): "
            f"torch.export failed: {failed}")
        return None
    return path


def run_staged_export(args: argparse.Namespace, loaded: LoadedModel, spec: Manifest, declared: dict[str, Any],
                      t0: float, seconds: dict[str, float]) -> int:
    """``vla-export`` for a model declared in stages (see the module docstring); 0 when the bundle is written."""
    root = loaded.exportable
    if not isinstance(root, nn.Module) or loaded.form in ("torchscript", "exported_program"):
        raise VlaError(f"MODEL {loaded.source}: stages are exported from the nn.Module's submodules; a "
                       f"{loaded.form} archive has none to split (give a state_dict with --factory, or the module)")
    model_outputs = {t.name for t in spec.outputs}
    decls, notes = inherit_rates(parse_declaration(declared, root, spec), model_outputs)
    inter = intermediate_names(decls, model_outputs)
    states = {t.name: t.detail["from_output"] for t in spec.inputs_with("state")}
    problem = dataflow_problem(tuple(d.stage for d in decls), [t.name for t in spec.inputs], sorted(model_outputs),
                               inter, states)
    if problem:
        raise VlaError(f"stages: {problem}")
    precisions = stage_precisions(args, decls)
    for note in notes:
        say(f"note: {note}")
    say("stages: " + "; ".join(f"{d.stage.name} = {d.module_path} ({d.stage.rate_text()}"
                                + (f", x{d.stage.repeat.steps}" if d.stage.repeat else "")
                                + f", {precisions[d.stage.name]})" for d in decls))

    command = getattr(args, "command", None)
    feed_sets = [example_feeds(spec, args.seed + i, command) for i in range(max(1, args.parity_inputs))]
    start = time.perf_counter()
    recordings = [compose_torch(decls, f) for f in feed_sets]
    raw = staged_raw(spec, decls, inter, recordings[0], precisions)
    manifest = parse_manifest(raw)  # the runtime's own checks of the stages and intermediates
    seconds["torch_composition"] = round(time.perf_counter() - start, 2)

    fp32: dict[str, onnx.ModelProto] = {}
    how: dict[str, Any] = {}
    traced: dict[str, Any] = {}
    stage_reports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="vla-export-stages-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        for d in decls:
            name = d.stage.name
            part = manifest.stage_manifest(manifest.stages[[s.name for s in manifest.stages].index(name)])
            first_inputs = recordings[0].calls[name][0][0]
            fp32[name], how[name], traced[name] = export_stage(args, loaded, d, part, first_inputs, work)
        seconds["torch_export"] = round(time.perf_counter() - start, 2)

        start = time.perf_counter()
        failures: list[str] = []
        for d in decls:
            name = d.stage.name
            rep = stage_parity(fp32[name], [c for rec in recordings for c in rec.calls[name]], args.rtol)
            stage_reports[name] = rep
            failures += [f"stage '{name}': {f}" for f in rep["failures"]]
            worst = max((o.get("max_rel", 0.0) for o in rep["outputs"].values()), default=0.0)
            say(f"stage '{name}' parity over {rep['calls']} call(s): max relative error {worst:.2e}"
                + ("" if rep["passed"] else " FAILED"))
        backend = _open(work / "parity", raw, {d.stage.file: fp32[d.stage.name] for d in decls})
        try:
            composed = composed_parity(loaded.eager, backend, spec, feed_sets, Tolerance(args.rtol, args.ade_tol))
        finally:
            backend.close()
        failures += [f"composed: {f}" for f in composed["failures"]]
        seconds["parity"] = round(time.perf_counter() - start, 2)
        t = composed["trajectory"]
        summary = (f"composed parity over {composed['inputs']} input sets (the runtime's staged backend vs the "
                   f"model's forward): trajectory ADE {t['ade_m']:.2e} m, FDE {t['fde_m']:.2e} m")
        parity = {"passed": not failures, "failures": failures, "inputs": len(feed_sets),
                  "tolerance": {"rel": args.rtol, "ade_m": args.ade_tol}, "stages": stage_reports,
                  "composed": composed, "trajectory": {"ade_m": t["ade_m"], "fde_m": t["fde_m"]}}
        if failures:
            if not args.force:
                raise VlaError(f"{summary}; FAILED ({'; '.join(failures)}); no bundle written (--force writes it "
                               "anyway)")
            say(f"warning: parity FAILED ({'; '.join(failures)}); going on because of --force")
        else:
            say(summary)

        graphs, decided, accuracy = dict(fp32), {n: {"mode": "fp32"} for n in fp32}, None
        if set(precisions.values()) != {"fp32"}:
            graphs, decided, accuracy = convert_stages(args, loaded, spec, decls, precisions, raw, fp32, work,
                                                       seconds)

        staging = work / "staging"
        staging.mkdir()
        binaries: dict[str, Path] = {}
        for d in decls:
            name = d.stage.name
            if precisions[name] == "fp32":
                part = manifest.stage_manifest(next(s for s in manifest.stages if s.name == name))
                program = _save_program(d, part, recordings[0].calls[name][0][0], traced[name], staging)
                if program is not None:
                    binaries[program.name] = program
        binaries.update(bundle.stage_tokenizer(spec, staging))

        out = dict(raw)
        out["stages"] = [stage_entry(d, precisions[d.stage.name], graphs[d.stage.name]) for d in decls]
        out["tools"] = bundle.tool_versions()
        modes = set(precisions.values())
        first = next(iter(how.values()))
        out["export"] = {"exporter": first["exporter"], "opset": first["opset"], "form": loaded.form,
                         "source": loaded.source, "stages": how,
                         "precision": {"mode": modes.pop() if len(modes) == 1 else "mixed", "stages": decided},
                         "options": {**_options(args), "stage_precision": parse_stage_precision(
                             getattr(args, "stage_precision", None) or [])}}
        seconds["total"] = round(time.perf_counter() - t0, 2)
        out["measured"] = {"seconds": seconds, "parity": {
            "passed": parity["passed"], "ade_m": t["ade_m"], "fde_m": t["fde_m"],
            "stages": {n: {"passed": r["passed"], "max_rel": max((o.get("max_rel", 0.0) for o in r["outputs"].values()),
                                                                 default=0.0)} for n, r in stage_reports.items()}}}
        if accuracy is not None:
            out["measured"]["accuracy"] = {"passed": accuracy["passed"], **accuracy["figures"]["trajectory"],
                                           "stage_precisions": accuracy["stage_precisions"]}
        parse_manifest(out)  # what we write must load
        for graph in graphs.values():
            bundle.embed_decided(graph, out)
        extra = {bundle.ACCURACY_FILE: accuracy} if accuracy is not None else {}
        bundle.write_bundle(args.output, None, out, parity, extra, binaries,
                            graphs={d.stage.file: graphs[d.stage.name] for d in decls})
    files = ", ".join([*(d.stage.file for d in decls), bundle.MANIFEST_FILE, bundle.PARITY_FILE, *extra, *binaries])
    say(f"wrote {args.output}/ ({files}) in {time.perf_counter() - t0:.1f} s")
    return 0
