"""Which TensorRT plan may be loaded: the key it was built for, its sidecar manifest, and the decision.

A plan is only valid for the TensorRT version and the GPU that built it, and only describes the
bundle, plugin libraries and build options it was built from. Loading one that no longer matches
either fails deep inside TensorRT or, worse, silently runs an old model. So every plan is written
with a sidecar (``v2.plan`` -> ``v2.plan.json``, schema ``vla.plan/1``) holding that key, and a
plan is loaded only when ``stale_reasons`` finds nothing; otherwise the user is told every reason
in one line each and must ask for a rebuild.

Everything here is pure (dicts and dataclasses in, values out) except the few small wrappers that
read or write a file, named as such (``sha256_file``, ``read_sidecar``, ``write_json_atomic``, ``decide``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VlaError
from ..manifest import Manifest

SIDECAR_SCHEMA = "vla.plan/1"
ENGINES_DIR = "engines"

#: A profile entry: (input name, min shape, opt shape, max shape).
ProfileEntry = tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class EngineKey:
    """Everything a plan depends on. Two keys with no ``stale_reasons`` between them name interchangeable plans.

    ``cuda_driver`` and ``cuda_runtime`` are recorded (they explain a failure) but do not make a
    plan stale: TensorRT checks its own version and the device when it deserialises, a driver
    update does not invalidate a plan, and the runtime the CUDA bindings report is theirs, not
    TensorRT's. ``workspace_mb`` is None when the workspace was sized from free memory ("auto").
    """

    tensorrt: str
    gpu: str
    compute_capability: str
    cuda_driver: str
    cuda_runtime: str
    model_hash: str
    platform: str
    plugins: tuple[tuple[str, str], ...] = ()  # (library file name, "sha256:<hex>"), sorted
    workspace_mb: int | None = None
    profile: tuple[ProfileEntry, ...] = ()
    precision: str = "graph"  # TensorRT 11 builds strongly typed: precision is decided in the ONNX graph

    def __post_init__(self) -> None:
        # Normalise lists from JSON into sorted tuples so equal keys compare equal.
        object.__setattr__(self, "plugins", tuple(sorted((str(n), str(h)) for n, h in self.plugins)))
        profile = tuple((str(n), *(tuple(map(int, s)) for s in (lo, opt, hi))) for n, lo, opt, hi in self.profile)
        object.__setattr__(self, "profile", profile)

    def to_dict(self) -> dict[str, Any]:
        """The key as JSON: plugins as a list of {name, sha256}, the profile as {input: {min, opt, max}}."""
        return {
            "tensorrt": self.tensorrt, "gpu": self.gpu, "compute_capability": self.compute_capability,
            "cuda_driver": self.cuda_driver, "cuda_runtime": self.cuda_runtime, "model_hash": self.model_hash,
            "platform": self.platform,
            "plugins": [{"name": n, "sha256": h} for n, h in self.plugins],
            "workspace_mb": self.workspace_mb,
            "profile": {n: {"min": list(lo), "opt": list(opt), "max": list(hi)} for n, lo, opt, hi in self.profile},
            "precision": self.precision,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> EngineKey:
        """Inverse of ``to_dict``; a ``ValueError`` naming the first missing or malformed field."""
        if not isinstance(doc, dict):
            raise ValueError("key: expected an object")
        required = ("tensorrt", "gpu", "compute_capability", "cuda_driver", "cuda_runtime", "model_hash", "platform")
        missing = [k for k in required if not isinstance(doc.get(k), str)]
        if missing:
            raise ValueError(f"key: missing or not a string: {', '.join(missing)}")
        try:
            plugins = tuple((p["name"], p["sha256"]) for p in doc.get("plugins", []))
            profile = tuple((n, s["min"], s["opt"], s["max"]) for n, s in (doc.get("profile") or {}).items())
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"key: malformed plugins or profile ({exc})") from None
        workspace = doc.get("workspace_mb")
        if workspace is not None and not isinstance(workspace, int):
            raise ValueError("key: workspace_mb must be an integer or null")
        return cls(**{k: doc[k] for k in required}, plugins=plugins, workspace_mb=workspace, profile=profile,
                   precision=str(doc.get("precision", "graph")))


def profile_from_manifest(manifest: Manifest) -> tuple[ProfileEntry, ...]:
    """The optimisation profile a bundle is built with: each input at its manifest shape (min = opt = max).

    The manifest fixes every shape (the loop feeds batch 1), so the profile is static; it is in the
    key so that a re-exported bundle with other shapes is never served by an old plan.
    """
    return tuple((t.name, t.shape, t.shape, t.shape) for t in manifest.inputs)


def make_key(*, tensorrt: str, gpu: str, compute_capability: str, cuda_driver: str, cuda_runtime: str,
             model_hash: str, platform: str, manifest: Manifest | None = None,
             plugins: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (), workspace_mb: int | None = None,
             profile: tuple[ProfileEntry, ...] | None = None) -> EngineKey:
    """An ``EngineKey``; the profile comes from ``manifest`` unless given."""
    if profile is None:
        profile = profile_from_manifest(manifest) if manifest is not None else ()
    return EngineKey(tensorrt=tensorrt, gpu=gpu, compute_capability=compute_capability, cuda_driver=cuda_driver,
                     cuda_runtime=cuda_runtime, model_hash=model_hash, platform=platform, plugins=tuple(plugins),
                     workspace_mb=workspace_mb, profile=profile)


# ---- why a plan is stale ----------------------------------------------------------------------------

def short_hash(value: str) -> str:
    """``sha256:ab12cd34…``: enough to tell two hashes apart in a message."""
    algo, sep, digest = value.partition(":")
    return f"{algo}:{digest[:8]}…" if sep and len(digest) > 8 else value


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _profile_text(lo: tuple[int, ...], opt: tuple[int, ...], hi: tuple[int, ...]) -> str:
    return _shape(lo) if lo == opt == hi else f"{_shape(lo)}..{_shape(opt)}..{_shape(hi)}"


def environment_reasons(wanted: EngineKey, found: EngineKey) -> list[str]:
    """Why a plan cannot run here at all: another TensorRT, GPU or platform."""
    reasons = []
    if wanted.tensorrt != found.tensorrt:
        reasons.append(f"built with TensorRT {found.tensorrt}, this is {wanted.tensorrt}")
    if (wanted.gpu, wanted.compute_capability) != (found.gpu, found.compute_capability):
        reasons.append(f"built for {found.gpu} ({found.compute_capability}), "
                       f"this GPU is {wanted.gpu} ({wanted.compute_capability})")
    if wanted.platform != found.platform:
        reasons.append(f"built on {found.platform}, this is {wanted.platform}")
    return reasons


def input_reasons(wanted: EngineKey, found: EngineKey) -> list[str]:
    """Why a plan no longer describes what it would be built from now: bundle, plugins, build options."""
    reasons = []
    if wanted.model_hash != found.model_hash:
        reasons.append(f"bundle changed (model hash {short_hash(found.model_hash)} → {short_hash(wanted.model_hash)})")
    have, want = dict(found.plugins), dict(wanted.plugins)
    for name in sorted(have.keys() | want.keys()):
        if name not in have:
            reasons.append(f"plugin {name} added")
        elif name not in want:
            reasons.append(f"plugin {name} removed")
        elif have[name] != want[name]:
            reasons.append(f"plugin {name} changed ({short_hash(have[name])} → {short_hash(want[name])})")
    # An automatic workspace ("auto", None) accepts whatever the plan was built with: the size came
    # from the free memory at the time and does not change what the plan computes.
    if wanted.workspace_mb is not None and wanted.workspace_mb != found.workspace_mb:
        old = "auto" if found.workspace_mb is None else found.workspace_mb
        reasons.append(f"build options changed: workspace_mb {old} → {wanted.workspace_mb}")
    have_p = {n: (lo, opt, hi) for n, lo, opt, hi in found.profile}
    want_p = {n: (lo, opt, hi) for n, lo, opt, hi in wanted.profile}
    for name in [n for n, *_ in wanted.profile] + sorted(have_p.keys() - want_p.keys()):
        old, new = have_p.get(name), want_p.get(name)
        if old != new:
            before = _profile_text(*old) if old else "(none)"
            after = _profile_text(*new) if new else "(none)"
            reasons.append(f"build options changed: profile {name} {before} → {after}")
    if wanted.precision != found.precision:
        reasons.append(f"build options changed: precision {found.precision} → {wanted.precision}")
    return reasons


def stale_reasons(wanted: EngineKey, found: EngineKey, *, inputs: bool = True) -> list[str]:
    """Every reason the plan built for ``found`` must not be loaded where ``wanted`` describes the present.

    One readable phrase each; an empty list means the plan is reusable. ``inputs=False`` checks only
    the environment (for a ``.plan`` given alone, with no bundle to compare it with).
    """
    return environment_reasons(wanted, found) + (input_reasons(wanted, found) if inputs else [])


# ---- the sidecar ------------------------------------------------------------------------------------

def sidecar_path(plan: str | Path) -> Path:
    """``v2.plan`` -> ``v2.plan.json``."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def sidecar(key: EngineKey, extra: dict[str, Any]) -> dict[str, Any]:
    """The sidecar document: schema, the key, then ``extra`` (build time, elapsed, bundle, plugins, manifest).

    ``extra`` may not redefine ``schema`` or ``key``: those are what ``parse_sidecar`` trusts.
    """
    clash = {"schema", "key"} & extra.keys()
    if clash:
        raise ValueError(f"sidecar extra may not set {sorted(clash)}")
    return {"schema": SIDECAR_SCHEMA, "key": key.to_dict(), **extra}


