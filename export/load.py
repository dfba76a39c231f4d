"""Load a MODEL argument into something the ONNX exporter takes, plus its I/O spec.

Forms: the word ``reference``; a TorchScript archive (``.pt``/``.pth``, ``torch.jit.save``); a
torch.export program (``.pt2``, ``torch.export.save``). Neither archive format runs arbitrary
pickled code on load; pickled ``nn.Module`` files are not accepted here.

The spec (the model-facing half of the manifest) comes from the reference model itself, from a
``vla_spec.json`` stored in the archive (``_extra_files`` / ``extra_files``), or from ``--spec``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vla.runtime.errors import VlaError

SPEC_FILE = "vla_spec.json"


@dataclass
class LoadedModel:
    """A model ready for export: the object to export, a callable for the eager reference, its spec."""

    exportable: Any  # nn.Module, torch.export.ExportedProgram or torch.jit.ScriptModule
    eager: Any  # callable(*inputs) -> tuple of tensors, the PyTorch reference for parity
    spec: dict[str, Any]
    form: str  # "reference" | "torchscript" | "exported_program"
    source: str
    notes: list[str] = field(default_factory=list)


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise VlaError(f"--config {pair!r}: expected KEY=VALUE, e.g. --config modes=5")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


def _read_spec_file(path: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VlaError(f"--spec {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VlaError(f"--spec {path}: not valid JSON ({exc})") from None


def load_model(model: str, spec_path: str | None = None, config: list[str] | None = None) -> LoadedModel:
    """Resolve MODEL; every failure is a one-line ``VlaError`` naming the file and the cause."""
    if model == "reference":
        from .reference import ReferenceConfig, ReferenceVLA

        try:
            net = ReferenceVLA(ReferenceConfig(**_parse_overrides(config or [])))
        except (TypeError, ValueError) as exc:
            raise VlaError(f"reference model: bad --config ({exc})") from None
        spec = _read_spec_file(spec_path) if spec_path else net.io_spec()
        return LoadedModel(net, net, spec, "reference", "vla.export.reference")
    if config:
        raise VlaError("--config only applies to the reference model")

    path = Path(model)
    if not path.exists():
        raise VlaError(f"MODEL {model}: no such file (give a .pt TorchScript archive, a .pt2 torch.export "
                       "archive, or the word 'reference')")
    if path.is_dir() or not zipfile.is_zipfile(path):
        raise VlaError(f"MODEL {model}: not a TorchScript (.pt) or torch.export (.pt2) archive "
                       "(both are zip files; this one is not, or it is corrupt)")
    extra = {SPEC_FILE: ""}
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as exc:
            raise VlaError(f"MODEL {model}: cannot read the torch.export archive ({_first_line(exc)})") from None
        loaded = LoadedModel(program, program.module(), {}, "exported_program", str(path))
    else:
        try:
            script = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise VlaError(f"MODEL {model}: cannot read the TorchScript archive ({_first_line(exc)}); "
                           "if it is a torch.export program, name it .pt2") from None
        script.eval()
        loaded = LoadedModel(script, script, {}, "torchscript", str(path))

    if spec_path:
        loaded.spec = _read_spec_file(spec_path)
    elif extra[SPEC_FILE]:
        text = extra[SPEC_FILE]
        try:
            loaded.spec = json.loads(text.decode() if isinstance(text, bytes) else text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VlaError(f"MODEL {model}: its embedded {SPEC_FILE} is not valid JSON ({exc})") from None
    else:
        raise VlaError(f"MODEL {model}: no I/O spec; store {SPEC_FILE} in the archive "
                       f"(torch.jit.save(..., _extra_files={{'{SPEC_FILE}': ...}})) or pass --spec FILE")
    return loaded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
