"""Open ``--engine``: a bundle folder or a bare ``.onnx`` carrying its manifest, checked against the graph,
on the backend ``--backend``/``--device`` ask for (``backends/select.py`` decides; ``auto`` by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .backends.base import Backend
from .backends.select import PLAN_WITHOUT_TRT
from .errors import ManifestError, VlaError
from .manifest import METADATA_KEY, Manifest, check_against_graph, parse_manifest_text, with_files

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
    _must_exist(engine)
    if path.suffix == ".plan":
        raise VlaError(PLAN_WITHOUT_TRT.format(engine=engine))
    return path, None


def _must_exist(engine: str) -> None:
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


def open_engine(engine: str, threads: int | None = None, spin: bool = False, backend: str = "auto",
                device: str = "cpu", available: dict[str, str | None] | None = None,
                rebuild: bool = False, cuda_graph: bool = True) -> Backend:
    """Open ``engine`` on the backend ``select.choose_backend`` picks for ``backend``/``device``.

    ONNX Runtime (CPU) and torch (``program.pt2``, CPU or CUDA) refuse a manifest that disagrees
    with their model, naming the tensor; TensorRT is opened by ``backends.trt`` when this build has
    it. ``available`` is ``select.probe_available()``'s answer (probed here when not given). The
    returned backend carries ``selection``: why it was chosen, with versions, for start-up lines.
    ``cuda_graph``: TensorRT's ``run()`` replays the engine as a CUDA graph once captured.
    """
    from .backends.select import ONNXRUNTIME, TENSORRT, choose_backend, probe_available

    _must_exist(engine)  # before choosing: a typo is named as such, whatever the backend
    if available is None:
        available = probe_available(check_cuda=device == "cuda", tensorrt=backend in ("auto", "trt"))
    chosen, why = choose_backend(backend, device, engine, available)
    if chosen == TENSORRT:
        opened = _open_trt(engine, rebuild, cuda_graph)
    elif chosen == ONNXRUNTIME:
        opened = _open_ort(engine, threads, spin)
    else:
        opened = _open_torch(engine, threads, device)
    opened.selection = why
    return opened


def _open_trt(engine: str, rebuild: bool = False, cuda_graph: bool = True) -> Backend:
    try:
        from .backends.trt import open_trt_backend
    except ImportError as exc:
        raise VlaError(f"--engine {engine}: TensorRT backend not available in this build "
                       f"({' '.join(str(exc).split())[:160]})") from None
    # TensorRT runs on the GPU whatever --device says; a bundle's cached plan is built once and reused,
    # a stale one refused with its reasons unless --rebuild.
    return open_trt_backend(engine, device="cuda", rebuild=rebuild, cuda_graph=cuda_graph)


def _open_torch(engine: str, threads: int | None, device: str) -> Backend:
    try:
        from .backends.torch_backend import TorchBackend, find_program
    except ImportError as exc:
        from .cli_support import install_hint

        raise VlaError(f"--backend torch: PyTorch cannot be imported ({' '.join(str(exc).split())[:160]}); needs "
                       f"{install_hint('torch')}") from None

    model_path, manifest_path = resolve(engine)
    manifest = read_manifest(model_path, manifest_path)
    return TorchBackend(find_program(engine, manifest), manifest, device=device, threads=threads)


def _open_ort(engine: str, threads: int | None, spin: bool) -> Backend:
    """Load the model with ONNX Runtime and refuse it unless its manifest matches its graph."""
    from .backends.ort import OrtBackend, default_threads, graph_types, open_session

    model_path, manifest_path = resolve(engine)
    session = open_session(str(model_path), threads, spin)
    manifest = read_manifest(model_path, manifest_path, session)
    check_against_graph(manifest, graph_types(session.get_inputs()), graph_types(session.get_outputs()),
                        str(manifest_path or model_path))
    return OrtBackend(session, manifest, threads or default_threads(), spin)
