"""``vla-export MODEL --spec-skeleton OUT.yaml [--example NAME=SHAPE ...]``: a draft I/O spec from the model.

A user with a model file and no spec should not have to read the schema to get a first bundle. The
draft comes from ``forward()``'s parameters (names, order), the shapes the user gives with
``--example`` (or those a torch.export archive records), and one dry run (the outputs' dtypes and
shapes). Roles are guessed from shapes, dtypes and names, and every guess carries a ``# REVIEW``
comment saying what it was guessed from and what to check. No ONNX export runs.

The guesses are pure functions of (name, dtype, shape) descriptions, so they are tested without a model.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vla.runtime.errors import ManifestError, VlaError
from vla.runtime.manifest import parse_manifest

from .load import LoadedModel, load_model
from .trace_errors import find_culprit, short_message

EGO_FIELDS = ["x", "y", "yaw", "v", "a", "yaw_rate"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8, "int8": torch.int8,
          "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}
#: A placeholder word vocabulary for a text/command input (ids 0..6): to be replaced by the model's own.
PLACEHOLDER_TOKENS = ["<pad>", "go", "straight", "turn", "left", "right", "stop"]
_MODULE_FORMS = ("reference", "state_dict", "pickled_module")


@dataclass
class Tensor:
    """What the skeleton knows of one input or output."""

    name: str
    dtype: str
    shape: list[int]
    values: torch.Tensor | None = None  # outputs: the dry run's value (to tell probabilities from logits)


@dataclass
class Entry:
    """One spec entry being drafted: the dict written, and a comment per key (REVIEW notes)."""

    spec: dict[str, Any]
    notes: dict[str, str] = field(default_factory=dict)


def say(msg: str) -> None:
    print(f"vla-export: {msg}", file=sys.stderr, flush=True)


# ---- --example ------------------------------------------------------------------------------------------
def parse_examples(pairs: list[str]) -> dict[str, tuple[list[int], str]]:
    """``NAME=1x3x224x224[:uint8]`` (``,`` works as the separator too) -> {name: (shape, dtype)}."""
    out: dict[str, tuple[list[int], str]] = {}
    for pair in pairs:
        name, sep, rest = pair.partition("=")
        shape_text, _, dtype = rest.partition(":")
        dims = [d for d in re.split(r"[x,\s]+", shape_text.strip()) if d]
        if not sep or not name or not dims or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise VlaError(f"--example {pair!r}: expected NAME=SHAPE[:DTYPE], e.g. --example images=1x3x3x224x224:uint8"
                           " or --example ego=1x16x6")
        dtype = dtype.strip() or "float32"
        if dtype not in DTYPES:
            raise VlaError(f"--example {pair!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        out[name] = ([int(d) for d in dims], dtype)
    return out


def _program_inputs(loaded: LoadedModel) -> dict[str, tuple[list[int], str]]:
    """The input shapes a torch.export archive recorded, by user input name."""
    program = loaded.exportable
    if not isinstance(program, torch.export.ExportedProgram):
        return {}
    user = set(program.graph_signature.user_inputs)
    found = {}
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder" and node.name in user and isinstance(val, torch.Tensor) and \
                all(isinstance(d, int) for d in val.shape):
            found[node.name] = ([int(d) for d in val.shape], str(val.dtype).removeprefix("torch."))
    return found


def example_inputs(loaded: LoadedModel, names: list[str], required: int,
                   given: dict[str, tuple[list[int], str]]) -> list[Tensor]:
    """forward()'s inputs with their shapes: every required one, and optional ones the user gave."""
    unknown = [n for n in given if n not in names]
    if unknown:
        raise VlaError(f"--example {unknown[0]}: forward() has no parameter of that name (it takes {names})")
    known = {**_program_inputs(loaded), **given}
    count = max([required] + [names.index(n) + 1 for n in given])
    missing = [n for n in names[:count] if n not in known]
    if missing:
        first = missing[0]
        raise VlaError(f"--spec-skeleton needs the shape of forward()'s input(s) {missing}: give each with --example, "
                       f"e.g. --example {first}=1x3x224x224 (add :uint8, :int64 or :bool for other dtypes)")
    return [Tensor(n, known[n][1], known[n][0]) for n in names[:count]]


