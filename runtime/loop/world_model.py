"""World-model surprise: how far the model's prediction of its next latent was from what it then saw.

A bundle declares a world-model output in its manifest: an ``aux`` output with
``"aux": {"predicts": "context"}`` is the model's prediction, made at one run, of the tensor
``context`` (another output, or an intermediate of a bundle of stages) at its next run. Each run
that yields both is compared with the previous run's prediction:

    surprise = mean((predicted - observed)^2) / mean(observed^2)

0 is a perfect prediction and 1 is as far off as predicting zeros; it is scale-free, so one
threshold (``--record-on surprise>X``) fits any latent. A large value means the scene did not go as
the model expected (a cut-in, a sensor glitch, a place unlike its training data): the data engine's
cue to keep the moment. On a dual-rate schedule the prediction and its check both come from the slow
stages' runs, so "next" is the next slow run.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..backends.staged import StageStore
from ..manifest import Manifest


def surprise(predicted: np.ndarray, observed: np.ndarray) -> float:
    """The normalised squared error of a prediction (pure; float64 accumulation)."""
    p = np.asarray(predicted, dtype=np.float64)
    o = np.asarray(observed, dtype=np.float64)
    if p.shape != o.shape:
        raise ValueError(f"prediction {list(p.shape)} and observation {list(o.shape)} differ in shape")
    err = float(np.mean((p - o) ** 2))
    scale = float(np.mean(o**2))
    return err / max(scale, 1e-12)


@dataclass
class WorldModel:
    """The declared (prediction, observed) pairs and the last run's predictions."""

    pairs: tuple[tuple[str, str], ...] = ()
    unavailable: str | None = None  # why a declared prediction cannot be checked (said once at start)
    _last: StageStore = field(default_factory=StageStore)  # the last run's predictions (copies, reused)

    @classmethod
    def for_manifest(cls, manifest: Manifest, available: Collection[str]) -> WorldModel:
        """The pairs the manifest declares whose observed tensor a run hands back (``available``)."""
        pairs, missing = [], []
        for t in manifest.outputs_with("aux"):
            target = t.detail.get("predicts")
            if not target:
                continue
            (pairs if target in available else missing).append((t.name, target))
        note = None
        if missing:
            names = ", ".join(f"'{p}' predicts '{o}'" for p, o in missing)
            note = (f"world model: {names}, which this bundle does not expose (a one-graph export keeps it inside): "
                    "no surprise for it")
        return cls(tuple(pairs), note)

    @property
    def active(self) -> bool:
        return bool(self.pairs)

    def observe(self, values: Mapping[str, np.ndarray]) -> float | None:
        """Check the previous run's predictions against this run's tensors and keep this run's; the
        largest surprise of the pairs, or None when there is nothing to compare yet."""
        worst = None
        for pred, obs in self.pairs:
            if obs in values and pred in self._last.values:
                s = surprise(self._last.values[pred], values[obs])
                worst = s if worst is None else max(worst, s)
            if pred in values:
                self._last.put(pred, values[pred])
        return worst
