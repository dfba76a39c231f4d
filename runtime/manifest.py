"""The manifest: what each tensor of a driving model is, and who fills it at run time.

Schema version 1 is documented in ``manifest.schema.json`` (JSON Schema, validated with the
``jsonschema`` library); the checks a schema cannot express (state pairing, camera shapes, the
vocabulary) are in ``_cross_check``. ``check_against_graph`` compares a manifest with the tensors a
backend actually found, so a manifest that disagrees with its graph is refused before any tick runs.
All functions here are pure: they take dicts and return values or raise ``ManifestError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from .errors import ManifestError
from .inputs.ego import ego_fields_problem
from .stages import Stage, dataflow_problem, parse_stages, single_stage

if TYPE_CHECKING:
    import numpy as np

SCHEMA_VERSION = 1
#: Key under which the manifest is embedded in an ONNX model's metadata_props.
METADATA_KEY = "vla.manifest"
#: Elements: numpy/ONNX dtype names the manifest may use.
DTYPES = ("float32", "float16", "uint8", "int8", "int32", "int64", "bool")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its contract plus the role-specific details (``detail``)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    role: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``raw`` is the JSON document it came from (kept for writing back)."""

    raw: dict[str, Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: Where the file of the ``tokenizer`` block is on this machine (``with_files``); None: not located.
    tokenizer_file: Path | None = field(default=None, compare=False)
    #: Tensors one stage hands to a later one (``stages``); empty for a one-graph bundle.
    intermediates: tuple[TensorSpec, ...] = ()

    @property
    def staged(self) -> bool:
        """Several graphs (a ``stages`` list); False: one ``model.onnx``."""
        return "stages" in self.raw

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages in run order; a one-graph bundle is one stage reading every input."""
        if self.staged:
            return parse_stages(self.raw["stages"])
        return (single_stage([t.name for t in self.inputs], [t.name for t in self.outputs]),)

    @property
    def controls(self) -> bool:
        """The trajectory output holds controls (acceleration, curvature) the decode integrates."""
        return list(self.outputs_with("trajectory")[0].detail["fields"]) == ["accel", "curvature"]

    @property
    def speed_source(self) -> tuple[str, int] | None:
        """(ego input, column) holding the ego's speed ``v``: a controls trajectory is integrated from the
        newest row's value, the speed the model itself was given. None: no ego input has ``v``."""
        for t in self.inputs_with("ego"):
            if "v" in t.detail["fields"]:
                return t.name, list(t.detail["fields"]).index("v")
        return None

    def start_speed(self, feed: Callable[[str], np.ndarray]) -> float:
        """The speed a controls trajectory starts from, read from the ego input ``feed(name)`` gives
        (batch item 0, newest row); the one place the loop, the bench and the export agree on."""
        name, col = self.speed_source  # type: ignore[misc]  # the manifest check made sure there is one
        return max(0.0, float(feed(name)[0, -1, col]))

    def stage_manifest(self, stage: Stage) -> Manifest:
        """The contract of one stage's graph: its inputs and outputs with the roles the model gives them
        (intermediates and the repeat's own tensors as ``aux``), checked against that graph like a bundle's."""
        known = {t.name: t for t in (*self.inputs, *self.outputs, *self.intermediates)}
        local: dict[str, TensorSpec] = {}
        if stage.repeat is not None:
            r, init = stage.repeat, known[stage.repeat.init]
            batch = init.shape[:1]
            local[r.sample_input] = TensorSpec(r.sample_input, init.dtype, init.shape, "aux")
            local[r.sample_output] = TensorSpec(r.sample_output, init.dtype, init.shape, "aux")
            if r.time:
                local[r.time] = TensorSpec(r.time, "float32", batch, "aux")
            if r.index:
                local[r.index] = TensorSpec(r.index, "int64", batch, "aux")

        def spec(name: str) -> TensorSpec:
            return local.get(name) or known[name]

        raw = {"model": {"name": f"{self.name}/{stage.name}"}, "stage": stage.name}
        return Manifest(raw=raw, inputs=tuple(spec(n) for n in stage.inputs),
                        outputs=tuple(spec(n) for n in stage.outputs))

    @property
    def name(self) -> str:
        return self.raw["model"]["name"]

    @property
    def model_hash(self) -> str | None:
        return self.raw["model"].get("hash")

    @property
    def vocabulary(self) -> dict[str, Any] | None:
        return self.raw.get("vocabulary")

    @property
    def tokenizer(self) -> dict[str, Any] | None:
        """The Hugging Face tokenizer the text inputs are read with (``vla-export --tokenizer``), or None."""
        return self.raw.get("tokenizer")

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    def inputs_with(self, role: str) -> list[TensorSpec]:
        return [t for t in self.inputs if t.role == role]

    def outputs_with(self, role: str) -> list[TensorSpec]:
        return [t for t in self.outputs if t.role == role]

    @property
    def camera_names(self) -> list[str]:
        return [n for t in self.inputs_with("camera") for n in t.detail["names"]]

    @property
    def camera_sizes(self) -> dict[str, tuple[int, int]]:
        """Camera name -> (width, height) of the image the model takes from it."""
        return {n: (t.detail["width"], t.detail["height"])
                for t in self.inputs_with("camera") for n in t.detail["names"]}

    @property
    def precision(self) -> str:
        """The precision the bundle was exported at (export.precision.mode; fp32 when not recorded)."""
        return ((self.raw.get("export") or {}).get("precision") or {}).get("mode", "fp32")

    def to_json(self) -> str:
        return json.dumps(self.raw, indent=2, sort_keys=False)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads((Path(__file__).with_name("manifest.schema.json")).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _where(error: jsonschema.ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return path.lstrip(".") or "(top level)"


def _schema_error(error: jsonschema.ValidationError) -> ManifestError:
    # oneOf over roles reports "not valid under any"; the deepest sub-error names the real problem.
    best = jsonschema.exceptions.best_match([error]) if error.context else error
    while best.context:
        best = jsonschema.exceptions.best_match(best.context)
    return ManifestError(f"manifest {_where(best)}: {best.message}")


def parse_manifest(raw: dict[str, Any]) -> Manifest:
    """Validate a manifest document (schema + cross checks) and return it typed."""
    if not isinstance(raw, dict):
        raise ManifestError("manifest: expected a JSON object at the top level")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"manifest: schema_version {version!r} is not supported by this runtime "
            f"(it reads version {SCHEMA_VERSION}); re-export the model with this version of vla-export"
        )
    try:
        errors = sorted(_validator().iter_errors(raw), key=lambda e: list(e.absolute_path))
    except RecursionError:  # issue 19: jsonschema compares values recursively (uniqueItems); deep JSON overflows it
        raise ManifestError("manifest: a value is nested too deeply to validate") from None
    if errors:
        raise _schema_error(errors[0])
    manifest = Manifest(
        raw=raw,
        inputs=tuple(_spec(t) for t in raw["inputs"]),
        outputs=tuple(_spec(t) for t in raw["outputs"]),
        intermediates=tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"]), "aux")
                            for t in raw.get("intermediates", [])),
    )
    _cross_check(manifest)
    return manifest


def parse_manifest_text(text: str | bytes, origin: str) -> Manifest:
    """Parse manifest JSON text; ``origin`` names the file or model it came from, for errors."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{origin}: manifest is not valid JSON ({exc})") from None
    # Issue 19 (tests/test_parsers_properties.py): json's other failures, a traceback before this.
    except RecursionError:
        raise ManifestError(f"{origin}: manifest is not usable JSON (nested too deeply)") from None
    except ValueError:  # an integer of more than 4300 digits (Python's int conversion limit)
        raise ManifestError(f"{origin}: manifest is not usable JSON (a number with too many digits)") from None
    try:
        return parse_manifest(raw)
    except ManifestError as exc:
        raise ManifestError(f"{origin}: {exc}") from None


def with_files(m: Manifest, folder: Path) -> Manifest:
    """``m`` with the files it names (the tokenizer) located in ``folder``, its bundle."""
    block = m.tokenizer
    return replace(m, tokenizer_file=folder / block["file"]) if block else m


def _spec(t: dict[str, Any]) -> TensorSpec:
    role = t["role"]
    return TensorSpec(t["name"], t["dtype"], tuple(t["shape"]), role, dict(t.get(role, {})))


def _cross_check(m: Manifest) -> None:
    """What JSON Schema cannot say: names unique, state pairs closed, shapes consistent."""
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        names = [t.name for t in specs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ManifestError(f"manifest: duplicate {kind} name(s) {sorted(dup)}")
    outs = {t.name: t for t in m.outputs}
    ins = {t.name: t for t in m.inputs}

    for t in m.inputs_with("state"):
        src = outs.get(t.detail["from_output"])
        if src is None or src.role != "state":
            raise ManifestError(
                f"manifest: state input '{t.name}' reads output '{t.detail['from_output']}', "
                "which is not a state output"
            )
        if (src.dtype, src.shape) != (t.dtype, t.shape):
            raise ManifestError(
                f"manifest: state '{src.name}' -> '{t.name}' changes dtype/shape "
                f"{src.dtype}{list(src.shape)} -> {t.dtype}{list(t.shape)}"
            )
    for t in m.outputs_with("state"):
        dst = ins.get(t.detail["to_input"])
        if dst is None or dst.role != "state" or dst.detail["from_output"] != t.name:
            raise ManifestError(
                f"manifest: state output '{t.name}' feeds '{t.detail['to_input']}', "
                "which is not a state input reading it back"
            )

    for t in m.inputs_with("camera"):
        c = t.detail
        channels = 1 if c["color"] == "GRAY" else 3
        per_cam = (channels, c["height"], c["width"]) if c["layout"] == "NCHW" else (
            c["height"], c["width"], channels)
        want = (len(c["names"]), *per_cam)
        if len(t.shape) != 5 or tuple(t.shape[1:]) != want:
            raise ManifestError(
                f"manifest: camera input '{t.name}' has shape {list(t.shape)}, but its camera block "
                f"describes [batch, {', '.join(map(str, want))}]"
            )
        norm = c.get("normalization")
        if norm and not (len(norm["mean"]) == len(norm["std"]) == channels):
            raise ManifestError(f"manifest: camera input '{t.name}': mean/std need {channels} values")
    cams = m.camera_names
    if len(set(cams)) != len(cams):
        raise ManifestError(f"manifest: camera names repeat across inputs: {cams}")
    for t in m.inputs_with("ego"):  # the fill writes declared field i into column i
        problem = "must be [batch, steps, fields]" if len(t.shape) != 3 else ego_fields_problem(
            t.detail["fields"], t.shape[-1])
        if problem:
            raise ManifestError(f"manifest: ego input '{t.name}' {list(t.shape)} with fields {t.detail['fields']}: "
                                f"{problem}")

    trajs = m.outputs_with("trajectory")
    if len(trajs) != 1:
        raise ManifestError(f"manifest: exactly one output must have role 'trajectory' (found {len(trajs)})")
    traj = trajs[0]
    if m.controls and m.speed_source is None:
        raise ManifestError(f"manifest: trajectory '{traj.name}' holds controls (accel, curvature), which are "
                            "integrated from the ego's current speed: the model needs an ego input with field 'v'")
    if len(traj.shape) != 4 or traj.shape[-1] != len(traj.detail["fields"]):
        raise ManifestError(
            f"manifest: trajectory '{traj.name}' must be [batch, modes, points, {len(traj.detail['fields'])}] "
            f"for fields {traj.detail['fields']}, got {list(traj.shape)}"
        )
    horizon = traj.detail["dt"] * traj.shape[2]
    if abs(traj.detail["horizon_s"] - horizon) > 1e-6 * max(1.0, horizon):
        raise ManifestError(
            f"manifest: trajectory '{traj.name}' horizon_s {traj.detail['horizon_s']} != dt x points = {horizon:g}"
        )
    for s in m.outputs_with("score"):
        if tuple(s.shape) != tuple(traj.shape[:2]):
            raise ManifestError(
                f"manifest: score '{s.name}' shape {list(s.shape)} must be [batch, modes] = {list(traj.shape[:2])}"
            )

    _check_stages(m)
    _check_language(m)
    if m.inputs_with("command") or m.inputs_with("text"):
        text_ids = [t for t in m.inputs_with("text") if t.detail["kind"] == "ids"]
        masks = [t for t in m.inputs_with("text") if t.detail["kind"] == "mask"]
        if len(text_ids) > 1 or len(masks) > 1:
            raise ManifestError("manifest: at most one text 'ids' input and one text 'mask' input")
        if text_ids and masks and text_ids[0].shape != masks[0].shape:
            raise ManifestError("manifest: text ids and text mask shapes differ")


def _check_stages(m: Manifest) -> None:
    if "intermediates" in m.raw and not m.staged:
        raise ManifestError("manifest: 'intermediates' without 'stages'")
    if not m.staged:
        return
    names = [t.name for t in m.intermediates]
    if len(set(names)) != len(names):
        raise ManifestError(f"manifest: intermediate names repeat: {names}")
    states = {t.name: t.detail["from_output"] for t in m.inputs_with("state")}
    problem = dataflow_problem(m.stages, [t.name for t in m.inputs], [t.name for t in m.outputs], names, states)
    if problem:
        raise ManifestError(f"manifest: {problem}")
    for stage in m.stages:
        if stage.repeat is not None:
            init = next(t for t in (*m.inputs, *m.intermediates, *m.outputs) if t.name == stage.repeat.init)
            if not init.shape:
                raise ManifestError(f"manifest: stage '{stage.name}' repeat init '{init.name}' needs a batch axis")


def _check_language(m: Manifest) -> None:
    """Command inputs take nav ids from the vocabulary's commands; text inputs are read with the
    vocabulary's word tokens or with a tokenizer (``vla-export --tokenizer``)."""
    vocab, tokenizer = m.vocabulary, m.tokenizer
    if m.inputs_with("command") and vocab is None:
        raise ManifestError("manifest: command inputs need a 'vocabulary' with the commands (id, name, phrases)")
    if m.inputs_with("text") and tokenizer is None and (vocab is None or "tokens" not in vocab):
        raise ManifestError("manifest: text inputs need a 'vocabulary' with word tokens and a pad token, "
                            "or a tokenizer (vla-export --tokenizer tokenizer.json)")
    if vocab is None:
        return
    if ("tokens" in vocab) != ("pad" in vocab):
        raise ManifestError("manifest: a vocabulary with word tokens needs both 'tokens' and 'pad'")
    if "pad" in vocab and vocab["pad"] not in vocab["tokens"]:
        raise ManifestError(f"manifest: vocabulary pad token {vocab['pad']!r} is not in its tokens")
    ids = [c["id"] for c in vocab["commands"]]
    if len(set(ids)) != len(ids):
        raise ManifestError("manifest: vocabulary command ids repeat")


def check_against_graph(
    m: Manifest,
    graph_inputs: dict[str, tuple[str, tuple[int | str | None, ...]]],
    graph_outputs: dict[str, tuple[str, tuple[int | str | None, ...]]],
    origin: str,
) -> None:
    """Refuse a manifest that disagrees with the graph's real tensors (name, dtype, shape).

    ``graph_*`` map tensor names to (dtype name, shape); a non-integer dim is a symbolic one and
    matches any size the manifest fixes.
    """
    for kind, specs, graph in (("input", m.inputs, graph_inputs), ("output", m.outputs, graph_outputs)):
        declared = {t.name for t in specs}
        missing = sorted(declared - graph.keys())
        if missing:
            raise ManifestError(f"{origin}: manifest {kind}(s) {missing} are not in the graph (it has {sorted(graph)})")
        if kind == "input":
            undeclared = sorted(graph.keys() - declared)
            if undeclared:
                raise ManifestError(f"{origin}: graph input(s) {undeclared} are not described by the manifest")
        for t in specs:
            dtype, shape = graph[t.name]
            if dtype != t.dtype:
                raise ManifestError(
                    f"{origin}: {kind} '{t.name}' is {dtype} in the graph but {t.dtype} in the manifest")
            fixed = all(isinstance(d, int) for d in shape)
            same = len(shape) == len(t.shape) and all(
                not isinstance(g, int) or g == d for g, d in zip(shape, t.shape, strict=False)
            )
            if not same:
                shown = [d if isinstance(d, int) else "?" for d in shape] if not fixed else list(shape)
                raise ManifestError(
                    f"{origin}: {kind} '{t.name}' has shape {shown} in the graph but {list(t.shape)} in the manifest"
                )
