"""Reading a recording back: the engine runs, tick records, raw frames and metadata of an MCAP file.

The file is read as a stream of records (``mcap.stream_reader``), not through its summary, so a file
whose writer was killed (no summary, a chunk cut short) still gives every complete chunk before the
cut: ``Recording.truncated`` says where it stopped. Such a file is refused unless the caller accepts
salvage (``vla-replay --salvage``), because a replay of part of a run must never pass for all of it.

Everything wrong with a file is one ``VlaError`` line naming the file and the problem: not MCAP, a
checksum that does not match (corrupt), not a vla-run recording (no manifest), a tensor message that
does not decode, channels missing.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VlaError
from ..record import format as fmt


@dataclass
class RunRecord:
    """One engine run as recorded: what it read and what it gave."""

    run: int
    kind: str  # model | slow | fast
    tick: int
    context_run: int | None
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    states: dict[str, np.ndarray] = field(default_factory=dict)
    context: dict[str, np.ndarray] = field(default_factory=dict)
    input_names: tuple[str, ...] = ()
    device_cameras: tuple[str, ...] = ()  # camera inputs made on the GPU: preprocess the tick's raw frames
    outputs: dict[str, np.ndarray] | None = None  # None: never collected (the run ended first)
    usable: bool | None = None
    error: str | None = None  # the engine raised live: nothing of this run was used

    @property
    def complete(self) -> bool:
        """Every input it read is in the file (a snippet may begin mid-run)."""
        return all(n in self.inputs for n in self.input_names)


@dataclass
class Recording:
    path: Path
    metadata: dict[str, dict[str, str]]
    manifest_raw: dict[str, Any]
    runs: list[RunRecord]
    ticks: list[dict[str, Any]]
    raw_frames: dict[int, dict[str, tuple[np.ndarray, str]]]  # tick -> camera -> (data, pixel format)
    topics: set[str]
    truncated: str | None = None  # where and why reading stopped early

    @property
    def run_settings(self) -> dict[str, Any]:
        """``vla.run`` metadata with its JSON values decoded."""
        out: dict[str, Any] = {}
        for k, v in self.metadata.get(fmt.META_RUN, {}).items():
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:
                out[k] = v
        return out

    @property
    def bundle(self) -> dict[str, str]:
        return self.metadata.get(fmt.META_BUNDLE, {})


def _records(path: Path) -> Iterator[Any]:
    from mcap.stream_reader import StreamReader

    with path.open("rb") as f:
        yield from StreamReader(f, skip_magic=False, emit_chunks=False, validate_crcs=True).records


def read_recording(path: str | Path, salvage: bool = False) -> Recording:
    """Read a vla-run recording. ``salvage``: accept a file cut short (a killed recorder) and return what
    it holds, with ``truncated`` saying so; else such a file is a one-line error."""
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message, Metadata
    from mcap.stream_reader import CRCValidationError

    p = Path(path)
    if not p.is_file():
        raise VlaError(f"{p}: no such recording" + (" (a folder: vla-replay DIR --engine … replays every .mcap in it)"
                                                   if p.is_dir() else ""))
    channels: dict[int, Channel] = {}
    meta: dict[str, dict[str, str]] = {}
    runs: dict[int, RunRecord] = {}
    ticks: list[dict[str, Any]] = []
    raw: dict[int, dict[str, tuple[np.ndarray, str]]] = {}
    topics: set[str] = set()
    count = 0
    truncated = None
    ended = False
    try:
        for rec in _records(p):
            if isinstance(rec, Channel):
                channels[rec.id] = rec
            elif isinstance(rec, Metadata):
                meta[rec.name] = dict(rec.metadata)
            elif isinstance(rec, Message):
                ch = channels.get(rec.channel_id)
                if ch is None:
                    raise VlaError(f"{p}: corrupt recording (message on unknown channel {rec.channel_id})")
                count += 1
                topics.add(ch.topic)
                _take(p, ch, rec, runs, ticks, raw)
            elif type(rec).__name__ == "Footer":
                ended = True
    except VlaError:
        raise
    except CRCValidationError as exc:
        raise VlaError(f"{p}: corrupt recording (checksum mismatch: {exc}); the file was damaged after it was "
                       "written") from None
    except (McapError, struct.error, EOFError, ValueError, zlib.error, KeyError, IndexError, UnicodeDecodeError,
            OverflowError, MemoryError) as exc:
        name = type(exc).__name__
        if name == "InvalidMagic" or (count == 0 and not meta):
            raise VlaError(f"{p}: not an MCAP recording ({name}: {exc})") from None
        truncated = f"cut short after {count} messages ({name})"
    except Exception as exc:  # the stream reader on damaged bytes: anything else is the file's fault too
        truncated = f"unreadable after {count} messages ({type(exc).__name__}: {exc})"
    if truncated is None and not ended:
        truncated = f"no footer after {count} messages (the recorder did not close it)"
    if fmt.META_MANIFEST not in meta:
        if truncated and count == 0:
            raise VlaError(f"{p}: not a complete MCAP recording ({truncated})")
        raise VlaError(f"{p}: not a vla-run recording (no '{fmt.META_MANIFEST}' metadata); record with "
                       "vla-run --record FILE.mcap")
    if truncated and not salvage:
        raise VlaError(f"{p}: truncated recording: {truncated}; vla-replay --salvage replays the part that is there")
    try:
        manifest_raw = json.loads(meta[fmt.META_MANIFEST]["json"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise VlaError(f"{p}: the recorded manifest does not parse ({exc})") from None
    for needed in (fmt.TICK, fmt.RUN):
        if needed not in topics:
            raise VlaError(f"{p}: channel {needed} missing: not a vla-run recording, or one with no ticks")
    ordered = [runs[k] for k in sorted(runs)]
    return Recording(p, meta, manifest_raw, ordered, ticks, raw, topics, truncated)


def _tensor(p: Path, topic: str, data: bytes) -> np.ndarray:
    try:
        return fmt.decode_tensor(data)
    except ValueError as exc:
        raise VlaError(f"{p}: corrupt tensor on {topic} ({exc})") from None


def _json(p: Path, topic: str, data: bytes) -> dict[str, Any]:
    try:
        return fmt.decode_json(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VlaError(f"{p}: corrupt JSON on {topic} ({exc})") from None


def _take(p: Path, ch: Any, rec: Any, runs: dict[int, RunRecord], ticks: list[dict[str, Any]],
          raw: dict[int, dict[str, tuple[np.ndarray, str]]]) -> None:
    """File one message where replay looks for it."""
    topic, seq = ch.topic, rec.sequence
    if topic == fmt.TICK:
        ticks.append(_json(p, topic, rec.data))
    elif topic == fmt.RUN:
        ev = _json(p, topic, rec.data)
        try:
            run = int(ev["run"])
            if ev.get("phase") == "start":
                ctx = ev.get("context_run")
                runs[run] = RunRecord(run, str(ev["kind"]), int(ev["tick"]), None if ctx is None else int(ctx),
                                      input_names=tuple(ev.get("inputs") or ()),
                                      device_cameras=tuple(ev.get("device_cameras") or ()))
            elif run in runs:
                runs[run].usable = ev.get("usable")
                runs[run].error = None if ev.get("error") is None else str(ev["error"])
                if runs[run].outputs is None:
                    runs[run].outputs = {}
        except (KeyError, TypeError, ValueError) as exc:
            raise VlaError(f"{p}: corrupt run record on {topic} ({exc})") from None
    elif topic.startswith("/engine/"):
        kind, _, name = topic[len("/engine/"):].partition("/")
        run = runs.get(seq)
        if run is None:  # a snippet that begins after this run started: its outputs alone are no use
            return
        value = _tensor(p, topic, rec.data)
        if kind == "input":
            run.inputs[name] = value
        elif kind == "state":
            run.states[name] = value
        elif kind == "context":
            run.context[name] = value
        elif kind == "output":
            if run.outputs is None:
                run.outputs = {}
            run.outputs[name] = value
    elif topic.startswith("/camera/") and topic.endswith("/raw"):
        cam = topic[len("/camera/"):-len("/raw")]
        raw.setdefault(seq, {})[cam] = (_tensor(p, topic, rec.data), ch.metadata.get("format", ""))


def iter_messages(path: str | Path) -> Iterator[fmt.Message]:
    """Every message of a (complete or salvaged) recording as ``format.Message``, in file order, with its
    channel's schema and metadata: what ``vla-replay --update`` copies into a new reference log."""
    from mcap.records import Channel, Message, Schema

    schemas: dict[int, fmt.SchemaDef] = {}
    channels: dict[int, Any] = {}
    try:
        for rec in _records(Path(path)):
            if isinstance(rec, Schema):
                schemas[rec.id] = fmt.SchemaDef(rec.name, rec.encoding, bytes(rec.data))
            elif isinstance(rec, Channel):
                channels[rec.id] = rec
            elif isinstance(rec, Message):
                ch = channels[rec.channel_id]
                yield fmt.Message(ch.topic, rec.log_time, bytes(rec.data), ch.message_encoding,
                                  schemas.get(ch.schema_id), dict(ch.metadata), rec.sequence)
    except Exception:  # a cut-short file: what came before the cut has been yielded
        return
