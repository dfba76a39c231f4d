"""Route commands and language tokens (the "L" of V+L→A): one encoding path for every caller.

``vla-run --command``, ``Runner.set_command`` (the run-time command channel), ``vla-bench --command``,
``vla-export --command`` and the export's synthetic scenes all encode through ``CommandEncoder``, so
what a model is calibrated, checked, benchmarked and driven with is encoded the same way.

Text inputs are read one of two ways, as the manifest says:

- a **word vocabulary** (``vocabulary.tokens``): ``encode_command("turn left at the next
  intersection", vocab, 16)`` gives the token id of every word (padded with the pad token) and the
  mask of real words. A word the vocabulary lacks is an error, never an <unk>: a driving model must
  not silently get a different instruction from the one the user gave. A command with more words
  than the model reads is replaced by the longest phrase of the command it names that fits, with a
  one-line note (a one-word-command model still takes "turn left at the next intersection");
- a **Hugging Face tokenizer** (``tokenizer``, ``runtime/inputs/text.py``): ids and attention mask, padded
  or cut to the model's length, with a note when text is cut.

The nav command (a ``command`` input) is the vocabulary command whose phrase is the longest one
found in the text (``left`` above). The default command is the manifest's ``default_command``, else
the first vocabulary phrase the model takes as it is; vla-export checks it exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import VlaError
from ..manifest import Manifest


@dataclass(frozen=True)
class EncodedCommand:
    text: str
    nav_id: int  # -1: the model takes no nav command
    nav_name: str  # the nav command's name; the text itself for a text-only model without a match
    token_ids: np.ndarray  # int64 [L]
    mask: np.ndarray  # bool [L]
    note: str | None = None  # one line when what the model gets differs from the text (cut, or a phrase)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9'-]+", text.lower())


def _names(vocab: dict[str, Any]) -> str:
    return ", ".join(c["name"] for c in vocab["commands"])


def _match(words: list[str], vocab: dict[str, Any]) -> dict[str, Any] | None:
    """The command whose phrase is the longest one found in ``words`` (whole words), or None."""
    joined = f" {' '.join(words)} "
    best: tuple[int, dict[str, Any]] | None = None
    for cmd in vocab["commands"]:
        for phrase in cmd["phrases"]:
            p = " ".join(_words(phrase))
            if p and f" {p} " in joined and (best is None or len(p) > best[0]):
                best = (len(p), cmd)
    return best[1] if best else None


def encode_command(text: str, vocab: dict[str, Any], length: int) -> EncodedCommand:
    """Tokenise a route command word by word, as it is; raise ``VlaError`` naming the unknown word, the
    missing command or the length."""
    names = _names(vocab)
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
    best = _match(words, vocab)
    if best is None:
        raise VlaError(f"route command {text!r} names none of the model's commands ({names})")
    ids = np.full(length, index[vocab["pad"]], dtype=np.int64)
    ids[: len(words)] = [index[w] for w in words]
    mask = np.zeros(length, dtype=bool)
    mask[: len(words)] = True
    return EncodedCommand(text, int(best["id"]), best["name"], ids, mask)


def fit_words(text: str, vocab: dict[str, Any], length: int) -> EncodedCommand:
    """``encode_command``, except that a command with more words than the model reads gets the longest
    phrase of the command it names that the model does read, with a note saying so."""
    words = _words(text)
    if len(words) <= length:
        return encode_command(text, vocab, length)
    cmd = _match(words, vocab)
    index = set(vocab["tokens"])
    fitting = [p for p in (cmd["phrases"] if cmd else [])
               if 0 < len(_words(p)) <= length and all(w in index for w in _words(p))]
    if not fitting:
        return encode_command(text, vocab, length)  # raises: the unknown words, or the length
    phrase = max(fitting, key=lambda p: len(_words(p)))  # the most telling one; the first of equals
    note = (f"route command {text!r} has {len(words)} words and the model reads at most {length}: "
            f"it gets {phrase!r} (command {cmd['name']})")
    return replace(encode_command(phrase, vocab, length), text=text, note=note)


class CommandEncoder:
    """A manifest's way of turning route-command text into its command and text inputs.

    ``encode(None)`` is the default command. The tokenizer, when the model has one, is loaded on the
    first encode (``runtime/inputs/text.py``), so a model without text never imports ``tokenizers``.
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.command_inputs = manifest.inputs_with("command")
        self.text_inputs = manifest.inputs_with("text")
        ids = [t for t in self.text_inputs if t.detail["kind"] == "ids"]
        self.length = (ids or self.text_inputs)[0].shape[-1] if self.text_inputs else 0
        self._tokenizer: Any = None
        self._default: str | None = None

    @property
    def takes_command(self) -> bool:
        """Whether the model has any input a route command goes into."""
        return bool(self.command_inputs or self.text_inputs)

    def refuse_if_unused(self, text: str | None, flag: str = "--command") -> None:
        """A command given to a model that has nowhere to put it is an error, not silently dropped."""
        if text is not None and not self.takes_command:
            raise VlaError(f"{flag} {text!r}: model '{self.manifest.name}' takes no route command (it has no "
                           f"command or text input); drop {flag}")

    def encode(self, text: str | None) -> EncodedCommand | None:
        """``text`` (None: the default command) for this model; None when it takes no command."""
        self.refuse_if_unused(text)
        if not self.takes_command:
            return None
        return self._encode(self.default() if text is None else text)

    def _encode(self, text: str) -> EncodedCommand:
        vocab = self.manifest.vocabulary
        if self.text_inputs and self.manifest.tokenizer is None:
            return fit_words(text, vocab, self.length)
        if not text.strip():  # not ``_words``: a tokenizer reads text that has no ASCII word ("直行")
            raise VlaError(f"route command {text!r} is empty")
        try:  # argv's undecodable bytes arrive as lone surrogates, which a tokenizer refuses with a TypeError
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise VlaError(f"route command {text!r} is not valid text (undecodable bytes); retype it") from None
        words = _words(text)
        cmd = _match(words, vocab) if vocab else None
        if self.command_inputs and cmd is None:
            raise VlaError(f"route command {text!r} names none of the model's commands ({_names(vocab)})")
        if not self.text_inputs:
            empty = np.zeros(0, dtype=np.int64)
            return EncodedCommand(text, int(cmd["id"]), cmd["name"], empty, empty.astype(bool))
        from .text import tokenize

        block = self.manifest.tokenizer
        tokens = tokenize(self._tokenizer_object(), text, self.length, block["pad_id"])
        notes = []
        if tokens.cut:
            notes.append(f"route command {text!r} is {tokens.total} tokens and the model reads {self.length}: "
                         f"cut to the first {self.length}")
        if tokens.unknown:
            notes.append(f"route command {text!r}: the tokenizer does not know {list(tokens.unknown)} "
                         "(fed as its unknown token)")
        return EncodedCommand(text, int(cmd["id"]) if cmd and self.command_inputs else -1,
                              cmd["name"] if cmd else text, tokens.ids, tokens.mask, "; ".join(notes) or None)

    def _tokenizer_object(self) -> Any:
        if self._tokenizer is None:
            from .text import load

            self._tokenizer = load(self.manifest.tokenizer_file, self.manifest.tokenizer)
        return self._tokenizer

    def _clean(self, text: str) -> bool:
        """Whether the model takes ``text`` as it is (no error, nothing cut or replaced)."""
        try:
            return self._encode(text).note is None
        except VlaError:
            return False

    def default(self) -> str:
        """The manifest's ``default_command``, else the first vocabulary phrase the model takes as it is."""
        if self._default is None:
            named = self.manifest.raw.get("default_command")
            if named:
                self._default = named
            else:
                phrases = [p for c in (self.manifest.vocabulary or {}).get("commands", []) for p in c["phrases"]]
                found = next((p for p in phrases if self._clean(p)), None)
                if found is None:
                    raise VlaError(
                        f"model '{self.manifest.name}' has no default route command: "
                        + ("none of its vocabulary's phrases fits its text input" if phrases else
                           "it has no vocabulary commands")
                        + "; name one in the spec's 'default_command', or give --command")
                self._default = found
        return self._default

    def accepted(self) -> list[str]:
        """Commands the model takes as they are: for each vocabulary command the first such phrase, then
        the default if not among them. What synthetic scenes feed."""
        if not self.takes_command:
            return []
        texts = []
        for cmd in (self.manifest.vocabulary or {}).get("commands", []):
            phrase = next((p for p in cmd["phrases"] if self._clean(p)), None)
            if phrase is not None:
                texts.append(phrase)
        default = self.default()
        if default not in texts:
            texts.append(default)
        return texts

    def write(self, enc: EncodedCommand | None, feed: Callable[[str], np.ndarray]) -> None:
        """Put an encoded command into the command and text inputs, each reached as ``feed(name)`` (batch 1)."""
        if enc is None:
            return
        for t in self.command_inputs:
            feed(t.name)[...] = enc.nav_id
        for t in self.text_inputs:
            feed(t.name)[0] = enc.token_ids if t.detail["kind"] == "ids" else enc.mask


def write_command(manifest: Manifest, text: str | None, feed: Callable[[str], np.ndarray],
                  warn: Callable[[str], None] | None = None) -> str:
    """Encode ``text`` (None: the default command) into the manifest's command and text inputs, each
    written through ``feed(name)`` (batch 1); ``warn`` gets the encoding's note, if any. Returns the
    command's name, or "" when the model takes no command (a ``text`` given to it is an error)."""
    encoder = CommandEncoder(manifest)
    enc = encoder.encode(text)
    if enc is None:
        return ""
    if enc.note and warn is not None:
        warn(enc.note)
    encoder.write(enc, feed)
    return enc.nav_name
