"""Where published records go. One interface (``write``/``close``); JSON lines now, UDP later."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

from .errors import VlaError


class JsonLinesSink:
    """One JSON object per line, flushed per tick so a consumer never waits on a buffer."""

    def __init__(self, target: str = "-") -> None:
        self.target = target
        if target == "-":
            self._stream: IO[str] = sys.stdout
        else:
            try:
                self._stream = Path(target).open("w", encoding="utf-8")  # noqa: SIM115 - lives as long as the sink
            except OSError as exc:
                raise VlaError(f"--output {target}: cannot open for writing ({exc.strerror})") from None

    def write(self, record: dict[str, Any]) -> None:
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()
