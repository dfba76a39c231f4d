"""Stages: a bundle of several graphs (vision encoder, VLM context, action expert ...) and how they connect.

A manifest's ``stages`` list runs in order. Each stage reads model inputs (cameras, ego, command and
text, noise, recurrent state) and outputs of earlier stages, and writes model outputs or
``intermediates`` (tensors one stage hands to a later one). A stage may be ``repeat``: one step of an
iterative sampler that the runtime loops K times, feeding the running sample back, the step's flow
time and index, starting from a seeded noise input. A stage's ``rate`` says when it runs: every tick
(the fast path), every Nth tick or asynchronously (slow stages, on their own worker), and a slow
stage's outputs are used for at most ``max_age_ms`` (capture to capture).

A bundle without ``stages`` is one stage (``single_stage``): its ``model.onnx``, every tick.

Everything here is pure: parsing, the dataflow check (``dataflow_problem``), rate overrides and the
scheduling decisions (``slow_due``, ``context_problem``), so they are tested without threads or clocks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .errors import VlaError

#: A slow stage's outputs are used for at most this long when its manifest entry does not say.
DEFAULT_MAX_AGE_MS = 300.0
TICK, ASYNC = "tick", "async"
SINGLE_FILE = "model.onnx"


@dataclass(frozen=True)
class Repeat:
    """One sampler step run ``steps`` times: ``sample_output`` feeds ``sample_input`` back; the first step
    reads ``init`` (a model input, the seeded noise, or an earlier stage's output)."""

    steps: int
    sample_input: str
    sample_output: str
    init: str
    time: str | None = None  # float32 [batch]: i / steps
    index: str | None = None  # int64 [batch]: i

    @property
    def own_inputs(self) -> tuple[str, ...]:
        """The graph inputs the runtime itself fills on every step."""
        return tuple(n for n in (self.sample_input, self.time, self.index) if n)


@dataclass(frozen=True)
class Stage:
    name: str
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    rate: str | int = TICK  # "tick", "async" or N (every Nth tick)
    max_age_ms: float | None = None
    repeat: Repeat | None = None
    precision: str = "fp32"

    @property
    def slow(self) -> bool:
        """Runs on its own worker, not every tick."""
        return self.rate != TICK

    @property
    def max_age(self) -> float:
        return self.max_age_ms if self.max_age_ms is not None else DEFAULT_MAX_AGE_MS

    def rate_text(self) -> str:
        return self.rate if isinstance(self.rate, str) else f"every {self.rate} ticks"


def parse_stages(raw: list[dict[str, Any]]) -> tuple[Stage, ...]:
    """Stages from the manifest's (schema-valid) ``stages`` list."""
    out = []
    for s in raw:
        rate = s.get("rate", TICK)
        if isinstance(rate, dict):
            rate = int(rate["every"])
        rep = s.get("repeat")
        repeat = None if rep is None else Repeat(int(rep["steps"]), rep["sample"]["input"], rep["sample"]["output"],
                                                 rep["sample"]["init"], rep.get("time"), rep.get("index"))
        out.append(Stage(s["name"], s["file"], tuple(s["inputs"]), tuple(s["outputs"]), rate, s.get("max_age_ms"),
                         repeat, s.get("precision", "fp32")))
    return tuple(out)


def stage_raw(stage: Stage) -> dict[str, Any]:
    """A stage as the manifest's ``stages`` entry (``parse_stages`` reads it back), without the fields only an
    export knows (module, precision, hash, parameters)."""
    entry: dict[str, Any] = {"name": stage.name, "file": stage.file, "inputs": list(stage.inputs),
                             "outputs": list(stage.outputs),
                             "rate": stage.rate if isinstance(stage.rate, str) else {"every": stage.rate}}
    if stage.max_age_ms is not None:
        entry["max_age_ms"] = stage.max_age_ms
    if stage.repeat is not None:
        r = stage.repeat
        entry["repeat"] = {"steps": r.steps, "sample": {"input": r.sample_input, "output": r.sample_output,
                                                        "init": r.init}}
        entry["repeat"].update({k: v for k, v in (("time", r.time), ("index", r.index)) if v})
    return entry


def single_stage(inputs: list[str], outputs: list[str]) -> Stage:
    """A one-graph bundle seen as a plan of one stage."""
    return Stage("model", SINGLE_FILE, tuple(inputs), tuple(outputs))


def dataflow_problem(stages: tuple[Stage, ...], model_inputs: list[str], model_outputs: list[str],
                     intermediates: list[str], state_pairs: dict[str, str]) -> str | None:
    """Why the stages do not form a dataflow from the model inputs to the model outputs, or None.

    Every stage input must be a model input, an output of an earlier stage, or the repeat's own; every
    intermediate is written by one stage and read by a later one; every model output is written by
    exactly one stage and every model input read by some stage; a recurrent state pair (input ->
    output) lives in one stage; a slow stage reads nothing a tick-rate stage writes (it may run
    between ticks, on outputs the fast path has not made yet).
    """
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        return f"stage names repeat: {names}"
    files = [s.file for s in stages]
    if len(set(files)) != len(files):
        return f"stage files repeat: {files}"
    clash = set(model_inputs) & set(intermediates) | set(model_outputs) & set(intermediates)
    if clash:
        return f"intermediates {sorted(clash)} share names with model inputs or outputs"
    writer: dict[str, Stage] = {}
    read: set[str] = set()
    for stage in stages:
        own = set(stage.repeat.own_inputs) if stage.repeat else set()
        for name in stage.inputs:
            if name in own or name in model_inputs:
                continue
            if name not in writer:
                where = "no stage writes it" if name not in intermediates else "only a later stage writes it"
                return (f"stage '{stage.name}' reads '{name}', which is neither a model input nor an output of an "
                        f"earlier stage ({where}): missing edge -> {stage.name}.{name}")
            if stage.slow and not writer[name].slow:
                return (f"stage '{stage.name}' ({stage.rate_text()}) reads '{name}' from stage '{writer[name].name}', "
                        "which runs every tick; a slow stage may read only model inputs and slow stages' outputs")
        if stage.repeat is not None:
            r = stage.repeat
            if r.sample_input not in stage.inputs or r.sample_output not in stage.outputs:
                return (f"stage '{stage.name}': repeat sample input '{r.sample_input}' must be one of its inputs and "
                        f"output '{r.sample_output}' one of its outputs")
            for name in (r.time, r.index):
                if name is not None and name not in stage.inputs:
                    return f"stage '{stage.name}': repeat input '{name}' is not one of its inputs"
            if r.init not in model_inputs and r.init not in writer:
                return (f"stage '{stage.name}' starts its sample from '{r.init}', which is neither a model input nor "
                        f"an output of an earlier stage: missing edge -> {stage.name}.{r.sample_input}")
            read.add(r.init)
        read.update(n for n in stage.inputs if n not in own)
        for name in stage.outputs:
            if stage.repeat is not None and name == stage.repeat.sample_output and name not in intermediates \
                    and name not in model_outputs:
                continue  # the running sample itself need not leave the stage
            if name not in model_outputs and name not in intermediates:
                return (f"stage '{stage.name}' writes '{name}', which is neither a model output nor a declared "
                        "intermediate")
            if name in writer:
                return f"'{name}' is written by stages '{writer[name].name}' and '{stage.name}'"
            writer[name] = stage
    for name in model_outputs:
        if name not in writer:
            return f"model output '{name}' is written by no stage"
    for name in intermediates:
        if name not in writer:
            return f"intermediate '{name}' is written by no stage"
        if name not in read:
            return f"intermediate '{name}' (from stage '{writer[name].name}') is read by no later stage"
    unread = [n for n in model_inputs if n not in read]
    if unread:
        return f"model input(s) {unread} are read by no stage"
    where = {n: s.name for s in stages for n in s.inputs}
    for inp, out in state_pairs.items():
        if inp in where and out in writer and where[inp] != writer[out].name:
            return (f"state '{out}' -> '{inp}' crosses stages ('{writer[out].name}' writes it, '{where[inp]}' reads "
                    "it); a recurrent state pair must live in one stage")
    return None


def parse_rate(text: str) -> str | int:
    """``--stage-rate`` text: ``tick``, ``async`` or ``every:N`` (also a bare N)."""
    t = text.strip().lower()
    if t in (TICK, ASYNC):
        return t
    n = t.split(":", 1)[1] if t.startswith("every:") else t
    if n.isdigit() and int(n) >= 1:
        return int(n)
    raise VlaError(f"--stage-rate {text!r}: expected tick, async or every:N (N >= 1)")


def with_rate(stages: tuple[Stage, ...], rate: str | int | None) -> tuple[Stage, ...]:
    """The stages with every slow stage run at ``rate`` instead (None: as declared; ``tick``: every stage
    every tick, the single-rate schedule)."""
    if rate is None:
        return stages
    return tuple(replace(s, rate=rate) if s.slow else s for s in stages)


def split(stages: tuple[Stage, ...]) -> tuple[tuple[Stage, ...], tuple[Stage, ...]]:
    """(slow stages, tick stages), each in order. Slow stages never read tick stages (``dataflow_problem``)."""
    return tuple(s for s in stages if s.slow), tuple(s for s in stages if not s.slow)


def stage_reads(stages: tuple[Stage, ...]) -> set[str]:
    """Every tensor ``stages`` read: their inputs, and a repeat stage's initial sample (the noise input)."""
    return {n for s in stages for n in (*s.inputs, *((s.repeat.init,) if s.repeat else ()))}


def slow_due(rate: str | int, tick: int, busy: bool) -> bool:
    """Whether slow stages at ``rate`` start at tick index ``tick``: async whenever their worker is free,
    every N on ticks 0, N, 2N ... when it is free (a run still going at its tick is skipped, not queued)."""
    if busy:
        return False
    return rate == ASYNC or (isinstance(rate, int) and tick % rate == 0)


def context_problem(age_ms: float | None, max_age_ms: float, stage: str) -> str | None:
    """Why a tick cannot use the slow stages' newest outputs, or None. ``age_ms``: this tick's capture
    time minus the capture time those outputs were computed from (None: none yet)."""
    if age_ms is None:
        return f"no context yet from stage '{stage}'"
    if age_ms > max_age_ms:
        return f"context too old: {age_ms:.0f} ms > max age {max_age_ms:g} ms (stage '{stage}')"
    return None
