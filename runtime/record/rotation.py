"""The disk budget for recordings: sizes, snippet file names, and which old files to delete.

A vehicle that records on triggers for weeks must not fill its disk, so ``--record-budget 2G`` keeps
the snippet files within a budget by deleting the oldest first. The decision (``plan_rotation``) is a
pure function of a listing; ``scan_recordings`` makes that listing and only ever lists files named
the way ``snippet_name`` names them, so rotation can never delete anything the recorder did not write.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from vla.runtime.errors import VlaError

SUFFIX = ".mcap"
SLUG_MAX = 40  # characters of the reason in a file name (the full reasons are in the file's metadata)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:([kmgt])(?:i?b)?|b)?\s*", re.IGNORECASE)
_STAMP = r"[0-9]{8}-[0-9]{6}"


def parse_size(text: str) -> int:
    """Bytes of ``123``, ``100k``, ``500M``, ``2G``, ``1.5T`` (``B``/``iB`` may follow the unit).

    Units are binary (k = 1024, as ``du`` and journald count a disk); a fraction of a byte is dropped.
    Anything else raises a one-line ``VlaError``.
    """
    m = _SIZE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        shown = text if not isinstance(text, str) or len(text) <= 40 else text[:37] + "..."
        raise VlaError(f"not a size: {shown!r}; write bytes as a number with an optional unit k, M, G or T "
                       "(e.g. 500M, 2G)")
    return int(Decimal(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def slug(reason: str) -> str:
    """A reason as a file-name part: lower-case letters, digits and single hyphens, at most ``SLUG_MAX``
    characters (cut at a hyphen when there is one); ``trigger`` when nothing is left."""
    s = re.sub(r"[^a-z0-9]+", "-", reason.lower()).strip("-")
    if len(s) > SLUG_MAX:
        s = s[:SLUG_MAX]
        cut = s.rfind("-")
        s = s[:cut] if cut > 0 else s
    return s or "trigger"


def snippet_name(prefix: str, when: datetime, reason: str) -> str:
    """``prefix-YYYYmmdd-HHMMSS-reason.mcap``: sorts by time, and says why at a glance (e.g.
    ``rec-20261204-153000-fault.mcap``). ``when`` is written as given (local or UTC, the caller's choice)."""
    return f"{prefix}-{when:%Y%m%d-%H%M%S}-{slug(reason)}{SUFFIX}"


def is_snippet(name: str, prefix: str) -> bool:
    """Whether ``name`` (a base name) is one ``snippet_name(prefix, …)`` could have made."""
    return re.fullmatch(rf"{re.escape(prefix)}-{_STAMP}-[a-z0-9-]+{re.escape(SUFFIX)}", name) is not None


def scan_recordings(directory: str | os.PathLike[str], prefix: str) -> list[tuple[str, int, float]]:
    """``(path, bytes, mtime)`` of the snippet files of ``prefix`` in ``directory`` (none if it does not
    exist). A file that vanishes while listed is skipped: another process may be rotating too."""
    out: list[tuple[str, int, float]] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return out
    for e in entries:
        if not is_snippet(e.name, prefix):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if e.is_file(follow_symlinks=False):
            out.append((str(Path(directory) / e.name), st.st_size, st.st_mtime))
    return out


def plan_rotation(files: Iterable[tuple[str, int, float]], budget_bytes: int, incoming: int = 0,
                  keep: Iterable[str] = frozenset()) -> list[str]:
    """The paths to delete, oldest first, so that the files left plus ``incoming`` bytes fit in
    ``budget_bytes``; never a path in ``keep`` (the file being written).

    Oldest means smallest mtime (ties broken by path, so the plan is deterministic). When even deleting
    every file allowed cannot make it fit, all of them are deleted: the budget is what the disk can
    spare, and the new recording matters more than the old ones. A path listed twice counts once.
    """
    if budget_bytes < 0 or incoming < 0:
        raise VlaError(f"a disk budget and the bytes coming need to be >= 0 (budget {budget_bytes}, "
                       f"incoming {incoming})")
    keep = frozenset(keep)
    unique: dict[str, tuple[int, float]] = {}
    for path, size, mtime in files:
        unique.setdefault(path, (max(0, size), mtime))
    total = incoming + sum(size for size, _ in unique.values())
    doomed: list[str] = []
    for path, (size, _) in sorted(unique.items(), key=lambda kv: (kv[1][1], kv[0])):
        if total <= budget_bytes:
            break
        if path in keep:
            continue
        doomed.append(path)
        total -= size
    return doomed
