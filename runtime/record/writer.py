"""Recording off the loop's thread: a dispatcher thread that encodes, and the MCAP file it writes.

The loop thread calls ``Dispatcher.submit(job)``: a job is a function returning ``Message``s
(``format.py``) made from copies the loop took; it runs on the dispatcher's thread, so JPEG and
``.npy`` encoding and zstd compression stay off the tick. Each message goes to every destination
(an ``McapSink``, the live view, the trigger ring). A dispatcher that cannot keep up never blocks the
loop: past ``max_queue_bytes`` of pending copies a job is dropped and counted (``dropped``).

``McapSink`` is the ``mcap`` library's chunked, zstd-compressed, indexed writer. Every ``flush_s``
(0.5 s) the dispatcher closes the chunk in progress and hands it to the operating system, so a
``kill -9`` loses at most that much (``replay/reader.py`` recovers every complete chunk of a file
with no summary). ``close()`` writes what is queued and the summary: a SIGTERM, which ends the loop
normally, loses nothing.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..errors import VlaError
from .format import PROFILE, Message

Job = Callable[[], Iterable[Message]]


class Destination(Protocol):
    """A file, the live view or the trigger ring; one with a ``flush()`` is flushed every ``flush_s``."""

    def write(self, msg: Message) -> None: ...

    def close(self) -> None: ...


class McapSink:
    """One MCAP file: channels registered on first use, metadata at the start, summary at ``close``."""

    def __init__(self, path: str | Path, metadata: dict[str, dict[str, str]] | None = None,
                 chunk_size: int = 4 << 20, what: str = "--record") -> None:
        from mcap.writer import CompressionType, Writer

        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stream: BinaryIO = self.path.open("wb")
        except OSError as exc:
            raise VlaError(f"{what} {path}: cannot open for writing ({exc.strerror or exc})") from None
        self._writer = Writer(self._stream, chunk_size=chunk_size, compression=CompressionType.ZSTD)
        self._writer.start(profile=PROFILE, library="vla-runtime")
        for name, data in (metadata or {}).items():
            self._writer.add_metadata(name, data)
        self._writer.flush()
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self.messages = 0
        self.closed = False

    def _channel(self, msg: Message) -> int:
        cid = self._channels.get(msg.topic)
        if cid is None:
            sid = 0
            if msg.schema is not None:
                sid = self._schemas.get(msg.schema.name, -1)
                if sid < 0:
                    sid = self._writer.register_schema(msg.schema.name, msg.schema.encoding, msg.schema.data)
                    self._schemas[msg.schema.name] = sid
            cid = self._writer.register_channel(msg.topic, msg.encoding, sid, dict(msg.channel_metadata))
            self._channels[msg.topic] = cid
        return cid

    def write(self, msg: Message) -> None:
        self._writer.add_message(self._channel(msg), msg.time_ns, msg.data, msg.time_ns,
                                 sequence=msg.sequence & 0xFFFFFFFF)
        self.messages += 1

    def add_metadata(self, name: str, data: dict[str, str]) -> None:
        self._writer.add_metadata(name, data)

    def flush(self) -> None:
        """Close the chunk in progress and hand the bytes to the OS (survives the process being killed)."""
        self._writer.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._writer.finish()
        finally:
            self._stream.close()

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0


def _normal_priority() -> None:
    """Under ``vla-run --rt-priority`` every thread inherits SCHED_FIFO; the recorder's must not compete with
    the loop at that priority: this thread goes back to normal scheduling (Linux: per thread; best effort)."""
    try:
        if os.sched_getscheduler(0) in (os.SCHED_FIFO, os.SCHED_RR):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):
        pass


class Dispatcher:
    """Runs recording jobs on one thread and hands their messages to the destinations."""

    def __init__(self, destinations: list[Destination], flush_s: float = 0.5, max_queue_bytes: int = 256 << 20,
                 log: Callable[[str], None] | None = None) -> None:
        self.destinations = list(destinations)
        self.flush_s, self.max_queue_bytes = flush_s, max_queue_bytes
        self._log = log or (lambda line: print(f"vla-run: {line}", file=sys.stderr, flush=True))
        self._queue: queue.SimpleQueue[tuple[Job, int] | None] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self.jobs = self.dropped = 0
        self.errors: list[str] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vla-record", daemon=True)
        self._thread.start()

    def submit(self, job: Job, size: int = 0) -> bool:
        """Queue a job holding ``size`` bytes of copies. False: dropped (the writer is behind)."""
        if self._closed:
            return False
        with self._lock:
            if self._pending + size > self.max_queue_bytes:
                self.dropped += 1
                return False
            self._pending += size
        self._queue.put((job, size))
        return True

    def _run(self) -> None:
        _normal_priority()
        next_flush = time.monotonic() + self.flush_s
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                item = ()  # time to flush
            if item is None:
                break
            if item:
                job, size = item
                self._do(job)
                with self._lock:
                    self._pending -= size
            if time.monotonic() >= next_flush:
                for dest in list(self.destinations):
                    if hasattr(dest, "flush"):  # files close their chunk; the live view has nothing to flush
                        self._call(dest, "flush")
                next_flush = time.monotonic() + self.flush_s

    def _do(self, job: Job) -> None:
        try:
            messages = list(job())
        except Exception as exc:  # an encoder failing on odd data: this job's messages are lost, say so once
            self._fail(None, exc)
            return
        self.jobs += 1
        for dest in list(self.destinations):
            for msg in messages:
                if not self._call(dest, "write", msg):
                    break

    def _call(self, dest: Any, method: str, *args: Any) -> bool:
        """One destination's call; a destination that fails (a full disk) is dropped with one warning."""
        try:
            getattr(dest, method)(*args)
            return True
        except Exception as exc:
            self._fail(dest, exc)
            return False

    def _fail(self, dest: Any, exc: Exception) -> None:
        what = f"{type(exc).__name__}: {exc}"
        where = "encoding" if dest is None else (getattr(dest, "path", None) or type(dest).__name__)
        self.errors.append(f"{where}: {what}")
        if dest is not None and dest in self.destinations:
            self.destinations.remove(dest)
        if len(self.errors) == 1:
            self._log(f"warning: recording to {where} failed ({what}); the loop goes on")

    def close(self) -> None:
        """Run every queued job, then close the destinations (files get their summary)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        for dest in list(self.destinations):
            self._call(dest, "close")