def _make(t: Tensor, id_limit: int, generator: torch.Generator) -> torch.Tensor:
    """A plausible value: pixels 0..255 for uint8, small ids for integers, N(0, 1) for floats."""
    if t.dtype == "bool":
        return torch.ones(t.shape, dtype=torch.bool)
    if t.dtype == "uint8":
        return torch.randint(0, 256, t.shape, generator=generator, dtype=torch.uint8)
    if t.dtype in ("int8", "int32", "int64"):
        return torch.randint(0, max(1, id_limit), t.shape, generator=generator).to(DTYPES[t.dtype])
    return torch.randn(t.shape, generator=generator).to(DTYPES[t.dtype])


def _smallest_embedding(loaded: LoadedModel) -> int:
    """Ids must index every embedding the model has: the smallest table's size (a placeholder bound)."""
    module = loaded.exportable if isinstance(loaded.exportable, torch.nn.Module) else None
    sizes = [m.num_embeddings for m in module.modules() if isinstance(m, torch.nn.Embedding)] if module else []
    return min(sizes, default=len(PLACEHOLDER_TOKENS))


def run_once(loaded: LoadedModel, inputs: list[Tensor]) -> list[Tensor]:
    """One eager run on example inputs; the outputs as ``Tensor``s. A failure is one line naming the module."""
    generator = torch.Generator().manual_seed(0)
    limit = min(_smallest_embedding(loaded), len(PLACEHOLDER_TOKENS))
    args = [_make(t, limit, generator) for t in inputs]
    try:
        with torch.no_grad():
            out = loaded.eager(*args)
    except Exception as exc:
        where = find_culprit(exc, loaded.exportable if loaded.form in _MODULE_FORMS else None)
        shapes = ", ".join(f"{t.name} {t.dtype} {t.shape}" for t in inputs)
        at = f" in {where.describe()}" if where.module or where.location else ""
        raise VlaError(f"--spec-skeleton: the model does not run on the example inputs ({shapes}): "
                       f"{short_message(exc)}{at}; fix the --example shapes") from None
    outputs = [out] if isinstance(out, torch.Tensor) else list(out) if isinstance(out, (tuple, list)) else None
    if outputs is None or not all(isinstance(o, torch.Tensor) for o in outputs):
        raise VlaError(f"--spec-skeleton: the model returns a {type(out).__name__}; return a tensor or a flat "
                       "tuple of tensors")
    return [Tensor(f"output_{i + 1}", str(o.dtype).removeprefix("torch."), list(o.shape), o)
            for i, o in enumerate(outputs)]


# ---- guessing roles (pure) ------------------------------------------------------------------------------
def _is_float(t: Tensor) -> bool:
    return t.dtype in ("float32", "float16")


def _is_int(t: Tensor) -> bool:
    return t.dtype in ("int32", "int64", "int8")


def is_trajectory(t: Tensor) -> bool:
    return _is_float(t) and len(t.shape) == 4 and t.shape[-1] in (2, 3)


def is_camera(t: Tensor) -> str | None:
    """"NCHW"/"NHWC" for a 5-D [batch, cameras, C, H, W] (or [.., H, W, C]) image-like tensor, else None."""
    if len(t.shape) != 5 or not (_is_float(t) or t.dtype == "uint8"):
        return None
    if t.shape[2] in (1, 3) and min(t.shape[3:]) >= 8:
        return "NCHW"
    if t.shape[4] in (1, 3) and min(t.shape[2:4]) >= 8:
        return "NHWC"
    return None