def parse_sidecar(doc: Any, origin: str = "sidecar") -> EngineKey:
    """The key a sidecar records; a one-line ``VlaError`` for anything that is not a ``vla.plan/1`` sidecar."""
    if not isinstance(doc, dict):
        raise VlaError(f"{origin}: not a plan sidecar (expected a JSON object); rebuild the plan with vla-build")
    if doc.get("schema") != SIDECAR_SCHEMA:
        raise VlaError(f"{origin}: schema {doc.get('schema')!r} is not {SIDECAR_SCHEMA}; "
                       "rebuild the plan with this vla-build")
    try:
        return EngineKey.from_dict(doc.get("key"))
    except ValueError as exc:
        raise VlaError(f"{origin}: {exc}; rebuild the plan with vla-build") from None


def missing_sidecar_message(plan: str | Path) -> str:
    side = sidecar_path(plan)
    return (f"{plan} has no sidecar manifest {side.name}; rebuild it with vla-build so its TensorRT version, "
            "GPU and bundle are known")


def read_sidecar(plan: str | Path) -> dict[str, Any]:
    """The sidecar beside ``plan`` (validated), or a one-line ``VlaError``: a plan alone is never trusted."""
    side = sidecar_path(plan)
    if not side.is_file():
        raise VlaError(missing_sidecar_message(plan))
    try:
        doc = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise VlaError(f"{side}: unreadable plan sidecar ({' '.join(str(exc).split())[:160]}); "
                       "rebuild the plan with vla-build") from None
    parse_sidecar(doc, str(side))
    return doc


