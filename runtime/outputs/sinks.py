"""Where published records go. One interface (``write``/``close``), one sink per ``--output``.

- ``-`` (default): JSON lines on stdout; ``PATH``: JSON lines in a file; both flushed per tick.
- ``udp://HOST:PORT``: one datagram per tick, UTF-8 JSON of the record plus ``seq``, a counter
  of datagrams sent by this sink (starting at 0) so a receiver can count what the network lost.
  The record's ``schema`` field (``vla.tick/2``) versions the format. A send that fails (no route,
  a refused port) never stops the loop: it is counted in ``dropped`` and reported once.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

from ..errors import VlaError

MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def _encode(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


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
        self._stream.write(_encode(record) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()


class UdpSink:
    """One datagram per record to ``udp://HOST:PORT``, with a sequence number."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise VlaError(f"--output {target}: expected udp://HOST:PORT, e.g. udp://127.0.0.1:9870")
        try:
            family, _, _, _, addr = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as exc:
            raise VlaError(f"--output {target}: cannot resolve {parts.hostname} ({exc.strerror})") from None
        self.target, self.address = target, addr
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self.seq = 0
        self.dropped = 0
        self._warned = False

    def write(self, record: dict[str, Any]) -> None:
        payload = _encode({**record, "seq": self.seq}).encode()
        self.seq += 1
        if len(payload) > MAX_DATAGRAM:
            self._drop(f"record of {len(payload)} bytes exceeds a UDP datagram")
            return
        try:
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            self._drop(exc.strerror or str(exc))

    def _drop(self, why: str) -> None:
        self.dropped += 1
        if not self._warned:
            self._warned = True
            print(f"vla-run: warning: --output {self.target}: datagram not sent ({why}); "
                  "the loop goes on, drops are counted", file=sys.stderr)

    def close(self) -> None:
        self._sock.close()


def open_sink(target: str) -> Sink:
    """``-``, a file path, or ``udp://HOST:PORT``."""
    if target.startswith("udp://"):
        return UdpSink(target)
    if "://" in target:
        raise VlaError(f"--output {target}: unknown scheme (use a file path, '-' for stdout, or udp://HOST:PORT)")
    return JsonLinesSink(target)