def guess_outputs(outputs: list[Tensor], inputs: list[Tensor]) -> tuple[list[Entry], dict[int, int]]:
    """Output entries (trajectory, score, state, aux) and the state pairs {input index: output index}."""
    entries: list[Entry | None] = [None] * len(outputs)
    traj = next((i for i, o in enumerate(outputs) if is_trajectory(o)), None)
    if traj is not None:
        o = outputs[traj]
        fields = ["x", "y", "yaw"][: o.shape[-1]]
        entries[traj] = Entry(
            {"name": "trajectory", "dtype": o.dtype, "shape": o.shape, "role": "trajectory",
             "trajectory": {"dt": 0.1, "horizon_s": round(0.1 * o.shape[2], 6), "frame": "ego", "fields": fields}},
            {"role": f"REVIEW: guessed from [batch, modes={o.shape[1]}, points={o.shape[2]}, {o.shape[-1]}]",
             "dt": "REVIEW: seconds between your waypoints (horizon_s must be dt x points)",
             "fields": "REVIEW: what the last axis holds, in order (x forward, y left, yaw in radians)"})
        for i, s in enumerate(outputs):
            if i != traj and entries[i] is None and _is_float(s) and s.shape == o.shape[:2]:
                kind = _score_kind(s.values)
                entries[i] = Entry({"name": "score", "dtype": s.dtype, "shape": s.shape, "role": "score",
                                    "score": {"kind": kind}},
                                   {"role": "REVIEW: guessed from [batch, modes] beside the trajectory",
                                    "kind": f"REVIEW: {kind}, from the dry run's values"})
                break
    pairs: dict[int, int] = {}
    for j, t in enumerate(inputs):
        if "noise" in t.name.lower() or is_camera(t):
            continue
        match = next((i for i, o in enumerate(outputs) if entries[i] is None and i not in pairs.values()
                      and (o.dtype, o.shape) == (t.dtype, t.shape)), None)
        if match is not None:
            pairs[j] = match
            entries[match] = Entry({"name": f"new_{t.name}", "dtype": t.dtype, "shape": t.shape, "role": "state",
                                    "state": {"to_input": t.name}},
                                   {"role": f"REVIEW: state, guessed because it has the shape of input {t.name!r}: "
                                    "fed back as that input on the next tick; make it aux if it is not"})
    for i, o in enumerate(outputs):
        if entries[i] is None:
            entries[i] = Entry({"name": f"aux_{i + 1}", "dtype": o.dtype, "shape": o.shape, "role": "aux"},
                               {"role": "REVIEW: recorded, not published; rename it if you like"})
    if traj is None:
        first = entries[0]
        assert first is not None
        first.notes["role"] = ("REVIEW: no output looks like a trajectory [batch, modes, points, 2|3]; exactly one "
                               "output must be one (add a modes axis with .unsqueeze(1) to [batch, points, 2|3])")
    return [e for e in entries if e is not None], pairs


def _score_kind(values: torch.Tensor | None) -> str:
    if values is None:
        return "logit"
    v = values.float()
    sums_to_one = bool(torch.all(v >= 0)) and torch.allclose(v.sum(-1), torch.ones(v.shape[:-1]), atol=1e-3)
    return "probability" if sums_to_one else "logit"


