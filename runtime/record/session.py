"""``vla-run --record / --record-on / --foxglove``: one recording session wired onto a ``Runner``.

One ``Recorder`` tap feeds one ``Dispatcher`` whose destinations are what the flags ask for: a
continuous MCAP file (``--record out.mcap``), the trigger ring that writes snippets into a folder
(``--record DIR --record-on …``), and the live Foxglove view (``--foxglove [PORT]``). ``close()``
ends it: everything queued is written and every file gets its summary.
"""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VlaError
from .recorder import Recorder, recording_metadata
from .writer import Dispatcher, McapSink

SWITCH_INTERVAL_S = 0.0005


@dataclass
class RecordOptions:
    path: str | None = None  # --record: a file, or with triggers a folder of snippets
    raw: bool = False  # --record-raw
    triggers: str | None = None  # --record-on
    pre_s: float = 10.0  # --record-pre
    post_s: float = 5.0  # --record-post
    budget: str = "2G"  # --record-budget
    foxglove_port: int | None = None  # --foxglove
    cameras: dict[str, str] = field(default_factory=dict)
    engine: str = ""


class RecordingSession:
    def __init__(self, runner: Any, opts: RecordOptions, log: Any = None) -> None:
        self.opts = opts
        self.sink: McapSink | None = None
        self.snippets: Any = None
        self.live: Any = None
        self._log = log or (lambda line: print(f"vla-run: {line}", file=sys.stderr, flush=True))
        backend = runner.backend
        meta = recording_metadata(backend, runner.cfg, opts.engine, opts.cameras, opts.raw,
                                  {"record_on": opts.triggers or ""})
        destinations: list[Any] = []
        try:
            if opts.path and opts.triggers:
                from .snippets import SnippetRecorder

                self.snippets = SnippetRecorder(Path(opts.path), meta, opts.triggers, opts.pre_s, opts.post_s,
                                                opts.budget, log=self._log)
                destinations.append(self.snippets)
            elif opts.triggers:
                raise VlaError("--record-on needs --record DIR: the folder the snippets go to")
            elif opts.path:
                if Path(opts.path).is_dir():
                    raise VlaError(f"--record {opts.path}: is a folder; give a file name (out.mcap), or add "
                                   "--record-on to write triggered snippets into the folder")
                self.sink = McapSink(opts.path, meta)
                destinations.append(self.sink)
            if opts.foxglove_port is not None:
                from .live import LiveView

                self.live = LiveView(opts.foxglove_port)
                destinations.append(self.live)
        except BaseException:
            for d in destinations:
                d.close()
            raise
        # The dispatcher runs Python (MCAP records, message building) while the loop waits for the GIL: by
        # default up to 5 ms a hand-over, measured as 4.3 ms p99 ticks with raw frames. A 0.5 ms switch
        # interval bounds that wait (benchmarks/record_overhead.py).
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self.dispatcher = Dispatcher(destinations, log=self._log)
        self.recorder = Recorder(backend.manifest, self.dispatcher, raw=opts.raw,
                                 state_every_run=self.snippets is not None)
        runner.taps.append(self.recorder)
        # The command in the inputs before the first run (set before the tap was attached).
        if runner.command_text:
            self.recorder.on_command(runner.command_text, runner.command_name)
        if self.snippets is not None and hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, lambda *_: self.snippets.trigger_manual("manual: SIGUSR1"))

    def trigger(self, reason: str = "manual") -> None:
        """Keep this moment (the Python API of the ``manual`` trigger)."""
        if self.snippets is None:
            raise VlaError("a manual trigger needs --record DIR --record-on …,manual")
        self.snippets.trigger_manual(reason)

    def describe(self) -> str:
        """One line for the start-up banner."""
        parts = []
        if self.sink is not None:
            parts.append(f"recording to {self.sink.path}" + (" (raw frames too)" if self.opts.raw else ""))
        if self.snippets is not None:
            parts.append(self.snippets.describe())
        if self.live is not None:
            parts.append(f"Foxglove live view on ws://localhost:{self.live.port} (open it in Foxglove: "
                         "Open connection > Foxglove WebSocket; layout foxglove/vla-layout.json)")
        return "; ".join(parts)

    def close(self) -> str:
        """Write everything queued, finish the files; a line for the exit summary."""
        self.dispatcher.close()
        parts = []
        if self.sink is not None:
            mb = self.sink.size / 1e6
            parts.append(f"recorded {self.sink.messages} messages to {self.sink.path} ({mb:.1f} MB)")
        if self.snippets is not None:
            parts.append(self.snippets.summary())
        if self.dispatcher.dropped:
            parts.append(f"{self.dispatcher.dropped} recording jobs dropped (the writer fell behind)")
        if self.dispatcher.errors:
            parts.append(f"recording errors: {self.dispatcher.errors[0]}")
        return "recording: " + "; ".join(parts) if parts else ""
