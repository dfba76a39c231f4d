"""Load a MODEL argument into something the ONNX exporter takes, plus its I/O spec.

Forms (``LoadedModel.form``):

- ``reference``: a built-in reference model (``reference``: model 2, in stages; ``reference-v1``: model 1);
- ``torchscript``: a ``torch.jit.save`` archive;
- ``exported_program``: a ``torch.export.save`` archive (``.pt2``);
- ``state_dict``: a ``torch.save(model.state_dict())`` file (or ``.safetensors``) plus ``--factory
  MODULE:FUNCTION`` that builds the module to load it into;
- ``pickled_module``: a ``torch.save(model)`` file, only with ``--trust-pickle``.

Unpickling runs code named by the file, so every ``torch.load`` here uses ``weights_only=True``
except the one behind ``--trust-pickle``. The archive formats and state_dicts never run file code.

The spec (the model-facing half of the manifest) comes from ``--spec`` (JSON or YAML), else from the
model itself (a ``vla_spec`` dict attribute or an ``io_spec()`` method), else from a
``vla_spec.json`` stored in the archive (``_extra_files`` / ``extra_files``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import traceback
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vla.runtime.cli_support import install_hint
from vla.runtime.errors import VlaError

SPEC_FILE = "vla_spec.json"
#: MODEL words naming a built-in reference model, and which one.
REFERENCES = {"reference": 2, "reference-v1": 1}
FORMS = ("reference", "torchscript", "exported_program", "state_dict", "pickled_module")
_SPEC_HELP = ("pass --spec FILE (JSON or YAML), give the model a `vla_spec` dict attribute, "
              "or an `io_spec()` method returning that dict")


@dataclass
class LoadedModel:
    """A model ready for export: the object to export, a callable for the eager reference, its spec."""

    exportable: Any  # nn.Module, torch.export.ExportedProgram or torch.jit.ScriptModule
    eager: Any  # callable(*inputs) -> tuple of tensors, the PyTorch reference for parity
    spec: dict[str, Any]
    form: str  # one of FORMS
    source: str
    notes: list[str] = field(default_factory=list)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--config KEY=VALUE`` pairs: values as JSON where they parse (lists become tuples), else strings."""
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


# ---- the spec ---------------------------------------------------------------------------------------
def _read_spec_file(path: str) -> dict[str, Any]:
    """``--spec FILE``: ``.yaml``/``.yml`` through PyYAML's safe loader, anything else as JSON."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise VlaError(f"--spec {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VlaError(f"--spec {path}: cannot read it ({_first_line(exc)})") from None
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        spec = _parse_yaml(text, path)
    else:
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VlaError(f"--spec {path}: not valid JSON ({exc}); YAML files must end in .yaml or .yml") from None
    if not isinstance(spec, dict):
        raise VlaError(f"--spec {path}: expected a mapping (inputs, outputs, ...) at the top level, "
                       f"got {type(spec).__name__}")
    return spec


def _parse_yaml(text: str, path: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise VlaError(f"--spec {path}: reading YAML needs {install_hint('yaml')}; or give the spec as JSON") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # MarkedYAMLError's str() spans several lines; keep the problem and where it is.
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or _first_line(exc)
        raise VlaError(f"--spec {path}: not valid YAML ({where}{problem})") from None


def _spec_from_module(module: nn.Module, model: str) -> dict[str, Any] | None:
    """The model's own spec: a ``vla_spec`` dict attribute, else an ``io_spec()`` method; None if neither."""
    spec = getattr(module, "vla_spec", None)
    origin = "its vla_spec attribute"
    if spec is None:
        method = getattr(module, "io_spec", None)
        if method is None:
            return None
        if not callable(method):
            raise VlaError(f"MODEL {model}: its io_spec attribute is not a method; {_SPEC_HELP}")
        origin = "its io_spec()"
        try:
            spec = method()
        except Exception as exc:
            raise VlaError(f"MODEL {model}: {origin} raised {_first_line(exc)}") from None
    if not isinstance(spec, dict):
        raise VlaError(f"MODEL {model}: {origin} is a {type(spec).__name__}, not a dict (the I/O spec)")
    return spec


def _module_spec(module: nn.Module, model: str, spec_path: str | bool | None) -> dict[str, Any]:
    if spec_path is False:  # --spec-skeleton: the spec is what is being written
        return {}
    spec = _read_spec_file(spec_path) if spec_path else _spec_from_module(module, model)
    if spec is None:
        raise VlaError(f"MODEL {model}: no I/O spec; {_SPEC_HELP}")
    return _with_parameter_count(_with_stages(spec, module, model), module)


