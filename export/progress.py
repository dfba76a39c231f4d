"""A progress line on stderr for the slow precision search: one line rewritten in place on a terminal,
plain lines (one per step) when stderr is a file or a pipe, so logs stay readable."""

from __future__ import annotations

import sys
from typing import TextIO


def bar(done: int, total: int, width: int = 20) -> str:
    """``[#####---------------]`` for ``done`` of ``total`` (full when done >= total)."""
    filled = width if total <= 0 else min(width, round(width * done / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class Progress:
    """``step(done, total, text)`` shows ``vla-export: [###---] done/total text``; ``close()`` ends the line."""

    def __init__(self, stream: TextIO | None = None, prefix: str = "vla-export: ") -> None:
        self.stream = stream or sys.stderr
        self.prefix = prefix
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._open = False

    def step(self, done: int, total: int, text: str) -> None:
        line = f"{self.prefix}{bar(done, total)} {done}/{total} {text}"
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
