"""Seeded example inputs for any manifest: for parity checks, warm-up and benchmarks.

Values respect each role's domain (valid token ids, command ids, masks with a prefix of real
tokens, half-full memory) so a parity check exercises the paths a real tick takes.
"""

from __future__ import annotations

import numpy as np

from .manifest import Manifest, TensorSpec


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
        n_tokens = len(vocab.get("tokens", ["<pad>"]))
        return rng.integers(0, n_tokens, size=shape).astype(dtype)
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
    scale = 0.5 if spec.role in ("state", "ego") else 1.0
    return (scale * rng.standard_normal(size=shape)).astype(dtype)


def example_feeds(manifest: Manifest, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for every manifest input, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return {t.name: example_feed(t, manifest, rng) for t in manifest.inputs}
