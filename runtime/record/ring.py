"""The last seconds in memory, and the plan of which snippets to write.

``--record-on`` must be able to write what happened *before* a trigger, so the recorder keeps every
message of the last ``pre_s`` seconds in a ``Ring`` and drains it into a new file when a snippet opens.
``Snippets`` decides when a snippet opens, grows and closes. Both are pure: every time is an argument
(nanoseconds, the messages' own clock), so they never read a clock and own no thread; the recorder
calls them from its writer thread.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from vla.runtime.errors import VlaError

NS = 1_000_000_000
MAX_REASONS = 32  # a snippet lists this many distinct reasons; the rest are only counted


def _size(item: Any) -> int:
    """An item's bytes for the cap: ``len(item.data)`` (a ``format.Message``), ``len(item)`` for bytes."""
    data = getattr(item, "data", item)
    return len(data) if isinstance(data, (bytes, bytearray, memoryview)) else 0


def _seconds(name: str, value: float) -> int:
    """A window in ns; a negative or non-finite one is the user's setting to fix."""
    if not (isinstance(value, (int, float)) and 0 <= value < 1e9):
        raise VlaError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return round(value * NS)


class Ring:
    """The items of the last ``seconds`` (by their own timestamps), oldest first.

    The window is measured back from the newest time seen (or the ``now_ns`` given to ``drain``):
    an item older than that is dropped as soon as a newer one arrives, so memory stays bounded by
    the message rate, and ``max_bytes`` (if given) bounds it outright by dropping the oldest first.
    Items arriving slightly out of order (several producer threads) are put in their place, so the
    ring is always sorted and "oldest" means oldest. ``expired`` and ``dropped`` count what left by
    age and by the byte cap (``dropped_bytes`` the latter's bytes): a snippet can say it is partial.
    """

    def __init__(self, seconds: float, max_bytes: int | None = None) -> None:
        self.window_ns = _seconds("the ring's window", seconds)
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 0):
            raise VlaError(f"the ring's byte cap must be a whole number of bytes >= 0, not {max_bytes!r}")
        self.max_bytes = max_bytes
        self._items: deque[tuple[int, Any, int]] = deque()  # (time_ns, item, size)
        self._newest_ns: int | None = None
        self.bytes = 0
        self.expired = 0
        self.dropped = 0
        self.dropped_bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, time_ns: int, item: Any) -> None:
        """Keep ``item`` (stamped ``time_ns``), then forget what the window or the byte cap no longer holds."""
        size = _size(item)
        entry = (time_ns, item, size)
        items = self._items
        if not items or items[-1][0] <= time_ns:
            items.append(entry)
        else:  # late arrival: walk back from the end (it is rarely far from it)
            i = len(items)
            while i > 0 and items[i - 1][0] > time_ns:
                i -= 1
            items.insert(i, entry)
        self.bytes += size
        if self._newest_ns is None or time_ns > self._newest_ns:
            self._newest_ns = time_ns
        self._expire(self._newest_ns)
        self._cap()

    def _expire(self, now_ns: int) -> None:
        cutoff = now_ns - self.window_ns
        items = self._items
        while items and items[0][0] < cutoff:
            self.bytes -= items.popleft()[2]
            self.expired += 1

    def _cap(self) -> None:
        if self.max_bytes is None:
            return
        items = self._items
        while items and self.bytes > self.max_bytes:
            size = items.popleft()[2]
            self.bytes -= size
            self.dropped += 1
            self.dropped_bytes += size

    def drain(self, now_ns: int | None = None) -> list[tuple[int, Any]]:
        """Everything held as ``(time_ns, item)``, oldest first, and empty the ring. With ``now_ns``,
        what is older than the window back from it is forgotten first (a quiet spell before a trigger
        must not put minutes-old messages into its snippet)."""
        if now_ns is not None:
            self._expire(now_ns)
        out = [(t, item) for t, item, _ in self._items]
        self._items.clear()
        self.bytes = 0
        return out


@dataclass(frozen=True)
class Snippet:
    """A snippet being written: from ``start_ns`` (the first trigger less ``pre_s``) to ``end_ns`` (the
    last trigger plus ``post_s``, within ``max_s`` of the first), and why (``reasons``: distinct, in
    order, at most ``MAX_REASONS``; ``triggers``: how many fired into it)."""

    start_ns: int
    end_ns: int
    reasons: tuple[str, ...]
    triggers: int = 1


@dataclass(frozen=True)
class SnippetState:
    """Whether a snippet is open, when it ends and how long that is from ``now_ns`` (0 once due)."""

    open: bool
    end_ns: int | None = None
    remaining_ns: int | None = None


class Snippets:
    """The snippet plan: one file per burst of triggers.

    ``trigger`` opens a snippet (True: the recorder drains the ring into a new file) or, while one is
    open, extends it to ``post_s`` after this trigger and adds the reason (False: same file), so
    overlapping triggers make one file that lists all of them. ``should_close`` says when the
    recorder should finish the file, and ``close`` forgets it. ``max_s`` bounds one file's length
    (pre + post included): a trigger storm past it keeps its reasons but not the file open; the next
    trigger after the close starts a new file.
    """

    def __init__(self, pre_s: float, post_s: float, max_s: float | None = None) -> None:
        self.pre_ns = _seconds("the seconds before a trigger", pre_s)
        self.post_ns = _seconds("the seconds after a trigger", post_s)
        self.max_ns = None if max_s is None else _seconds("a snippet's longest length", max_s)
        if self.max_ns is not None and self.max_ns < self.pre_ns + self.post_ns:
            raise VlaError(f"a snippet's longest length ({max_s} s) must hold the seconds before and after "
                           f"a trigger ({pre_s} + {post_s} s)")
        self.current: Snippet | None = None

    def trigger(self, now_ns: int, reason: str) -> bool:
        """Record ``reason`` at ``now_ns``; True when this opens a new snippet."""
        cur = self.current
        if cur is None:
            self.current = Snippet(now_ns - self.pre_ns, now_ns + self.post_ns, (reason,))
            return True
        end = max(cur.end_ns, now_ns + self.post_ns)
        if self.max_ns is not None:
            end = min(end, cur.start_ns + self.max_ns)
        reasons = cur.reasons
        if reason not in reasons and len(reasons) < MAX_REASONS:
            reasons = (*reasons, reason)
        self.current = Snippet(cur.start_ns, end, reasons, cur.triggers + 1)
        return False

    def state(self, now_ns: int) -> SnippetState:
        cur = self.current
        if cur is None:
            return SnippetState(False)
        return SnippetState(True, cur.end_ns, max(0, cur.end_ns - now_ns))

    def should_close(self, now_ns: int) -> bool:
        """True once the open snippet has all its seconds after its last trigger."""
        return self.current is not None and now_ns >= self.current.end_ns

    def close(self) -> Snippet | None:
        """The snippet just finished (its reasons go into the file's metadata), and forget it."""
        done, self.current = self.current, None
        return done