def guess_inputs(inputs: list[Tensor], outputs: list[Entry], pairs: dict[int, int]) -> tuple[list[Entry], bool]:
    """Input entries, and whether a text/command input needs a vocabulary."""
    entries: list[Entry] = []
    needs_vocabulary = False
    text_shape: list[int] | None = None
    cameras = 0
    for j, t in enumerate(inputs):
        base: dict[str, Any] = {"name": t.name, "dtype": t.dtype, "shape": t.shape}
        lname = t.name.lower()
        layout = is_camera(t)
        if j in pairs:
            out = outputs_by_state(outputs, t.name)
            entries.append(Entry({**base, "role": "state", "state": {"from_output": out, "initial": 0}},
                                 {"role": f"REVIEW: state, read back from output {out!r} (same shape)",
                                  "initial": "REVIEW: the value of every element before the first tick"}))
        elif "noise" in lname and _is_float(t):
            entries.append(Entry({**base, "role": "noise", "noise": {"distribution": "normal", "std": 1.0}},
                                 {"role": "REVIEW: noise, from its name: the runtime fills it from --seed",
                                  "std": "REVIEW: the std your sampler starts from"}))
        elif layout:
            n = t.shape[1]
            channels = t.shape[2] if layout == "NCHW" else t.shape[4]
            h, w = (t.shape[3], t.shape[4]) if layout == "NCHW" else (t.shape[2], t.shape[3])
            names = [f"cam{cameras + k}" for k in range(n)]
            cameras += n
            camera: dict[str, Any] = {"names": names, "layout": layout, "color": "RGB" if channels == 3 else "GRAY",
                                      "height": h, "width": w}
            notes = {"role": f"REVIEW: camera, guessed from a 5-D image-like {t.dtype} tensor [batch, cameras={n}, …]",
                     "names": "REVIEW: your cameras' names (vla-run --camera NAME=URI)",
                     "color": "REVIEW: the channel order the model was trained on (RGB or BGR)"}
            if _is_float(t):
                camera["normalization"] = {"mean": [0.0] * channels, "std": [255.0] * channels, "in_graph": False}
                notes["normalization"] = ("REVIEW: a float image: the runtime feeds (pixel - mean) / std; this gives "
                                          "0..1; ImageNet is mean [123.7, 116.3, 103.5], std [58.4, 57.1, 57.4]")
            entries.append(Entry({**base, "role": "camera", "camera": camera}, notes))
        elif (_is_int(t) or t.dtype == "bool") and len(t.shape) == 2 and ("mask" in lname or (
                text_shape == t.shape and t.dtype in ("bool", "int64", "int32"))):
            entries.append(Entry({**base, "role": "text", "text": {"kind": "mask"}},
                                 {"role": "REVIEW: text mask (1 for tokens, 0 for padding), from its name/shape"}))
        elif _is_int(t) and len(t.shape) == 2 and t.shape[1] > 1:
            needs_vocabulary, text_shape = True, t.shape
            entries.append(Entry({**base, "role": "text", "text": {"kind": "ids"}},
                                 {"role": f"REVIEW: text token ids, guessed from an integer [batch, {t.shape[1]}] "
                                  "tensor: --command is tokenised into it with the vocabulary below"}))
        elif _is_int(t) and (len(t.shape) == 1 or t.shape[1:] == [1]):
            needs_vocabulary = True
            entries.append(Entry({**base, "role": "command"},
                                 {"role": "REVIEW: route command id, guessed from an integer [batch] tensor"}))
        elif _is_float(t) and len(t.shape) == 3 and t.shape[-1] <= len(EGO_FIELDS):
            k = t.shape[-1]
            entries.append(Entry({**base, "role": "ego", "ego": {"fields": EGO_FIELDS[:k], "rate_hz": 10.0,
                                                                   "frame": "ego"}},
                                 {"role": f"REVIEW: ego history, guessed from [batch, steps={t.shape[1]}, {k}]",
                                  "fields": "REVIEW: what the last axis holds, in order: any of x, y, yaw, v, a, "
                                            "yaw_rate",
                                  "rate_hz": "REVIEW: samples per second of the history"}))
        else:
            entries.append(Entry({**base, "role": "aux"},
                                 {"role": "REVIEW: no role guessed (aux: the runtime feeds zeros); see the roles "
                                  "in the README"}))
    return entries, needs_vocabulary


def outputs_by_state(outputs: list[Entry], input_name: str) -> str:
    return next(e.spec["name"] for e in outputs if e.spec.get("state", {}).get("to_input") == input_name)


def draft(model_name: str, inputs: list[Tensor], outputs: list[Tensor]) -> tuple[dict[str, Any], list[Entry],
                                                                                 list[Entry]]:
    """The draft spec, and its input and output entries (with their notes)."""
    outs, pairs = guess_outputs(outputs, inputs)
    ins, needs_vocabulary = guess_inputs(inputs, outs, pairs)
    spec: dict[str, Any] = {"schema_version": 1, "model": {"name": model_name},
                            "inputs": [e.spec for e in ins], "outputs": [e.spec for e in outs]}
    if needs_vocabulary:
        spec["vocabulary"] = {
            "tokens": PLACEHOLDER_TOKENS, "pad": "<pad>",
            "commands": [{"id": 0, "name": "straight", "phrases": ["go straight"]},
                         {"id": 1, "name": "left", "phrases": ["turn left"]},
                         {"id": 2, "name": "right", "phrases": ["turn right"]}]}
    return spec, ins, outs


# ---- YAML with comments ---------------------------------------------------------------------------------
VOCAB_NOTE = ("REVIEW: a placeholder word vocabulary (token i is id i); replace it with your model's tokens and "
              "commands (or give vla-export a tokenizer, if your version has --tokenizer)")