def _with_stages(spec: dict[str, Any], module: nn.Module, model: str) -> dict[str, Any]:
    """The spec with the model's own ``stages_spec()`` declaration (how vla-export splits it into stages)
    when the spec does not declare ``stages`` itself: the split belongs to the model's code, not its I/O."""
    method = getattr(module, "stages_spec", None)
    if "stages" in spec or not callable(method):
        return spec
    try:
        stages = method()
    except Exception as exc:
        raise VlaError(f"MODEL {model}: its stages_spec() raised {_first_line(exc)}") from None
    if not isinstance(stages, Mapping):
        raise VlaError(f"MODEL {model}: its stages_spec() is a {type(stages).__name__}, not a mapping of "
                       "stage name -> declaration")
    return {**spec, "stages": dict(stages)}


def _with_parameter_count(spec: dict[str, Any], module: nn.Module) -> dict[str, Any]:
    """The manifest's size figure, known here for free for every model form (``parameters()`` counts a
    tied or shared parameter once: the figure the bundle's deduplicated weights are compared with)."""
    info = spec.get("model")
    if isinstance(info, dict) and "parameters" not in info:
        spec = {**spec, "model": {**info, "parameters": sum(p.numel() for p in module.parameters())}}
    return spec


def _archive_spec(model: str, spec_path: str | bool | None, embedded: str | bytes) -> dict[str, Any]:
    if spec_path is False:
        return {}
    if spec_path:
        return _read_spec_file(spec_path)
    if not embedded:
        raise VlaError(f"MODEL {model}: no I/O spec; store {SPEC_FILE} in the archive "
                       f"(torch.jit.save(..., _extra_files={{'{SPEC_FILE}': ...}})) or pass --spec FILE")
    try:
        return json.loads(embedded.decode() if isinstance(embedded, bytes) else embedded)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VlaError(f"MODEL {model}: its embedded {SPEC_FILE} is not valid JSON ({exc})") from None