def write_json_atomic(path: str | Path, doc: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a sidecar."""
    write_bytes_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())


def write_bytes_atomic(path: str | Path, data: bytes | memoryview) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def sha256_file(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes (plugin libraries, a model without a recorded hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


# ---- where plans live, and what to do --------------------------------------------------------------

def slug(text: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``: a file-name-safe GPU name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def cache_path(bundle_dir: str | Path, key: EngineKey, model_name: str = "model.onnx",
               stage: str | None = None) -> Path:
    """Where ``vla-run --backend trt`` keeps a bundle's plan for this GPU and TensorRT:
    ``<bundle>/engines/<gpu-slug>-trt<version>.plan``. One per GPU model and TensorRT version, so a
    bundle moved between an Orin and a workstation keeps both. A bare ``.onnx`` (not a bundle's
    ``model.onnx``) prefixes its own name, so several in one folder do not evict each other's plans.
    A stage of a bundle of stages prefixes the stage's name (``engines/vision-<gpu>-trt<version>.plan``):
    stage names are unique and file-name safe (the manifest schema), where slugs of file names could meet."""
    if stage is not None:
        prefix = f"{stage}-"
    else:
        prefix = "" if model_name == "model.onnx" else f"{slug(Path(model_name).stem)}-"
    return Path(bundle_dir) / ENGINES_DIR / f"{prefix}{slug(key.gpu)}-trt{key.tensorrt}.plan"


def timing_cache_path(plan_dir: str | Path, key: EngineKey) -> Path:
    """The default timing cache: beside the plan, per GPU model and TensorRT version (shared by every plan
    built there, since tactic timings depend on the layers, not on the model they belong to)."""
    return Path(plan_dir) / f"{slug(key.gpu)}-trt{key.tensorrt}.timing"


@dataclass(frozen=True)
class Decision:
    """What to do with ``plan``: ``build`` (none there), ``reuse``, ``rebuild`` (stale, --rebuild given) or
    ``refuse`` (stale without --rebuild; ``message`` says why and to pass --rebuild)."""

    action: str
    plan: Path
    reasons: tuple[str, ...] = field(default_factory=tuple)
    message: str = ""


def decide_from(plan: str | Path, wanted: EngineKey, rebuild: bool, *, plan_exists: bool,
                sidecar_doc: Any | None, sidecar_error: str | None = None) -> Decision:
    """Pure: the decision for ``plan`` given whether it exists and its sidecar's contents (None: no sidecar;
    ``sidecar_error``: there is one, but it could not be read)."""
    plan = Path(plan)
    if not plan_exists:
        return Decision("build", plan, (), f"no TensorRT plan for {wanted.gpu} / TensorRT {wanted.tensorrt} "
                        f"at {plan}; building it")
    if sidecar_error is not None:
        reasons: tuple[str, ...] = (f"{sidecar_path(plan)}: unreadable sidecar ({sidecar_error})",)
    elif sidecar_doc is None:
        reasons = (missing_sidecar_message(plan),)
    else:
        try:
            reasons = tuple(stale_reasons(wanted, parse_sidecar(sidecar_doc, str(sidecar_path(plan)))))
        except VlaError as exc:
            reasons = (str(exc),)
    if not reasons:
        return Decision("reuse", plan, (), f"reusing {plan} (built for {wanted.gpu}, TensorRT {wanted.tensorrt})")
    if rebuild:
        return Decision("rebuild", plan, reasons, f"rebuilding {plan}: {'; '.join(reasons)}")
    return Decision("refuse", plan, reasons, f"{plan}: the cached TensorRT plan cannot be used: "
                    f"{'; '.join(reasons)}; pass --rebuild to build it again")


def decide(plan: str | Path, wanted: EngineKey, rebuild: bool) -> Decision:
    """``decide_from`` with the plan and its sidecar read from disk (an unreadable sidecar counts as stale)."""
    plan = Path(plan)
    side = sidecar_path(plan)
    doc: Any | None = None
    error = None
    if plan.exists() and side.is_file():
        try:
            doc = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            error = " ".join(str(exc).split())[:120]
    return decide_from(plan, wanted, rebuild, plan_exists=plan.exists(), sidecar_doc=doc, sidecar_error=error)
