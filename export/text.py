"""The export's side of route commands and text: ``--tokenizer`` into the spec, ``--command`` and the
default command checked before any slow step, and a tokenizer too large for the model refused.

The tokenizer's size is checked against the model's token embedding as the exported graph has it:
the ``Gather`` whose indices come from the text-ids input (through casts and reshapes) and whose table
is a constant; its first dimension is the number of ids the model can look up. A spec may declare it
instead (``text: {kind: ids, vocab_size: N}``); when neither is found the export says it could not
check. An id past the table is no error in every runtime: some return zeros or another row silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from vla.runtime.errors import VlaError
from vla.runtime.inputs.commands import CommandEncoder
from vla.runtime.manifest import Manifest

#: Ops between the ids input and the embedding's Gather that keep the ids' values.
_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Slice",
                 "Transpose", "Concat"}


def attach_tokenizer(raw_spec: dict[str, Any], path: str | None) -> dict[str, Any]:
    """The spec with ``--tokenizer``'s manifest block (file name in the bundle, sha256, vocabulary size,
    pad id); unchanged without one. A spec that names a tokenizer itself is refused: the block is the
    export's record of the file it copied, not an input."""
    if path is None:
        if "tokenizer" in raw_spec:
            raise VlaError("the spec has a 'tokenizer' block: vla-export writes that block itself; remove it and "
                           "give the file with --tokenizer tokenizer.json")
        return raw_spec
    from vla.runtime.inputs.text import describe_file

    if not any(t.get("role") == "text" for t in raw_spec.get("inputs", [])):
        raise VlaError(f"--tokenizer {path}: the model has no text input (role 'text') to read with it")
    return {**raw_spec, "tokenizer": describe_file(Path(path))}


def locate_tokenizer(spec: Manifest, path: str | None) -> Manifest:
    """The spec with its tokenizer found at the user's file (in the bundle it is ``tokenizer.json``)."""
    return replace(spec, tokenizer_file=Path(path)) if path is not None and spec.tokenizer else spec


def check_commands(spec: Manifest, command: str | None, say: Callable[[str], None]) -> None:
    """Before the slow steps: the default command and ``--command`` must be ones the model takes (a one-line
    error naming why not); a note for either (cut, or a phrase fed instead) is said once here."""
    encoder = CommandEncoder(spec)
    encoder.refuse_if_unused(command)
    if not encoder.takes_command:
        return
    named = spec.raw.get("default_command")
    try:
        default = encoder.encode(None)
    except VlaError as exc:
        raise VlaError(f"the spec's default_command: {exc}" if named else str(exc)) from None
    if default is not None and default.note:
        say(f"warning: default command: {default.note}")
    if command is not None:
        given = encoder.encode(command)
        if given is not None and given.note:
            say(f"warning: --command: {given.note}")


def _constant_rows(model: onnx.ModelProto, name: str) -> int | None:
    for init in model.graph.initializer:
        if init.name == name:
            return int(init.dims[0]) if init.dims else None
    for node in model.graph.node:
        if node.op_type == "Constant" and name in node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.dims:
                    return int(attr.t.dims[0])
    return None


def embedding_rows(model: onnx.ModelProto, ids_input: str) -> int | None:
    """Rows of the token embedding the graph looks ``ids_input`` up in (the smallest, if several), or None."""
    reached, frontier, rows = {ids_input}, [ids_input], []
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    while frontier:
        name = frontier.pop()
        for node in consumers.get(name, []):
            if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                found = _constant_rows(model, node.input[0]) if axis == 0 else None
                if found is not None:
                    rows.append(found)
            elif node.op_type in _PASS_THROUGH:
                for out in node.output:
                    if out not in reached:
                        reached.add(out)
                        frontier.append(out)
    return min(rows) if rows else None


def check_vocabulary_size(model: onnx.ModelProto, spec: Manifest, say: Callable[[str], None]) -> None:
    """Refuse a tokenizer (or word vocabulary) with more ids than the model's embedding has rows."""
    ids = [t for t in spec.inputs_with("text") if t.detail["kind"] == "ids"]
    block, vocab = spec.tokenizer, spec.vocabulary or {}
    if not ids or (block is None and "tokens" not in vocab):
        return
    size = block["vocab_size"] if block else len(vocab["tokens"])
    what = f"--tokenizer's vocabulary has {size} ids" if block else f"the spec's vocabulary has {size} tokens"
    found = [(r, w) for r, w in ((ids[0].detail.get("vocab_size"), "the spec's text vocab_size"),
                                 (embedding_rows(model, ids[0].name), "the graph's embedding table")) if r]
    if not found:
        if block:
            say(f"warning: could not check the tokenizer's {size} ids against the model's embedding: no constant "
                f"table is looked up by '{ids[0].name}' in the graph and the spec declares no text vocab_size")
        return
    rows, where = min(found)
    if size > rows:
        raise VlaError(f"{what} but the model's token embedding for '{ids[0].name}' has {rows} rows ({where}): "
                       "ids past it would read outside the table; use the tokenizer the model was trained with")
