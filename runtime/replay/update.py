"""``vla-replay --update OUT``: a new reference log, the recording with the replaying engine's outputs.

Every message is copied in order, except each replayed run's ``/engine/output/*`` tensors, which are
replaced by what the engine gave, and the bundle identity, which becomes the replaying bundle's (with
``updated_from`` naming the old log). Replaying the new log with the same engine gives zero
differences: it is what CI compares the next change against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..record import format as fmt
from ..record.writer import McapSink
from .reader import Recording, iter_messages


def write_updated(rec: Recording, report: Any, out: Path) -> int:
    """Write the updated log to ``out``; the number of messages written."""
    meta = {k: dict(v) for k, v in rec.metadata.items()}
    bundle = dict(meta.get(fmt.META_BUNDLE, {}))
    bundle.update(report.bundle_identity)
    bundle["engine"] = report.engine
    bundle["updated_from"] = json.dumps({"log": str(rec.path), "manifest_sha256": rec.bundle.get("manifest_sha256")})
    meta[fmt.META_BUNDLE] = bundle
    prefix = fmt.OUTPUT.format("")
    sink = McapSink(out, meta, what="--update")
    n = 0
    try:
        for msg in iter_messages(rec.path):
            if msg.topic.startswith(prefix):
                new = report.outputs.get(msg.sequence, {}).get(msg.topic[len(prefix):])
                if new is not None:
                    msg = fmt.tensor_message(msg.topic, msg.time_ns, new, msg.sequence)
            sink.write(msg)
            n += 1
    finally:
        sink.close()
    return n
