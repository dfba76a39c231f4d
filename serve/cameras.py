"""Which simulator camera feeds which of the bundle's cameras, and a submitted image as a frame.

A session declares its cameras by logical id (AlpaSim's ``camera_front_wide_120fov``,
``camera_cross_left_120fov``, ...; FakeLoop's ``camera_front``); the bundle names its own (``front``,
``left``, ``right``). Each bundle camera gets, in this order of precedence:

1. the id ``--camera-map NAME=ID`` gives it (a session that lacks that id is refused: the user said so);
2. by name: the first declared id (in declaration order, not taken yet) whose words (split on anything
   not a letter or digit) include every word of the bundle camera's name: ``left`` takes
   ``camera_cross_left_120fov`` before ``camera_rear_left_70fov`` when AlpaSim declares it first;
3. by order: the first declared id no other bundle camera took.

A bundle camera left without one (FakeLoop's demo declares one camera; the reference model reads three)
is fed a neutral frame, the normalisation's mean colour (zero after normalisation: "nothing seen"),
and the session's start line says so. Declared cameras the bundle does not use are accepted and ignored.

Images are decoded when they are submitted: JPEG or PNG, told from the bytes, not from a field; a frame
of another size than its camera declared is resized to the declared size (the intrinsics are for it),
then the runtime's preprocessing crops and resizes it to the model's input as for any camera.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from vla.runtime.errors import VlaError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The largest image decoded (an 8K frame is 33 Mpixels): more is refused before it is decoded.
MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """Bytes that are not a decodable JPEG or PNG image (the message says which)."""


@dataclass(frozen=True)
class CameraMapping:
    """Bundle camera -> declared logical id (None: fed a neutral frame), and how each was chosen."""

    source: dict[str, str | None]
    how: dict[str, str]  # "--camera-map", "by name", "by order" or "none"

    @property
    def used(self) -> dict[str, str]:
        """Declared id -> the bundle camera it feeds."""
        return {cid: name for name, cid in self.source.items() if cid is not None}

    def describe(self) -> str:
        """One line: ``front=camera_front (by name), left=- (neutral frame)``."""
        return ", ".join(f"{n}={c} ({self.how[n]})" if c else f"{n}=- (no camera: neutral frame)"
                         for n, c in self.source.items())


def words(name: str) -> list[str]:
    """A camera name's words: lower case, split on anything not a letter or digit."""
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def parse_camera_map(items: Sequence[str], bundle: Sequence[str]) -> dict[str, str]:
    """``--camera-map NAME=ID`` items (each may hold several, comma separated) -> {bundle name: id};
    a one-line ``VlaError`` for a malformed item, an unknown bundle camera, or one mapped twice."""
    out: dict[str, str] = {}
    for item in (part.strip() for text in items for part in text.split(",")):
        if not item:
            continue
        name, sep, cid = (s.strip() for s in item.partition("="))
        if not sep or not name or not cid:
            raise VlaError(f"--camera-map {item!r}: expected NAME=LOGICAL_ID, e.g. front=camera_front_wide_120fov")
        if name not in bundle:
            raise VlaError(f"--camera-map {item!r}: the bundle has no camera {name!r} (its cameras: "
                           f"{', '.join(bundle)})")
        if name in out:
            raise VlaError(f"--camera-map: camera {name!r} is mapped twice ({out[name]!r} and {cid!r})")
        out[name] = cid
    return out


def map_cameras(bundle: Sequence[str], declared: Sequence[str], explicit: Mapping[str, str]) -> CameraMapping:
    """Map the bundle's cameras onto a session's declared ids (see the module docstring for the rules).
    Raises ``ValueError`` when an explicitly mapped id is not declared."""
    missing = {n: c for n, c in explicit.items() if c not in declared}
    if missing:
        raise ValueError("--camera-map names camera(s) this session does not declare: "
                         + ", ".join(f"{n}={c}" for n, c in missing.items())
                         + f" (declared: {', '.join(declared) or 'none'})")
    source: dict[str, str | None] = dict.fromkeys(bundle)
    how = dict.fromkeys(bundle, "none")
    taken: set[str] = set()
    for name, cid in explicit.items():
        source[name], how[name] = cid, "--camera-map"
        taken.add(cid)
    # Names with more words are more specific: "front_left" picks before "left" can take its camera.
    for name in sorted((n for n in bundle if source[n] is None), key=lambda n: -len(words(n))):
        need = set(words(name))
        match = next((c for c in declared if c not in taken and need and need <= set(words(c))), None)
        if match is not None:
            source[name], how[name] = match, "by name"
            taken.add(match)
    for name in bundle:
        if source[name] is None:
            match = next((c for c in declared if c not in taken), None)
            if match is not None:
                source[name], how[name] = match, "by order"
                taken.add(match)
    return CameraMapping(source, how)


def sniff(data: bytes) -> str | None:
    """``"jpeg"`` or ``"png"`` from the bytes' signature, else None."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def header_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's start-of-frame marker, without decoding; None when the
    header does not say (a decode will then fail and say so)."""
    if kind == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn: precision, height, width
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    return None


def decode_image(data: bytes, size: tuple[int, int] | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """JPEG or PNG bytes -> a BGR uint8 [H, W, 3] image, resized to ``size`` (width, height) when it has
    another; ``ImageError`` naming the problem when the bytes are neither, declare more than ``max_pixels``
    (a small message may decompress to gigabytes: checked from the header, before decoding) or do not
    decode."""
    kind = sniff(data)
    if kind is None:
        head = data[:8].hex(" ") if data else "no bytes"
        raise ImageError(f"not a JPEG or PNG image ({len(data)} bytes starting {head})")
    declared = header_size(data, kind)
    if declared is not None and declared[0] * declared[1] > max_pixels:
        raise ImageError(f"{kind.upper()} image of {declared[0]}x{declared[1]} pixels is larger than the "
                         f"{max_pixels / 1e6:g} Mpixel limit")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError(f"{kind.upper()} image of {len(data)} bytes does not decode")
    if size is not None and size[0] > 0 and size[1] > 0 and (image.shape[1], image.shape[0]) != tuple(size):
        shrink = image.shape[1] > size[0]
        image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return image


def neutral_frame(camera: Mapping[str, Any]) -> np.ndarray:
    """An RGB frame at the model's size for a camera nobody feeds: the normalisation's mean colour (zero
    once normalised), or mid-grey for a model without normalisation."""
    norm = camera.get("normalization")
    colour = np.asarray(norm["mean"], dtype=np.float64) if norm else np.full(3, 127.5)
    if camera.get("color", "RGB").upper() == "BGR":
        colour = colour[::-1]  # the mean is in the model's channel order; the frame is RGB
    return np.broadcast_to(np.clip(np.rint(colour), 0, 255).astype(np.uint8),
                           (camera["height"], camera["width"], 3)).copy()
