"""Check an I/O spec against the model's real signature before exporting anything.

A spec that disagrees with the model otherwise surfaces as an exporter error about some op deep in
the graph, or worse, as a bundle whose inputs are fed in the wrong order. Three checks, cheapest
first: the inputs' count and names against ``forward``'s parameters; one eager run on the spec's
example inputs; the outputs' count, shapes and dtypes against the spec's outputs.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np
import torch

from vla.runtime.errors import VlaError
from vla.runtime.inputs.feeds import example_feeds
from vla.runtime.manifest import Manifest, TensorSpec

from .load import LoadedModel
from .trace_errors import Culprit, find_culprit, short_message

#: torch.jit.trace of ``forward(*args)`` invents these names; they say nothing about the order.
_INVENTED = re.compile(r"^(argument|input)_\d+$")
_MODULE_FORMS = ("reference", "state_dict", "pickled_module")


def forward_parameters(loaded: LoadedModel) -> tuple[list[str], int, bool]:
    """(parameter names in order, how many are required, whether more may follow via ``*args``).

    nn.Module: ``inspect.signature(forward)``. TorchScript: the schema of ``forward`` minus self.
    ExportedProgram: ``program.module()`` keeps the original signature (checked with torch 2.13);
    its ``graph_signature.user_inputs`` are the fallback when that is ``*args``.
    """
    if loaded.form == "torchscript":
        names = [a.name for a in loaded.exportable.forward.schema.arguments][1:]
        return names, len(names), False
    target = loaded.eager if loaded.form == "exported_program" else loaded.exportable
    params = list(inspect.signature(target.forward).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var = any(p.kind is p.VAR_POSITIONAL for p in params)
    if loaded.form == "exported_program" and var and not positional:
        names = list(loaded.exportable.graph_signature.user_inputs)
        return names, len(names), False
    kw_required = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    if kw_required:
        raise VlaError(f"model forward() has required keyword-only parameter(s) {kw_required}; inputs are "
                       "passed by position in the spec's order, so make them positional")
    required = sum(p.default is p.empty for p in positional)
    return [p.name for p in positional], required, var


def check_inputs(loaded: LoadedModel, manifest: Manifest) -> None:
    """The spec's inputs must be ``forward``'s parameters, same count, same names, same order."""
    names, required, var = forward_parameters(loaded)
    spec = [t.name for t in manifest.inputs]
    if len(spec) < required or (len(spec) > len(names) and not var):
        want = f"{required}-{len(names)}" if required != len(names) else str(len(names))
        raise VlaError(f"spec has {len(spec)} input(s) {spec} but the model's forward() takes {want} {names}; "
                       "list one spec input per forward() parameter, in order")
    for i, (ours, theirs) in enumerate(zip(spec, names, strict=False)):
        if ours != theirs and not _INVENTED.match(theirs):
            raise VlaError(f"spec input {i + 1} is named {ours!r} but the model's forward() parameter {i + 1} "
                           f"is {theirs!r}; spec inputs must follow forward()'s order (rename or reorder them)")


def _tensor_args(manifest: Manifest) -> tuple[torch.Tensor, ...]:
    feeds = example_feeds(manifest, 0)
    return tuple(torch.as_tensor(np.asarray(feeds[t.name])) for t in manifest.inputs)


def _describe(t: TensorSpec) -> str:
    return f"{t.dtype} {list(t.shape)}"


def _inputs_involved(exc: BaseException, culprit: Culprit, manifest: Manifest,
                     args: tuple[torch.Tensor, ...]) -> list[TensorSpec]:
    """Spec inputs a dry-run failure points at: tensors the failing model line names, or names in the message.

    The failing line's identifiers are looked up in its frame; one that *is* an input tensor (same
    object) is an input the failing op was given. ExportedPrograms name inputs in their guards instead
    ("Guard failed: ego.size()[1] == 16").
    """
    found: list[TensorSpec] = []
    if culprit.frame is not None and culprit.code:
        by_id = {id(a): t for a, t in zip(args, manifest.inputs, strict=True)}
        local = culprit.frame.f_locals
        for word in dict.fromkeys(re.findall(r"[A-Za-z_]\w*", culprit.code)):
            spec = by_id.get(id(local[word])) if word in local else None
            if spec is not None and spec not in found:
                found.append(spec)
    if not found:
        text = str(exc)
        found = [t for t in manifest.inputs if re.search(rf"\b{re.escape(t.name)}\s*\.\s*(size|shape|dtype)\b", text)]
    return found


def dry_run(loaded: LoadedModel, manifest: Manifest) -> tuple[Any, ...]:
    """Run the model once on the spec's example inputs; a failure names the module, line and input."""
    args = _tensor_args(manifest)
    try:
        with torch.no_grad():
            out = loaded.eager(*args)
    except Exception as exc:
        # Archive forms run generated code: their frames name no module of the user's.
        where = find_culprit(exc, loaded.exportable if loaded.form in _MODULE_FORMS else None)
        inputs = _inputs_involved(exc, where, manifest, args)
        parts = [f"spec does not fit the model: {short_message(exc)}"]
        if where.module or where.location:
            parts.append(f"in {where.describe()}")  # "in module x (T) [called] at file:line (`code`)"
        if inputs:
            parts.append("input " + ", ".join(f"{t.name!r} (spec: {_describe(t)})" for t in inputs))
        raise VlaError("; ".join(parts)) from None
    return out


def _as_outputs(out: Any) -> list[torch.Tensor]:
    outputs = [out] if isinstance(out, torch.Tensor) else list(out) if isinstance(out, (tuple, list)) else None
    if outputs is None:
        raise VlaError(f"the model returns a {type(out).__name__}; return a tensor or a tuple of tensors in the "
                       "spec's output order")
    for i, o in enumerate(outputs):
        if not isinstance(o, torch.Tensor):
            raise VlaError(f"the model's output {i + 1} is a {type(o).__name__}, not a tensor; return a flat "
                           "tuple of tensors in the spec's output order")
    return outputs


def check_outputs(out: Any, manifest: Manifest) -> None:
    """Count, then each output's dtype and shape, against the spec's outputs (in order)."""
    outputs = _as_outputs(out)
    spec = list(manifest.outputs)
    if len(outputs) != len(spec):
        raise VlaError(f"the model returns {len(outputs)} output(s) but the spec lists {len(spec)} "
                       f"{[t.name for t in spec]}")
    for i, (o, t) in enumerate(zip(outputs, spec, strict=True)):
        got = f"{str(o.dtype).removeprefix('torch.')} {list(o.shape)}"
        if got != _describe(t):
            raise VlaError(f"spec output {i + 1} {t.name!r} is {_describe(t)} but the model returns {got} there")


def check_spec_against_model(loaded: LoadedModel, manifest: Manifest) -> None:
    """Refuse a spec that disagrees with the model: inputs vs forward(), then a dry run, then the outputs."""
    check_inputs(loaded, manifest)
    check_outputs(dry_run(loaded, manifest), manifest)

