"""Calibration data for INT8: the synthetic scene, or a folder of recorded inputs.

``--calib DIR`` takes either form of recording:

- ``*.npz`` files, one input set each, arrays named as the manifest's inputs (what a logger of the
  engine's inputs writes); every input must be there except ``noise``-role ones, which are drawn.
- images (``.png``/``.jpg``/``.jpeg``/``.bmp``), either in sub-folders named after the manifest's
  cameras (sample *i* takes the *i*-th file of each) or flat (each image is shown to every camera).
  They are centre-cropped to the model's aspect ratio and resized; the other inputs come from a
  synthetic drive whose recurrent state is rolled forward on these very images.

The data hash (sha256 over every array of every set, in order) goes into the manifest, so two
bundles calibrated on different data can be told apart.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from vla.kernels.preprocess import centre_crop
from vla.runtime.errors import VlaError
from vla.runtime.manifest import Manifest

from .scenes import StepFn, scene_sets

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def data_hash(sets: list[dict[str, np.ndarray]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every array of every set, in order."""
    h = hashlib.sha256()
    for feeds in sets:
        for name in sorted(feeds):
            arr = np.ascontiguousarray(feeds[name])
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path, width: int, height: int) -> np.ndarray:
    """RGB [height, width, 3] uint8: centre crop to the aspect ratio, then resize (area filter)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise VlaError(f"--calib {path}: not a readable image")
    x, y, w, h = centre_crop(img.shape[1], img.shape[0], width, height)
    img = cv2.resize(img[y : y + h, x : x + w], (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img[..., ::-1])


class ImageFolder:
    """A ``scenes.FrameSource`` over recorded images, one sample per calibration set.

    ``frame()`` shows the current sample, as a still scene, to every tick until ``scene_sets`` keeps
    a set and calls ``advance()``: so the ticks that only carry the recurrent state forward do not
    use up images, and N images give N distinct sets.
    """

    def __init__(self, samples: list[dict[str, Path]], width: int, height: int) -> None:
        self.samples, self.width, self.height, self.next = samples, width, height, 0
        self._shown: tuple[int, dict[str, np.ndarray]] | None = None

    def frame(self, t: float) -> dict[str, np.ndarray]:
        index = self.next % len(self.samples)
        if self._shown is None or self._shown[0] != index:  # each image read once per time it is shown
            sample = self.samples[index]
            self._shown = (index, {cam: _read_image(p, self.width, self.height) for cam, p in sample.items()})
        return self._shown[1]

    def advance(self) -> None:
        """The current sample went into a kept set: show the next one."""
        self.next += 1


def _image_samples(folder: Path, names: list[str]) -> list[dict[str, Path]]:
    subdirs = {p.name: p for p in folder.iterdir() if p.is_dir()}
    if all(n in subdirs for n in names):
        per_cam = {n: _images(subdirs[n]) for n in names}
        count = min(len(v) for v in per_cam.values())
        if count == 0:
            empty = [n for n, v in per_cam.items() if not v]
            raise VlaError(f"--calib {folder}: camera folder(s) {empty} hold no images")
        return [{n: per_cam[n][i] for n in names} for i in range(count)]
    flat = _images(folder)
    return [dict.fromkeys(names, p) for p in flat]


def _npz_sets(files: list[Path], manifest: Manifest, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    sets = []
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # empty or corrupt files too
            why = str(exc) or type(exc).__name__
            raise VlaError(f"--calib {path}: not a readable .npz recording ({why})") from None
        feeds = {}
        for spec in manifest.inputs:
            if spec.name not in arrays:
                if spec.role == "noise":
                    feeds[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
                    continue
                raise VlaError(f"--calib {path}: no array '{spec.name}' (it holds {sorted(arrays)}); "
                               f"a recording needs every model input: {[t.name for t in manifest.inputs]}")
            arr = arrays[spec.name]
            if tuple(arr.shape) != tuple(spec.shape) or arr.dtype != np.dtype(spec.dtype):
                raise VlaError(f"--calib {path}: '{spec.name}' is {arr.dtype}{list(arr.shape)}, "
                               f"the model takes {spec.dtype}{list(spec.shape)}")
            feeds[spec.name] = arr
        sets.append(feeds)
    return sets


def check_source(source: str, manifest: Manifest, count: int | None = None) -> None:
    """Fail fast, before the slow export, on a calibration folder that cannot work: every file the
    calibration will read (the first ``count`` recordings or images; all without ``count``) must load."""
    if source == "synthetic":
        return
    folder = Path(source)
    if not folder.is_dir():
        raise VlaError(f"--calib {source}: no such folder (give a folder of .npz recordings or images, "
                       "or 'synthetic')")
    npz = sorted(folder.glob("*.npz"))
    if npz:
        _npz_sets(npz[:count], manifest, np.random.default_rng(0))
        return
    cams = manifest.inputs_with("camera")
    if not cams:
        raise VlaError(f"--calib {source}: the model has no camera input; give .npz recordings")
    names = cams[0].detail["names"]
    samples = _image_samples(folder, names)
    if not samples:
        raise VlaError(f"--calib {source}: no .npz recordings and no images ({', '.join(IMAGE_SUFFIXES)}) "
                       f"in the folder or in sub-folders named {names}")
    for path in {p for sample in samples[:count] for p in sample.values()}:
        _read_image(path, 8, 8)


def calibration_sets(source: str, manifest: Manifest, step: StepFn, count: int, seed: int,
                     command: str | None = None) -> tuple[list[dict[str, np.ndarray]], dict[str, object]]:
    """The calibration input sets and how they were made (recorded in the manifest); ``check_source``
    has vetted ``source`` already (the pipeline runs it before the slow export). ``command``: the route
    command of the synthetic drives (``vla-export --command``; default: those the model takes)."""
    if source == "synthetic":
        sets = scene_sets(manifest, step, count=count, seed=seed, command=command)
        return sets, {"source": "synthetic", "seed": seed, "samples": len(sets), "hash": data_hash(sets)}
    folder = Path(source)
    npz = sorted(folder.glob("*.npz"))
    if npz:
        sets = _npz_sets(npz[:count], manifest, np.random.default_rng(seed))
        kind = "npz"
    else:
        cam = manifest.inputs_with("camera")[0].detail
        samples = _image_samples(folder, cam["names"])
        images = ImageFolder(samples, cam["width"], cam["height"])  # one reel, read on across drives
        sets = scene_sets(manifest, step, count=min(count, len(samples)), seed=seed, frames_for=lambda d: images,
                          command=command)
        kind = "images"
    return sets, {"source": str(folder), "kind": kind, "samples": len(sets), "hash": data_hash(sets)}
