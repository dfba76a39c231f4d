"""Replay: recorded inputs through an engine, compared with the recording (``vla-replay``)."""
