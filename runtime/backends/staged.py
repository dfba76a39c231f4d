"""A bundle of stages as one backend: each stage its own graph on its own backend, run in order.

To everything that runs a bundle (the loop, ``vla-bench``, parity checks) a staged bundle looks like a
one-graph model: ``feed(name)`` gives the model inputs, ``run()`` runs every stage in order, looping a
``repeat`` stage K times, and returns the model outputs. The loop's dual-rate schedule runs parts of it
(``prepare`` then ``execute``) on two workers:

- ``prepare(stages, context)`` (the loop thread, while those stages' worker is idle) copies the model
  inputs they read from the loop's buffers (``feed``) into each stage's own inputs, and the outputs of
  stages outside the set (the slow stages' published context) from ``context``;
- ``execute(stages, store)`` (a worker) runs them, passing intermediates through ``store`` (one per
  worker, so the slow and the fast path never share a buffer), and records each stage's time.

Each stage backend keeps its own buffers, so a slow stage reading the cameras on one worker never
sees the loop writing the next tick's ego history into the fast stage's inputs on the other.
Recurrent state stays inside its stage (the manifest refuses a pair that crosses stages).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from ..manifest import Manifest
from ..stages import Stage
from .base import Backend


class StageStore:
    """The values a run of some stages produced (model outputs and intermediates) and each stage's time."""

    def __init__(self) -> None:
        self.values: dict[str, np.ndarray] = {}
        self.ms: dict[str, float] = {}

    def put(self, name: str, value: np.ndarray) -> None:
        held = self.values.get(name)
        if held is None or held.shape != value.shape or held.dtype != value.dtype:
            self.values[name] = value.copy()
        else:
            np.copyto(held, value)


class StagedBackend(Backend):
    name = "staged"

    def __init__(self, manifest: Manifest, backends: dict[str, Backend]) -> None:
        self.manifest = manifest
        self.stages: tuple[Stage, ...] = manifest.stages
        self.backends = backends
        self._state = {t.name for t in manifest.inputs_with("state")}
        self._owner = {n: s.name for s in self.stages for n in s.inputs}  # input -> a stage reading it
        for stage in self.stages:  # every backend keeps its state itself; this one only says when to commit
            if backends[stage.name].manifest.inputs_with("state") and not hasattr(backends[stage.name], "commit_state"):
                raise TypeError(f"stage '{stage.name}': its backend cannot commit recurrent state")
        # The loop's buffers for the model inputs; a state input is its stage's own (double-buffered there).
        self._feeds = {t.name: np.zeros(t.shape, dtype=t.dtype) for t in manifest.inputs if t.name not in self._state}
        self._inter = {t.name for t in manifest.intermediates}
        self._model_outputs = [t.name for t in manifest.outputs]
        self._decision = StageStore()
        # A repeat stage starting from a model input (the noise) reads its own copy, taken by prepare().
        self._init = {s.name: np.zeros(self._feeds[s.repeat.init].shape, self._feeds[s.repeat.init].dtype)
                      for s in self.stages if s.repeat and s.repeat.init in self._feeds}
        self.selection = ""
        self.describe_stage = {s.name: backends[s.name].describe() for s in self.stages}

    # ---- Backend ----------------------------------------------------------------------------------
    def feed(self, name: str) -> np.ndarray:
        if name in self._state:
            return self.backends[self._owner[name]].feed(name)
        return self._feeds[name]

    def decision_values(self) -> dict[str, np.ndarray]:
        """Everything the last ``run`` produced, intermediates included (views, valid until the next run)."""
        return self._decision.values

    def run(self) -> dict[str, np.ndarray]:
        """The whole decision: every stage in order, on the current inputs."""
        self.prepare(self.stages, None)
        self.execute(self.stages, self._decision)
        return self.model_outputs(self._decision)

    def model_outputs(self, store: StageStore) -> dict[str, np.ndarray]:
        """The model's outputs among what ``store`` holds (a part of the decision, e.g. the fast stages, gives some)."""
        return {n: store.values[n] for n in self._model_outputs if n in store.values}

    def commit_state(self, stages: Iterable[Stage] | None = None) -> None:
        """The last run's state outputs become the next run's inputs, for ``stages`` (default all)."""
        for stage in self.stages if stages is None else stages:
            commit = getattr(self.backends[stage.name], "commit_state", None)
            if commit is not None:
                commit()

    def last_timings_ms(self) -> dict[str, float]:
        """Each stage's time in the last ``run()`` (a repeat stage: all its steps)."""
        return dict(self._decision.ms)

    def last_values(self) -> dict[str, np.ndarray]:
        """Every tensor the last ``run()`` made, intermediates included (a stage timed alone starts from them)."""
        return self._decision.values

    def describe(self) -> str:
        parts = [f"{s.name}: {self.describe_stage[s.name]}" for s in self.stages]
        return f"{len(self.stages)} stages ({'; '.join(parts)})"

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()

    # ---- parts of a decision ------------------------------------------------------------------------
    def prepare(self, stages: Iterable[Stage], context: StageStore | None) -> None:
        """Copy the model inputs ``stages`` read (and, from ``context``, the outputs of stages outside the
        set) into the stages' own inputs. Call while their worker is idle."""
        stages = tuple(stages)
        inside = {o for s in stages for o in s.outputs}
        for stage in stages:
            backend = self.backends[stage.name]
            if stage.name in self._init:
                np.copyto(self._init[stage.name], self._feeds[stage.repeat.init])
            for name in stage.inputs:  # (state and the repeat's own inputs are neither: they stay as they are)
                if name in self._feeds:
                    np.copyto(backend.feed(name), self._feeds[name])
                elif name in self._inter and name not in inside:
                    if context is None or name not in context.values:
                        raise RuntimeError(f"stage '{stage.name}' input '{name}' has no value yet")
                    np.copyto(backend.feed(name), context.values[name])

    def execute(self, stages: Iterable[Stage], store: StageStore) -> StageStore:
        """Run ``stages`` in order (a worker's job); outputs and each stage's time go into ``store``."""
        for stage in stages:
            backend = self.backends[stage.name]
            start = time.perf_counter()
            for name in stage.inputs:  # intermediates made earlier in this same run
                if name in self._inter and name in store.values:
                    np.copyto(backend.feed(name), store.values[name])
            out = self._run_repeat(stage, backend, store) if stage.repeat else backend.run()
            for name in stage.outputs:
                store.put(name, out[name])
            store.ms[stage.name] = (time.perf_counter() - start) * 1000.0
        return store

    def _run_repeat(self, stage: Stage, backend: Backend, store: StageStore) -> dict[str, np.ndarray]:
        """K sampler steps: the running sample starts from ``init`` and each step's output feeds the next;
        the step's flow time i/K and index i are written before it runs. The stage's outputs are its last
        step's."""
        r = stage.repeat
        assert r is not None
        init = self._init[stage.name] if stage.name in self._init else store.values[r.init]
        sample = backend.feed(r.sample_input)
        np.copyto(sample, init)
        t_in = backend.feed(r.time) if r.time else None
        i_in = backend.feed(r.index) if r.index else None
        out: dict[str, np.ndarray] = {}
        for i in range(r.steps):
            if t_in is not None:
                t_in[...] = i / r.steps
            if i_in is not None:
                i_in[...] = i
            out = backend.run()
            if i + 1 < r.steps:
                np.copyto(sample, out[r.sample_output])
        return out
