"""Subword text through a Hugging Face ``tokenizers`` file (``tokenizer.json``), the way real VLAs read it.

A bundle exported with ``vla-export --tokenizer tokenizer.json`` carries the file and names it in the
manifest's ``tokenizer`` block (file, sha256, vocabulary size, pad id). At run time only the
``tokenizers`` package is needed (Rust, no torch or transformers), imported on the first command, so
a model without text never needs it. The file's hash is checked on load: a tokenizer edited after
the export would silently feed the model different ids.

``tokenize`` pads and truncates to the model's text length itself (the file's own padding and
truncation settings are for training batches, not for a fixed-shape engine input) and says whether
the text was cut, so the caller can warn in one line.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VlaError

#: Pad tokens tried, in order, when the tokenizer file has no padding configured.
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<|padding|>", "<PAD>", "[pad]")


@dataclass(frozen=True)
class Tokens:
    """A text as the model's text inputs take it: ``length`` ids and mask, and what was lost."""

    ids: np.ndarray  # int64 [length]
    mask: np.ndarray  # bool [length]: True for real tokens (special tokens included)
    total: int  # tokens the text has before truncation (special tokens included)
    unknown: tuple[str, ...]  # pieces the tokenizer mapped to its unknown token

    @property
    def cut(self) -> bool:
        return self.total > len(self.ids)


def _import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        from ..cli_support import install_hint

        raise VlaError(f"this model reads its text with a Hugging Face tokenizer: needs {install_hint('tokenizers')}"
                       ) from None
    return tokenizers


def file_sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _read(path: Path) -> Any:
    """The ``tokenizers.Tokenizer`` of ``path``; a file it cannot read is a one-line error."""
    tokenizers = _import_tokenizers()
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exceptions with long serde messages
        raise VlaError(f"{path}: not a Hugging Face tokenizers file (tokenizer.json): "
                       f"{' '.join(str(exc).split())[:160]}") from None


def pad_of(tok: Any) -> tuple[int, str | None]:
    """(pad id, pad token): the file's padding setting, else a usual pad token, else id 0 (the mask
    tells the model those positions are empty whatever they hold)."""
    padding = tok.padding
    if padding:
        return int(padding["pad_id"]), padding.get("pad_token")
    for name in PAD_TOKENS:
        found = tok.token_to_id(name)
        if found is not None:
            return int(found), name
    return 0, None


def describe_file(path: Path) -> dict[str, Any]:
    """The manifest's ``tokenizer`` block for a tokenizer file (export time): what the runtime needs to
    load and check it. ``vocab_size`` counts added tokens too: every id the tokenizer can emit."""
    if not path.is_file():
        raise VlaError(f"--tokenizer {path}: no such file")
    tok = _read(path)
    pad_id, pad_token = pad_of(tok)
    block: dict[str, Any] = {"file": "tokenizer.json", "sha256": file_sha256(path),
                             "vocab_size": int(tok.get_vocab_size(with_added_tokens=True)), "pad_id": pad_id}
    if pad_token is not None:
        block["pad_token"] = pad_token
    model_type = json.loads(path.read_text()).get("model", {}).get("type")
    if model_type:
        block["model"] = str(model_type)
    return block


_cache: dict[tuple[str, str], Any] = {}
_cache_lock = threading.Lock()


def load(path: Path | None, block: dict[str, Any]) -> Any:
    """The tokenizer the manifest's ``block`` names, found at ``path`` (the bundle's copy), hash checked.

    Loaded once per file and hash; the tokenizer object is then only read (``encode_batch`` style calls
    with no state), so it is shared between threads.
    """
    if path is None:
        raise VlaError(f"the model reads its text with the tokenizer {block['file']!r}, but where it is is not "
                       "known here; run the bundle folder (it holds the file) rather than a bare .onnx or .plan")
    key = (str(path), block["sha256"])
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    if not path.is_file():
        raise VlaError(f"{path}: the tokenizer the manifest names is missing; copy it back from the exported "
                       f"bundle (sha256 {block['sha256'][7:19]}…)")
    found = file_sha256(path)
    if found != block["sha256"]:
        raise VlaError(f"{path}: the tokenizer changed since the export (sha256 {found[7:19]}…, the manifest says "
                       f"{block['sha256'][7:19]}…); restore the bundle's copy or re-export with the new one")
    tok = _read(path)
    tok.no_padding()
    tok.no_truncation()
    with _cache_lock:
        _cache[key] = tok
    return tok


def tokenize(tok: Any, text: str, length: int, pad_id: int) -> Tokens:
    """``text`` as ``length`` ids (special tokens as the file's post-processor adds them) and a mask;
    longer text is cut at the end, keeping the closing special tokens where the file has them."""
    full = tok.encode(text)
    total = len(full.ids)
    enc = full
    if total > length:
        enc = _truncated(tok, text, length)
    ids = np.full(length, pad_id, dtype=np.int64)
    mask = np.zeros(length, dtype=bool)
    n = min(len(enc.ids), length)
    ids[:n] = enc.ids[:n]
    mask[:n] = np.asarray(enc.attention_mask[:n], dtype=bool)
    unk = _unknown_id(tok)
    unknown = tuple(t for i, t in zip(full.ids, full.tokens, strict=True) if unk is not None and i == unk)
    return Tokens(ids, mask, total, unknown)


def _truncated(tok: Any, text: str, length: int) -> Any:
    """The file's own truncation (which keeps [CLS] ... [SEP] whole) at ``length``. A tokenizer object is
    configured per call here, so a copy is made: the shared one stays untouched for other threads."""
    tokenizers = _import_tokenizers()
    local = tokenizers.Tokenizer.from_str(tok.to_str())
    try:
        local.enable_truncation(max_length=length)
        return local.encode(text)
    except Exception:  # the special tokens alone exceed length: cut the plain encoding
        return tok.encode(text)


def _unknown_id(tok: Any) -> int | None:
    name = getattr(tok.model, "unk_token", None)
    return tok.token_to_id(name) if name else None
