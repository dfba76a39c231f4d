"""The live view: ``vla-run --foxglove [PORT]`` serves the recording's channels over Foxglove's WebSocket
protocol, so Foxglove (with ``foxglove/vla-layout.json``) shows the cameras, the trajectory and the
tick records while the loop runs.

It takes the same ``Message``s the recorder writes (``format.py``), so a live session and a file show
the same topics, schemas and encodings. Tensor channels (``vla.npy``: engine inputs, state, context,
outputs, raw camera frames) are not served: Foxglove cannot decode them, and they are the bulk of a
recording's bytes.

Serving must never cost the loop a tick: ``write`` only hands bytes to foxglove-sdk (its server sends
them from its own threads and drops the oldest when a client is slow), and a failure is reported once
and then counted, never raised into the caller.
"""

from __future__ import annotations

import re
import sys
import threading
from typing import Any

from ..errors import VlaError
from .format import CAMERA_RAW, CONTEXT, INPUT, STATE, TENSOR_ENCODING, Message

SERVER_NAME = "vla-run"
DEFAULT_PORT = 8765


def _topic_pattern(template: str) -> re.Pattern[str]:
    """A format.py topic template (``/engine/input/{}``) as a pattern matching any name in the braces."""
    head, tail = template.split("{}")
    return re.compile(re.escape(head) + ".+" + re.escape(tail))


# Tensor topics: never served live, whatever encoding a message on them claims.
_NOT_SERVED = tuple(_topic_pattern(t) for t in (INPUT, STATE, CONTEXT, CAMERA_RAW))


def served(topic: str, encoding: str) -> bool:
    """Whether a channel goes to the live view: everything Foxglove can show, i.e. not a tensor."""
    if encoding == TENSOR_ENCODING:
        return False
    return not any(p.fullmatch(topic) for p in _NOT_SERVED)


def bind_error(port: int, host: str, detail: str) -> VlaError:
    """The one-line error for a server that could not start (``detail``: the SDK's message)."""
    detail = detail.removeprefix("FoxgloveError: ").strip().replace("\n", " ")
    if "in use" in detail.lower():
        return VlaError(f"--foxglove {port}: port in use ({detail}); pick another with --foxglove PORT")
    return VlaError(f"--foxglove {port}: cannot serve on {host}:{port} ({detail}); "
                    "check that this machine has that address and the port is free to use")


class _Subscriptions:
    """Which client is subscribed to which channel (foxglove-sdk calls these from its server threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pairs: set[tuple[int, int]] = set()

    def on_subscribe(self, client: Any, channel: Any) -> None:
        with self._lock:
            self._pairs.add((client.id, channel.id))

    def on_unsubscribe(self, client: Any, channel: Any) -> None:  # also called when a client leaves
        with self._lock:
            self._pairs.discard((client.id, channel.id))

    def clients(self) -> int:
        with self._lock:
            return len({c for c, _ in self._pairs})

    def topics(self, names: dict[int, str]) -> set[str]:
        with self._lock:
            return {names[ch] for _, ch in self._pairs if ch in names}


class LiveView:
    """A Foxglove WebSocket server for the recording's channels.

    It has its own foxglove ``Context``, so channels another part of the process logs through the SDK's
    global context never leak onto it (nor ours onto an MCAP file opened elsewhere). A channel is
    advertised the first time its topic is written, with the message's schema, encoding and metadata.
    """

    def __init__(self, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> None:
        """Start serving on ``host:port`` (``port`` 0: any free port, see ``port``). A port that cannot
        be bound raises a one-line ``VlaError``."""
        from ..cli_support import require

        require("foxglove")  # the project's one-line install hint (the record extra)
        import foxglove
        self._fg = foxglove
        self._context = foxglove.Context()
        self._subs = _Subscriptions()
        try:
            self._server = foxglove.start_server(name=SERVER_NAME, host=host, port=port, context=self._context,
                                                 server_listener=self._subs)
        except RuntimeError as exc:
            raise bind_error(port, host, str(exc)) from None
        self._port = int(self._server.port)
        self._host = host
        self._channels: dict[str, Any] = {}  # topic -> foxglove.Channel
        self._names: dict[int, str] = {}  # channel id -> topic
        self._skipped: set[str] = set()
        self._lock = threading.Lock()  # channel creation only: two threads may see a topic first at once
        self._closed = False
        self.failures = 0  # messages that could not be served (the first one is reported on stderr)

    @property
    def port(self) -> int:
        """The port the server listens on (the real one when 0 was asked for)."""
        return self._port

    @property
    def url(self) -> str:
        """The WebSocket URL to open in Foxglove (``Open connection`` -> ``Foxglove WebSocket``)."""
        host = "localhost" if self._host in ("127.0.0.1", "0.0.0.0", "::", "") else self._host
        return f"ws://{host}:{self._port}"

    @property
    def clients(self) -> int:
        """How many clients are subscribed to at least one channel."""
        return self._subs.clients()

    def subscribed_topics(self) -> set[str]:
        """The topics some client is subscribed to now."""
        return self._subs.topics(dict(self._names))

    def write(self, msg: Message) -> None:
        """Serve one message (advertising its channel on first sight). Never raises: a failure is reported
        once on stderr and counted in ``failures``, because a viewer must not stop the loop."""
        try:
            channel = self._channels.get(msg.topic)
            if channel is None:
                if self._closed or msg.topic in self._skipped:
                    return
                channel = self._open(msg)
                if channel is None:
                    return
            channel.log(msg.data, log_time=msg.time_ns)
        except Exception as exc:  # anything the SDK raises is the viewer's problem, not the loop's
            self._failed(msg.topic, exc)

    def _open(self, msg: Message) -> Any:
        """The channel for ``msg.topic``, created now; None for a topic that is not served."""
        with self._lock:
            if msg.topic in self._channels:
                return self._channels[msg.topic]
            if not served(msg.topic, msg.encoding):
                self._skipped.add(msg.topic)
                return None
            fg = self._fg
            schema = None if msg.schema is None else fg.Schema(name=msg.schema.name, encoding=msg.schema.encoding,
                                                               data=msg.schema.data)
            channel = fg.Channel(msg.topic, schema=schema, message_encoding=msg.encoding, context=self._context,
                                 metadata=dict(msg.channel_metadata) or None)
            self._names[channel.id()] = msg.topic
            self._channels[msg.topic] = channel
            return channel

    def _failed(self, topic: str, exc: Exception) -> None:
        self.failures += 1
        if self.failures == 1:
            text = str(exc).replace("\n", " ").strip() or type(exc).__name__
            print(f"vla-run: warning: live view: cannot serve {topic} ({text}); later failures are only counted",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the server (clients are disconnected; the SDK lets go of the port a moment later). Writes
        after this are ignored."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._channels.clear()  # later writes find no channel and stop at ``_closed``
        self._server.stop()

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