# ---- MODEL forms ------------------------------------------------------------------------------------
def load_model(model: str, spec_path: str | bool | None = None, config: list[str] | None = None, *,
               factory: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Resolve MODEL; every failure is a one-line ``VlaError`` naming the file, the cause and the fix.

    ``spec_path=False`` loads the model without any spec (``LoadedModel.spec`` is ``{}``): for
    ``--spec-skeleton``, which writes one."""
    if model in REFERENCES:
        if factory:
            raise VlaError(f"--factory only applies to a state_dict MODEL, not to '{model}'")
        return _load_reference(config or [], spec_path, REFERENCES[model])
    if config:
        raise VlaError("--config only applies to the reference model")

    path = Path(model)
    if not path.exists():
        raise VlaError(f"MODEL {model}: no such file (give a .pt TorchScript archive, a .pt2 torch.export "
                       "archive, a state_dict file with --factory, or the word 'reference')")
    if path.suffix == ".safetensors" and path.is_file():
        return _load_state_dict(_read_safetensors(path), path, factory, spec_path)
    if path.is_dir():
        raise VlaError(f"MODEL {model}: a folder, but not a bundle (it needs model.onnx and manifest.json); give a "
                       "model file, or an FP32 bundle folder to re-quantise (not with --spec-skeleton)")
    if not zipfile.is_zipfile(path):
        raise VlaError(f"MODEL {model}: not a TorchScript (.pt), torch.export (.pt2) archive or torch.save file "
                       "(all are zip files; this one is not, or it is corrupt)")
    kind = _zip_kind(path)
    if factory and kind != "torch_save":
        raise VlaError(f"--factory only applies to a state_dict MODEL; {model} is a "
                       f"{'TorchScript' if kind == 'torchscript' else 'torch.export'} archive, drop --factory")
    if kind == "torchscript":
        return _load_torchscript(path, spec_path)
    if kind == "exported_program":
        return _load_exported_program(path, spec_path)
    return _load_torch_save(path, factory, spec_path, trust_pickle)


#: Reference model 2's trained weights (``vla-train``): safetensors with the model config in its metadata.
TRAINED_REFERENCE = Path(__file__).resolve().parent / "weights" / "reference-v2.safetensors"


def read_trained_reference(path: Path = TRAINED_REFERENCE) -> tuple[nn.Module, dict[str, str]]:
    """Reference model 2 rebuilt from a weights file ``vla-train`` wrote: the config from the file's metadata
    (JSON under ``config``), the tensors loaded strictly (safetensors: no pickle). Returns (model, metadata)."""
    from .reference_v2 import ReferenceConfig2, ReferenceVLA2

    try:
        from safetensors import safe_open
    except ImportError:
        raise VlaError(f"reference: reading the trained weights {path} needs the safetensors package "
                       "(pip install safetensors)") from None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
    except Exception as exc:
        raise VlaError(f"reference: cannot read the trained weights {path} ({_first_line(exc)})") from None
    try:
        fields = json.loads(meta["config"])
        config = ReferenceConfig2(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    except (KeyError, json.JSONDecodeError, TypeError) as exc:
        raise VlaError(f"reference: {path} has no usable model config in its metadata ({_first_line(exc)}); "
                       "write it with vla-train") from None
    net = ReferenceVLA2(config)
    _load_weights(net, weights, path, "reference (ReferenceVLA2 with the file's config)")
    net.eval()
    return net, meta


def _load_reference(config: list[str], spec_path: str | None, version: int = 2) -> LoadedModel:
    """``reference`` (model 2: vision, context and action expert, exported as three stages) or
    ``reference-v1`` (model 1: one graph with recurrent memory).

    Model 2 without ``--config`` is the trained one when its weights file is there (``TRAINED_REFERENCE``,
    written by ``vla-train``); ``--config`` overrides build the seeded untrained model of that size."""
    if version == 1:
        from .reference import ReferenceConfig as Config
        from .reference import ReferenceVLA as Model
    else:
        from .reference_v2 import ReferenceConfig2 as Config
        from .reference_v2 import ReferenceVLA2 as Model
    word = next(w for w, v in REFERENCES.items() if v == version)
    notes = []
    if version == 2 and not config and TRAINED_REFERENCE.is_file():
        net, meta = read_trained_reference(TRAINED_REFERENCE)
        spec = _module_spec(net, word, spec_path)
        if spec:
            spec = {**spec, "model": {**spec["model"], "weights": {
                "trained": True, "file": TRAINED_REFERENCE.name, "by": meta.get("trained_by", "vla-train"),
                **({"seed": int(meta["seed"])} if meta.get("seed", "").isdigit() else {})}}}
        return LoadedModel(net, net, spec, "reference", Model.__module__,
                           [f"{word}: trained weights {TRAINED_REFERENCE.name}"])
    if version == 2 and config and TRAINED_REFERENCE.is_file():
        notes.append(f"{word}: --config given, so the seeded untrained model is exported (the trained weights "
                     f"{TRAINED_REFERENCE.name} are not used)")
        print(f"vla-export: note: {notes[-1]}", file=sys.stderr, flush=True)
    try:
        net = Model(Config(**parse_overrides(config)))
    except (TypeError, ValueError) as exc:
        raise VlaError(f"{word}: bad --config ({exc}); see {Config.__name__} for the fields") from None
    return LoadedModel(net, net, _module_spec(net, word, spec_path), "reference", Model.__module__, notes)


def _zip_kind(path: Path) -> str:
    """Which zip-based format ``path`` holds, from its member names (nothing is unpickled here)."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") for n in names) or path.suffix == ".pt2":
        return "exported_program"
    return "torch_save"


def _load_torchscript(path: Path, spec_path: str | None) -> LoadedModel:
    extra = {SPEC_FILE: ""}
    try:
        script = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise VlaError(f"MODEL {path}: cannot read the TorchScript archive ({_first_line(exc)}); "
                       "if it is a torch.export program, name it .pt2") from None
    script.eval()
    spec = _with_parameter_count(_archive_spec(str(path), spec_path, extra[SPEC_FILE]), script)
    return LoadedModel(script, script, spec, "torchscript", str(path))


