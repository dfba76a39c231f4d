"""Open ``--engine``: a bundle folder or a bare ``.onnx`` carrying its manifest, checked against the graph,
on the backend ``--backend``/``--device`` ask for (``backends/select.py`` decides; ``auto`` by default)."""

from __future__ import annotations

from pathlib import Path

from .backends.base import Backend
from .bundle import MANIFEST_FILE, MODEL_FILE, read_manifest, resolve, staged_manifest
from .bundle import must_exist as _must_exist
from .cpu import default_threads, split_threads
from .errors import VlaError
from .manifest import Manifest, check_against_graph
from .stages import with_rate

__all__ = ["MANIFEST_FILE", "MODEL_FILE", "open_engine", "read_manifest", "resolve"]

def open_engine(engine: str, threads: int | None = None, spin: bool = False, backend: str = "auto",
                device: str = "cpu", available: dict[str, str | None] | None = None,
                rebuild: bool = False, cuda_graph: bool = True, stage_rate: str | int | None = None) -> Backend:
    """Open ``engine`` on the backend ``select.choose_backend`` picks for ``backend``/``device``.

    ONNX Runtime (CPU) and torch (``program.pt2``, CPU or CUDA) refuse a manifest that disagrees
    with their model, naming the tensor; TensorRT is opened by ``backends.trt`` when this build has
    it. ``available`` is ``select.probe_available()``'s answer (probed here when not given). The
    returned backend carries ``selection``: why it was chosen, with versions, for start-up lines.
    ``cuda_graph``: TensorRT's ``run()`` replays the engine as a CUDA graph once captured.
    ``stage_rate``: a bundle of stages will run with this rate for its slow stages (``RunConfig.stage_rate``;
    None: as declared); a dual-rate schedule splits the CPU threads between its two workers
    (``cpu.split_threads``) unless ``threads`` is given.
    """
    from .backends.select import ONNXRUNTIME, TENSORRT, choose_backend, probe_available

    _must_exist(engine)  # before choosing: a typo is named as such, whatever the backend
    if available is None:
        available = probe_available(check_cuda=device == "cuda", tensorrt=backend in ("auto", "trt"))
    chosen, why = choose_backend(backend, device, engine, available)
    staged = staged_manifest(engine)
    if staged is not None:
        opened = _open_staged(engine, staged, chosen, threads, spin, device, rebuild, cuda_graph, stage_rate)
    elif chosen == TENSORRT:
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


def _open_staged(engine: str, manifest: Manifest, chosen: str, threads: int | None, spin: bool, device: str,
                 rebuild: bool, cuda_graph: bool, stage_rate: str | int | None = None) -> Backend:
    """Each stage's graph on the chosen backend, checked against its part of the manifest, as one backend
    (``backends/staged.py``): ``stage.onnx`` on ONNX Runtime, ``stage.pt2`` on torch, a plan per stage
    on TensorRT."""
    from .backends.select import ONNXRUNTIME, TENSORRT
    from .backends.staged import StagedBackend

    folder = Path(engine)
    opened: dict[str, Backend] = {}
    slow = {s.name for s in with_rate(manifest.stages, stage_rate) if s.slow}
    share = {True: threads, False: threads}  # stage is slow -> its threads
    if threads is None and slow and len(slow) < len(manifest.stages):  # two workers at once: a share each
        share[True], share[False] = split_threads(default_threads())
    try:
        for stage in manifest.stages:
            part, n = manifest.stage_manifest(stage), share[stage.name in slow]
            graph = folder / stage.file
            if chosen == TENSORRT:
                from .backends.trt import open_trt_stage

                opened[stage.name] = open_trt_stage(folder, stage, part, rebuild=rebuild, cuda_graph=cuda_graph)
            elif chosen == ONNXRUNTIME:
                from .backends.ort import OrtBackend, graph_types, open_session

                session = open_session(str(graph), n, spin)
                check_against_graph(part, graph_types(session.get_inputs()), graph_types(session.get_outputs()),
                                    f"{graph} (stage '{stage.name}')")
                opened[stage.name] = OrtBackend(session, part, n or default_threads(), spin)
            else:
                from .backends.torch_backend import TorchBackend

                program = graph.with_suffix(".pt2")
                if not program.is_file():
                    raise VlaError(f"--engine {engine}: stage '{stage.name}' has no {program.name} (the torch.export "
                                   "program --backend torch runs); use --backend ort, or re-export the bundle")
                opened[stage.name] = TorchBackend(program, part, device=device, threads=n)
    except BaseException:
        for backend in opened.values():
            backend.close()
        raise
    return StagedBackend(manifest, opened)

