"""``vla-run --record DIR --record-on TRIGGERS``: keep the last seconds in memory, write snippets around triggers.

A destination of the recording dispatcher (``writer.py``), on its thread. Every message goes into a
ring of the last ``pre_s`` seconds (``ring.Ring``). Each ``/tick`` record goes through the trigger
decision (``triggers.next_trigger``); a trigger (or ``trigger_manual``: SIGUSR1, the Python API) opens
a snippet (``ring.Snippets``): the ring is written to a new file in ``DIR``, then everything until
``post_s`` after the last trigger, and the file is closed with its reasons in its metadata. Before a
file opens, the disk budget (``rotation.plan_rotation``) deletes the oldest snippets to make room.

The recorder records the recurrent state before every run in this mode, so a snippet beginning at
any run replays exactly; runs that began before the ring's oldest message are skipped by replay.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from ..errors import VlaError
from . import format as fmt
from .ring import Ring, Snippets
from .rotation import parse_size, plan_rotation, scan_recordings, snippet_name
from .triggers import Trigger, TriggerState, manual_reason, next_trigger, parse_triggers
from .writer import McapSink

PREFIX = "vla"
RING_MAX_BYTES = 1 << 30  # the ring's memory bound, whatever pre_s says


class SnippetRecorder:
    def __init__(self, folder: Path, metadata: dict[str, dict[str, str]], spec: str, pre_s: float, post_s: float,
                 budget: str, log: Callable[[str], None] | None = None) -> None:
        self.triggers: tuple[Trigger, ...] = parse_triggers(spec)
        self.budget = parse_size(budget)
        if folder.exists() and not folder.is_dir():
            raise VlaError(f"--record {folder}: with --record-on this is the folder the snippets go to, and it is a "
                           "file; give a folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VlaError(f"--record {folder}: cannot create the folder ({exc.strerror or exc})") from None
        self.folder, self.metadata = folder, metadata
        self.ring = Ring(pre_s, max_bytes=RING_MAX_BYTES)
        self.plan = Snippets(pre_s, post_s)
        self.state = TriggerState()
        self._manual: list[str] = []
        self._lock = threading.Lock()
        self._log = log or (lambda line: None)
        self.sink: McapSink | None = None
        self.written: list[str] = []
        self.deleted = 0
        self._now = 0

    def describe(self) -> str:
        return (f"recording snippets to {self.folder}/ on {', '.join(map(str, self.triggers))} "
                f"({self.plan.pre_ns / 1e9:g} s before, {self.plan.post_ns / 1e9:g} s after; "
                f"budget {self.budget / 2**30:.3g} GiB)")

    def trigger_manual(self, reason: str = "manual") -> None:
        """Keep this moment (any thread, signal-safe: it only appends)."""
        if not any(t.kind == "manual" for t in self.triggers):
            self._log("a manual trigger arrived, but --record-on has no 'manual': ignored")
            return
        self._manual.append(manual_reason(reason if reason != "manual" else None))

    # ---- Destination -------------------------------------------------------------------------------
    def write(self, msg: fmt.Message) -> None:
        self._now = max(self._now, msg.time_ns)
        reasons: list[str] = []
        if msg.topic == fmt.TICK:
            self.state, why = next_trigger(self.state, self.triggers, fmt.decode_json(msg.data))
            if why:
                reasons.append(why)
        while self._manual:
            reasons.append(self._manual.pop(0))
        for why in reasons:
            if self.plan.trigger(self._now, why):
                self._open(why)
        if self.sink is not None:
            self.sink.write(msg)
            if self.plan.should_close(self._now):
                self._close()
        else:
            self.ring.push(msg.time_ns, msg)

    def _open(self, reason: str) -> None:
        held = self.ring.drain()
        incoming = sum(len(m.data) for _, m in held)
        for path in plan_rotation(scan_recordings(self.folder, PREFIX), self.budget, incoming):
            try:
                os.remove(path)
                self.deleted += 1
            except FileNotFoundError:
                pass
        name = snippet_name(PREFIX, datetime.fromtimestamp(self._now / 1e9), reason)
        path = self.folder / name
        n = 1
        while path.exists() or str(path) in self.written:  # two snippets in one second
            n += 1
            path = self.folder / name.replace(".mcap", f"-{n}.mcap")
        self.sink = McapSink(path, self.metadata, what="--record")
        self.written.append(str(path))
        self._log(f"recording a snippet to {path} ({reason})")
        for _, m in held:
            self.sink.write(m)

    def _close(self) -> None:
        done = self.plan.close()
        if self.sink is None:
            return
        if done is not None:
            self.sink.add_metadata("vla.snippet", {"reasons": "; ".join(done.reasons),
                                                           "triggers": str(done.triggers)})
        self.sink.close()
        self.sink = None

    def flush(self) -> None:
        if self.sink is not None:
            self.sink.flush()

    def close(self) -> None:
        """End of run: a snippet still open is closed as it is (its seconds after are cut short)."""
        self._close()

    def summary(self) -> str:
        return (f"{len(self.written)} snippet(s) in {self.folder}/"
                + (f" ({self.deleted} old ones deleted for the disk budget)" if self.deleted else ""))
