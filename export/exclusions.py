"""What the precision search decided and measured, in words and records: the exclusions by PyTorch
module with their measured effect on the trajectory, the one-line refusal when no set passes, and
the line that says a precision runs slower than FP32. Pure functions of the search's result, so the
wording is tested without a model or a clock.
"""

from __future__ import annotations

from typing import Any

import onnx

from .search import Effect, EffectSearch


def decided(result: EffectSearch, fp32: onnx.ModelProto, paths: dict[str, str]) -> list[dict[str, str]]:
    """The nodes kept in FP32, each with its op and module: what goes in ``manifest["export"]`` (only
    what was decided, so the same choice gives the same bytes)."""
    ops = {n.name: n.op_type for n in fp32.graph.node}
    return [{"node": n, "op": ops[n], "module": paths.get(n, "")} for n in result.excluded]


def _row(group: str, e: Effect | None) -> dict[str, Any]:
    """One module's record; its figures None when it was not measured."""
    return {"module": group, "nodes": None if e is None else len(e.nodes),
            "ade_m_with_module_fp32": None if e is None else round(e.ade_m, 6),
            "effect_ade_m": None if e is None else round(e.effect_m, 6)}


def measured(result: EffectSearch) -> list[dict[str, Any]]:
    """Each module kept in FP32 with its measured effect: ADE with everything converted minus ADE with
    only this module restored to FP32 (None when the time budget ran out before it was measured)."""
    return [_row(g, result.effects.get(g)) for g in result.groups]


def effects_table(result: EffectSearch) -> list[dict[str, Any]]:
    """Every measured module, most harmful first (accuracy.json)."""
    return [_row(e.group, e) for e in sorted(result.effects.values(), key=lambda e: -e.effect_m)]


def _effect(m: float) -> str:
    return f"{m:+.4f} m ADE" if abs(m) >= 1e-4 else f"{m:+.1e} m ADE"


def summary_lines(precision: str, result: EffectSearch) -> list[str]:
    """One printed line per module kept in FP32, with what restoring it alone saved."""
    lines = []
    for g in result.groups:
        e = result.effects.get(g)
        saved = f"restoring it alone: {_effect(-e.effect_m)}" if e else "not measured alone (time budget)"
        count = len(e.nodes) if e else "?"
        lines.append(f"{precision}: kept in FP32: {g} ({count} node(s); {saved})")
    return lines


def refusal(precision: str, result: EffectSearch, candidates: int, max_exclude: int, seconds: float) -> str:
    """The one-line reason no bundle is written: the gate's failure, the modules that hurt most, and
    the options that allow more."""
    harmful = result.harmful(3)
    names = ", ".join(f"{e.group} (ADE {_effect(-e.effect_m).removesuffix(' m ADE')} m when kept in FP32)"
                      for e in harmful) or (
        "none (no module alone lowered the error when kept in FP32)" if result.effects
        else "none measured (the time budget ran out first)")
    why = "; ".join(result.final.failures)
    stop = (f"the {seconds:g} s search budget ran out" if result.out_of_time
            else f"at most {max_exclude} of {candidates} nodes may stay FP32")
    return (f"{precision} accuracy gate failed ({why}) with {len(result.groups)} module(s) kept in FP32 "
            f"({stop}); the modules that hurt most: {names}; no bundle written (--max-exclude N and "
            "--search-seconds S allow more, --precision fp16 is gentler, --force writes it anyway)")


def speed_note(precision: str, form: str | None, fp32_ms: float, final_ms: float) -> str | None:
    """A line for the end of the export when the chosen precision runs slower than FP32 on ONNX Runtime
    CPU (None when it is at least as fast)."""
    if final_ms <= fp32_ms:
        return None
    what = f"{precision} ({form} form)" if form else precision
    hint = ""
    if precision == "int8" and form == "tensorrt":
        hint = ("; this form is for TensorRT, whose INT8 kernels are fast: for ONNX Runtime CPU try "
                "--int8-form ort (convolutions) or --int8-form dynamic (transformer blocks)")
    elif precision == "fp16":
        hint = "; ONNX Runtime CPU has few FP16 kernels: FP16 pays off on a GPU (TensorRT)"
    digits = 2 if fp32_ms < 10 else 1
    return (f"note: {what} runs SLOWER than FP32 on ONNX Runtime CPU here: {final_ms:.{digits}f} ms vs "
            f"{fp32_ms:.{digits}f} ms (x{fp32_ms / final_ms:.2f}){hint}")