def _load_exported_program(path: Path, spec_path: str | None) -> LoadedModel:
    extra = {SPEC_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:
        raise VlaError(f"MODEL {path}: cannot read the torch.export archive ({_first_line(exc)})") from None
    eager = program.module()
    spec = _with_parameter_count(_archive_spec(str(path), spec_path, extra[SPEC_FILE]), eager)
    return LoadedModel(program, eager, spec, "exported_program", str(path))


def _load_torch_save(path: Path, factory: str | None, spec_path: str | None, trust_pickle: bool) -> LoadedModel:
    """A ``torch.save`` file: a state_dict (safe to read), or pickled objects (only with --trust-pickle)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        pickled = _pickled_global(exc)
        if pickled is None:
            raise VlaError(f"MODEL {path}: cannot read the TorchScript archive or torch.save file "
                           f"({_first_line(exc)})") from None
        if not trust_pickle:
            raise VlaError(
                f"MODEL {path} is a pickled Python object ({pickled}), e.g. torch.save(model); unpickling it runs "
                "code named by the file, so pass --trust-pickle only if you trust where it came from, or save "
                "model.state_dict() instead and pass --factory MODULE:FUNCTION") from None
        if factory:
            raise VlaError(f"--factory only applies to a state_dict MODEL; {path} is a pickled module, "
                           "drop --factory") from None
        return _load_pickled_module(path, spec_path)
    return _load_state_dict(obj, path, factory, spec_path)


def _pickled_global(exc: Exception) -> str | None:
    """The class a weights-only load refused (the file pickles code), or None if the file is just unreadable."""
    text = str(exc)
    if "Weights only load failed" not in text:
        return None
    found = re.search(r"GLOBAL ([\w.]+)", text)
    return found.group(1) if found else "objects beyond tensors"


def _load_pickled_module(path: Path, spec_path: str | None) -> LoadedModel:
    user_import_path()  # the pickle names its classes by module; let the user's own modules resolve
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)  # --trust-pickle was given
    except Exception as exc:
        raise VlaError(f"MODEL {path}: cannot unpickle it ({_first_line(exc)}); the classes it names must be "
                       "importable (run from the directory of their module, or install it)") from None
    if not isinstance(obj, nn.Module):
        raise VlaError(f"MODEL {path}: holds a {type(obj).__name__}, not a torch.nn.Module")
    obj.eval()
    return LoadedModel(obj, obj, _module_spec(obj, str(path), spec_path), "pickled_module", str(path))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise VlaError(f"MODEL {path}: reading .safetensors needs the safetensors package (pip install "
                       "safetensors), or save the weights with torch.save(model.state_dict())") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise VlaError(f"MODEL {path}: cannot read the safetensors file ({_first_line(exc)})") from None


def _load_state_dict(obj: Any, path: Path, factory: str | None, spec_path: str | None) -> LoadedModel:
    weights = _as_state_dict(obj, path)
    if not factory:
        raise VlaError(f"MODEL {path} is a state_dict ({len(weights)} tensors, no code); pass --factory "
                       "MODULE:FUNCTION naming a function that builds the nn.Module to load it into")
    module = build_from_factory(factory)
    _load_weights(module, weights, path, factory)
    module.eval()
    return LoadedModel(module, module, _module_spec(module, str(path), spec_path), "state_dict", str(path))


def _as_state_dict(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, Mapping):
        keys = ", ".join(map(str, list(obj)[:5]))
        raise VlaError(f"MODEL {path}: a torch.save file holding a dict that is not a state_dict (keys: {keys}); "
                       "save model.state_dict() itself")
    raise VlaError(f"MODEL {path}: a torch.save file holding a {type(obj).__name__}, not a state_dict; "
                   "save model.state_dict()")


#: Our top-level source folders (pyproject.toml maps them to vla.runtime, vla.export, vla.kernels). From a
#: checkout they would also import as plain ``runtime``, ``export``, ``kernels``: names other packages
#: have (transformers probes for Hugging Face's ``kernels``), so a checkout never serves them.
PROJECT_FOLDERS = ("runtime", "export", "kernels")
_PROJECT_NAME = re.compile(r'^name\s*=\s*["\']vla-runtime["\']', re.M)


def is_checkout(folder: str | Path) -> bool:
    """Whether ``folder`` is a source checkout of this project (its pyproject.toml names vla-runtime)."""
    root = Path(folder)
    try:
        return all((root / f).is_dir() for f in PROJECT_FOLDERS) and \
            bool(_PROJECT_NAME.search((root / "pyproject.toml").read_text(errors="replace")))
    except OSError:
        return False


class _WithoutProjectFolders:
    """The import path entry of a checkout, minus our folders: every other module there still imports
    (a user's ``my_model.py`` beside them), while ``import kernels`` goes on to the next entry, as if
    the folder were not there. Stored in ``sys.path_importer_cache``, where ``PathFinder`` looks first."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def find_spec(self, fullname: str, target: Any = None) -> Any:
        if fullname in PROJECT_FOLDERS:
            return None
        return self.inner.find_spec(fullname, target)

    def invalidate_caches(self) -> None:
        if hasattr(self.inner, "invalidate_caches"):
            self.inner.invalidate_caches()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _hide_project_folders(entry: str) -> None:
    key = entry or os.getcwd()  # PathFinder's own key for '' (the current directory)
    if not os.path.isdir(key) or isinstance(sys.path_importer_cache.get(key), _WithoutProjectFolders):
        return
    if not is_checkout(key):
        return
    for hook in sys.path_hooks:
        try:
            finder = hook(key)
        except ImportError:
            continue
        sys.path_importer_cache[key] = _WithoutProjectFolders(finder)
        for name in PROJECT_FOLDERS:  # imported from the checkout already (not through vla.*): forget them
            module = sys.modules.get(name)
            if module is not None and str(getattr(module, "__file__", "") or "").startswith(key + os.sep):
                del sys.modules[name]
        importlib.invalidate_caches()
        return


def user_import_path() -> None:
    """Make the user's modules importable, as ``python`` would, without our folders shadowing theirs.

    ``vla-export`` runs as a console script, whose sys.path lacks the current directory: it goes first,
    as it does for ``python -m``. Any entry that is a checkout of this project (the current directory
    in it, ``python -m vla.export.cli`` there, a PYTHONPATH pointing at it) keeps serving every module
    but ``runtime``, ``export`` and ``kernels``: the user's ``import kernels`` finds the installed package
    of that name, or nothing, never our folder.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    for entry in list(sys.path):
        if isinstance(entry, str):
            _hide_project_folders(entry)


def build_from_factory(factory: str) -> nn.Module:
    """``--factory MODULE:FUNCTION``: import it (the current directory is on the path) and call it."""
    mod_name, sep, func_name = factory.partition(":")
    if not sep or not mod_name or not func_name:
        raise VlaError(f"--factory {factory}: expected MODULE:FUNCTION, e.g. --factory my_model:build")
    user_import_path()
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name and (mod_name == exc.name or mod_name.startswith(exc.name + ".")):
            raise VlaError(f"--factory {factory}: no module named {mod_name!r} (it must be importable from the "
                           "current directory or the Python path)") from None
        where = _raised_in(exc)
        raise VlaError(f"--factory {factory}: importing {mod_name!r} failed ({_first_line(exc)}): {where}imports "
                       f"{exc.name!r}, which is not installed here; install {install_hint(exc.name or '?')}, "
                       "or fix the import") from None
    except Exception as exc:
        raise VlaError(f"--factory {factory}: importing {mod_name!r} failed ({_first_line(exc)})") from None
    func = getattr(mod, func_name, None)
    if func is None:
        raise VlaError(f"--factory {factory}: module {mod_name!r} ({getattr(mod, '__file__', '?')}) has no "
                       f"attribute {func_name!r}")
    if not callable(func):
        raise VlaError(f"--factory {factory}: {func_name!r} is a {type(func).__name__}, not a function")
    try:
        module = func()
    except Exception as exc:
        raise VlaError(f"--factory {factory}: calling {func_name}() raised {_first_line(exc)}") from None
    if not isinstance(module, nn.Module):
        raise VlaError(f"--factory {factory}: {func_name}() returned a {type(module).__name__}, "
                       "not a torch.nn.Module")
    return module


def _raised_in(exc: BaseException) -> str:
    """``"path/to/file.py:12 "`` for the innermost frame of ``exc`` outside importlib: whose import failed."""
    frames = [(f.f_code.co_filename, n) for f, n in traceback.walk_tb(exc.__traceback__)
              if not f.f_code.co_filename.startswith("<frozen")]
    return f"{frames[-1][0]}:{frames[-1][1]} " if frames else ""


def _load_weights(module: nn.Module, weights: Mapping[str, torch.Tensor], path: Path, factory: str) -> None:
    """``load_state_dict(strict=True)``, with key and shape mismatches reported in one line first."""
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [f"{k} {list(weights[k].shape)} in the file vs {list(own[k].shape)} in the module"
              for k in own if k in weights and weights[k].shape != own[k].shape]
    problems = [f"{what}: {_few(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes)) if keys]
    if problems:
        raise VlaError(f"MODEL {path} does not fit the module {factory} builds: {'; '.join(problems)}")
    try:
        module.load_state_dict(weights, strict=True)
    except Exception as exc:
        raise VlaError(f"MODEL {path}: loading it into the module {factory} builds failed ({_first_line(exc)})") \
            from None


def _few(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