def to_yaml(spec: dict[str, Any], ins: list[Entry], outs: list[Entry], source: str) -> str:
    """The draft as YAML, each guess followed by its ``# REVIEW`` comment. Scalars and lists are written as
    JSON, which is YAML (so names and numbers read back exactly)."""
    lines = [f"# Draft I/O spec for {source}, written by vla-export --spec-skeleton from forward()'s",
             "# signature and one run on example inputs. Lines marked REVIEW are guesses: check each (the roles",
             "# are in README.md, 'The bundle and the manifest'), then export with",
             f"#   vla-export {source} --spec THIS_FILE -o BUNDLE",
             "schema_version: 1", "model:", f"  name: {json.dumps(spec['model']['name'])}"]
    for key, entries in (("inputs", ins), ("outputs", outs)):
        lines.append(f"{key}:")
        for e in entries:
            lines += _item(e.spec, e.notes, 2)
    if "vocabulary" in spec:
        lines.append(f"vocabulary:  # {VOCAB_NOTE}")
        vocab = spec["vocabulary"]
        lines += [f"  tokens: {json.dumps(vocab['tokens'])}", f"  pad: {json.dumps(vocab['pad'])}", "  commands:"]
        lines += [f"    - {json.dumps(c)}" for c in vocab["commands"]]
    return "\n".join(lines) + "\n"


def _item(d: dict[str, Any], notes: dict[str, str], indent: int) -> list[str]:
    """One list item (``- name: ...``) with nested mappings; notes are looked up by key at any depth."""
    body = _mapping(d, notes, indent + 2)
    body[0] = " " * indent + "- " + body[0].lstrip()
    return body


def _mapping(d: dict[str, Any], notes: dict[str, str], indent: int) -> list[str]:
    pad = " " * indent
    out = []
    for key, value in d.items():
        note = f"  # {notes[key]}" if key in notes else ""
        if isinstance(value, dict):
            out.append(f"{pad}{key}:{note}")
            out += _mapping(value, notes, indent + 2)
        else:
            out.append(f"{pad}{key}: {json.dumps(value)}{note}")
    return out


# ---- the command ----------------------------------------------------------------------------------------
def write_skeleton(args: argparse.Namespace) -> int:
    """Load MODEL without a spec, draft one, check it the way ``--spec`` would, write it."""
    from .signature import forward_parameters

    out = Path(args.spec_skeleton)
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise VlaError(f"--spec-skeleton {out}: the draft is YAML (with review comments); name it .yaml or .yml")
    loaded = load_model(args.model, False, args.config, factory=args.factory, trust_pickle=args.trust_pickle)
    names, required, _ = forward_parameters(loaded)
    inputs = example_inputs(loaded, names, required, parse_examples(args.example))
    outputs = run_once(loaded, inputs)
    name = Path(args.model).stem if args.model != "reference" else "reference"
    if args.factory:
        name = args.factory.rpartition(":")[2]
    spec, ins, outs = draft(name, inputs, outputs)
    text = to_yaml(spec, ins, outs, args.model)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as exc:
        raise VlaError(f"--spec-skeleton {out}: cannot write it ({exc.strerror})") from None
    guesses = sum(len(e.notes) for e in ins + outs) + ("vocabulary" in spec)
    say(f"wrote {out}: {len(ins)} input(s), {len(outs)} output(s), {guesses} guess(es) marked REVIEW")
    problem = _loads(text, loaded, out)
    how = " ".join(["vla-export", args.model, *(["--factory", args.factory] if args.factory else []),
                    *(["--trust-pickle"] if args.trust_pickle else []), "--spec", str(out), "-o", "BUNDLE"])
    if problem:
        say(f"the draft does not load as it is ({problem}): fill the fields marked REVIEW, then {how}")
    else:
        say(f"the draft loads as it is; check the fields marked REVIEW, then {how}")
    return 0


def _loads(text: str, loaded: LoadedModel, origin: Path) -> str | None:
    """What ``--spec`` would say of the draft (None: nothing): the schema, then the signature and a dry run."""
    import yaml

    from .signature import check_spec_against_model

    try:
        manifest = parse_manifest(yaml.safe_load(text))
        check_spec_against_model(loaded, manifest)
    except (ManifestError, VlaError) as exc:
        return str(exc)
    return None
