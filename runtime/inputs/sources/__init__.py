"""Camera sources by URI: one grammar for every kind of camera, mapped onto the model's cameras.

``--camera`` takes ``[NAME=]URI``. Served here:

==========================  ====================================================================
``synthetic://[?k=v&…]``    built-in procedural road scene, its own process (``synthetic.py``)
``PATH`` / ``file://PATH``  a video file, decoded by OpenCV's FFmpeg backend (``video.py``)
==========================  ====================================================================

Mapping onto the manifest's camera names: named URIs go to their camera; a single unnamed URI
feeds every camera (``synthetic://`` then renders a synchronised rig, one view per camera name);
several unnamed URIs are taken in the manifest's camera order.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from urllib.parse import unquote, urlsplit

from ...errors import CameraError
from .base import CameraSource, End, Frame


def parse_camera_arg(arg: str) -> tuple[str | None, str]:
    """``front=synthetic://`` -> ("front", "synthetic://"); ``clip.mp4`` -> (None, "clip.mp4")."""
    head, sep, tail = arg.partition("=")
    if sep and head and "://" not in head and "/" not in head and "?" not in head:
        return head, tail
    return None, arg


def assign_cameras(args: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """Camera name -> URI for every camera of the model; a pure function of the arguments."""
    pairs = [parse_camera_arg(a) for a in args] or [(None, "synthetic://")]
    named = {n: u for n, u in pairs if n is not None}
    unnamed = [u for n, u in pairs if n is None]
    known = ", ".join(names)
    for n in named:
        if n not in names:
            raise CameraError(f"--camera {n}=…: the model has no camera '{n}' (its cameras: {known})")
    if len(named) != sum(1 for n, _ in pairs if n is not None):
        raise CameraError("--camera: the same camera name is given twice")
    free = [n for n in names if n not in named]
    if len(unnamed) == 1 and not named:
        return dict.fromkeys(names, unnamed[0])
    if len(unnamed) > len(free):
        raise CameraError(f"--camera: {len(unnamed)} unnamed URIs but only {len(free)} camera(s) left "
                          f"({', '.join(free) or 'none'}); name them: --camera NAME=URI")
    if len(unnamed) < len(free):
        missing = free[len(unnamed):]
        raise CameraError(f"--camera: no source for camera(s) {', '.join(missing)}; "
                          f"add --camera {missing[0]}=URI (the model's cameras: {known})")
    return {**named, **dict(zip(free, unnamed, strict=True))}


def scheme_of(uri: str) -> str:
    if "://" not in uri:
        return "file"
    return urlsplit(uri).scheme.lower()


def open_cameras(args: Sequence[str], names: Sequence[str],
                 sizes: Mapping[str, tuple[int, int]] | None = None) -> dict[str, CameraSource]:
    """Open a source for every model camera; on any failure, close what was opened and raise.

    ``sizes`` (camera name -> the model's (width, height), ``Manifest.camera_sizes``) is what a
    rendering source (``synthetic://``) renders when its URI does not ask for a size: a camera
    rendered larger than the model sees only costs CPU and delivery time."""
    plan = assign_cameras(args, names)
    opened: dict[str, CameraSource] = {}
    try:
        by_uri: dict[str, list[str]] = {}
        for name, uri in plan.items():
            by_uri.setdefault(uri, []).append(name)
        for uri, cams in by_uri.items():
            wanted = [sizes[c] for c in cams if sizes and c in sizes]
            size = max(wanted, key=lambda wh: wh[0] * wh[1]) if wanted else None
            for src in _open_uri(uri, cams, size):
                opened[src.name] = src
        return {n: opened[n] for n in names}
    except BaseException:
        for src in opened.values():
            src.close()
        raise


#: scheme -> module (in this package) whose ``open_source(uri, name)`` serves it.
SCHEMES = {
    "synthetic": "synthetic",
    "file": "video",  # a video file; a folder goes to .images (see _module_for)
    "v4l2": "v4l2",
    "csi": "gstreamer",
    "gst": "gstreamer",
    "rtsp": "stream",
    "rtsps": "stream",
    "http": "stream",
    "https": "stream",
    "lavfi": "stream",
}


def _module_for(uri: str) -> str:
    scheme = scheme_of(uri)
    if scheme not in SCHEMES:
        raise CameraError(f"camera URI {uri!r}: unknown scheme '{scheme}://' (served: "
                          + ", ".join(f"{k}://" for k in SCHEMES) + ", /dev/videoN, or a path)")
    if scheme == "file":
        path = local_path(uri)
        if path.startswith("/dev/video"):
            return "v4l2"
        if os.path.isdir(path):
            return "images"
    return SCHEMES[scheme]


def local_path(uri: str) -> str:
    """The filesystem path of a ``file://`` URI or a bare path, without its query."""
    if "://" in uri:
        return unquote(urlsplit(uri).path)
    return uri.split("?", 1)[0]


def _open_uri(uri: str, names: list[str], size: tuple[int, int] | None) -> list[CameraSource]:
    module = _module_for(uri)
    if module == "synthetic":
        from .synthetic import open_synthetic

        return open_synthetic(uri, names, default_size=size)  # one rig renders a synchronised view per camera
    mod = importlib.import_module(f"{__name__}.{module}")
    first = mod.open_source(uri, names[0])
    return [first, *(_Alias(first, n) for n in names[1:])]


class _Alias(CameraSource):
    """One source feeding a second camera name (a single video for every camera of the model)."""

    def __init__(self, source: CameraSource, name: str) -> None:
        self.source, self.name, self.uri = source, name, source.uri
        self.provides_ego = source.provides_ego

    def newest(self) -> Frame | None:
        return self.source.newest()

    def ended(self) -> End | None:
        return self.source.ended()

    def trouble(self) -> str | None:
        return self.source.trouble()

    def close(self) -> None:
        self.source.close()


__all__ = ["CameraSource", "Frame", "assign_cameras", "open_cameras", "parse_camera_arg"]
