"""Route commands and language tokens (the "L" of V+L→A), through the manifest's vocabulary.

``encode_command("turn left at the next intersection", vocab, 16)`` gives the nav command whose
phrase is the longest one found in the text (``left``), the token ids of every word (padded with the
pad token) and the mask of real tokens. A word the vocabulary lacks is an error, never an <unk>: a
driving model must not silently get a different instruction from the one the user gave.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import VlaError
from .manifest import Manifest


@dataclass(frozen=True)
class EncodedCommand:
    text: str
    nav_id: int
    nav_name: str
    token_ids: np.ndarray  # int64 [L]
    mask: np.ndarray  # bool [L]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9'-]+", text.lower())


def encode_command(text: str, vocab: dict[str, Any], length: int) -> EncodedCommand:
    """Tokenise a route command; raise ``VlaError`` naming the unknown word or the missing command."""
    names = ", ".join(c["name"] for c in vocab["commands"])
    words = _words(text)
    if not words:
        raise VlaError(f"route command {text!r} is empty (the model knows: {names})")
    index = {tok: i for i, tok in enumerate(vocab["tokens"])}
    unknown = [w for w in words if w not in index]
    if unknown:
        raise VlaError(f"route command {text!r}: word(s) {unknown} are not in the model's vocabulary "
                       f"(its commands: {names})")
    if len(words) > length:
        raise VlaError(f"route command {text!r} has {len(words)} words; the model takes at most {length}")
    joined = f" {' '.join(words)} "
    best: tuple[int, dict[str, Any]] | None = None
    for cmd in vocab["commands"]:
        for phrase in cmd["phrases"]:
            p = " ".join(_words(phrase))
            if p and f" {p} " in joined and (best is None or len(p) > best[0]):
                best = (len(p), cmd)
    if best is None:
        raise VlaError(f"route command {text!r} names none of the model's commands ({names})")
    ids = np.full(length, index[vocab["pad"]], dtype=np.int64)
    ids[: len(words)] = [index[w] for w in words]
    mask = np.zeros(length, dtype=bool)
    mask[: len(words)] = True
    return EncodedCommand(text, int(best[1]["id"]), best[1]["name"], ids, mask)


def write_command(manifest: Manifest, text: str | None, feed: Callable[[str], np.ndarray]) -> str:
    """Encode ``text`` (default: the vocabulary's first command) into the manifest's command and text
    inputs, each written through ``feed(name)`` (batch 1); returns the nav command's name, or "" when
    the model takes no command."""
    cmd_inputs, text_inputs = manifest.inputs_with("command"), manifest.inputs_with("text")
    if not cmd_inputs and not text_inputs:
        return ""
    vocab = manifest.vocabulary
    ids = [t for t in text_inputs if t.detail["kind"] == "ids"]
    length = ids[0].shape[-1] if ids else 1
    enc = encode_command(text or vocab["commands"][0]["phrases"][0], vocab, length)
    for t in cmd_inputs:
        feed(t.name)[...] = enc.nav_id
    for t in text_inputs:
        feed(t.name)[0] = enc.token_ids if t.detail["kind"] == "ids" else enc.mask
    return enc.nav_name
