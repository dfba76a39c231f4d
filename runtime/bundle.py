"""A bundle on disk, read without opening any backend: where its model and manifest are, and the manifest
itself (from ``manifest.json`` or embedded in the ``.onnx``).

Kept apart from ``engine.py`` (which opens backends) so that the TensorRT builder and the backends can
read bundles without importing each other: ``backends/trt.py -> trt/build.py -> bundle.py``, no circle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .backends.select import PLAN_WITHOUT_TRT
from .errors import ManifestError, VlaError
from .manifest import METADATA_KEY, Manifest, parse_manifest_text, with_files

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


def staged_manifest(engine: str | Path) -> Manifest | None:
    """The manifest of a bundle of stages (a folder whose ``manifest.json`` lists ``stages``, one graph
    per stage and no ``model.onnx``), else None."""
    path = Path(engine)
    manifest = path / MANIFEST_FILE
    if not path.is_dir() or (path / MODEL_FILE).exists() or not manifest.exists():
        return None
    m = with_files(parse_manifest_text(manifest.read_bytes(), str(manifest)), path)
    if not m.staged:
        return None
    missing = [s.file for s in m.stages if not (path / s.file).is_file()]
    if missing:
        raise VlaError(f"--engine {engine}: bundle of stages without {', '.join(missing)}; "
                       "re-export it with vla-export")
    return m


def resolve(engine: str) -> tuple[Path, Path | None]:
    """(model path, manifest.json path or None when the manifest must come from the model)."""
    path = Path(engine)
    if path.is_dir():
        model, manifest = path / MODEL_FILE, path / MANIFEST_FILE
        if not model.exists() and manifest.exists() and staged_manifest(path) is not None:
            raise VlaError(f"--engine {engine}: a bundle of stages has no single {MODEL_FILE}; this command takes "
                           "one graph (open the bundle with vla-run or vla-bench)")
        if not model.exists():
            raise VlaError(f"--engine {engine}: folder has no {MODEL_FILE}; is it a bundle from vla-export?")
        return model, manifest if manifest.exists() else None
    must_exist(engine)
    if path.suffix == ".plan":
        raise VlaError(PLAN_WITHOUT_TRT.format(engine=engine))
    return path, None


def must_exist(engine: str) -> None:
    if not Path(engine).exists():
        raise VlaError(f"--engine {engine}: no such file or bundle folder")


def read_manifest(model_path: Path, manifest_path: Path | None, session: Any = None) -> Manifest:
    """The bundle's manifest.json, else the manifest embedded in the .onnx (``session``'s metadata when one is
    open); the files it names (a tokenizer) are looked for beside the model."""
    if manifest_path is not None:
        return with_files(parse_manifest_text(manifest_path.read_bytes(), str(manifest_path)), model_path.parent)
    if session is not None:
        text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    else:
        text = embedded_manifest_text(model_path)
    if text is None:
        raise ManifestError(f"{model_path}: no vla manifest in its metadata; export it with vla-export, "
                            f"or run a bundle folder that has {MANIFEST_FILE}")
    return with_files(parse_manifest_text(text, f"{model_path} (embedded manifest)"), model_path.parent)


def embedded_manifest_text(model_path: Path) -> str | None:
    """The manifest in the model's metadata: read with ``onnx`` where it is installed (no session and
    no external weight files, so a graph with plugin ops TensorRT alone runs is fine), else through
    an ONNX Runtime session."""
    try:
        import onnx
    except ImportError:
        from .backends.ort import open_session

        return open_session(str(model_path), 1).get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise VlaError(f"{model_path}: not a readable ONNX model ({' '.join(str(exc).split())[:160]})") from None
    return next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
