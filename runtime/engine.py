"""Open ``--engine``: a bundle folder or a bare ``.onnx`` carrying its manifest, checked against the graph."""

from __future__ import annotations

from pathlib import Path

from .backends.base import Backend
from .errors import ManifestError, VlaError
from .manifest import METADATA_KEY, check_against_graph, parse_manifest_text

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


def resolve(engine: str) -> tuple[Path, Path | None]:
    """(model path, manifest.json path or None when the manifest must come from the model)."""
    path = Path(engine)
    if path.is_dir():
        model, manifest = path / MODEL_FILE, path / MANIFEST_FILE
        if not model.exists():
            raise VlaError(f"--engine {engine}: folder has no {MODEL_FILE}; is it a bundle from vla-export?")
        return model, manifest if manifest.exists() else None
    if not path.exists():
        raise VlaError(f"--engine {engine}: no such file or bundle folder")
    if path.suffix == ".plan":
        raise VlaError(f"--engine {engine}: TensorRT plans need the TensorRT backend, which this build "
                       "does not have yet; run the bundle with ONNX Runtime instead")
    return path, None


def open_engine(engine: str, threads: int | None = None, spin: bool = False) -> Backend:
    """Load the model with ONNX Runtime and refuse it unless its manifest matches its graph."""
    from .backends.ort import OrtBackend, default_threads, graph_types, open_session

    model_path, manifest_path = resolve(engine)
    session = open_session(str(model_path), threads, spin)
    if manifest_path is not None:
        manifest = parse_manifest_text(manifest_path.read_bytes(), str(manifest_path))
    else:
        text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if text is None:
            raise ManifestError(f"{model_path}: no vla manifest in its metadata; export it with vla-export, "
                                f"or run a bundle folder that has {MANIFEST_FILE}")
        manifest = parse_manifest_text(text, f"{model_path} (embedded manifest)")
    check_against_graph(manifest, graph_types(session.get_inputs()), graph_types(session.get_outputs()),
                        str(manifest_path or model_path))
    return OrtBackend(session, manifest, threads or default_threads(), spin)

