"""A bundle is a folder: ``model.onnx`` (manifest embedded), ``manifest.json``, ``parity.json``,
``accuracy.json`` when the precision is not FP32 (the gate's figures and every search trial),
``program.pt2`` for FP32 (the torch.export program the runtime's torch backend runs), and
``tokenizer.json`` when the model reads text with a Hugging Face tokenizer (``--tokenizer``: copied byte
for byte, its sha256 in the manifest, so the same file gives the same bundle).

It is written to a temporary folder beside the target and renamed into place, so a failed or
interrupted export never leaves a half-written bundle where a vehicle could pick it up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx

from vla.runtime.errors import VlaError
from vla.runtime.manifest import METADATA_KEY, Manifest

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
PARITY_FILE = "parity.json"
ACCURACY_FILE = "accuracy.json"
PROGRAM_FILE = "program.pt2"


def model_hash(model: onnx.ModelProto) -> str:
    """sha256 of the model without its metadata_props, so embedding the manifest does not change it."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.metadata_props[:]
    return "sha256:" + hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


def embed_manifest(model: onnx.ModelProto, manifest_json: str) -> None:
    """Put the manifest in metadata_props, so a bare .onnx carries its own contract."""
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value=manifest_json)


def embed_decided(model: onnx.ModelProto, manifest: dict) -> None:
    """Embed what was *decided* (the manifest without ``measured``), canonically serialised, so the
    same model and options give a byte-identical ``model.onnx``."""
    embedded = {k: v for k, v in manifest.items() if k != "measured"}
    embed_manifest(model, json.dumps(embedded, separators=(",", ":"), sort_keys=True))


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("vla-runtime", "torch", "onnx", "onnxscript", "onnxslim", "onnxruntime", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def stage_tokenizer(spec: Manifest, folder: Path) -> dict[str, Path]:
    """A copy of the spec's tokenizer file in ``folder`` under its bundle name, for ``write_bundle``'s
    ``files`` (which moves them: the user's own file stays where it is); {} for a model without one."""
    block = spec.tokenizer
    if block is None or spec.tokenizer_file is None:
        return {}
    staged = folder / block["file"]
    shutil.copyfile(spec.tokenizer_file, staged)
    return {block["file"]: staged}


def write_bundle(out: Path, model: onnx.ModelProto | None, manifest: dict[str, Any], parity: dict[str, Any],
                 extra: dict[str, Any] | None = None, files: dict[str, Path] | None = None,
                 graphs: dict[str, onnx.ModelProto] | None = None) -> None:
    """Write the files atomically into ``out`` (replacing an earlier bundle there); ``extra``: more JSON files;
    ``files``: binary files already written elsewhere (``program.pt2``), moved in under the given names;
    ``graphs``: more ONNX models by file name (a bundle of stages: one per stage, and ``model`` None)."""
    if out.exists() and not (out / MANIFEST_FILE).exists() and any(out.iterdir()):
        raise VlaError(f"-o {out}: folder exists and is not a bundle; choose another path or empty it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if model is not None:
            onnx.save_model(model, str(tmp / MODEL_FILE))
        for name, graph in (graphs or {}).items():
            onnx.save_model(graph, str(tmp / name))
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        (tmp / PARITY_FILE).write_text(json.dumps(parity, indent=2) + "\n")
        for name, content in (extra or {}).items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        for name, src in (files or {}).items():
            shutil.move(str(src), tmp / name)  # a rename on the same file system, else a copy
        tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
