"""Seeded example inputs for any manifest: for parity checks, warm-up and benchmarks.

Values respect each role's domain (valid token ids, command ids, masks with a prefix of real
tokens, half-full memory) so a parity check exercises the paths a real tick takes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..manifest import Manifest, TensorSpec
from .commands import CommandEncoder
from .ego import EgoHistory


def example_feed(spec: TensorSpec, manifest: Manifest, rng: np.random.Generator) -> np.ndarray:
    """One input filled for its role."""
    shape, dtype = spec.shape, np.dtype(spec.dtype)
    vocab = manifest.vocabulary or {}
    if spec.role == "camera":
        return rng.integers(0, 256, size=shape, dtype=np.uint8).astype(dtype)
    if spec.role == "command":
        ids = [c["id"] for c in vocab.get("commands", [{"id": 0}])]
        return rng.choice(ids, size=shape).astype(dtype)
    if spec.role == "text" and spec.detail.get("kind") == "ids":
        n_tokens = (manifest.tokenizer or {}).get("vocab_size") or len(vocab.get("tokens", ["<pad>"]))
        return rng.integers(0, n_tokens, size=shape).astype(dtype)
    if spec.role == "text" and dtype != np.bool_:  # an integer attention mask: 1 for real tokens, from the front
        return example_feed(replace(spec, dtype="bool"), manifest, rng).astype(dtype)
    if dtype == np.bool_:
        # Masks fill from the front (text tokens), state validity from the back (newest slot last).
        out = np.zeros(shape, dtype=bool)
        n = int(rng.integers(1, shape[-1] + 1)) if shape else 1
        if not shape:
            return np.bool_(True)
        if spec.role == "state":
            out[..., shape[-1] - n :] = True
        else:
            out[..., :n] = True
        return out
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 8, size=shape).astype(dtype)
    if spec.role == "ego":
        return example_ego(spec, rng).astype(dtype)
    scale = 0.5 if spec.role == "state" else 1.0
    return (scale * rng.standard_normal(size=shape)).astype(dtype)


def example_ego(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """A plausible ego history ``[batch, steps, len(fields)]`` with the declared fields in their order.

    Each batch entry is a drive at a seeded speed (0-20 m/s), acceleration and yaw rate, dead-reckoned
    by the same ``EgoHistory`` the loop uses: poses in metres and speeds in m/s, as a model sees
    them on the road (a unit-scale random tensor would exercise none of the ranges that matter).
    """
    batch, steps, _ = spec.shape
    fields, period = spec.detail["fields"], 1.0 / spec.detail["rate_hz"]
    out = np.empty((batch, steps, len(fields)), dtype=np.float64)
    for b in range(batch):
        speed, accel, yaw_rate = rng.uniform(0.0, 20.0), rng.normal(0.0, 1.0), rng.normal(0.0, 0.1)
        history = EgoHistory(steps, spec.detail["rate_hz"], fields=fields)
        for k in range(-(steps - 1), 1):
            history.update(k * period, max(0.0, speed + accel * k * period), accel, yaw_rate)
        history.fill(out[b])
    return out


def example_feeds(manifest: Manifest, seed: int = 0, command: str | None = None) -> dict[str, np.ndarray]:
    """Inputs for every manifest input, reproducible from ``seed``.

    Command and text inputs get ``command`` when given (``vla-export --command``), through the runtime's
    own encoding; a model reading text with a tokenizer always gets real commands (those it accepts),
    since random ids of a 30k-token tokenizer are no sentence at all.
    """
    rng = np.random.default_rng(seed)
    # np.asarray: a 0-d input (a scalar nav command) is an array too, so it can be written in place.
    feeds = {t.name: np.asarray(example_feed(t, manifest, rng)) for t in manifest.inputs}
    encoder = CommandEncoder(manifest)
    encoder.refuse_if_unused(command)
    if encoder.takes_command and (command is not None or manifest.tokenizer is not None):
        texts = [command] if command is not None else encoder.accepted()
        first = (encoder.text_inputs or encoder.command_inputs)[0]
        for b in range(first.shape[0] if first.shape else 1):
            enc = encoder.encode(texts[int(rng.integers(len(texts)))])
            encoder.write(enc, lambda name, b=b: feeds[name][b : b + 1] if feeds[name].ndim else feeds[name])
    return feeds
