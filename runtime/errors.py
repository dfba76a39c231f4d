"""One exception type for every problem a user can fix.

The command-line front ends print a ``VlaError`` as a single line and exit non-zero; anything else
is a bug in this project and is reported as such (still one line unless ``VLA_DEBUG=1``).
"""

from __future__ import annotations


def one_line(text: object, limit: int = 160) -> str:
    """``text`` (an exception's message, say) on one line, whitespace collapsed, at most ``limit`` characters:
    what a record's reason, a warning or a ``VlaError`` quotes of someone else's error."""
    return " ".join(str(text).split())[:limit]


def describe_error(exc: BaseException, limit: int = 160) -> str:
    """``Type: message`` on one line (an engine's failure, as the loop reports it)."""
    return f"{type(exc).__name__}: {one_line(exc, limit)}"


class VlaError(Exception):
    """A problem with the user's input (model, bundle, camera, command); the message says what to do."""


class ManifestError(VlaError):
    """A manifest that is malformed or disagrees with the graph it describes."""


class CameraError(VlaError):
    """A camera URI that cannot be opened, or a camera that stopped delivering frames."""
